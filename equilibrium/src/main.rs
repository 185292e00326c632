//! `equilibrium`: the one binary of the project: the node, the client and admin commands,
//! the engine demo, the traffic simulator (`sim`) and small tools.

#![forbid(unsafe_code)]

mod admin;
mod backtest;
mod demo;
mod net;
mod output;
mod runtime;
mod sim_cmd;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use engine::config::EngineConfig;

/// Equilibrium: a dynamic-pricing engine for ride-hailing.
///
/// Zones are H3 cells; each zone turns driver and rider events into a surge multiplier
/// several times a second, and quotes are answered from memory in microseconds.
#[derive(Debug, Parser)]
#[command(
    name = "equilibrium",
    version,
    after_help = "Exit codes: 0 ok; 1 usage error or other failure; 2 node unreachable; \
3 credential refused or role not allowed; 4 not found or invalid (zone, value, token); \
5 version conflict (someone changed it first); 6 node overloaded or shutting down."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local 3-node cluster, replay a city against it, and print the SLA report.
    ///
    /// What happens: starts redis-server on a free port (leases and zone snapshots), writes
    /// a cluster credential (mutual TLS between nodes) and a client certificate into a
    /// temporary directory, starts three `equilibrium node` processes, waits until every
    /// node sees the other two and the city's zones are spread over them, replays the
    /// built-in scenario (a synthetic Berlin in the morning rush, configs/scenarios/demo.toml)
    /// for --seconds, prints the report and writes report.json and report.svg into --out,
    /// shows where the zones live, the most surging zone, a quote for it from a node that
    /// does not own it, and its explanation; then stops every process it started (also on
    /// Ctrl-C or SIGTERM). Node logs and the PIDs are left in --out.
    ///
    /// Without redis-server it warns loudly and runs ONE standalone node instead (not the
    /// cluster demo). `--engine-only` runs the first demo: the engine alone, in-process.
    Demo(demo::DemoArgs),
    /// Serve clients over QUIC (the binary protocol of PROTOCOL.md).
    Node(net::NodeArgs),
    /// Quote a trip against a node.
    Quote(net::QuoteArgs),
    /// Send events from a file to a node (batched; prints the outcome counts).
    SendEvents(net::SendEventsArgs),
    /// Verify a quote token against a node.
    Verify(net::TokenArgs),
    /// Explain a quote token: the inputs behind its price.
    Explain(net::TokenArgs),
    /// Status of a node and of every cluster member it knows: health, zones, view epoch and
    /// checksum, Redis, load, policy version (role `read`).
    Status(admin::StatusArgs),
    /// The cluster's members as a node sees them: ids, addresses, generations (role `read`).
    Members(admin::MembersArgs),
    /// Zone ownership: zones owned per node, each node's view of the split, hottest zones
    /// (role `read`).
    Zones(admin::ZonesArgs),
    /// Drain a node: it hands its zones over (final snapshots, leases released), then
    /// leaves the cluster and stops (role `admin`).
    Drain(admin::DrainArgs),
    /// A zone's hot state and current snapshot on a node (`zone ID`, role `read`), or the
    /// H3 zone of a point and its neighbours (`zone --lat --lng`, no node needed).
    Zone(admin::ZoneArgs),
    /// Read or change a zone's fare table.
    #[command(subcommand)]
    Fare(admin::FareCommand),
    /// Read or change the surge policy.
    #[command(subcommand)]
    Policy(admin::PolicyCommand),
    /// Traffic simulator: generate, import and replay traces; run load scenarios and
    /// report latency, throughput and errors against the objectives.
    ///
    /// Quick start against a development node (self-signed certificate):
    ///   equilibrium sim run --scenario configs/scenarios/normal.toml --node 127.0.0.1:7400 --insecure --json report.json --svg report.svg
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// Backtest a surge policy on a day of demand, in virtual time, in-process: a synthetic
    /// city or an imported profile (closed loop: riders decline high prices, drivers move
    /// towards them) or a trace (open loop), through the engine's shard; prints the
    /// pricing-realism report (share of zone-time surging by hour, at the cap, quantiles,
    /// reversals, neighbour differences, spike rise and decay, riders served / declined /
    /// unserved, utilisation) and judges it against the realism objectives. `--compare`
    /// runs a second policy on the same inputs and shows where and when they differ.
    Backtest(backtest::BacktestArgs),
    /// Work with engine configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a cluster credential: a CA and one certificate per node, naming the node's
    /// id, which it presents to its peers (mutual TLS; peers take its id from it). Writes
    /// DIR/ca/{ca.pem,ca-key.pem} (keep the CA key offline, on no node) and, per node,
    /// DIR/node-ID/{ca.pem,node.pem,node-key.pem} (what that node needs). Private keys are
    /// 0600, directories 0700. With an existing DIR/ca, its CA issues the new certificates
    /// (adding a node, replacing a node's certificate).
    ClusterCredentials {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "cluster-credentials")]
        out: PathBuf,
        /// The node ids to issue certificates for: a list and ranges, e.g. 1,2,3 or 1-5.
        #[arg(long, default_value = "1-3", value_parser = parse_node_ids)]
        nodes: std::vec::Vec<u16>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective values (defaults filled in).
    Check {
        /// The file to check; without it, the built-in defaults are printed.
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are successes; usage errors exit 1 (2 means unreachable).
            return if e.use_stderr() {
                ExitCode::from(admin::Exit::Failure as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The node sets up logging from its config file; the other commands log warnings.
    if !matches!(cli.command, Command::Node(_)) {
        let _ = telemetry::logs::init(telemetry::logs::LogFormat::Human, "warn");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(h) = admin::hint(&e) {
                eprintln!("hint: {h}");
            }
            ExitCode::from(admin::exit_code(&e) as u8)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Node(args) => net::node(args),
        Command::Quote(args) => net::quote(args),
        Command::SendEvents(args) => net::send_events(args),
        Command::Verify(args) => net::verify(args),
        Command::Explain(args) => net::explain(args),
        Command::Sim(cmd) => sim_cmd::run(cmd),
        Command::Backtest(args) => backtest::run(args),
        Command::Status(args) => admin::status(args),
        Command::Members(args) => admin::members(args),
        Command::Zones(args) => admin::zones(args),
        Command::Drain(args) => admin::drain(args),
        Command::Zone(args) => admin::zone(args),
        Command::Fare(cmd) => admin::fare(cmd),
        Command::Policy(cmd) => admin::policy(cmd),
        Command::ClusterCredentials { out, nodes } => {
            let w = server::cluster::write_credentials(&out, &nodes)?;
            println!(
                "{} {}/ca.pem and ca-key.pem (keep the CA key offline)",
                if w.ca_created {
                    "wrote"
                } else {
                    "used the existing CA"
                },
                w.ca_dir.display()
            );
            for (id, dir) in &w.nodes {
                println!(
                    "node {id}: {0}/ca.pem, {0}/node.pem, {0}/node-key.pem",
                    dir.display()
                );
            }
            println!(
                "point [cluster] ca_cert_path, cert_path and key_path of each node at its own directory"
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let cfg = match &file {
                Some(path) => load_config(path)?,
                None => EngineConfig::default(),
            };
            println!("{cfg:#?}");
            if let Some(path) = file {
                eprintln!("{}: ok", path.display());
            }
            Ok(())
        }
    }
}

/// `1,2,3`, `1-5` or a mix: node ids (1..=65535), each once.
fn parse_node_ids(s: &str) -> Result<Vec<u16>, String> {
    let mut ids = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|e| format!("{x:?}: not a node id ({e})"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a == 0 || a > b || usize::from(b - a) >= 1024 {
            return Err(format!(
                "{part:?}: expected ids within 1..=65535, low-high, at most 1024"
            ));
        }
        ids.extend(a..=b);
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err("no node id".into());
    }
    Ok(ids)
}

/// Reads and validates an engine configuration file.
pub(crate) fn load_config(path: &std::path::Path) -> anyhow::Result<EngineConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    EngineConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))
}
