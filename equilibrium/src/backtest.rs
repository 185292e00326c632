//! `equilibrium backtest`: a day of demand through the engine's policy in virtual time,
//! in-process (the `sim` crate's `backtest` module does the work), and the pricing-realism
//! report; `--compare` runs a second policy on the same inputs beside it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use engine::EngineConfig;
use sim::backtest::{self, Options, Run};
use sim::realism::{self, Objectives};

/// Where the demand comes from, and how to run and report.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  equilibrium backtest --city configs/city-day.toml
  equilibrium backtest --city configs/city-day.toml --compare candidate.toml --out bt/
  equilibrium backtest --profile sim/data/profile.csv --centroids sim/data/centroids.csv --fleet 60
  equilibrium backtest --trace city.eqt --hours 2 --json

The report (JSON schema in sim/REPORT.md, \"backtest\") is bit-identical for the same inputs,
seed and policy. A closed-loop run (--city, --profile) lets riders decline high prices and
drivers move towards them, so with --compare the two markets diverge too (same arrivals,
different reactions). Exit status 2 with --strict when a realism objective fails.")]
pub(crate) struct BacktestArgs {
    /// A synthetic city file (its [market], [[spikes]] and [realism] sections apply).
    #[arg(long, conflicts_with_all = ["trace", "profile"], required_unless_present_any = ["trace", "profile"])]
    city: Option<PathBuf>,
    /// A trace (.eqt), replayed open loop: its riders do not react to prices. Trace time is
    /// engine time.
    #[arg(long, conflicts_with = "profile")]
    trace: Option<PathBuf>,
    /// A demand profile CSV (`slot,origin,destination,trips`), with --centroids; run closed
    /// loop with a fleet (--fleet, --shift-curve).
    #[arg(long, requires = "centroids")]
    profile: Option<PathBuf>,
    /// The profile's centroid CSV (`zone,lat,lng[,radius_km]`).
    #[arg(long)]
    centroids: Option<PathBuf>,
    /// The profile's fleet size (default: sized for 2 sessions per online driver-hour in the
    /// busiest hour).
    #[arg(long)]
    fleet: Option<u32>,
    /// The profile's share of the fleet online per hour: 24 comma-separated values in
    /// [0, 1] (default: the market's curve, sim/MARKET.md).
    #[arg(long, value_delimiter = ',')]
    shift_curve: Option<Vec<f64>>,
    /// The engine config whose [policy], [zone] and [actors] tick are backtested (default:
    /// the built-in defaults).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A second engine config to run on the same inputs and compare with.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Virtual hours to run (default: 24; a profile: from its first slot to its last).
    #[arg(long)]
    hours: Option<f64>,
    /// City hour at the start (--city, --trace; a profile starts at its first slot).
    #[arg(long, default_value_t = 0.0)]
    start_hour: f64,
    /// Seed (default: the city file's; 1 for a profile).
    #[arg(long)]
    seed: Option<u64>,
    /// Sampling period of the realism report, s.
    #[arg(long, default_value_t = 5.0)]
    sample_s: f64,
    /// Write backtest.json and backtest.svg (and compare.svg) into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Judge without bounds (no pass/fail), instead of the city's [realism] or issue 11's.
    #[arg(long)]
    no_objectives: bool,
    /// Exit with status 2 when a realism objective fails.
    #[arg(long)]
    strict: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn engine_config(path: Option<&Path>) -> anyhow::Result<EngineConfig> {
    match path {
        Some(p) => crate::load_config(p),
        None => Ok(EngineConfig::default()),
    }
}

/// What the runs are fed.
enum Input {
    City(Box<sim::city::City>, u64),
    Trace(PathBuf),
    Profile {
        rows: Vec<sim::profile::ProfileRow>,
        centroids: std::collections::HashMap<String, sim::profile::Centroid>,
        fleet: sim::profile::Fleet,
        seed: u64,
    },
}

impl Input {
    fn describe(&self) -> String {
        match self {
            Input::City(c, seed) => format!(
                "city {} ({} zones), seed {seed}",
                c.config().name,
                c.zones().len()
            ),
            Input::Trace(p) => format!("trace {}", p.display()),
            Input::Profile { rows, seed, .. } => {
                format!("profile ({} rows), seed {seed}", rows.len())
            }
        }
    }

    fn run(
        &self,
        cfg: &EngineConfig,
        opts: &Options,
        hours_given: bool,
        start_hour: f64,
        label: &str,
        quiet: bool,
    ) -> anyhow::Result<Run> {
        let mut progress = |done: f64, total: f64| {
            if !quiet {
                eprintln!("{label}: {done:.0} of {total:.0} virtual hours");
            }
        };
        match self {
            Input::City(city, seed) => {
                backtest::run_city(cfg, city, *seed, start_hour, opts, &mut progress)
            }
            Input::Trace(path) => {
                let open = || -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<sim::trace::Record>>>> {
                    Ok(Box::new(sim::trace::open_file(path)?))
                };
                backtest::run_trace(cfg, &open, start_hour, opts, &mut progress)
            }
            Input::Profile {
                rows,
                centroids,
                fleet,
                seed,
            } => {
                let demand = sim::profile::ProfileDemand::new(
                    rows,
                    centroids,
                    &sim::profile::ExpandOptions {
                        seed: *seed,
                        resolution: cfg.resolution,
                        ..Default::default()
                    },
                )?;
                let mut opts = opts.clone();
                if !hours_given {
                    opts.hours = (demand.span_ms() as f64 / 3_600_000.0).max(0.25);
                }
                backtest::run_profile(cfg, demand, fleet, *seed, &opts, &mut progress)
            }
        }
    }
}

fn timing(label: &str, r: &Run) {
    eprintln!(
        "{label}: {:.1} virtual hours in {:.2} s of CPU ({:.2} s wall, {:.0}x real time): {} events ({:.0} events/s of CPU, {} refused), {} quotes, {} ticks",
        r.virtual_s / 3600.0,
        r.cpu_s,
        r.wall_s,
        r.virtual_s / r.cpu_s.max(1e-9),
        r.events,
        r.events_per_cpu_s(),
        r.events_refused,
        r.quotes,
        r.ticks
    );
}

pub(crate) fn run(a: BacktestArgs) -> anyhow::Result<()> {
    if !(a.sample_s > 0.0 && a.sample_s <= 3600.0) {
        bail!("--sample-s must be within (0, 3600]");
    }
    if !(0.0..24.0).contains(&a.start_hour) {
        bail!("--start-hour must be within [0, 24)");
    }
    let mut objectives = Objectives::default();
    let input = load_input(&a, &mut objectives)?;
    if a.no_objectives {
        objectives = Objectives::none();
    }
    let opts = Options {
        hours: a.hours.unwrap_or(24.0),
        sample_interval_ms: (a.sample_s * 1000.0).round() as u64,
        objectives,
    };
    let cfg = engine_config(a.policy.as_deref())?;
    let policy_name = a
        .policy
        .as_ref()
        .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
    if !a.quiet {
        eprintln!("backtest: {} under {policy_name}", input.describe());
    }
    let main = input.run(
        &cfg,
        &opts,
        a.hours.is_some(),
        a.start_hour,
        "policy",
        a.quiet,
    )?;
    timing("policy", &main);
    let compared = match &a.compare {
        Some(p) => {
            let cfg_b = engine_config(Some(p))?;
            let r = input.run(
                &cfg_b,
                &opts,
                a.hours.is_some(),
                a.start_hour,
                "compare",
                a.quiet,
            )?;
            timing("compare", &r);
            Some((p.display().to_string(), r))
        }
        None => None,
    };
    let diff = compared
        .as_ref()
        .map(|(_, b)| realism::compare(&main.report, &b.report));
    let json = serde_json::json!({
        "input": input.describe(),
        "hours": main.virtual_s / 3600.0,
        "start_hour": a.start_hour,
        "policy": policy_name,
        "report": main.report,
        "compare": compared.as_ref().map(|(name, r)| serde_json::json!({
            "policy": name,
            "report": r.report,
            "diff": diff,
        })),
    });
    let text = serde_json::to_string_pretty(&json)?;
    if a.json {
        println!("{text}");
    } else {
        println!("== {policy_name} ==");
        print!("{}", main.report.summary());
        if let (Some((name, r)), Some(d)) = (&compared, &diff) {
            println!("\n== {name} ==");
            print!("{}", r.report.summary());
            print_differences(&policy_name, name, d);
        }
    }
    if let Some(dir) = &a.out {
        write_files(
            dir,
            &text,
            &input.describe(),
            &policy_name,
            &main,
            compared.as_ref(),
        )?;
    }
    let pass = main.report.pass && compared.as_ref().is_none_or(|(_, r)| r.report.pass);
    if a.strict && !pass {
        std::process::exit(2);
    }
    Ok(())
}

/// The backtest's input as the flags name it; a city's own objectives replace the defaults.
fn load_input(a: &BacktestArgs, objectives: &mut Objectives) -> anyhow::Result<Input> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(if let Some(path) = &a.city {
        let cfg = sim::city::CityConfig::load(path)?;
        let seed = a.seed.unwrap_or(cfg.seed);
        if let Some(o) = &cfg.realism {
            *objectives = o.clone();
        }
        Input::City(Box::new(sim::city::City::new(cfg)?), seed)
    } else if let Some(path) = &a.trace {
        Input::Trace(path.clone())
    } else if let (Some(p), Some(c)) = (&a.profile, &a.centroids) {
        let rows = sim::profile::parse_profile(&read(p)?)
            .with_context(|| format!("in {}", p.display()))?;
        let centroids = sim::profile::parse_centroid_areas(&read(c)?)
            .with_context(|| format!("in {}", c.display()))?;
        Input::Profile {
            rows,
            centroids,
            fleet: sim::profile::Fleet {
                size: a.fleet,
                shift_curve: a.shift_curve.clone(),
            },
            seed: a.seed.unwrap_or(1),
        }
    } else {
        bail!("give --city, --trace, or --profile with --centroids");
    })
}

/// The differences between two policies' backtests, as text.
fn print_differences(policy_name: &str, name: &str, d: &realism::Comparison) {
    println!("\n== differences ({policy_name} vs {name}; closed loop, the markets diverge too) ==");
    println!(
        "surging share {:.1}% vs {:.1}%; {} zone-hours change band",
        100.0 * d.surging_share[0],
        100.0 * d.surging_share[1],
        d.band_changed_zone_hours
    );
    println!("mean |difference| by hour:");
    for (h, v) in d.mean_abs_diff_by_hour.iter().enumerate() {
        print!("{h:02}:{v:.3} ");
        if h % 8 == 7 {
            println!();
        }
    }
    println!("largest zone-hour differences:");
    for x in d.largest.iter().take(10) {
        println!(
            "  zone {} hour {:02}: {:.2}x vs {:.2}x",
            x.zone, x.hour, x.a, x.b
        );
    }
    for c in d.band_changes.iter().take(10) {
        println!(
            "  zone {} changes band in {} hours (first at {:02}: {} vs {})",
            c.zone, c.hours, c.first_hour, c.band_a, c.band_b
        );
    }
}

/// Writes `backtest.json`, `backtest.svg` and, with a comparison, `compare.svg` into `dir`.
fn write_files(
    dir: &std::path::Path,
    text: &str,
    input: &str,
    policy_name: &str,
    main: &Run,
    compared: Option<&(String, Run)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join("backtest.json");
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    let s = dir.join("backtest.svg");
    std::fs::write(
        &s,
        main.report
            .to_svg(&format!("{} under {policy_name}", input)),
    )
    .with_context(|| format!("writing {}", s.display()))?;
    if let Some((name, r)) = compared {
        let c = dir.join("compare.svg");
        std::fs::write(&c, r.report.to_svg(&format!("{} under {name}", input)))
            .with_context(|| format!("writing {}", c.display()))?;
    }
    eprintln!("report: {} (chart {})", p.display(), s.display());
    Ok(())
}
