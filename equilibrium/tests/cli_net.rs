//! The client commands of the binary against a real node: send-events, quote, verify, explain.

mod support;

use std::process::Command;

use support::{TestNode, PREMIUM};

fn run(node: &TestNode, ca: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .args(args)
        .args(["--addr", &node.addr.to_string(), "--token", PREMIUM, "--ca"])
        .arg(ca)
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_client_commands_send_events_quote_verify_and_explain() {
    let node = TestNode::start("");
    let ca = node.dir.join("cert.pem");
    let events = node.dir.join("events.txt");
    std::fs::write(&events, "# id kind zone [driver]\n1 driver_available 881f1d4899fffff 7\n2 rider_demand 881f1d4899fffff\n\n3 trip_requested 881f1d4899fffff\n").expect("write");

    let (ok, out, err) = run(
        &node,
        &ca,
        &["send-events", events.to_str().expect("utf-8")],
    );
    assert!(ok, "{err}");
    assert!(out.contains("applied       3"), "{out}");
    let (ok, out, _) = run(
        &node,
        &ca,
        &["send-events", events.to_str().expect("utf-8")],
    );
    assert!(ok);
    assert!(
        out.contains("duplicate     3"),
        "resending is applied once: {out}"
    );

    let (ok, out, err) = run(
        &node,
        &ca,
        &[
            "quote",
            "--zone",
            "881f1d4899fffff",
            "--distance-m",
            "4000",
            "--duration-s",
            "600",
        ],
    );
    assert!(ok, "{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token       "))
        .expect("token line")
        .trim()
        .to_owned();

    let (ok, out, err) = run(&node, &ca, &["verify", &token]);
    assert!(ok, "{err}");
    assert!(out.starts_with("valid:"), "{out}");
    let (ok, out, err) = run(&node, &ca, &["explain", &token]);
    assert!(ok, "{err}");
    assert!(out.contains("matches the quote"), "{out}");

    let mut bad = token.clone();
    bad.replace_range(60..62, if &token[60..62] == "00" { "01" } else { "00" });
    let (ok, _, err) = run(&node, &ca, &["verify", &bad]);
    assert!(!ok);
    assert!(err.contains("invalid_token"), "{err}");

    let (ok, _, err) = run(&node, &ca, &["quote", "--lat", "95", "--lng", "0"]);
    assert!(!ok);
    assert!(err.contains("invalid_coordinates"), "{err}");
}
