//! `equilibrium demo`: a local three-node cluster, a city replayed against it, the SLA
//! report, and a tour of what happened; then everything is shut down.
//!
//! # Layout
//! - this module: the options, the steps of the cluster demo, what it prints;
//! - [`procs`]: starting the child processes (nodes, `redis-server`) and the guard that stops
//!   and reaps them however the demo ends (normal end, error, panic, SIGINT, SIGTERM);
//! - [`engine_only`]: the first demo, the engine alone in this process (`--engine-only`).
//!
//! Without a runnable `redis-server` the demo cannot form a cluster (leases and snapshots
//! live in Redis): it says so loudly and runs ONE standalone node without `[cluster]`
//! instead (the "embedded" fallback), so the rest of the tour still works.

mod engine_only;
mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use client::{Client, ClientConfig, Trust};
use protocol::msg;

use self::procs::{NodeProc, Procs};

/// The city and scenario the demo replays, and the engine settings of its nodes: built in,
/// so the demo works from any directory.
const CITY_TOML: &str = include_str!("../../../configs/city.toml");
const SCENARIO_TOML: &str = include_str!("../../../configs/scenarios/demo.toml");
/// The demo's nodes run the market ten times as fast as real time (so that 30 s show a few
/// city minutes); the file says which constants and why.
const ENGINE_TOML: &str = include_str!("../../../configs/engine-demo.toml");

/// The demo cluster's secrets: fresh for every run (a fixed sample would be a key anyone can
/// sign quotes with, and nodes refuse published samples outside development mode).
#[derive(Debug)]
struct DemoSecrets {
    premium_token: String,
    shared_token: String,
    admin_token: String,
    cluster_key_hex: String,
}

fn secrets() -> &'static DemoSecrets {
    static SECRETS: std::sync::OnceLock<DemoSecrets> = std::sync::OnceLock::new();
    SECRETS.get_or_init(|| DemoSecrets {
        premium_token: format!("premium-{}", server::secrets::random_hex(16)),
        shared_token: format!("shared-{}", server::secrets::random_hex(16)),
        admin_token: format!("admin-{}", server::secrets::random_hex(16)),
        cluster_key_hex: server::secrets::random_hex(32),
    })
}

/// Nodes in the demo cluster.
const NODES: u16 = 3;
/// Longest wait for the nodes to see each other and for the zones to spread.
const FORM_TIMEOUT_MS: u64 = 30_000;

/// Options of `equilibrium demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Run the first demo instead: the engine alone, in this process, no nodes or network
    /// (prices surging and recovering at a hotspot, in-process quote latency, a signed quote
    /// and its explanation).
    #[arg(long)]
    engine_only: bool,
    /// How long the city traffic runs, in seconds (start-up and shutdown take a few more).
    /// With --engine-only: how long the engine demo runs.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    seconds: u64,
    /// Directory for the report (report.json, report.svg), the nodes' logs and `pids` (the
    /// child processes' PIDs). Created if missing.
    #[arg(long, default_value = "demo-report", conflicts_with = "engine_only")]
    out: PathBuf,
    /// Logical users in the city (default: the built-in scenario's 2,000; each asks for a
    /// quote a second and sends two events a second).
    #[arg(long, conflicts_with = "engine_only", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    users: Option<u32>,
    /// Seed of the traffic (same seed, same traffic).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The `redis-server` program. Without a runnable one the demo runs ONE standalone node
    /// instead of the cluster, and says so.
    #[arg(
        long,
        env = "EQUILIBRIUM_REDIS_SERVER",
        default_value = "redis-server",
        conflicts_with = "engine_only"
    )]
    redis_server: String,
    /// After the tour, keep the cluster running until Ctrl-C, and print how to talk to it
    /// with the other commands.
    #[arg(long, conflicts_with = "engine_only")]
    keep: bool,
    #[command(flatten)]
    engine: engine_only::EngineOnlyArgs,
}

