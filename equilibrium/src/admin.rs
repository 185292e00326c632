//! The administrative commands: `status`, `members`, `zones`, `drain`, `zone ID`,
//! `fare get|set`, `policy get|set`, and what every command shares: exit codes, error hints
//! and `--json` (tables and JSON printing live in `output`, the node address and credential
//! in `target`).
//!
//! # Adding a command
//!
//! A command is an `Args` struct with a flattened [`AdminTarget`] (address, credential, TLS,
//! `--json`) and a function that connects with [`AdminTarget::connect`], makes its requests
//! and prints either [`Table`] rows or one JSON value ([`print_json`]). Errors are returned,
//! not printed: `main` maps them to an exit code with [`exit_code`].

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use client::{Client, ClientError};
use protocol::msg;
use protocol::ErrorCode;
use serde_json::{json, Value};

use crate::output::{fare_json, milli, print_json, zone_hex, Table};
use crate::target::Target;

/// The sample config's admin token, the default of the admin commands.
const ADMIN_TOKEN_DEFAULT: &str = "admin-demo-token";

/// Exit codes of every command (documented in the README and `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// Usage errors (bad arguments) and any other failure.
    Failure = 1,
    /// The node could not be reached (nothing listening, timed out, connection lost).
    Unreachable = 2,
    /// The node refused the credential (`bad_credentials`) or its role does not allow the
    /// request (`forbidden`).
    Denied = 3,
    /// Not found or invalid: unknown zone, invalid zone, value, trip, coordinates or token.
    Invalid = 4,
    /// A fare table or policy version not newer than the node's (`conflict`).
    Conflict = 5,
    /// The node is overloaded, shutting down, or cannot make the change durable now
    /// (ownership moving, Redis down); retry later.
    Busy = 6,
}

/// Classifies an error by the client error inside it.
pub(crate) fn exit_code(e: &anyhow::Error) -> Exit {
    let Some(ce) = e.chain().find_map(|c| c.downcast_ref::<ClientError>()) else {
        return Exit::Failure;
    };
    match ce {
        ClientError::Connection(_) | ClientError::Timeout(_) => Exit::Unreachable,
        ClientError::Refused { .. } => match ce.code() {
            Some(
                ErrorCode::BadCredentials | ErrorCode::Forbidden | ErrorCode::NotAuthenticated,
            ) => Exit::Denied,
            Some(
                ErrorCode::UnknownZone
                | ErrorCode::InvalidZone
                | ErrorCode::InvalidValue
                | ErrorCode::InvalidTrip
                | ErrorCode::InvalidCoordinates
                | ErrorCode::InvalidToken
                | ErrorCode::ExpiredToken
                | ErrorCode::BatchTooLarge,
            ) => Exit::Invalid,
            Some(ErrorCode::Conflict) => Exit::Conflict,
            Some(
                ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
                | ErrorCode::Unavailable
                | ErrorCode::Stale
                | ErrorCode::StoreUnavailable,
            ) => Exit::Busy,
            _ => Exit::Failure,
        },
        _ => Exit::Failure,
    }
}

/// A line of advice after the error message, for the errors a person can fix.
pub(crate) fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let ce = e.chain().find_map(|c| c.downcast_ref::<ClientError>())?;
    match (exit_code(e), ce.code()) {
        (Exit::Unreachable, _) => Some(
            "the node is unreachable: is it running, and are --addr (EQUILIBRIUM_ADDR) and its TLS settings right?",
        ),
        (Exit::Denied, Some(ErrorCode::Forbidden)) => Some(
            "this credential's role does not allow that: reads need role `read` or `admin`, changes need `admin` (see [[clients]] in the node config)",
        ),
        (Exit::Denied, _) => Some(
            "the node does not know this credential: check --token (EQUILIBRIUM_TOKEN) against [[clients]] in the node config",
        ),
        (Exit::Conflict, _) => Some(
            "someone changed it first: read the current version and retry with a newer one",
        ),
        _ => None,
    }
}

/// How an admin command reaches a node, and how it prints.
#[derive(Debug, Args)]
pub(crate) struct AdminTarget {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

impl AdminTarget {
    /// Connects with `--token`, or the sample config's admin token.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        self.target.connect_as(ADMIN_TOKEN_DEFAULT).await
    }

