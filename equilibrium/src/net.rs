//! The network commands: `node` (serve clients) and the client commands `quote`,
//! `send-events`, `verify`, `explain`. The administrative commands are in `admin`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use client::ClusterClient;
use protocol::msg::{self, event_kind, outcome};
use protocol::TOKEN_LEN;
use server::{Node, NodeConfig};

use crate::output::{fare_json, hex, milli, print_json, token_json};
use crate::runtime::runtime;
use crate::target::{Target, CLIENT_TOKEN_DEFAULT};

/// Options of `equilibrium node`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Node configuration file.
    #[arg(long, env = "EQUILIBRIUM_CONFIG", default_value = "configs/node.toml")]
    config: PathBuf,
    /// Override `listen` (UDP address for QUIC).
    #[arg(long, env = "EQUILIBRIUM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Override `premium_listen` (UDP address of the premium tier's own endpoint); "" turns
    /// it off.
    #[arg(long, env = "EQUILIBRIUM_PREMIUM_LISTEN")]
    premium_listen: Option<String>,
    /// Override the engine's `node_id` (unique per node of a cluster).
    #[arg(long, env = "EQUILIBRIUM_NODE_ID")]
    node_id: Option<u16>,
    /// Override `[cluster] listen` (UDP address of the peer endpoint).
    #[arg(long, env = "EQUILIBRIUM_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Override `[cluster] seeds` (comma-separated peer addresses).
    #[arg(long, env = "EQUILIBRIUM_SEEDS", value_delimiter = ',')]
    seeds: Option<Vec<SocketAddr>>,
    /// Override `[cluster] redis_url`.
    #[arg(long, env = "EQUILIBRIUM_REDIS_URL")]
    redis_url: Option<String>,
    /// Override `metrics_listen` (TCP address of /metrics and /health); "" turns it off.
    #[arg(long, env = "EQUILIBRIUM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Development mode (`dev_mode = true`): accept the sample secrets shipped with
    /// Equilibrium (configs/node.toml's cluster key and client tokens), with a warning.
    /// Without it a node refuses to start with them.
    #[arg(long)]
    dev: bool,
}

/// An address flag where `""` means none.
fn optional_addr(flag: &str, value: &str, example: &str) -> anyhow::Result<Option<SocketAddr>> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .with_context(|| format!("{flag} {value:?}: expected an address like {example}, or \"\""))
}

pub(crate) fn node(args: NodeArgs) -> anyhow::Result<()> {
    let mut cfg = NodeConfig::load(&args.config)?;
    let format = match cfg.log.format {
        server::config::LogFormat::Human => telemetry::logs::LogFormat::Human,
        server::config::LogFormat::Json => telemetry::logs::LogFormat::Json,
    };
    telemetry::logs::init(format, &cfg.log.level)
        .with_context(|| format!("{}: [log]", args.config.display()))?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(p) = &args.premium_listen {
        cfg.premium_listen = optional_addr("--premium-listen", p, "127.0.0.1:7401")?;
    }
    if let Some(m) = &args.metrics_listen {
        cfg.metrics_listen = optional_addr("--metrics-listen", m, "127.0.0.1:9400")?;
    }
    // The flags may have broken what the file's validation checked (e.g. equal ports).
    let mut cfg = cfg.validate()?;
    let mut engine_cfg = cfg.load_engine()?;
    if let Some(id) = args.node_id {
        engine_cfg.node_id = id;
    }
    if args.dev {
        cfg.dev_mode = true;
    }
    let key = cfg.quote_keys()?;
    if let Some(c) = cfg.cluster.as_mut() {
        if let Some(l) = args.peer_listen {
            c.listen = l;
        }
        if let Some(s) = args.seeds {
            c.seeds = s;
        }
        if let Some(r) = args.redis_url {
            c.redis_url = r;
        }
    }
    let rt = runtime()?;
    let started = server::compose::start_engine(&cfg, engine_cfg, key)?;
    let run = rt.block_on(async {
        let (node, cluster) = server::compose::start_node(&cfg, started)?;
        if let Some(c) = &cluster {
            tracing::info!(peer = %c.peer_addr(), "cluster peer endpoint");
        }
        // Listen before the banner says the node is up: a SIGTERM sent as soon as the banner
        // is read must drain the node, not kill it with the default disposition.
        let signals = Signals::listen();
        banner(&node)?;
        match &cluster {
            Some(c) => tokio::select! {
                () = signals.wait() => {}
                () = c.drained() => tracing::info!("drained: shutting down"),
            },
            None => signals.wait().await,
        }
        node.shutdown().await;
        anyhow::Ok(())
    });
    // `shutdown` kept to `drain_timeout_ms`; tasks still running (a Redis call that never
    // answers) must not hold the process beyond it.
    rt.shutdown_timeout(Duration::from_millis(RUNTIME_SHUTDOWN_MS));
    run
}

