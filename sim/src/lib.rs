//! Equilibrium's traffic simulator: a seeded synthetic city, a streamable trace format with
//! record and replay, the import of aggregated demand profiles, open-loop load scenarios
//! against one or more nodes, and an SLA report (table, JSON, SVG chart).
//!
//! It is a client of the nodes (through the `client` crate), never part of them.
//!
//! # Layout
//! - [`city`]: the city model ([`city::City`]) and its trace generator ([`city::CityTrace`]).
//! - [`trace`]: the `.eqt` format ([`trace::TraceWriter`], [`trace::TraceReader`]),
//!   specified in `sim/TRACE.md`.
//! - [`profile`]: demand profiles (CSV) expanded into traces.
//! - [`scenario`]: load scenarios and their objectives ([`scenario::Scenario`]).
//! - [`run`] (connections, the open-loop dispatcher), `recorder` (what a run counts and
//!   times, merged from every sender) and [`report`] (the [`Report`], its JSON schema in
//!   `sim/REPORT.md`).
//! - [`market`]: the market model (drivers on shifts, riders who decline high prices,
//!   matching), sans-IO; `sim/MARKET.md` says why its numbers are plausible.
//! - [`backtest`]: a day through the engine's pure shard in virtual time, closed loop with
//!   the market; [`realism`]: the pricing-realism report it writes.
//!
//! ```no_run
//! # async fn demo(nodes: Vec<std::net::SocketAddr>) -> anyhow::Result<()> {
//! let scenario = sim::Scenario::load("configs/scenarios/normal.toml".as_ref())?;
//! let target = sim::Target {
//!     nodes,
//!     premium_nodes: Vec::new(),
//!     trust: client::Trust::InsecureAnyCertificate,
//!     server_name: "localhost".into(),
//!     premium_token: "premium-demo-token".into(),
//!     shared_token: "shared-demo-token".into(),
//! };
//! let report = sim::run_scenario(&scenario, &target, &sim::RunOptions::default()).await?;
//! report.print_table();
//! std::fs::write("report.svg", report.to_svg())?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod backtest;
pub mod city;
mod geo;
pub mod market;
pub mod profile;
pub mod realism;
mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod trace;

use std::time::Duration;

pub use crate::report::Report;
pub use crate::run::{Connections, RunOptions, Speed, Target};
pub use crate::scenario::Scenario;

/// Runs a scenario: warm-up (one event per city zone, `traffic.warmup_ms`, then until every
/// node quotes every city zone), then the open-loop traffic of `ramp_up_s + duration_s`;
/// judges the objectives.
pub async fn run_scenario(
    scenario: &Scenario,
    target: &Target,
    opts: &RunOptions,
) -> anyhow::Result<Report> {
    let c = &scenario.config;
    // The generator runs on the dispatcher thread, streaming: it owns a copy.
    let records = scenario::ScenarioLoad::new(scenario.try_clone()?, run::fresh_id_base()).map(Ok);
    let mut opts = opts.clone();
    if opts.name.is_empty() {
        opts.name = c.name.clone();
    }
    opts.expected_s.get_or_insert(c.ramp_up_s + c.duration_s);
    let mut report = run::run_records(
        Box::new(records),
        target,
        &Connections::from(&c.traffic),
        Speed::Times(1.0),
        &opts,
        Some((
            scenario.city.zones(),
            Duration::from_millis(c.traffic.warmup_ms),
        )),
    )
    .await?;
    report.judge(&c.objectives);
    Ok(report)
}

/// Runs a capacity search: steps of `capacity.step_s` at `start_users`, then
/// `step_factor` times more each step, until an objective breaks (confirmed by
/// `confirm_runs` more runs of the step) or `steps_max`. The
/// report is that of the last step that held (or the first step when none did), with the
/// steps attached.
pub async fn run_capacity(
    scenario: &Scenario,
    target: &Target,
    opts: &RunOptions,
) -> anyhow::Result<Report> {
    let Some(search) = scenario.config.capacity.clone() else {
        anyhow::bail!(
            "scenario {} has no [capacity] section",
            scenario.config.name
        );
    };
    let mut steps = Vec::new();
    let mut best: Option<Report> = None;
    let mut first: Option<Report> = None;
    let mut users = f64::from(search.start_users);
    for i in 0..search.steps_max {
        let mut config = scenario.config.clone();
        config.users = users.round().clamp(1.0, f64::from(scenario::USERS_MAX)) as u32;
        config.ramp_up_s = 0.0;
        config.duration_s = search.step_s;
        config.seed = scenario.config.seed.wrapping_add(u64::from(i));
        let mut step = scenario.try_clone()?;
        step.config = config;
        let mut o = opts.clone();
        o.name = format!(
            "{} step {} ({} users)",
            scenario.config.name,
            i + 1,
            step.config.users
        );
        if opts.progress {
            eprintln!("{}: offering {:.0} req/s", o.name, step.offered_per_s());
        }
        let mut r = run_scenario(&step, target, &o).await?;
        for retry in 0..search.confirm_runs {
            if r.pass {
                break;
            }
            if opts.progress {
                eprintln!(
                    "{}: broke an objective; confirming (run {})",
                    o.name,
                    retry + 2
                );
            }
            r = run_scenario(&step, target, &o).await?;
        }
        let q = |tier: &str| r.kind("quote", tier).map_or(0, |k| k.latency_us.p99);
        steps.push(report::CapacityStep {
            users: step.config.users,
            offered_per_s: r.offered_per_s,
            throughput_per_s: r.totals.throughput_per_s,
            premium_p99_us: q("premium"),
            shared_p99_us: q("shared"),
            error_rate: r.totals.error_rate,
            pass: r.pass,
        });
        let pass = r.pass;
        if pass {
            best = Some(r);
        } else if first.is_none() && best.is_none() {
            first = Some(r);
        }
        if !pass {
            break;
        }
        users *= search.step_factor;
    }
    let held = steps.iter().rev().find(|s| s.pass).cloned();
    let mut report = best
        .or(first)
        .ok_or_else(|| anyhow::anyhow!("capacity search ran no step"))?;
    report.name = format!("{} (capacity)", scenario.config.name);
    report.pass = held.is_some();
    report.capacity = Some(report::Capacity {
        highest_passing_per_s: held.as_ref().map(|s| s.offered_per_s),
        highest_passing_users: held.map(|s| s.users),
        steps,
    });
    Ok(report)
}

/// Replays a trace file against the nodes at a speed.
pub async fn replay_file(
    path: &std::path::Path,
    target: &Target,
    conns: &Connections,
    speed: Speed,
    opts: &RunOptions,
) -> anyhow::Result<Report> {
    let reader = trace::open_file(path)?;
    let mut opts = opts.clone();
    if opts.name.is_empty() {
        opts.name = path.display().to_string();
    }
    run::run_records(Box::new(reader), target, conns, speed, &opts, None).await
}
