//! `equilibrium sim ...`: the traffic simulator's commands (the `sim` crate does the work).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use sim::trace::{self, Op, Tier};

/// The simulator's commands.
#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Generate a trace from a synthetic city (seeded: same city and seed, same bytes).
    Generate {
        /// City configuration (area, hotspots, rush hours, drivers, riders, trips).
        #[arg(long, default_value = "configs/city.toml")]
        city: PathBuf,
        /// Seed (default: the city file's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Trace length in seconds (default: the city's `clock.duration_s`).
        #[arg(long)]
        duration: Option<f64>,
        /// Where to write the trace (.eqt, see sim/TRACE.md).
        #[arg(long)]
        out: PathBuf,
        /// Write the market model's trace (sim/MARKET.md: drivers on shifts from the
        /// city's [market] fleet curve, one rider session per rider, bookings matched with
        /// drivers) instead of the load generator's, open loop: every zone is assumed at
        /// 1.0x, so no rider declines on price. City time runs from clock.start_hour for
        /// clock.duration_s × clock.speed city seconds and is written at 1/clock.speed.
        #[arg(long)]
        market: bool,
    },
    /// Expand an aggregated demand profile (trips per 15-minute slot per origin/destination
    /// zone pair, CSV) into a trace with a fleet: Poisson arrivals within each slot, one
    /// rider session each, and the market model's drivers (shifts, heartbeats, matching,
    /// trips to the destination), open loop: every zone is assumed at 1.0x (sim/TRACE.md).
    ImportProfile(ImportProfileArgs),
    /// Print a trace's header and what it holds.
    Info {
        /// The trace.
        trace: PathBuf,
    },
    /// Replay a trace against nodes at 1x, Nx or as fast as possible.
    Replay {
        /// The trace.
        trace: PathBuf,
        #[command(flatten)]
        target: SimTarget,
        /// `1` (real time), any factor such as `10`, or `max` (as fast as the nodes answer,
        /// 1,024 requests in flight).
        #[arg(long, default_value = "1")]
        speed: String,
        #[command(flatten)]
        out: Outputs,
    },
    /// Run a load scenario (open loop) and report against its objectives. A scenario with a
    /// [capacity] section runs the capacity search.
    Run {
        /// Scenario file (configs/scenarios/*.toml).
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        target: SimTarget,
        /// Override the scenario's duration (seconds at full load; a capacity step's length).
        #[arg(long)]
        duration: Option<f64>,
        /// Override the scenario's ramp-up (seconds).
        #[arg(long)]
        ramp_up: Option<f64>,
        /// Override the number of users.
        #[arg(long)]
        users: Option<u32>,
        /// Exit with status 2 when an objective fails.
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        out: Outputs,
    },
}

/// The nodes and credentials.
#[derive(Debug, Args)]
pub(crate) struct SimTarget {
    /// Node addresses, comma-separated; traffic is spread over them by zone.
    #[arg(long, value_delimiter = ',', required = true)]
    node: Vec<SocketAddr>,
    /// The nodes' premium endpoints (their `premium_listen`), comma-separated, in the order
    /// of --node. Without it the premium tier connects to --node like the shared tier.
    #[arg(long, value_delimiter = ',')]
    premium_node: Vec<SocketAddr>,
    /// Premium-tier client token.
    #[arg(
        long,
        env = "EQUILIBRIUM_PREMIUM_TOKEN",
        default_value = "premium-demo-token"
    )]
    premium_token: String,
    /// Shared-tier client token.
    #[arg(
        long,
        env = "EQUILIBRIUM_SHARED_TOKEN",
        default_value = "shared-demo-token"
    )]
    shared_token: String,
    #[command(flatten)]
    tls: crate::target::TlsArgs,
    /// No progress bar on stderr.
    #[arg(long)]
    quiet: bool,
    /// Nice value of the premium tier's client thread and of the dispatcher. The premium
    /// clients stand for devices of their own; on a machine shared with the shared tier's
    /// load (and perhaps the nodes) a raised priority keeps the simulator's own CPU
    /// contention out of the premium figures. Below 0 needs root (CAP_SYS_NICE); when
    /// refused, the run goes on at normal priority and the report says so. 0: normal
    /// priority.
    #[arg(long, default_value_t = sim::run::PREMIUM_NICE, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    premium_nice: i32,
    /// Time slice of those threads, µs: a short one lets them preempt others as soon as they
    /// wake (Linux 6.12+, no privilege needed). 0: the kernel's default.
    #[arg(long, default_value_t = sim::run::PREMIUM_SLICE_US,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    premium_slice_us: u32,
    /// Send events as plain EVENT_BATCH with the trace's ids (the node's bounded dedupe
    /// window) instead of as idempotent producers (PRODUCER_BATCH, one producer per event
    /// connection numbering its events per zone), e.g. to measure the older path.
    #[arg(long)]
    plain_events: bool,
}