    /// Runs `f` against the node on a small runtime, closing the connection after.
    fn run<T>(&self, f: impl AsyncFnOnce(&Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        crate::runtime::runtime()?.block_on(async {
            let c = self.connect().await?;
            let out = f(&c).await;
            c.close().await;
            out
        })
    }
}

fn parse_zone(s: &str) -> anyhow::Result<u64> {
    let z: engine::ZoneId = s
        .parse()
        .with_context(|| format!("zone {s:?} (an H3 cell in hex, e.g. 881f1d4899fffff)"))?;
    Ok(z.raw())
}

/// A multiplier given as a decimal (`2.5`) in thousandths.
fn parse_milli(s: &str) -> Result<u32, String> {
    let v: f64 = s
        .trim_end_matches('x')
        .parse()
        .map_err(|_| format!("{s:?} is not a number like 2.5"))?;
    if !(v.is_finite() && (0.0..=1_000.0).contains(&v)) {
        return Err(format!("{s} is out of range"));
    }
    Ok((v * 1000.0).round() as u32)
}

fn fare_table(f: &msg::WireFare, t: Table) -> Table {
    t.row("version", f.version)
        .row("currency", String::from_utf8_lossy(&f.currency))
        .row("base", format!("{} (minor units)", f.base_minor))
        .row("per km", f.per_km_minor)
        .row("per min", f.per_min_minor)
        .row("minimum", f.minimum_minor)
        .row("surge cap", milli(f.surge_cap_milli))
}

// ---------------------------------------------------------------------------------------
// status

/// Options of `equilibrium status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    to: AdminTarget,
}