/// After the node's graceful shutdown, the longest wait for the runtime's remaining tasks.
const RUNTIME_SHUTDOWN_MS: u64 = 100;

/// Prints the lines tests and scripts wait for: the address comes last on each. One write,
/// errors ignored: a reader that takes the first line and closes the pipe must not bring the
/// node down.
fn banner(node: &Node) -> anyhow::Result<()> {
    let metrics = match node.metrics_addr() {
        Some(a) => format!("metrics and health on http://{a}"),
        None => "metrics endpoint off".to_owned(),
    };
    let premium = match node.premium_addr() {
        Some(a) => format!("premium tier endpoint on {}\n", a?),
        None => String::new(),
    };
    let banner = format!(
        "equilibrium node listening on {}\n{premium}{metrics}\n",
        node.local_addr()?
    );
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), the signals that shut a node down gracefully.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening: from here on these signals are caught instead of ending the process.
    fn listen() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Waits for either signal (forever if neither could be listened for).
    async fn wait(mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
        }
    }
}

/// Options of `equilibrium quote`.
#[derive(Debug, Args)]
pub(crate) struct QuoteArgs {
    #[command(flatten)]
    target: Target,
    /// Pickup zone (H3 cell, hex). Or give --lat and --lng.
    #[arg(long, conflicts_with_all = ["lat", "lng"])]
    zone: Option<String>,
    /// Pickup latitude, degrees.
    #[arg(long, allow_negative_numbers = true, requires = "lng")]
    lat: Option<f64>,
    /// Pickup longitude, degrees.
    #[arg(long, allow_negative_numbers = true, requires = "lat")]
    lng: Option<f64>,
    /// Trip distance, metres.
    #[arg(long, default_value_t = 5_000)]
    distance_m: u32,
    /// Trip duration, seconds.
    #[arg(long, default_value_t = 900)]
    duration_s: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn quote(a: QuoteArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let c = a.target.connect().await?;
        let q = match (&a.zone, a.lat, a.lng) {
            (Some(z), _, _) => {
                let zone: engine::ZoneId = z.parse().with_context(|| format!("--zone {z}"))?;
                c.quote_zone(zone.raw(), a.distance_m, a.duration_s).await?
            }
            (None, Some(lat), Some(lng)) => {
                c.quote_point(lat, lng, a.distance_m, a.duration_s).await?
            }
            _ => bail!("give --zone, or --lat and --lng"),
        };
        c.close().await;
        if a.json {
            print_json(&serde_json::json!({
                "zone": format!("{:x}", q.zone),
                "amount_minor": q.amount_minor,
                "currency": String::from_utf8_lossy(&q.currency),
                "multiplier_milli": q.multiplier_milli,
                "snapshot_version": q.snapshot_version,
                "snapshot_age_ms": q.snapshot_age_ms,
                "expires_at_ms": q.expires_at_ms,
                "token": hex(&q.token),
            }));
            return Ok(());
        }
        println!("zone        {:x}", q.zone);
        println!(
            "amount      {} {} (minor units)",
            q.amount_minor,
            String::from_utf8_lossy(&q.currency)
        );
        println!("multiplier  {}", milli(q.multiplier_milli));
        println!(
            "snapshot    v{} ({} ms old)",
            q.snapshot_version, q.snapshot_age_ms
        );
        println!("expires     {} (ms since epoch)", q.expires_at_ms);
        println!("token       {}", hex(&q.token));
        Ok(())
    })
}

/// Options of `equilibrium send-events`.
#[derive(Debug, Args)]
pub(crate) struct SendEventsArgs {
    #[command(flatten)]
    target: Target,
    /// Events, one a line: `ID KIND ZONE [DRIVER]`, KIND one of driver_available, driver_busy,
    /// driver_offline, rider_demand, trip_requested, trip_accepted; ZONE an H3 cell in hex.
    /// Blank lines and lines starting with '#' are skipped. `-` reads standard input.
    file: PathBuf,
}

fn parse_event(line: &str) -> anyhow::Result<msg::WireEvent> {
    let mut f = line.split_whitespace();
    let (Some(id), Some(kind), Some(zone)) = (f.next(), f.next(), f.next()) else {
        bail!("expected `ID KIND ZONE [DRIVER]`");
    };
    let id: u64 = id.parse().with_context(|| format!("event id {id:?}"))?;
    let kind = match kind {
        "driver_available" => event_kind::DRIVER_AVAILABLE,
        "driver_busy" => event_kind::DRIVER_BUSY,
        "driver_offline" => event_kind::DRIVER_OFFLINE,
        "rider_demand" => event_kind::RIDER_DEMAND,
        "trip_requested" => event_kind::TRIP_REQUESTED,
        "trip_accepted" => event_kind::TRIP_ACCEPTED,
        other => bail!("unknown event kind {other:?}"),
    };
    let zone = u64::from_str_radix(zone.trim_start_matches("0x"), 16)
        .with_context(|| format!("zone {zone:?}"))?;
    let driver = match f.next() {
        Some(d) => d.parse().with_context(|| format!("driver {d:?}"))?,
        None => 0,
    };
    Ok(msg::WireEvent {
        id,
        zone,
        driver,
        kind,
    })
}

