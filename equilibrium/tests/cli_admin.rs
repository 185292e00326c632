//! The admin commands of the binary against a real node: `--json` output checked against the
//! node's real state, and the documented exit codes for refusals and unreachable nodes.

mod support;

use std::process::Command;

use protocol::msg::{self, event_kind};
use serde_json::Value;
use support::{TestNode, ADMIN, PREMIUM, READER};

const ZONE: &str = "881f1d4899fffff";
const ZONE_RAW: u64 = 0x881f1d4899fffff;

struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.err);
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

fn run(addr: &str, ca: &std::path::Path, token: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .args(args)
        .args(["--addr", addr, "--token", token, "--ca"])
        .arg(ca)
        .output()
        .expect("binary runs");
    Run {
        code: out.status.code().expect("exited"),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_show_the_nodes_real_state_and_change_it() {
    let node = TestNode::start("");
    let ca = node.dir.join("cert.pem");
    let addr = node.addr.to_string();
    let cli = |token: &str, args: &[&str]| run(&addr, &ca, token, args);

    // Real state: 3 drivers, 4 demand signals, 1 accepted trip.
    let client = node.client(PREMIUM).await;
    let mut events = vec![];
    for (i, d) in [11u64, 12, 13].iter().enumerate() {
        events.push(msg::WireEvent {
            id: i as u64 + 1,
            zone: ZONE_RAW,
            driver: *d,
            kind: event_kind::DRIVER_AVAILABLE,
        });
    }
    for id in 10..14 {
        events.push(msg::WireEvent {
            id,
            zone: ZONE_RAW,
            driver: 0,
            kind: event_kind::RIDER_DEMAND,
        });
    }
    events.push(msg::WireEvent {
        id: 20,
        zone: ZONE_RAW,
        driver: 0,
        kind: event_kind::TRIP_ACCEPTED,
    });
    client.send_events(events).await.expect("events");

    let z = cli(READER, &["zone", ZONE, "--json"]).json();
    assert_eq!(z["zone"], ZONE);
    assert_eq!(z["drivers"], 3);
    assert_eq!(z["demand"], 4);
    assert_eq!(z["accepted"], 1);
    assert_eq!(z["dedupe_ids"], 8);
    let reader = node.client(READER).await;
    let real = reader.zone_state(ZONE_RAW).await.expect("zone state");
    assert_eq!(z["snapshot_version"], real.version);
    assert_eq!(z["multiplier_milli"], real.multiplier_milli);
    assert_eq!(z["fare"]["version"], real.fare.version);
    // The recent history: newest first, versions decreasing, the newest no newer than now.
    let h = z["history"].as_array().expect("history");
    assert!(!h.is_empty(), "{z}");
    let versions: Vec<u64> = h.iter().filter_map(|x| x["version"].as_u64()).collect();
    assert!(versions.windows(2).all(|w| w[0] > w[1]), "{versions:?}");
    assert!(
        versions[0] <= real.version,
        "{versions:?} vs {}",
        real.version
    );
    let human = cli(READER, &["zone", ZONE]);
    assert_eq!(human.code, 0, "{}", human.err);
    assert!(human.out.contains("3 available"), "{}", human.out);

    // Fares: set some fields, the rest keep their values, the version goes up by one.
    let before = cli(READER, &["fare", "get", ZONE, "--json"]).json();
    assert_eq!(before["version"], 1);
    let set = cli(
        ADMIN,
        &[
            "fare",
            "set",
            ZONE,
            "--base",
            "999",
            "--cap",
            "2.5",
            "--currency",
            "GBP",
            "--json",
        ],
    )
    .json();
    assert_eq!(set["version"], 2);
    let after = cli(READER, &["fare", "get", ZONE, "--json"]).json();
    assert_eq!(after["version"], 2);
    assert_eq!(after["base_minor"], 999);
    assert_eq!(after["surge_cap_milli"], 2500);
    assert_eq!(after["currency"], "GBP");
    assert_eq!(after["per_km_minor"], before["per_km_minor"]);
    assert_eq!(after["minimum_minor"], before["minimum_minor"]);
    let wire = reader.fare_get(ZONE_RAW).await.expect("fare");
    assert_eq!(
        (wire.version, wire.base_minor, &wire.currency),
        (2, 999, b"GBP")
    );

    // A version that is not newer: conflict, exit 5.
    let stale = cli(
        ADMIN,
        &["fare", "set", ZONE, "--version", "2", "--base", "1"],
    );
    assert_eq!(stale.code, 5, "{}", stale.err);
    assert!(stale.err.contains("conflict"), "{}", stale.err);
    // An invalid value: exit 4.
    let bad = cli(ADMIN, &["fare", "set", ZONE, "--cap", "0.5"]);
    assert_eq!(bad.code, 4, "{}", bad.err);
    assert!(bad.err.contains("invalid_value"), "{}", bad.err);

    // Policy.
    let p = cli(ADMIN, &["policy", "set", "--cap", "2.0", "--json"]).json();
    assert_eq!(
        (p["version"].clone(), p["cap_milli"].clone()),
        (2.into(), 2000.into())
    );
    let p = cli(READER, &["policy", "get", "--json"]).json();
    assert_eq!(p["cap_milli"], 2000);
    assert_eq!(reader.policy_get().await.expect("policy").cap_milli, 2000);

    // Status.
    let s = cli(READER, &["status", "--json"]).json();
    assert_eq!(s["zones"], 1);
    assert_eq!(s["policy_version"], 2);
    let human = cli(READER, &["status"]);
    assert!(human.out.contains("policy     v2"), "{}", human.out);

    // Quote and explain as JSON; the explanation re-derives the quoted amount.
    let q = cli(PREMIUM, &["quote", "--zone", ZONE, "--json"]).json();
    let token = q["token"].as_str().expect("token");
    let e = cli(PREMIUM, &["explain", token, "--json"]).json();
    assert_eq!(e["amount_minor"], q["amount_minor"]);
    assert_eq!(e["recomputed_minor"], q["amount_minor"]);
    assert_eq!(e["matches"], true);
    let v = cli(PREMIUM, &["verify", token, "--json"]).json();
    assert_eq!(v["zone"], ZONE);

    // Refusals: a zone not live here (4), a role that may not (3), an unknown token (3).
    let unknown = cli(READER, &["zone", "882a100d67fffff"]);
    assert_eq!(unknown.code, 4, "{}", unknown.err);
    assert!(unknown.err.contains("unknown_zone"), "{}", unknown.err);
    let forbidden = cli(READER, &["fare", "set", ZONE, "--base", "5"]);
    assert_eq!(forbidden.code, 3, "{}", forbidden.err);
    assert!(forbidden.err.contains("forbidden"), "{}", forbidden.err);
    assert!(forbidden.err.contains("role"), "{}", forbidden.err);
    let client_role = cli(PREMIUM, &["status"]);
    assert_eq!(client_role.code, 3, "{}", client_role.err);
    let wrong = cli("not-a-known-token", &["status"]);
    assert_eq!(wrong.code, 3, "{}", wrong.err);
    assert!(wrong.err.contains("bad_credentials"), "{}", wrong.err);
    assert!(wrong.err.contains("--token"), "{}", wrong.err);
    // Nothing changed by the refused requests.
    assert_eq!(reader.fare_get(ZONE_RAW).await.expect("fare").version, 2);
    client.close().await;
    reader.close().await;
}

#[test]
fn an_unreachable_node_and_bad_usage_have_their_own_exit_codes() {
    // A port nobody listens on: bind one, note it, free it.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let dir = std::env::temp_dir().join(format!("eq-cli-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).expect("write");
    let r = run(&free, &ca, ADMIN, &["status"]);
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.err.contains("unreachable"), "{}", r.err);

    let usage = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .args(["fare", "set"])
        .output()
        .expect("runs");
    assert_eq!(usage.status.code(), Some(1));
    let help = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .arg("--help")
        .output()
        .expect("runs");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
    std::fs::remove_dir_all(&dir).ok();
}
