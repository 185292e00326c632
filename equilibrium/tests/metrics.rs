//! The metrics endpoint of a real node: honest counts, a valid exposition (promtool), and the
//! shipped dashboard and alert rules querying only metrics a node really exports.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol::msg::{self, event_kind};
use support::{TestNode, PREMIUM, SHARED};

const ZONE: u64 = 0x881f1d4899fffff;
const OTHER: u64 = 0x881f1d489bfffff;

/// Samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("sample line");
            (key.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

/// Metric families (`# TYPE` names) of an exposition.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().expect("name").to_owned())
        .collect()
}

fn scrape(node: &TestNode) -> HashMap<String, f64> {
    let (status, body) = node.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("{key} missing from /metrics"))
}

/// Scrapes until `key` reaches `want` (the latency of a request is recorded right after its
/// reply is written, so the client can see the reply a moment earlier), then returns it.
fn scrape_until(node: &TestNode, key: &str, want: f64) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(node);
        if get(&s, key) >= want || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `promtool ARGS` with `stdin`; `None` when promtool is not installed.
fn promtool(args: &[&str], stdin: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "\n!!!!!!!! SKIPPING `promtool {}`: promtool is not installed. \
                 ./scripts/test.sh installs it (Debian package `prometheus`). !!!!!!!!\n",
                args.join(" ")
            );
            return None;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn event(id: u64, zone: u64, kind: u8, driver: u64) -> msg::WireEvent {
    msg::WireEvent {
        id,
        zone,
        driver,
        kind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_counts_exactly_the_requests_and_events_it_answered_and_promtool_accepts_it() {
    let node = TestNode::start("");
    let (status, body) = node.http_get("/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"serving\""), "{body}");

    let premium = node.client(PREMIUM).await;
    let shared = node.client(SHARED).await;
    let before = scrape(&node);
    let q_premium = "equilibrium_request_duration_seconds_count{op=\"quote\",tier=\"premium\"}";
    let q_shared = "equilibrium_request_duration_seconds_count{op=\"quote\",tier=\"shared\"}";
    let events_premium =
        "equilibrium_request_duration_seconds_count{op=\"events\",tier=\"premium\"}";
    let batch_shared =
        "equilibrium_request_duration_seconds_count{op=\"quote_batch\",tier=\"shared\"}";
    for key in [q_premium, q_shared, events_premium, batch_shared] {
        assert_eq!(get(&before, key), 0.0, "{key} before any request");
    }

    // Events: 2 drivers and 5 demand signals in ZONE, 3 in OTHER; 2 of them resent; 1
    // with an invalid zone id. Two batches.
    let mut batch: Vec<msg::WireEvent> = vec![
        event(1, ZONE, event_kind::DRIVER_AVAILABLE, 7),
        event(2, ZONE, event_kind::DRIVER_AVAILABLE, 8),
    ];
    batch.extend((10..15).map(|i| event(i, ZONE, event_kind::RIDER_DEMAND, 0)));
    batch.extend((20..23).map(|i| event(i, OTHER, event_kind::RIDER_DEMAND, 0)));
    let applied = batch.len();
    let outcomes = premium.send_events(batch).await.expect("events");
    assert!(outcomes.iter().all(|&o| o == msg::outcome::APPLIED));
    let second = vec![
        event(1, ZONE, event_kind::DRIVER_AVAILABLE, 7),
        event(10, ZONE, event_kind::RIDER_DEMAND, 0),
        event(30, 12345, event_kind::RIDER_DEMAND, 0),
    ];
    premium.send_events(second).await.expect("events");

    // Quotes: N premium, S shared, one shared batch of K, one quote for an unknown zone.
    const N: usize = 23;
    const S: usize = 9;
    const K: usize = 5;
    for _ in 0..N {
        premium.quote_zone(ZONE, 5_000, 600).await.expect("quote");
    }
    for _ in 0..S {
        shared.quote_zone(OTHER, 5_000, 600).await.expect("quote");
    }
    let q = msg::QuoteRequest {
        zone: ZONE,
        lat: 0.0,
        lng: 0.0,
        distance_m: 1_000,
        duration_s: 120,
        origin: msg::ORIGIN_ZONE,
    };
    let results = shared.quote_batch(vec![q; K]).await.expect("batch");
    assert_eq!(results.len(), K);
    premium
        .quote_zone(0x882a100d67fffff, 5_000, 600)
        .await
        .expect_err("no price for a zone never seen");

    let after = scrape_until(&node, q_premium, (N + 1) as f64);
    let delta = |key: &str| get(&after, key) - get(&before, key);
    assert_eq!(delta(q_premium), (N + 1) as f64, "N quotes + 1 refused");
    assert_eq!(delta(q_shared), S as f64);
    assert_eq!(delta(batch_shared), 1.0, "a batch is one request");
    assert_eq!(delta(events_premium), 2.0);
    assert_eq!(
        delta("equilibrium_events_applied_total"),
        applied as f64,
        "every fresh event once"
    );
    assert_eq!(delta("equilibrium_events_duplicate_total"), 2.0);
    assert_eq!(
        delta("equilibrium_events_rejected_total{reason=\"invalid_zone\"}"),
        1.0
    );
    assert_eq!(
        delta("equilibrium_request_errors_total{code=\"unknown_zone\"}"),
        1.0
    );
    assert_eq!(get(&after, "equilibrium_zones_owned"), 2.0);
    assert_eq!(
        get(&after, "equilibrium_requests_shed_total{tier=\"shared\"}"),
        0.0
    );
    assert_eq!(get(&after, "equilibrium_connections_open"), 2.0);
    assert_eq!(get(&after, "equilibrium_up"), 1.0);
    // The +Inf bucket holds every request, and the buckets are cumulative.
    let inf =
        "equilibrium_request_duration_seconds_bucket{op=\"quote\",tier=\"premium\",le=\"+Inf\"}";
    assert_eq!(get(&after, inf), get(&after, q_premium));
    // Cluster metrics exist, at zero, until the cluster layer feeds them.
    for key in [
        "equilibrium_cluster_members",
        "equilibrium_cluster_fencing_rejections_total",
        "equilibrium_cluster_handoffs_total{direction=\"acquired\"}",
        "equilibrium_cluster_lease_renewals_total{result=\"failed\"}",
        "equilibrium_redis_up",
        "equilibrium_redis_write_duration_seconds_count",
    ] {
        assert_eq!(get(&after, key), 0.0, "{key}");
    }

    // Ticks run every 250 ms: wait for one so the tick histogram is not empty either.
    let ticked = scrape_until(&node, "equilibrium_tick_duration_seconds_count", 1.0);
    assert!(get(&ticked, "equilibrium_tick_duration_seconds_count") >= 1.0);
    assert!(get(&ticked, "equilibrium_snapshot_age_seconds") < 60.0);

    let (_, text) = node.http_get("/metrics");
    if let Some((ok, out)) = promtool(&["check", "metrics"], &text) {
        assert!(ok, "promtool check metrics:\n{out}");
    }
    premium.close().await;
    shared.close().await;
}

/// Metric families a PromQL text refers to (`equilibrium_*` and `process_*`, histogram
/// suffixes removed when the node exports the family without them).
fn referenced(expr: &str, exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    let next = |r: &str| {
        ["equilibrium_", "process_"]
            .iter()
            .filter_map(|p| r.find(p))
            .min()
    };
    while let Some(i) = next(rest) {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
            .map(str::to_owned)
            .unwrap_or(name);
        out.insert(family);
    }
    out
}

/// Every PromQL text of a dashboard: panel `expr`s and variable `query`/`definition`s, with
/// whether it is a panel expression.
fn exprs(v: &serde_json::Value, out: &mut Vec<(bool, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push((true, s.clone())),
                    ("query" | "definition", serde_json::Value::String(s)) => {
                        out.push((false, s.clone()))
                    }
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_alert_rules_query_only_metrics_a_live_node_exports() {
    let node = TestNode::start("");
    let (_, text) = node.http_get("/metrics");
    let exported = families(&text);

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} queries nothing", p["title"]);
    }
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let mut used = BTreeSet::new();
    for (is_panel, e) in &all {
        let names = referenced(e, &exported);
        assert!(
            !*is_panel || !names.is_empty(),
            "expression without a metric: {e}"
        );
        used.extend(names);
    }
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries unknown metrics: {missing:?}"
    );
    // And it shows every metric the node exports.
    let unshown: Vec<_> = exported
        .difference(&used)
        .filter(|n| *n != "equilibrium_uptime_seconds" && *n != "equilibrium_up")
        .collect();
    assert!(
        unshown.is_empty(),
        "metrics the dashboard does not show: {unshown:?}"
    );

    let rules_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/alerts.yml");
    let rules = std::fs::read_to_string(rules_path).expect("alert rules");
    let in_rules = referenced(&rules, &exported);
    let missing: Vec<_> = in_rules.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "alert rules use unknown metrics: {missing:?}"
    );
    for must in [
        "equilibrium_request_duration_seconds",
        "equilibrium_requests_shed_total",
        "equilibrium_redis_up",
        "equilibrium_cluster_membership_changes_total",
        "equilibrium_snapshot_age_seconds",
        "equilibrium_cluster_fencing_rejections_total",
    ] {
        assert!(in_rules.contains(must), "no alert rule watches {must}");
    }
    if let Some((ok, out)) = promtool(&["check", "rules", rules_path], "") {
        assert!(ok, "promtool check rules:\n{out}");
    }
}