pub(crate) fn send_events(a: SendEventsArgs) -> anyhow::Result<()> {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?
    };
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        events.push(parse_event(line).with_context(|| format!("{}:{}", a.file.display(), n + 1))?);
    }
    runtime()?.block_on(async {
        let mut cfg = a.target.client_config(CLIENT_TOKEN_DEFAULT)?;
        cfg.lanes = 4;
        // The cluster client resends events a cluster could not serve this moment (ownership
        // moving: `not_serving`) or an overloaded shard refused, with the same ids (so never
        // applied twice) and backoff, for up to 10 s.
        let c = ClusterClient::connect(&[a.target.addr], cfg)
            .await
            .with_context(|| format!("connecting to {}", a.target.addr))?;
        let mut counts = [0u64; outcome::NAMES.len()];
        let mut failed = 0u64;
        for batch in events.chunks(EVENTS_PER_BATCH) {
            match c.send_events(batch.to_vec()).await {
                Ok(out) => {
                    for o in out {
                        counts[outcome::slot(o)] += 1;
                    }
                }
                Err(e) => {
                    failed += batch.len() as u64;
                    eprintln!("error: {e}");
                }
            }
        }
        for (name, n) in outcome::NAMES.iter().zip(counts) {
            if n > 0 {
                println!("{name:<13} {n}");
            }
        }
        c.close().await;
        if failed > 0 {
            bail!("{failed} events got no acknowledgement");
        }
        let not_applied: u64 = counts[usize::from(outcome::INVALID_ZONE)..].iter().sum();
        if not_applied > 0 {
            bail!("{not_applied} events were rejected (see the counts above)");
        }
        Ok(())
    })
}

/// Events per request of `send-events` (well under the default `batch_len_max`).
const EVENTS_PER_BATCH: usize = 1_000;

/// Options of `equilibrium verify` and `equilibrium explain`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    target: Target,
    /// The quote token, hex, as printed by `equilibrium quote`.
    #[arg(value_name = "QUOTE_TOKEN")]
    quote_token: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_token(hex: &str) -> anyhow::Result<[u8; TOKEN_LEN]> {
    let hex = hex.trim();
    if hex.len() != TOKEN_LEN * 2 {
        bail!(
            "a quote token is {} hex digits; got {}",
            TOKEN_LEN * 2,
            hex.len()
        );
    }
    let mut t = [0u8; TOKEN_LEN];
    for (i, b) in t.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("token is not hex")?;
    }
    Ok(t)
}

pub(crate) fn verify(a: TokenArgs) -> anyhow::Result<()> {
    let token = parse_token(&a.quote_token)?;
    runtime()?.block_on(async {
        let c = a.target.connect().await?;
        let t = c.verify(token).await?;
        c.close().await;
        if a.json {
            print_json(&token_json(&t));
            return Ok(());
        }
        println!(
            "valid: quote {:#x}, zone {:x}, {} {} at {}.{:03}x, expires {}",
            t.quote_id,
            t.zone,
            t.amount_minor,
            String::from_utf8_lossy(&t.currency),
            t.multiplier_milli / 1000,
            t.multiplier_milli % 1000,
            t.expires_at_ms
        );
        Ok(())
    })
}

pub(crate) fn explain(a: TokenArgs) -> anyhow::Result<()> {
    let token = parse_token(&a.quote_token)?;
    runtime()?.block_on(async {
        let c = a.target.connect().await?;
        let e = c.explain(token).await?;
        c.close().await;
        if a.json {
            let mut j = token_json(&e.token);
            j["fare"] = if e.fare_known != 0 {
                fare_json(&e.fare)
            } else {
                serde_json::Value::Null
            };
            j["policy_known"] = serde_json::Value::Bool(e.policy_known != 0);
            j["ratio"] = serde_json::json!(e.ratio);
            j["recomputed_minor"] = serde_json::json!(e.recomputed_minor);
            j["matches"] = serde_json::json!(e.recomputed_minor == e.token.amount_minor);
            j["text"] = serde_json::json!(String::from_utf8_lossy(&e.text));
            print_json(&j);
            return Ok(());
        }
        print!("{}", String::from_utf8_lossy(&e.text));
        Ok(())
    })
}
