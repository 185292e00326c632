//! The simulator against real node processes: a replayed trace leaves the same zone state
//! every time, and a short scenario run through the CLI reports consistent counts.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use sim::city::{City, CityConfig, CityTrace};
use support::{TestNode, ADMIN, PREMIUM, SHARED};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn target(node: &TestNode) -> sim::Target {
    sim::Target {
        nodes: vec![node.addr],
        premium_nodes: Vec::new(),
        trust: node.trust(),
        server_name: "localhost".into(),
        premium_token: PREMIUM.into(),
        shared_token: SHARED.into(),
    }
}

/// The parts of a zone's state that do not depend on when ticks ran: distinct drivers,
/// demand and accepted trips (the node's counters decay with a half-life of an hour, so a
/// replay of a second or two leaves the same counts to within rounding), remembered event
/// ids, the fare table version. Not compared: the multiplier, snapshot version and quote count, which ticks
/// produce.
type ZoneFacts = (u32, u32, u32, u32, u32);

async fn replay_into_fresh_node(
    trace: &std::path::Path,
    zones: &BTreeSet<u64>,
) -> (BTreeMap<u64, ZoneFacts>, BTreeMap<String, u64>) {
    let node = TestNode::start_with_engine(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/engine-slow-demand.toml"
    ));
    let report = sim::replay_file(
        trace,
        &target(&node),
        &sim::Connections::default(),
        sim::Speed::Max { in_flight: 256 },
        &sim::RunOptions::default(),
    )
    .await
    .expect("replay");
    let events = report.kinds.iter().filter(|k| k.kind == "events");
    assert_eq!(
        events.map(|k| k.errors).sum::<u64>(),
        0,
        "every event batch answered: {:?}",
        report.errors_by_code
    );
    let admin = node.client(ADMIN).await;
    let mut state = BTreeMap::new();
    for z in zones {
        let s = admin.zone_state(*z).await.expect("zone state");
        state.insert(
            *z,
            (
                s.drivers,
                s.demand,
                s.accepted,
                s.dedupe_ids,
                s.fare.version,
            ),
        );
    }
    admin.close().await;
    (state, report.event_outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_trace_into_fresh_nodes_twice_leaves_identical_zone_state() {
    let city =
        City::new(CityConfig::load(&repo("configs/city.toml")).expect("city")).expect("city");
    let dir = std::env::temp_dir().join(format!("eq-sim-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("city.eqt");
    let records: Vec<_> = CityTrace::new(&city, 5, Some(15.0)).collect();
    let zones: BTreeSet<u64> = records.iter().map(|r| r.op.zone()).collect();
    sim::trace::write_file(&path, 8, "test", records).expect("write trace");

    let (a, outcomes_a) = replay_into_fresh_node(&path, &zones).await;
    let (b, outcomes_b) = replay_into_fresh_node(&path, &zones).await;
    assert_eq!(outcomes_a, outcomes_b, "same per-event outcomes");
    assert!(outcomes_a.get("applied").copied().unwrap_or(0) > 1_000);
    let drivers: u32 = a.values().map(|f| f.0).sum();
    let demand: u32 = a.values().map(|f| f.1).sum();
    assert!(
        drivers > 100 && demand > 100,
        "the trace moved the city: {drivers} drivers, {demand} demand"
    );
    // Drivers, remembered event ids and fare versions are exact; demand and accepted trips
    // are decaying counts, rounded: the two replays' timings may differ by a second, which
    // moves a count by at most a few thousandths, so by at most one after rounding.
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same zones"
    );
    for (z, (x, y)) in a.iter().map(|(z, x)| (z, (x, &b[z]))) {
        let exact = |f: &ZoneFacts| (f.0, f.3, f.4);
        assert_eq!(
            exact(x),
            exact(y),
            "zone {z:x}: drivers, event ids, fare version"
        );
        assert!(
            x.1.abs_diff(y.1) <= 1 && x.2.abs_diff(y.2) <= 1,
            "zone {z:x}: demand and accepted {x:?} vs {y:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_scenario_run_reports_every_request_once_in_json_and_svg() {
    // The premium tier goes to the node's premium endpoint.
    let node = TestNode::start_premium();
    let premium = node.premium_addr.expect("premium endpoint");
    let dir = node.dir.join("sim");
    std::fs::create_dir_all(&dir).expect("dir");
    let scenario = dir.join("tiny.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"name = "tiny"
city = "{}"
users = 50
premium_share = 0.5
ramp_up_s = 1.0
duration_s = 2.0
city_hour = 8.0
[per_user]
quotes_per_s = 4.0
events_per_s = 4.0
[objectives]
premium_p99_ms = 1000.0
error_rate_max = 0.5
"#,
            repo("configs/city.toml").display()
        ),
    )
    .expect("scenario");
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .args(["sim", "run", "--quiet", "--scenario"])
        .arg(&scenario)
        .args(["--node", &node.addr.to_string()])
        .args(["--premium-node", &premium.to_string(), "--ca"])
        .arg(node.dir.join("cert.pem"))
        .args([
            "--premium-token",
            PREMIUM,
            "--shared-token",
            SHARED,
            "--json",
        ])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("sim run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("objectives:"), "{stdout}");

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    assert_eq!(r["schema"], "equilibrium-sim-report/1");
    for field in [
        "name",
        "nodes",
        "speed",
        "wall_s",
        "schedule_s",
        "offered_per_s",
        "totals",
        "kinds",
        "errors_by_code",
        "event_outcomes",
        "shed",
        "objectives",
        "pass",
        "series",
    ] {
        assert!(r.get(field).is_some(), "report has {field}");
    }
    // The premium clients' priority: asked for, and granted or the refusal said.
    let p = &r["premium_priority"];
    assert_eq!(
        (p["nice"].as_i64(), p["slice_us"].as_u64()),
        (Some(-10), Some(100)),
        "{p}"
    );
    assert!(
        p["applied"] == true || p["refused"].as_str().is_some_and(|w| !w.is_empty()),
        "{p}"
    );
    assert!(
        stdout.contains("premium clients: own runtime thread"),
        "{stdout}"
    );
    let n = |v: &serde_json::Value| v.as_u64().expect("a count");
    let t = &r["totals"];
    assert_eq!(
        n(&t["sent"]),
        n(&t["answered"]) + n(&t["errors"]),
        "sent = answered + errors"
    );
    assert_eq!(n(&t["unfinished"]), 0);
    // 50 users × 8 requests/s over ~2.5 s of full-load equivalent: hundreds of requests.
    assert!(n(&t["sent"]) > 300, "{t}");
    let kinds = r["kinds"].as_array().expect("kinds");
    assert_eq!(kinds.len(), 4, "quote and events × premium and shared");
    let mut sum = 0;
    for k in kinds {
        assert_eq!(n(&k["sent"]), n(&k["answered"]) + n(&k["errors"]), "{k}");
        let errs: u64 = k["errors_by_code"]
            .as_object()
            .expect("codes")
            .values()
            .map(n)
            .sum();
        assert_eq!(errs, n(&k["errors"]), "{k}");
        for p in ["p50", "p95", "p99", "p999", "max"] {
            assert!(k["latency_us"].get(p).is_some(), "{p}");
        }
        if n(&k["answered"]) > 0 {
            assert!(n(&k["latency_us"]["p50"]) <= n(&k["latency_us"]["max"]));
        }
        sum += n(&k["sent"]);
    }
    assert_eq!(sum, n(&t["sent"]));
    for k in kinds {
        // Both tiers were served (the premium tier by the premium endpoint), no errors.
        assert!(n(&k["answered"]) > 0 && n(&k["errors"]) == 0, "{k}");
    }
    let series_sent: u64 = r["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| n(&s["sent"]))
        .sum();
    assert_eq!(
        series_sent,
        n(&t["sent"]),
        "the series accounts for every request"
    );
    let events_sent = n(&t["events_sent"]);
    let outcomes: u64 = r["event_outcomes"]
        .as_object()
        .expect("outcomes")
        .values()
        .map(n)
        .sum();
    assert!(outcomes <= events_sent && outcomes > 0);
    assert_eq!(r["objectives"].as_array().expect("objectives").len(), 2);
    let svg = std::fs::read_to_string(&svg).expect("svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"));
}
