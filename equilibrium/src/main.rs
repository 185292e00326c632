//! `equilibrium`: the one binary of the project: the node, the client commands, the engine
//! demo, the traffic simulator (`sim`) and small tools.

#![forbid(unsafe_code)]

mod demo;
mod net;
mod sim_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use engine::config::EngineConfig;
use engine::ZoneId;

/// Equilibrium: a dynamic-pricing engine for ride-hailing.
///
/// Zones are H3 cells; each zone turns driver and rider events into a surge multiplier
/// several times a second, and quotes are answered from memory in microseconds.
#[derive(Debug, Parser)]
#[command(name = "equilibrium", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine on a synthetic city for a few seconds and show prices move.
    ///
    /// Starts the pricing engine in this process (zone actors, ticks, lock-free quotes),
    /// streams seeded synthetic driver and rider events around a city centre with a demand
    /// spike in the middle of the run, and prints the surging zones, quote latency, a signed
    /// quote and its explanation. (Until clustering lands this runs one node in-process.)
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
    /// Show the H3 zone of a point, and its neighbours.
    Zone {
        /// Latitude in degrees, within [-90, 90].
        #[arg(long, allow_negative_numbers = true)]
        lat: f64,
        /// Longitude in degrees, within [-180, 180].
        #[arg(long, allow_negative_numbers = true)]
        lng: f64,
        /// H3 resolution (0..=15).
        #[arg(long, default_value_t = engine::zone::RESOLUTION_DEFAULT)]
        res: u8,
    },
    /// Traffic simulator: generate, import and replay traces; run load scenarios and
    /// report latency, throughput and errors against the objectives.
    ///
    /// Quick start against a development node (self-signed certificate):
    ///   equilibrium sim run --scenario configs/scenarios/normal.toml --node 127.0.0.1:7400 --insecure --json report.json --svg report.svg
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// Work with engine configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
        Command::Zone { lat, lng, res } => {
            let z = ZoneId::from_lat_lng(lat, lng, res)?;
            let (clat, clng) = z.center();
            println!("zone        {z}");
            println!("resolution  {}", z.resolution());
            println!("centre      {clat:.6}, {clng:.6}");
            let n: Vec<String> = z.neighbours().iter().map(|n| n.to_string()).collect();
            println!("neighbours  {}", n.join(" "));
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

/// Reads and validates an engine configuration file.
pub(crate) fn load_config(path: &std::path::Path) -> anyhow::Result<EngineConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    EngineConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))
}