/// Report files.
#[derive(Debug, Args)]
pub(crate) struct Outputs {
    /// Write the report as JSON (schema: sim/REPORT.md).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency and throughput chart (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

impl SimTarget {
    /// Progress and the premium tier's priority, as the flags say.
    fn options(&self) -> sim::RunOptions {
        sim::RunOptions {
            progress: !self.quiet,
            premium_nice: self.premium_nice,
            premium_slice_us: self.premium_slice_us,
            plain_events: self.plain_events,
            ..Default::default()
        }
    }

    fn target(&self) -> anyhow::Result<sim::Target> {
        let trust = self.tls.trust()?;
        Ok(sim::Target {
            nodes: self.node.clone(),
            premium_nodes: self.premium_node.clone(),
            trust,
            server_name: self.tls.server_name.clone(),
            premium_token: self.premium_token.clone(),
            shared_token: self.shared_token.clone(),
        })
    }
}

/// A replay faster than real time compresses the trace's hours into the nodes' wall-clock
/// windows (demand, driver expiry, smoothing): the latency figures hold, the prices do not.
fn warn_wall_clock_windows(speed: &sim::Speed) {
    let label = match speed {
        sim::Speed::Times(f) => format!("{f}x"),
        sim::Speed::Max { .. } => "max".to_owned(),
    };
    eprintln!(
        "WARNING: replaying at speed {label}. The nodes' demand windows, driver expiry and price \
smoothing run on wall-clock time, so this replay packs more of the trace's demand into each \
window than the traced city had: the prices (and surge) you see are NOT those of the traced \
city, only the latency and throughput figures are. For prices, replay at --speed 1 or run \
`equilibrium backtest --trace FILE` (virtual time, in-process)."
    );
}

fn write_outputs(report: &sim::Report, out: &Outputs) -> anyhow::Result<()> {
    report.print_table();
    if let Some(p) = &out.json {
        std::fs::write(p, report.to_json()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("report: {}", p.display());
    }
    if let Some(p) = &out.svg {
        std::fs::write(p, report.to_svg()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("chart: {}", p.display());
    }
    Ok(())
}

/// `sim import-profile`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportProfileArgs {
    /// Profile CSV: `slot,origin,destination,trips` (slot as HH:MM).
    #[arg(long)]
    profile: PathBuf,
    /// Centroid CSV: `zone,lat,lng`.
    #[arg(long)]
    centroids: PathBuf,
    /// Where to write the trace.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Trace seconds per 15-minute slot (900 keeps real time; 60 replays a day in 96 min).
    #[arg(long, default_value_t = 900.0)]
    slot_seconds: f64,
    /// Share of riders on the premium tier.
    #[arg(long, default_value_t = 0.3)]
    premium_share: f64,
    /// H3 resolution of zones (the node's).
    #[arg(long, default_value_t = engine::zone::RESOLUTION_DEFAULT)]
    resolution: u8,
    /// Drivers in the fleet (default: sized for 2 rider sessions per online driver-hour
    /// in the profile's busiest hour).
    #[arg(long)]
    fleet: Option<u32>,
    /// Share of the fleet online per hour of day: 24 comma-separated values in [0, 1]
    /// (default: the market's curve, sim/MARKET.md).
    #[arg(long, value_delimiter = ',')]
    shift_curve: Option<Vec<f64>>,
}

pub(crate) fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Generate {
            city,
            seed,
            duration,
            out,
            market: true,
        } => generate_market(city, seed, duration, out),
        SimCommand::Generate {
            city,
            seed,
            duration,
            out,
            market: false,
        } => generate_trace(city, seed, duration, out),
        SimCommand::ImportProfile(args) => import_profile(args),
        SimCommand::Info { trace: path } => info(path),
        SimCommand::Replay {
            trace: path,
            target,
            speed,
            out,
        } => replay(path, target, speed, out),
        SimCommand::Run {
            scenario,
            target,
            duration,
            ramp_up,
            users,
            strict,
            out,
        } => run_scenario(scenario, target, duration, ramp_up, users, strict, out),
    }
}