/// How the demo ended, when it did not fail.
enum Ended {
    Done,
    Signal(&'static str, u8),
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.engine_only {
        return engine_only::run(
            &args.engine,
            engine_only::Common {
                seconds: args.seconds,
                seed: args.seed,
            },
        );
    }
    // Everything that can be checked is checked before a process starts.
    let scenario = demo_scenario(&args)?;
    std::fs::create_dir_all(args.out.join("logs"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let work = WorkDir::create()?;
    let mut procs = Procs::new(args.out.join("pids"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ended = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before any child starts: from here on SIGINT and SIGTERM end the demo
        // through the code below, never by the default action.
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        tokio::select! {
            biased;
            _ = int.recv() => Ok(Ended::Signal("SIGINT", 130)),
            _ = term.recv() => Ok(Ended::Signal("SIGTERM", 143)),
            r = cluster_demo(&args, &mut procs, &work, scenario) => r.map(|()| Ended::Done),
        }
    });
    // The simulator's sender thread may still be running after a signal: do not wait for it.
    rt.shutdown_background();
    if let Ok(Ended::Signal(name, _)) = &ended {
        eprintln!("\n{name}: stopping the demo's processes");
    } else if let Err(e) = &ended {
        eprintln!("\nerror: {e:#}\nstopping the demo's processes");
    }
    let stopped = procs.stop_all(Duration::from_millis(procs::STOP_GRACE_MS));
    let summary: Vec<String> = stopped
        .iter()
        .map(|s| {
            let how = match (&s.status, s.killed) {
                (_, true) => "killed after the grace period".to_owned(),
                (Some(st), false) => st.to_string(),
                (None, false) => "not reaped".to_owned(),
            };
            format!("{} (pid {}, {how})", s.name, s.pid)
        })
        .collect();
    if !summary.is_empty() {
        println!("stopped {}", summary.join(", "));
    }
    drop(work);
    match ended? {
        Ended::Done => Ok(()),
        Ended::Signal(_, code) => {
            println!("no process of the demo is left");
            std::process::exit(i32::from(code));
        }
    }
}

/// The built-in scenario, with the run's length, users and seed.
fn demo_scenario(args: &DemoArgs) -> anyhow::Result<sim::Scenario> {
    let mut config =
        sim::scenario::ScenarioConfig::from_toml(SCENARIO_TOML).context("built-in scenario")?;
    let city = sim::city::City::new(
        sim::city::CityConfig::from_toml(CITY_TOML).context("built-in city")?,
    )?;
    let total = args.seconds as f64;
    config.ramp_up_s = total / 5.0;
    config.duration_s = total - config.ramp_up_s;
    config.seed = args.seed;
    if let Some(u) = args.users {
        config.users = u;
    }
    Ok(sim::Scenario { config, city })
}

/// A private directory for the configs and credentials, removed at the end.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let d = std::env::temp_dir().join(format!("equilibrium-demo-{}", std::process::id()));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(Self(d))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Progress lines, numbered, with the time since the start.
struct Steps {
    started: Instant,
    total: u8,
    n: u8,
}

impl Steps {
    fn next(&mut self, what: &str) {
        self.n += 1;
        println!(
            "[{}/{} {:>5.1}s] {what}",
            self.n,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn wall(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn cluster_demo(
    args: &DemoArgs,
    procs: &mut Procs,
    work: &WorkDir,
    scenario: sim::Scenario,
) -> anyhow::Result<()> {
    let mut steps = Steps {
        started: Instant::now(),
        total: 7,
        n: 0,
    };
    let redis = procs::redis_available(&args.redis_server);
    let c = &scenario.config;
    println!(
        "Equilibrium demo: {} local nodes, Redis for leases and snapshots, then {} s of a \
         synthetic Berlin ({} zones, city hour {}): {} users, about {:.0} quotes/s and {:.0} \
         events/s ({:.0} rider sessions/s; the rest are drivers' heartbeats). The market runs 10x \
         as fast as real time (configs/engine-demo.toml: demand half-life 9 s, prices held 12 s).\n",
        if redis { NODES } else { 1 },
        args.seconds,
        scenario.city.zones().len(),
        c.city_hour,
        c.users,
        f64::from(c.users) * c.per_user.quotes_per_s,
        f64::from(c.users) * c.per_user.events_per_s,
        scenario.rider_sessions_per_s(),
    );
    let dir = &work.0;
    let logs = args.out.join("logs");

    // 1. The store.
    let redis_url = start_store(args, procs, dir, redis, &mut steps)?;

    // 2. Credentials: the cluster's (mutual TLS between peers) and the client-facing
    // certificate (clients verify it; nothing here runs with --insecure).
    let (creds, trust) = write_credentials(dir)?;

    // 3. The nodes.
    let nodes = start_nodes(procs, dir, &logs, redis_url.as_deref(), &creds, &mut steps)?;
    let n_nodes = nodes.len() as u16;
    let admin = admin_clients(&nodes, &trust).await?;

    // 4. The cluster forms: every node sees every member; the city's zones spread.
    let t = Instant::now();
    if n_nodes > 1 {
        wait_members(&nodes, procs).await?;
    }
    let zones = scenario.city.zones().to_vec();
    seed_zones(&nodes, &trust, &zones).await?;
    let spread = wait_spread(&admin, zones.len() as u32, procs).await?;
    steps.next(&format!(
        "{} in {}: the {} city zones are owned {}",
        if n_nodes > 1 {
            "cluster formed (each node sees 3 members)"
        } else {
            "node ready"
        },
        wall(t.elapsed()),
        zones.len(),
        spread_text(&nodes, &spread)
    ));

    // 5. The city.
    steps.next(&format!(
        "replaying the city for {} s ({} s ramp-up), traffic spread over the nodes by zone; \
         progress on stderr",
        args.seconds, c.ramp_up_s
    ));
    let target = sim::Target {
        nodes: nodes.iter().map(|n| n.addr).collect(),
        premium_nodes: nodes.iter().filter_map(|n| n.premium).collect(),
        trust: trust.clone(),
        server_name: "localhost".into(),
        premium_token: secrets().premium_token.clone(),
        shared_token: secrets().shared_token.clone(),
    };
    let opts = sim::RunOptions {
        name: "demo".into(),
        progress: true,
        expected_s: None,
        premium_nice: sim::run::PREMIUM_NICE,
        premium_slice_us: sim::run::PREMIUM_SLICE_US,
        ..Default::default()
    };
    let report = sim::run_scenario(&scenario, &target, &opts).await?;
    if let Some((name, st)) = procs.exited() {
        bail!("{name} exited during the run ({st})");
    }

    // 6. The report.
    steps.next("the SLA report");
    write_report(args, &report)?;

    // 7. A look inside.
    steps.next("a look inside the cluster");
    println!();
    tour(&nodes, &admin, &trust, &scenario).await?;
    for a in &admin {
        a.close().await;
    }
    if args.keep {
        keep_running(&nodes, dir, &args.out).await;
    }
    steps.next(if redis_url.is_some() {
        "shutting down: SIGTERM to every node, then to redis-server"
    } else {
        "shutting down: SIGTERM to the node"
    });
    Ok(())
}

/// Writes each node's configuration (owner-only: it holds the cluster key and the tokens)
/// and starts the nodes: three with a Redis URL, else one standalone node.
fn start_nodes(
    procs: &mut Procs,
    dir: &Path,
    logs: &Path,
    redis_url: Option<&str>,
    creds: &Path,
    steps: &mut Steps,
) -> anyhow::Result<Vec<procs::NodeProc>> {
    let n_nodes = if redis_url.is_some() { NODES } else { 1 };
    let peers: Vec<SocketAddr> = (0..n_nodes)
        .map(|_| procs::free_udp_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for id in 1..=n_nodes {
        let config = dir.join(format!("node{id}.toml"));
        let cluster = redis_url.map(|url| cluster_section(&peers, usize::from(id - 1), creds, url));
        // The config holds the cluster key and the tokens: owner only.
        server::secrets::write_private(&config, node_config(cluster.as_deref()).as_bytes())?;
        let n = procs::start_node(procs, &config, id, &logs.join(format!("node{id}.log")))?;
        nodes.push(n);
    }
    steps.next(&format!(
        "started {}: {}",
        if n_nodes == 1 { "one node" } else { "3 nodes" },
        nodes
            .iter()
            .map(|n| format!("node {} on {} (pid {})", n.id, n.addr, n.pid))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    println!(
        "  secrets: fresh for this run (cluster key, client tokens); admin token {}",
        secrets().admin_token
    );
    Ok(nodes)
}

/// Starts `redis-server` when there is one (the cluster demo), or warns loudly that the
/// demo falls back to one standalone node. The Redis URL, if any.
fn start_store(
    args: &DemoArgs,
    procs: &mut Procs,
    dir: &Path,
    redis: bool,
    steps: &mut Steps,
) -> anyhow::Result<Option<String>> {
    Ok(if redis {
        let (port, pid) = procs::start_redis(procs, &args.redis_server, dir)?;
        steps.next(&format!(
            "redis-server on 127.0.0.1:{port} (pid {pid}, nothing persisted)"
        ));
        Some(format!("redis://127.0.0.1:{port}"))
    } else {
        let warning = format!(
            "\n!!! WARNING: `{}` was not found or does not run. !!!\n\
             !!! THIS IS NOT THE CLUSTER DEMO: the nodes keep their leases and snapshots in   !!!\n\
             !!! Redis, so without it the demo runs ONE standalone node (no [cluster], no      !!!\n\
             !!! peers, no persistence). Install redis-server (./scripts/demo.sh does it with !!!\n\
             !!! apt-get) or pass --redis-server PATH to see three nodes share the city.      !!!\n",
            args.redis_server
        );
        eprintln!("{warning}");
        steps.next("no Redis: ONE standalone node (embedded fallback, not a cluster)");
        None
    })
}

/// The cluster's credentials (mutual TLS between peers, one certificate per node) and the
/// client-facing certificate (clients verify it; nothing here runs with --insecure), and the
/// engine configuration; the trust the demo's clients use.
fn write_credentials(dir: &Path) -> anyhow::Result<(PathBuf, Trust)> {
    let creds = dir.join("cluster-credentials");
    let ids: Vec<u16> = (1..=NODES).collect();
    server::cluster::write_credentials(&creds, &ids).context("cluster credentials")?;
    let tls = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .context("client-facing certificate")?;
    std::fs::write(dir.join("tls-cert.pem"), tls.cert.pem())?;
    server::secrets::write_private(
        &dir.join("tls-key.pem"),
        tls.signing_key.serialize_pem().as_bytes(),
    )?;
    std::fs::write(dir.join("engine.toml"), ENGINE_TOML)?;
    Ok((creds, Trust::Roots(vec![tls.cert.der().to_vec()])))
}

/// Prints the SLA report and writes it as JSON and SVG into the output directory.
fn write_report(args: &DemoArgs, report: &sim::Report) -> anyhow::Result<()> {
    report.print_table();
    let json = args.out.join("report.json");
    let svg = args.out.join("report.svg");
    std::fs::write(&json, report.to_json()).with_context(|| format!("{}", json.display()))?;
    std::fs::write(&svg, report.to_svg()).with_context(|| format!("{}", svg.display()))?;
    println!(
        "wrote {} (schema: sim/REPORT.md) and {} (latency and throughput per second)",
        json.display(),
        svg.display()
    );

    Ok(())
}

/// The `[cluster]` section of node `i`.
fn cluster_section(peers: &[SocketAddr], i: usize, creds: &Path, redis_url: &str) -> String {
    let seeds: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[cluster]\nlisten = \"{}\"\nseeds = [{}]\nca_cert_path = \"{}\"\ncert_path = \"{}\"\n\
         key_path = \"{}\"\nredis_url = \"{redis_url}\"\n",
        peers[i],
        seeds.join(", "),
        creds
            .join(format!("node-{}", i + 1))
            .join("ca.pem")
            .display(),
        creds
            .join(format!("node-{}", i + 1))
            .join("node.pem")
            .display(),
        creds
            .join(format!("node-{}", i + 1))
            .join("node-key.pem")
            .display(),
    )
}

/// A node's config: any free port for clients and metrics (the banner names them), the
/// demo's tokens, the client-facing certificate, and the cluster section when clustered.
fn node_config(cluster: Option<&str>) -> String {
    let DemoSecrets {
        premium_token,
        shared_token,
        admin_token,
        cluster_key_hex,
    } = secrets();
    format!(
        r#"listen = "127.0.0.1:0"
premium_listen = "127.0.0.1:0"
engine_config = "engine.toml"
cluster_key_hex = "{cluster_key_hex}"
metrics_listen = "127.0.0.1:0"
[tls]
cert_path = "tls-cert.pem"
key_path = "tls-key.pem"
[[clients]]
token = "{premium_token}"
tier = "premium"
name = "demo-premium"
[[clients]]
token = "{shared_token}"
tier = "shared"
name = "demo-shared"
[[clients]]
token = "{admin_token}"
tier = "premium"
role = "admin"
name = "demo-admin"
{}"#,
        cluster.unwrap_or_default()
    )
}

fn client_config(token: &str, trust: &Trust, name: &str) -> ClientConfig {
    let mut c = ClientConfig::new(token, trust.clone());
    c.name = name.into();
    c.lanes = 1;
    c.request_timeout_ms = 3_000;
    c.connect_timeout_ms = 3_000;
    c
}

async fn admin_clients(nodes: &[NodeProc], trust: &Trust) -> anyhow::Result<Vec<Client>> {
    let mut v = Vec::new();
    for n in nodes {
        v.push(
            Client::connect(
                n.addr,
                client_config(&secrets().admin_token, trust, "demo-admin"),
            )
            .await
            .with_context(|| format!("connecting to node {}", n.id))?,
        );
    }
    Ok(v)
}

fn check_alive(procs: &mut Procs) -> anyhow::Result<()> {
    if let Some((name, st)) = procs.exited() {
        bail!("{name} exited ({st}); see the logs in the report directory");
    }
    Ok(())
}

/// Waits until every node's view has all the members (`equilibrium_cluster_members`, or
/// the node's log where the gauge is not fed).
async fn wait_members(nodes: &[NodeProc], procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(FORM_TIMEOUT_MS);
    loop {
        let mut seen = Vec::new();
        for n in nodes {
            let gauge = match n.metrics {
                Some(a) => procs::scrape_gauge(a, "equilibrium_cluster_members")
                    .await
                    .unwrap_or(0.0),
                None => 0.0,
            };
            seen.push((gauge as usize).max(procs::members_in_log(&n.log)) as u32);
        }
        if seen.iter().all(|&m| m == nodes.len() as u32) {
            return Ok(());
        }
        check_alive(procs)?;
        if Instant::now() > deadline {
            bail!("the nodes did not all see each other within {FORM_TIMEOUT_MS} ms (members seen per node: {seen:?}); see the logs in the report directory");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One event per city zone, sent to any node (a node forwards it to the zone's owner), so
/// every zone exists on its owner and gets a price. The event is a driver going offline
/// that never came online: it changes no supply or demand.
async fn seed_zones(nodes: &[NodeProc], trust: &Trust, zones: &[u64]) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let cc = client::ClusterClient::connect(
        &addrs,
        client_config(&secrets().premium_token, trust, "demo-warm-up"),
    )
    .await
    .context("connecting to the nodes")?;
    let base = sim::run::fresh_id_base() | (1 << 62);
    let deadline = Instant::now() + Duration::from_millis(FORM_TIMEOUT_MS);
    let mut pending: Vec<(usize, u64)> = zones.iter().copied().enumerate().collect();
    while !pending.is_empty() {
        let mut retry = Vec::new();
        for chunk in pending.chunks(512) {
            let events = chunk
                .iter()
                .map(|&(i, zone)| msg::WireEvent {
                    id: base + i as u64,
                    zone,
                    driver: u64::MAX - i as u64,
                    kind: msg::event_kind::DRIVER_OFFLINE,
                })
                .collect();
            match cc.send_events(events).await {
                Ok(out) => retry.extend(
                    chunk
                        .iter()
                        .zip(out)
                        .filter(|(_, o)| {
                            *o != msg::outcome::APPLIED && *o != msg::outcome::DUPLICATE
                        })
                        .map(|(z, _)| *z),
                ),
                Err(_) => retry.extend_from_slice(chunk),
            }
        }
        pending = retry;
        if !pending.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "{} zones were not taken by any node within {FORM_TIMEOUT_MS} ms",
                    pending.len()
                );
            }
            // Ownership is still moving (`not_serving`): resend, the ids make it safe.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    cc.close().await;
    Ok(())
}

/// Zones owned by each node (admin `status`).
async fn zone_counts(admin: &[Client]) -> Vec<u32> {
    let mut v = Vec::new();
    for a in admin {
        v.push(a.status().await.map(|s| s.zones).unwrap_or(0));
    }
    v
}

/// Waits until the nodes together own exactly `total` zones, each at least one.
async fn wait_spread(admin: &[Client], total: u32, procs: &mut Procs) -> anyhow::Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_millis(FORM_TIMEOUT_MS);
    loop {
        let c = zone_counts(admin).await;
        if c.iter().sum::<u32>() == total && c.iter().all(|&z| z > 0) {
            return Ok(c);
        }
        check_alive(procs)?;
        if Instant::now() > deadline {
            bail!("the zones did not settle on the nodes within {FORM_TIMEOUT_MS} ms: {c:?} of {total}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spread_text(nodes: &[NodeProc], counts: &[u32]) -> String {
    nodes
        .iter()
        .zip(counts)
        .map(|(n, c)| format!("node {} {c}", n.id))
        .collect::<Vec<_>>()
        .join(", ")
}

fn milli(m: u32) -> String {
    format!("{}.{:03}x", m / 1000, m % 1000)
}

/// After the run: where the zones live now, the most surging zone, who owns it, a quote for
/// it from another node, and the quote's explanation from a third.
/// The trip the tour quotes: 5 km, 15 minutes, from `zone`.
fn tour_trip(zone: u64) -> msg::QuoteRequest {
    msg::QuoteRequest {
        zone,
        lat: 0.0,
        lng: 0.0,
        distance_m: 5_000,
        duration_s: 900,
        origin: msg::ORIGIN_ZONE,
    }
}

async fn tour(
    nodes: &[NodeProc],
    admin: &[Client],
    trust: &Trust,
    scenario: &sim::Scenario,
) -> anyhow::Result<()> {
    let counts = zone_counts(admin).await;
    let all = counts.iter().sum::<u32>();
    let city = scenario.city.zones().len() as u32;
    println!(
        "zones per node now: {} ({all} in all{})",
        spread_text(nodes, &counts),
        if all > city {
            "; riders near the edge also touched zones just outside the city's disc"
        } else {
            ""
        }
    );
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for n in nodes {
            v.push(
                Client::connect(
                    n.addr,
                    client_config(&secrets().premium_token, trust, "demo-tour"),
                )
                .await?,
            );
        }
        v
    };
    let zone = print_multipliers(&clients[0], scenario).await?;
    let mut owner = 0;
    for (i, a) in admin.iter().enumerate() {
        if let Ok(s) = a.zone_state(zone).await {
            owner = i;
            println!(
                "  owned by node {}: {} drivers available, {} recent rider sessions and {} \
                 recent quotes (decaying counts), snapshot v{} at {}",
                nodes[i].id,
                s.drivers,
                s.demand,
                s.quotes,
                s.version,
                milli(s.multiplier_milli)
            );
            break;
        }
    }
    // Any node quotes any zone: ask one that does not own it.
    let other = (owner + 1) % nodes.len();
    let q = clients[other].quote(tour_trip(zone)).await?;
    println!(
        "  quoted by node {}{}: 5 km, 15 min: {} {} (minor units) at {}, from snapshot v{} ({} ms old)",
        nodes[other].id,
        if other == owner {
            ""
        } else {
            " (not its owner: a replicated snapshot)"
        },
        q.amount_minor,
        String::from_utf8_lossy(&q.currency),
        milli(q.multiplier_milli),
        q.snapshot_version,
        q.snapshot_age_ms
    );
    println!(
        "  quote token (112 bytes, signed with the cluster key): {}…",
        &crate::output::hex(&q.token)[..48]
    );
    let third = (owner + 2) % nodes.len();
    let mut tampered = q.token;
    tampered[24] ^= 1; // the amount
    let refused = clients[third].verify(tampered).await.is_err();
    println!(
        "  node {} verifies it: {}; the same token with its amount altered: {}",
        nodes[third].id,
        if clients[third].verify(q.token).await.is_ok() {
            "valid"
        } else {
            "INVALID"
        },
        if refused { "refused" } else { "ACCEPTED (bug)" }
    );
    // The owner holds the zone's fare table history, so its explanation is complete.
    let e = clients[owner].explain(q.token).await?;
    println!(
        "\n$ equilibrium explain <token>     (asked node {}, the owner)",
        nodes[owner].id
    );
    print!("{}", String::from_utf8_lossy(&e.text));
    for c in clients {
        c.close().await;
    }
    Ok(())
}

/// The city's multipliers as `client`'s node prices them: how many at 1.0x, mildly and
/// highly surging, the highest (and the nearest hotspot) and the calmest. The highest zone.
async fn print_multipliers(client: &Client, scenario: &sim::Scenario) -> anyhow::Result<u64> {
    // The most and the least surging zones, as node 1 prices them.
    let mut priced: Vec<(u32, u64)> = Vec::new();
    for &z in scenario.city.zones() {
        if let Ok(q) = client.quote(tour_trip(z)).await {
            priced.push((q.multiplier_milli, z));
        }
    }
    priced.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let (Some(&(_, zone)), Some(&(calm_m, calm))) = (priced.first(), priced.last()) else {
        bail!("no zone could be quoted after the run");
    };
    let at_one = priced.iter().filter(|(m, _)| *m == 1000).count();
    let mild = priced
        .iter()
        .filter(|(m, _)| (1001..=1500).contains(m))
        .count();
    let high = priced.len() - at_one - mild;
    let zone_hex = format!("{zone:x}");
    // Where the highest is: the nearest hotspot of the city, and how far.
    let near = engine::ZoneId::new(zone).ok().and_then(|z| {
        let c = z.center();
        scenario
            .city
            .config()
            .hotspots
            .iter()
            .map(|h| (sim::city::distance_km(c, (h.lat, h.lng)), h.name.as_str()))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    });
    let near = near.map_or_else(String::new, |(km, name)| {
        format!(" ({km:.1} km from {name})")
    });
    println!(
        "multipliers of the {} city zones: {at_one} at 1.0x, {mild} above 1.0x up to 1.5x, {high} \
         above 1.5x; the highest is zone {zone_hex}{near} at {}, the calmest {calm:x} at {} \
         (a zone holds 1.0x for the policy's hold_s after it is first seen: see \
         configs/engine-demo.toml; `equilibrium demo --engine-only` and `equilibrium backtest` \
         show surges recovering)",
        scenario.city.zones().len(),
        milli(priced[0].0),
        milli(calm_m)
    );
    Ok(zone)
}

/// `--keep`: the cluster stays up until Ctrl-C; shows how to reach it.
async fn keep_running(nodes: &[NodeProc], dir: &Path, out: &Path) {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let premium: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.premium.map(|p| p.to_string()))
        .collect();
    let premium = if premium.len() == nodes.len() {
        format!(" --premium-node {}", premium.join(","))
    } else {
        String::new()
    };
    let ca = out.join("tls-cert.pem");
    let _ = std::fs::copy(dir.join("tls-cert.pem"), &ca);
    println!(
        "\nThe cluster keeps running until Ctrl-C. Try, in another terminal:\n  \
         export EQUILIBRIUM_CA={ca} EQUILIBRIUM_ADDR={first}\n  \
         export EQUILIBRIUM_PREMIUM_TOKEN={premium_token} EQUILIBRIUM_SHARED_TOKEN={shared_token}\n  \
         equilibrium status --token {admin}\n  \
         equilibrium quote --token {premium_token} --lat 52.5251 --lng 13.3694\n  \
         equilibrium sim run --scenario configs/scenarios/peak.toml --node {all}{premium} --ca {ca}\n\
         Metrics: {metrics}",
        ca = ca.display(),
        admin = secrets().admin_token,
        premium_token = secrets().premium_token,
        shared_token = secrets().shared_token,
        first = addrs[0],
        all = addrs.join(","),
        metrics = nodes
            .iter()
            .filter_map(|n| n.metrics.map(|m| format!("http://{m}/metrics")))
            .collect::<Vec<_>>()
            .join(" "),
    );
    std::future::pending::<()>().await;
}