/// One node's answers, as `status` and `zones` gather them.
struct NodeView {
    addr: std::net::SocketAddr,
    status: Option<msg::StatusReply>,
    cluster: Option<msg::ClusterReply>,
    error: Option<String>,
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asks the given node, then every member it knows of, for status and cluster view.
fn gather(to: &AdminTarget) -> anyhow::Result<(msg::ClusterReply, Vec<NodeView>)> {
    crate::runtime::runtime()?.block_on(async {
        let first = to.connect().await?;
        let cluster = first.cluster().await?;
        let status = first.status().await?;
        first.close().await;
        let mut views = vec![NodeView {
            addr: to.target.addr,
            status: Some(status),
            cluster: Some(cluster.clone()),
            error: None,
        }];
        for m in cluster
            .members
            .iter()
            .filter(|m| m.node_id != cluster.node_id)
        {
            let addr: std::net::SocketAddr = match utf8(&m.client_addr).parse() {
                Ok(a) => a,
                Err(e) => bail!("member {} has a bad address: {e}", m.node_id),
            };
            let v = match to.target.connect_to(addr, ADMIN_TOKEN_DEFAULT).await {
                Ok(c) => {
                    let r = (c.status().await, c.cluster().await);
                    c.close().await;
                    match r {
                        (Ok(s), Ok(cl)) => NodeView {
                            addr,
                            status: Some(s),
                            cluster: Some(cl),
                            error: None,
                        },
                        (Err(e), _) | (_, Err(e)) => NodeView {
                            addr,
                            status: None,
                            cluster: None,
                            error: Some(e.to_string()),
                        },
                    }
                }
                Err(e) => NodeView {
                    addr,
                    status: None,
                    cluster: None,
                    error: Some(format!("{e:#}")),
                },
            };
            views.push(v);
        }
        views.sort_by_key(|v| v.cluster.as_ref().map_or(u16::MAX, |c| c.node_id));
        Ok((cluster, views))
    })
}

fn node_json(v: &NodeView) -> Value {
    match (&v.status, &v.cluster) {
        (Some(s), Some(c)) => json!({
            "node_id": s.node_id,
            "addr": v.addr.to_string(),
            "healthy": true,
            "uptime_ms": s.uptime_ms,
            "zones": s.zones,
            "zones_owned": c.zones_owned,
            "groups_served": c.groups_served,
            "in_flight": s.in_flight,
            "shed_premium": s.shed_premium,
            "shed_shared": s.shed_shared,
            "policy_version": s.policy_version,
            "view_epoch": c.view_epoch,
            "view_checksum": format!("{:016x}", c.view_checksum),
            "members": c.members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
            "redis_up": c.redis_up == 1,
            "view_owners": c.owners.iter().map(|o| (o.node_id.to_string(), json!(o.zones))).collect::<serde_json::Map<_, _>>(),
        }),
        _ => json!({
            "addr": v.addr.to_string(),
            "healthy": false,
            "error": v.error,
        }),
    }
}

pub(crate) fn status(a: StatusArgs) -> anyhow::Result<()> {
    let (cluster, views) = gather(&a.to)?;
    let s = views[0].status.expect("the first node answered");
    let agree = views
        .iter()
        .filter_map(|v| v.cluster.as_ref())
        .all(|c| c.view_checksum == cluster.view_checksum);
    if a.to.json {
        print_json(&json!({
            "node_id": s.node_id,
            "uptime_ms": s.uptime_ms,
            "zones": s.zones,
            "in_flight": s.in_flight,
            "shed_premium": s.shed_premium,
            "shed_shared": s.shed_shared,
            "policy_version": s.policy_version,
            "clustered": cluster.clustered == 1,
            "views_agree": agree,
            "nodes": views.iter().map(node_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if cluster.clustered == 0 {
        Table::default()
            .row("node", s.node_id)
            .row("uptime", format!("{:.1} s", s.uptime_ms as f64 / 1000.0))
            .row("zones", s.zones)
            .row("in flight", s.in_flight)
            .row(
                "shed",
                format!("premium {}, shared {}", s.shed_premium, s.shed_shared),
            )
            .row("policy", format!("v{}", s.policy_version))
            .row("cluster", "none (standalone node)")
            .print();
        return Ok(());
    }
    println!(
        "{:<5} {:<22} {:<8} {:>7} {:>7} {:>10} {:>6} {:<18} {:<6} {:>9}",
        "node",
        "address",
        "health",
        "zones",
        "groups",
        "view epoch",
        "policy",
        "view checksum",
        "redis",
        "uptime"
    );
    for v in &views {
        match (&v.status, &v.cluster) {
            (Some(s), Some(c)) => println!(
                "{:<5} {:<22} {:<8} {:>7} {:>7} {:>10} {:>6} {:<18} {:<6} {:>8.1}s",
                s.node_id,
                v.addr,
                "up",
                c.zones_owned,
                c.groups_served,
                c.view_epoch,
                format!("v{}", s.policy_version),
                format!("{:016x}", c.view_checksum),
                if c.redis_up == 1 { "up" } else { "DOWN" },
                s.uptime_ms as f64 / 1000.0
            ),
            _ => println!(
                "{:<5} {:<22} {:<8} {}",
                "?",
                v.addr,
                "DOWN",
                v.error.as_deref().unwrap_or("")
            ),
        }
    }
    println!(
        "\n{} members; views {}",
        cluster.members.len(),
        if agree {
            "agree (same checksum on every node)"
        } else {
            "DIFFER: membership is changing or split"
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// members, zones, drain

/// Options of `equilibrium members`.
#[derive(Debug, Args)]
pub(crate) struct MembersArgs {
    #[command(flatten)]
    to: AdminTarget,
}

pub(crate) fn members(a: MembersArgs) -> anyhow::Result<()> {
    let c = a.to.run(async |c| Ok(c.cluster().await?))?;
    if a.to.json {
        print_json(&json!({
            "node_id": c.node_id,
            "view_epoch": c.view_epoch,
            "view_checksum": format!("{:016x}", c.view_checksum),
            "members": c.members.iter().map(|m| json!({
                "node_id": m.node_id,
                "client_addr": utf8(&m.client_addr),
                "peer_addr": utf8(&m.peer_addr),
                "generation": m.generation,
                "weight": m.weight,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if c.clustered == 0 {
        println!(
            "node {} runs alone (no [cluster] section): no members",
            c.node_id
        );
        return Ok(());
    }
    println!(
        "{:<5} {:<22} {:<22} {:>6} {:>15}",
        "node", "client address", "peer address", "weight", "generation"
    );
    for m in &c.members {
        println!(
            "{:<5} {:<22} {:<22} {:>6} {:>15}",
            m.node_id,
            utf8(&m.client_addr),
            utf8(&m.peer_addr),
            m.weight,
            m.generation
        );
    }
    println!(
        "\nas seen by node {}: view epoch {}, checksum {:016x}",
        c.node_id, c.view_epoch, c.view_checksum
    );
    Ok(())
}

/// Options of `equilibrium zones`.
#[derive(Debug, Args)]
pub(crate) struct ZonesArgs {
    #[command(flatten)]
    to: AdminTarget,
}

pub(crate) fn zones(a: ZonesArgs) -> anyhow::Result<()> {
    let (cluster, views) = gather(&a.to)?;
    let total: u32 = views
        .iter()
        .filter_map(|v| v.cluster.as_ref())
        .map(|c| c.zones_owned)
        .sum();
    if a.to.json {
        print_json(&json!({
            "total_zones_owned": total,
            "nodes": views.iter().map(node_json).collect::<Vec<_>>(),
            "hottest": cluster.hottest.iter().map(|h| json!({
                "zone": format!("{:x}", h.zone),
                "multiplier": f64::from(h.multiplier_milli) / 1000.0,
                "owner": h.owner,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "{:<5} {:>12} {:>14}   its view: zones per owner",
        "node", "zones owned", "share"
    );
    for v in &views {
        if let Some(c) = &v.cluster {
            let share = if total > 0 {
                f64::from(c.zones_owned) * 100.0 / f64::from(total)
            } else {
                0.0
            };
            let owners: Vec<String> = c
                .owners
                .iter()
                .map(|o| format!("{}:{}", o.node_id, o.zones))
                .collect();
            println!(
                "{:<5} {:>12} {:>13.1}%   {}",
                c.node_id,
                c.zones_owned,
                share,
                owners.join(" ")
            );
        } else {
            println!(
                "{:<5} {:>12}   unreachable: {}",
                "?",
                "-",
                v.error.as_deref().unwrap_or("")
            );
        }
    }
    println!("\n{total} zones owned in all");
    if !cluster.hottest.is_empty() {
        println!("\nhottest zones (as node {} sees them):", cluster.node_id);
        for h in &cluster.hottest {
            println!(
                "  {:x}  {}  owner {}",
                h.zone,
                milli(h.multiplier_milli),
                h.owner
            );
        }
    }
    Ok(())
}

/// Options of `equilibrium drain`.
#[derive(Debug, Args)]
pub(crate) struct DrainArgs {
    /// The node to drain (its id): it hands every zone over, then leaves and stops.
    node: u16,
    #[command(flatten)]
    to: AdminTarget,
}

pub(crate) fn drain(a: DrainArgs) -> anyhow::Result<()> {
    let r = a.to.run(async |c| Ok(c.drain(a.node).await?))?;
    if a.to.json {
        print_json(&json!({
            "node_id": r.node_id,
            "groups_handed_over": r.groups_handed_over,
            "groups_left": r.groups_left,
        }));
    } else {
        println!(
            "node {} drained: {} zone groups handed over, {} left; it is leaving the cluster and stopping",
            r.node_id, r.groups_handed_over, r.groups_left
        );
    }
    if r.groups_left > 0 {
        bail!(
            "node {} still held {} zone groups when the drain timed out",
            r.node_id,
            r.groups_left
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// zone

/// Options of `equilibrium zone`.
#[derive(Debug, Args)]
pub(crate) struct ZoneArgs {
    /// A zone (H3 cell, hex): show its hot state and current snapshot on the node.
    #[arg(value_name = "ZONE", conflicts_with_all = ["lat", "lng"], required_unless_present_all = ["lat", "lng"])]
    zone: Option<String>,
    /// Or: a latitude in degrees, within [-90, 90], to find its zone locally (no node).
    #[arg(long, allow_negative_numbers = true, requires = "lng")]
    lat: Option<f64>,
    /// With --lat: a longitude in degrees, within [-180, 180].
    #[arg(long, allow_negative_numbers = true, requires = "lat")]
    lng: Option<f64>,
    /// With --lat/--lng: the H3 resolution (0..=15).
    #[arg(long, default_value_t = engine::zone::RESOLUTION_DEFAULT)]
    res: u8,
    #[command(flatten)]
    to: AdminTarget,
}

pub(crate) fn zone(a: ZoneArgs) -> anyhow::Result<()> {
    let (Some(z), None, None) = (&a.zone, a.lat, a.lng) else {
        let (Some(lat), Some(lng)) = (a.lat, a.lng) else {
            bail!("give a ZONE, or --lat and --lng");
        };
        return locate(lat, lng, a.res, a.to.json);
    };
    let raw = parse_zone(z)?;
    let (s, h) = a.to.run(async |c| {
        let s = c.zone_state(raw).await?;
        let h = c.zone_history(raw).await?;
        Ok((s, h))
    })?;
    if a.to.json {
        print_json(&json!({
            "history": h.snapshots.iter().map(|x| json!({
                "version": x.version,
                "computed_at_ms": x.computed_at_ms,
                "multiplier_milli": x.multiplier_milli,
                "target_milli": x.target_milli,
                "supply": x.supply,
                "demand": x.demand,
                "quotes": x.quotes,
                "fare_version": x.fare_version,
                "policy_version": x.policy_version,
                "confidence_permille": x.confidence_permille,
            })).collect::<Vec<_>>(),
            "zone": zone_hex(s.zone),
            "snapshot_version": s.version,
            "multiplier_milli": s.multiplier_milli,
            "drivers": s.drivers,
            "demand": s.demand,
            "quotes": s.quotes,
            "accepted": s.accepted,
            "dedupe_ids": s.dedupe_ids,
            "last_event_ms": s.last_event_ms,
            "fare": fare_json(&s.fare),
        }));
        return Ok(());
    }
    let f = &s.fare;
    Table::default()
        .row("zone", zone_hex(s.zone))
        .row(
            "snapshot",
            format!("v{}, multiplier {}", s.version, milli(s.multiplier_milli)),
        )
        .row("drivers", format!("{} available", s.drivers))
        .row("demand", format!("{} signals in the window", s.demand))
        .row("quotes", format!("{} in the window", s.quotes))
        .row("accepted", format!("{} trips in the window", s.accepted))
        .row("dedupe ids", s.dedupe_ids)
        .row(
            "last event",
            format!("{} (ms since epoch)", s.last_event_ms),
        )
        .row(
            "fare",
            format!(
                "v{}: base {}, per km {}, per min {}, minimum {}, cap {} ({})",
                f.version,
                f.base_minor,
                f.per_km_minor,
                f.per_min_minor,
                f.minimum_minor,
                milli(f.surge_cap_milli),
                String::from_utf8_lossy(&f.currency)
            ),
        )
        .print();
    if !h.snapshots.is_empty() {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\nrecent snapshots (newest first)\n{:>8} {:>15} {:>10} {:>8} {:>7} {:>7} {:>7} {:>5} {:>7}",
            "version", "computed at ms", "multiplier", "target", "supply", "demand", "quotes", "fare", "policy"
        );
        for x in h.snapshots.iter().take(10) {
            if writeln!(
                out,
                "{:>8} {:>15} {:>10} {:>8} {:>7} {:>7} {:>7} {:>5} {:>7}",
                format!("v{}", x.version),
                x.computed_at_ms,
                milli(x.multiplier_milli),
                milli(x.target_milli),
                x.supply,
                x.demand,
                x.quotes,
                format!("v{}", x.fare_version),
                format!("v{}", x.policy_version)
            )
            .is_err()
            {
                break;
            }
        }
    }
    Ok(())
}

/// `zone --lat --lng`: the H3 cell of a point and its neighbours, computed locally.
fn locate(lat: f64, lng: f64, res: u8, json: bool) -> anyhow::Result<()> {
    let z = engine::ZoneId::from_lat_lng(lat, lng, res)?;
    let (clat, clng) = z.center();
    let n: Vec<String> = z.neighbours().iter().map(|n| n.to_string()).collect();
    if json {
        print_json(&json!({
            "zone": z.to_string(),
            "resolution": z.resolution(),
            "centre": [clat, clng],
            "neighbours": n,
        }));
        return Ok(());
    }
    Table::default()
        .row("zone", z)
        .row("resolution", z.resolution())
        .row("centre", format!("{clat:.6}, {clng:.6}"))
        .row("neighbours", n.join(" "))
        .print();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fare

/// `equilibrium fare`.
#[derive(Debug, Subcommand)]
pub(crate) enum FareCommand {
    /// Show a zone's fare table (role `read` or `admin`).
    Get {
        /// The zone (H3 cell, hex).
        zone: String,
        #[command(flatten)]
        to: AdminTarget,
    },
    /// Change a zone's fare table (role `admin`). Fields not given keep their current
    /// values; the version defaults to the current one plus 1. Prints the new version once
    /// the zone applied it (quotes use it from the next tick).
    Set(FareSetArgs),
}

/// Options of `equilibrium fare set`.
#[derive(Debug, Args)]
pub(crate) struct FareSetArgs {
    /// The zone (H3 cell, hex).
    zone: String,
    /// The new version; must be newer than the zone's (default: current + 1).
    #[arg(long)]
    version: Option<u32>,
    /// Base fare, minor units.
    #[arg(long)]
    base: Option<u32>,
    /// Per kilometre, minor units.
    #[arg(long)]
    per_km: Option<u32>,
    /// Per minute, minor units.
    #[arg(long)]
    per_min: Option<u32>,
    /// Minimum fare, minor units.
    #[arg(long)]
    minimum: Option<u32>,
    /// Surge cap as a multiplier, e.g. 2.5.
    #[arg(long, value_parser = parse_milli)]
    cap: Option<u32>,
    /// Currency, three letters (ISO 4217), e.g. EUR.
    #[arg(long)]
    currency: Option<String>,
    #[command(flatten)]
    to: AdminTarget,
}

pub(crate) fn fare(cmd: FareCommand) -> anyhow::Result<()> {
    match cmd {
        FareCommand::Get { zone, to } => {
            let raw = parse_zone(&zone)?;
            let f = to.run(async |c| Ok(c.fare_get(raw).await?))?;
            if to.json {
                let mut j = fare_json(&f);
                j["zone"] = json!(zone_hex(raw));
                print_json(&j);
            } else {
                fare_table(&f, Table::default().row("zone", zone_hex(raw))).print();
            }
            Ok(())
        }
        FareCommand::Set(a) => {
            let raw = parse_zone(&a.zone)?;
            let currency = match &a.currency {
                Some(c) => {
                    let b: [u8; 3] = c
                        .as_bytes()
                        .try_into()
                        .ok()
                        .filter(|b: &[u8; 3]| b.iter().all(u8::is_ascii_uppercase))
                        .with_context(|| {
                            format!("--currency {c:?}: three upper-case letters, e.g. EUR")
                        })?;
                    Some(b)
                }
                None => None,
            };
            let f = a.to.run(async |c| {
                let cur = c.fare_get(raw).await?;
                let new = msg::WireFare {
                    version: a.version.unwrap_or(cur.version.saturating_add(1)),
                    base_minor: a.base.unwrap_or(cur.base_minor),
                    per_km_minor: a.per_km.unwrap_or(cur.per_km_minor),
                    per_min_minor: a.per_min.unwrap_or(cur.per_min_minor),
                    minimum_minor: a.minimum.unwrap_or(cur.minimum_minor),
                    surge_cap_milli: a.cap.unwrap_or(cur.surge_cap_milli),
                    currency: currency.unwrap_or(cur.currency),
                };
                c.fare_set(raw, new).await?;
                Ok(new)
            })?;
            if a.to.json {
                let mut j = fare_json(&f);
                j["zone"] = json!(zone_hex(raw));
                print_json(&j);
            } else {
                println!("zone {} now has fare table v{}", zone_hex(raw), f.version);
                fare_table(&f, Table::default()).print();
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// policy

/// `equilibrium policy`.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Show the surge policy (role `read` or `admin`).
    Get {
        #[command(flatten)]
        to: AdminTarget,
    },
    /// Change the surge policy on every zone of the node (role `admin`). Fields not given
    /// keep their current values; the version defaults to the current one plus 1.
    Set(PolicySetArgs),
}

/// Options of `equilibrium policy set` (meanings as in configs/engine.toml `[policy]`).
#[derive(Debug, Args)]
pub(crate) struct PolicySetArgs {
    /// The new version; must be newer than the node's (default: current + 1).
    #[arg(long)]
    version: Option<u32>,
    /// How far above balance (demand = supply) the ratio still prices 1.0x, e.g. 0.25.
    #[arg(long)]
    balance_dead_band: Option<f64>,
    /// Multiplier added per unit of ratio beyond the dead band.
    #[arg(long)]
    sensitivity: Option<f64>,
    /// How much one quote counts as demand (0: quotes are not demand).
    #[arg(long)]
    quote_demand_weight: Option<f64>,
    /// Weight of the neighbours' distance-weighted mean multiplier, [0, 1).
    #[arg(long)]
    neighbour_weight: Option<f64>,
    /// Own demand (recent rider sessions) a zone needs before neighbours may lift its price.
    #[arg(long)]
    neighbour_demand_min: Option<f64>,
    /// Supply counts as at least this many drivers.
    #[arg(long)]
    supply_floor: Option<u32>,
    /// Highest multiplier, e.g. 3.0.
    #[arg(long, value_parser = parse_milli)]
    cap: Option<u32>,
    /// Half-life of the smoothing, seconds.
    #[arg(long)]
    smoothing_half_life_s: Option<u32>,
    /// Least time between two changes of a zone's price, seconds.
    #[arg(long)]
    hold_s: Option<u32>,
    /// Largest change per minute, as a multiplier difference, e.g. 0.15.
    #[arg(long, value_parser = parse_milli)]
    change_per_min_max: Option<u32>,
    /// Published prices are 1.0x plus whole steps of this, e.g. 0.05.
    #[arg(long, value_parser = parse_milli)]
    price_step: Option<u32>,
    /// Observations for full confidence.
    #[arg(long)]
    confidence_full_at: Option<u32>,
    #[command(flatten)]
    to: AdminTarget,
}

fn policy_json(p: &msg::WirePolicy) -> Value {
    json!({
        "version": p.version,
        "balance_dead_band": p.balance_dead_band,
        "sensitivity": p.sensitivity,
        "quote_demand_weight": p.quote_demand_weight,
        "neighbour_weight": p.neighbour_weight,
        "neighbour_demand_min": p.neighbour_demand_min,
        "supply_floor": p.supply_floor,
        "cap_milli": p.cap_milli,
        "smoothing_half_life_s": p.smoothing_half_life_s,
        "hold_s": p.hold_s,
        "change_per_min_max_milli": p.change_per_min_max_milli,
        "price_step_milli": p.price_step_milli,
        "confidence_full_at": p.confidence_full_at,
    })
}

fn policy_table(p: &msg::WirePolicy) {
    Table::default()
        .row("version", p.version)
        .row(
            "dead band",
            format!("{} above balance", p.balance_dead_band),
        )
        .row("sensitivity", p.sensitivity)
        .row("quote weight", p.quote_demand_weight)
        .row("neighbour weight", p.neighbour_weight)
        .row(
            "neighbour lift",
            format!("needs {} own rider sessions", p.neighbour_demand_min),
        )
        .row("supply floor", p.supply_floor)
        .row("cap", milli(p.cap_milli))
        .row(
            "smoothing",
            format!("half-life {} s", p.smoothing_half_life_s),
        )
        .row("hold", format!("{} s between changes", p.hold_s))
        .row(
            "rate",
            format!("at most {} per minute", milli(p.change_per_min_max_milli)),
        )
        .row("price step", milli(p.price_step_milli))
        .row(
            "confidence at",
            format!("{} observations", p.confidence_full_at),
        )
        .print();
}

pub(crate) fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    let (p, to, changed) = match cmd {
        PolicyCommand::Get { to } => (to.run(async |c| Ok(c.policy_get().await?))?, to, false),
        PolicyCommand::Set(a) => {
            let p = a.to.run(async |c| {
                let cur = c.policy_get().await?;
                let new = msg::WirePolicy {
                    version: a.version.unwrap_or(cur.version.saturating_add(1)),
                    balance_dead_band: a.balance_dead_band.unwrap_or(cur.balance_dead_band),
                    sensitivity: a.sensitivity.unwrap_or(cur.sensitivity),
                    quote_demand_weight: a.quote_demand_weight.unwrap_or(cur.quote_demand_weight),
                    neighbour_weight: a.neighbour_weight.unwrap_or(cur.neighbour_weight),
                    neighbour_demand_min: a
                        .neighbour_demand_min
                        .unwrap_or(cur.neighbour_demand_min),
                    supply_floor: a.supply_floor.unwrap_or(cur.supply_floor),
                    cap_milli: a.cap.unwrap_or(cur.cap_milli),
                    smoothing_half_life_s: a
                        .smoothing_half_life_s
                        .unwrap_or(cur.smoothing_half_life_s),
                    hold_s: a.hold_s.unwrap_or(cur.hold_s),
                    change_per_min_max_milli: a
                        .change_per_min_max
                        .unwrap_or(cur.change_per_min_max_milli),
                    price_step_milli: a.price_step.unwrap_or(cur.price_step_milli),
                    confidence_full_at: a.confidence_full_at.unwrap_or(cur.confidence_full_at),
                };
                c.policy_set(new).await?;
                Ok(new)
            })?;
            (p, a.to, true)
        }
    };
    if to.json {
        print_json(&policy_json(&p));
    } else {
        if changed {
            println!("surge policy is now v{}", p.version);
        }
        policy_table(&p);
    }
    Ok(())
}