/// The city file at `path` and the seed to use (the flag's, else the city's own).
fn load_city(path: &Path, seed: Option<u64>) -> anyhow::Result<(sim::city::City, u64)> {
    let cfg = sim::city::CityConfig::load(path)?;
    let seed = seed.unwrap_or(cfg.seed);
    Ok((sim::city::City::new(cfg)?, seed))
}

fn generate_market(
    city: PathBuf,
    seed: Option<u64>,
    duration: Option<f64>,
    out: PathBuf,
) -> anyhow::Result<()> {
    let (c, seed) = load_city(&city, seed)?;
    let clock = c.config().clock.clone();
    let trace_s = duration.unwrap_or(clock.duration_s);
    let hours = trace_s * clock.speed / 3600.0;
    let demand = sim::city::CityDemand::new(&c, seed, clock.start_hour, hours);
    let mut m = sim::market::Market::new(
        c.config().market.clone(),
        demand,
        c.config().drivers.count,
        seed,
        1,
    )?;
    let end_ms = (hours * 3_600_000.0).round() as u64;
    let mut buf = Vec::new();
    let mut records = Vec::new();
    let mut t = 0;
    while t < end_ms {
        t = (t + 1_000).min(end_ms);
        m.advance(t, &sim::market::FlatPrices, &mut buf);
        for o in buf.drain(..) {
            records.push(o.to_record((o.at_ms as f64 * 1000.0 / clock.speed).round() as u64));
        }
    }
    let meta = format!(
        "market of city {} ({}), seed {seed}, {} zones, {} drivers, from {:.2} h for {hours:.2} city h at speed {}, open loop (prices assumed 1.0x)",
        c.config().name,
        city.display(),
        c.zones().len(),
        c.config().drivers.count,
        clock.start_hour,
        clock.speed
    );
    let n = trace::write_file(&out, c.config().resolution, &meta, records)?;
    println!("{}: {n} records ({meta})", out.display());
    Ok(())
}

fn generate_trace(
    city: PathBuf,
    seed: Option<u64>,
    duration: Option<f64>,
    out: PathBuf,
) -> anyhow::Result<()> {
    let (c, seed) = load_city(&city, seed)?;
    let meta = format!(
        "city {} ({}), seed {seed}, {} zones",
        c.config().name,
        city.display(),
        c.zones().len()
    );
    let n = trace::write_file(
        &out,
        c.config().resolution,
        &meta,
        sim::city::CityTrace::new(&c, seed, duration),
    )?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("{}: {n} records, {bytes} bytes ({meta})", out.display());
    Ok(())
}

fn import_profile(a: ImportProfileArgs) -> anyhow::Result<()> {
    let ImportProfileArgs {
        profile,
        centroids,
        out,
        seed,
        slot_seconds,
        premium_share,
        resolution,
        fleet,
        shift_curve,
    } = a;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let rows = sim::profile::parse_profile(&read(&profile)?)
        .with_context(|| format!("in {}", profile.display()))?;
    let cents = sim::profile::parse_centroid_areas(&read(&centroids)?)
        .with_context(|| format!("in {}", centroids.display()))?;
    let opts = sim::profile::ExpandOptions {
        seed,
        slot_seconds,
        resolution,
        premium_share,
        ..Default::default()
    };
    let fleet = sim::profile::Fleet {
        size: fleet,
        shift_curve,
    };
    let (records, drivers) = sim::profile::expand_with_fleet(&rows, &cents, &opts, &fleet, 1)?;
    let meta = format!(
        "profile {} with centroids {}, seed {seed}, {slot_seconds} s per slot, fleet of {drivers} drivers, open loop (prices assumed 1.0x)",
        profile.display(),
        centroids.display()
    );
    let n = trace::write_file(&out, resolution, &meta, records)?;
    println!("{}: {n} records ({meta})", out.display());
    Ok(())
}

fn info(path: PathBuf) -> anyhow::Result<()> {
    let r = trace::open_file(&path)?;
    println!("format      v{}", r.header().version);
    println!("resolution  {}", r.header().resolution);
    println!("meta        {}", r.header().meta);
    let (mut quotes, mut events, mut premium, mut last, mut zones) =
        (0u64, 0u64, 0u64, 0u64, std::collections::HashSet::new());
    for rec in r {
        let rec = rec?;
        match rec.op {
            Op::Quote { .. } => quotes += 1,
            Op::Event(_) => events += 1,
        }
        if rec.tier == Tier::Premium {
            premium += 1;
        }
        zones.insert(rec.op.zone());
        last = rec.at_us;
    }
    println!("length      {:.3} s", last as f64 / 1e6);
    println!("quotes      {quotes}");
    println!("events      {events}");
    println!("premium     {premium} of {}", quotes + events);
    println!("zones       {}", zones.len());
    println!("checksum    ok");
    Ok(())
}

fn replay(path: PathBuf, target: SimTarget, speed: String, out: Outputs) -> anyhow::Result<()> {
    let speed = sim::Speed::parse(&speed)?;
    if !matches!(speed, sim::Speed::Times(f) if f <= 1.0) {
        warn_wall_clock_windows(&speed);
    }
    let t = target.target()?;
    let opts = target.options();
    let report = crate::runtime::runtime()?.block_on(sim::replay_file(
        &path,
        &t,
        &sim::Connections::default(),
        speed,
        &opts,
    ))?;
    write_outputs(&report, &out)
}

fn run_scenario(
    scenario: PathBuf,
    target: SimTarget,
    duration: Option<f64>,
    ramp_up: Option<f64>,
    users: Option<u32>,
    strict: bool,
    out: Outputs,
) -> anyhow::Result<()> {
    let mut s = sim::Scenario::load(&scenario)?;
    if let Some(d) = duration {
        if d <= 0.0 {
            bail!("--duration must be above 0");
        }
        s.config.duration_s = d;
        if let Some(c) = s.config.capacity.as_mut() {
            c.step_s = d;
        }
    }
    if let Some(r) = ramp_up {
        s.config.ramp_up_s = r.max(0.0);
    }
    if let Some(u) = users {
        if u == 0 {
            bail!("--users must be at least 1");
        }
        s.config.users = u;
    }
    let t = target.target()?;
    let opts = target.options();
    let rt = crate::runtime::runtime()?;
    let report = if s.config.capacity.is_some() {
        rt.block_on(sim::run_capacity(&s, &t, &opts))?
    } else {
        rt.block_on(sim::run_scenario(&s, &t, &opts))?
    };
    write_outputs(&report, &out)?;
    if strict && !report.pass {
        std::process::exit(2);
    }
    Ok(())
}
