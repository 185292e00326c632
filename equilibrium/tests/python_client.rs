//! A client written in another language from PROTOCOL.md alone (Python, aioquic, `struct`)
//! talks to a real node: the protocol is plain QUIC and the spec is enough to implement it.
//! The test suite installs aioquic (scripts/test.sh); without it this test fails with a clear
//! message rather than passing silently.

mod support;

use std::process::Command;

use support::{TestNode, PREMIUM};

const ZONE: &str = "881f1d4899fffff";

#[test]
fn a_python_client_built_from_the_spec_authenticates_sends_events_and_quotes() {
    let probe = Command::new("python3")
        .args(["-c", "import aioquic"])
        .output();
    assert!(
        probe.map(|o| o.status.success()).unwrap_or(false),
        "python3 with aioquic is required (scripts/test.sh installs it: pip install aioquic)"
    );
    let node = TestNode::start("");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clients/python/eq_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &node.addr.port().to_string(), PREMIUM])
        .arg(node.dir.join("cert.pem"))
        .arg(ZONE)
        .arg(support::cluster_key_hex())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Small checks on the JSON line, without a JSON crate.
    assert!(
        stdout.contains(r#""hello": {"kind": "welcome""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""events": {"kind": "outcomes", "outcomes": [0, 0]}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""resend": {"kind": "outcomes", "outcomes": [1, 1]}"#),
        "{stdout}"
    );
    // As an idempotent producer: applied, resent (duplicates), restarted (a new epoch is
    // applied), and the old epoch fenced (10).
    for (key, outcomes) in [
        ("produced", "[0, 0]"),
        ("produced_resend", "[1, 1]"),
        ("restarted", "[0]"),
        ("old_epoch", "[10, 10]"),
    ] {
        let want = format!(r#""{key}": {{"kind": "outcomes", "outcomes": {outcomes}}}"#);
        assert!(stdout.contains(&want), "{want} in {stdout}");
    }
    assert!(
        stdout.contains(&format!(r#""quote": {{"kind": "quote", "zone": "{ZONE}""#)),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""bad_latitude": {"kind": "error", "code": 21"#),
        "{stdout}"
    );
    // The token's tag is what §7 says: HMAC-SHA256 keyed with cluster_key_hex's bytes,
    // its first 16 bytes (checked by the Python client with its own hmac).
    assert!(stdout.contains(r#""tag_ok": true"#), "{stdout}");
    // The rules of PROTOCOL.md §2 and §6, as a client from the spec sees them: a reply kind
    // sent as a request (3), a client_name over 64 bytes (25), origin 2 (5), a second HELLO
    // with the same token (WELCOME) and with another (12).
    for (key, answer) in [
        ("reply_kind", r#"{"kind": "error", "code": 3"#),
        ("long_name", r#"{"kind": "error", "code": 25"#),
        ("bad_origin", r#"{"kind": "error", "code": 5"#),
        ("hello_again", r#"{"kind": "welcome""#),
        ("hello_other", r#"{"kind": "error", "code": 12"#),
    ] {
        let want = format!(r#""{key}": {answer}"#);
        assert!(stdout.contains(&want), "{want} in {stdout}");
    }

    // The token the Python client got verifies through the Rust client.
    let token_hex = stdout
        .split(r#""token": ""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("token");
    let mut token = [0u8; protocol::TOKEN_LEN];
    for (i, b) in token.iter_mut().enumerate() {
        *b = u8::from_str_radix(&token_hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let info = rt
        .block_on(async { node.client(PREMIUM).await.verify(token).await })
        .expect("the token verifies");
    assert_eq!(format!("{:x}", info.zone), ZONE);
}

/// The Python client's encoders build the published request vectors byte for byte and its
/// decoders read the published replies as `values.json` says (PROTOCOL.md §11): the second
/// implementation agrees with the vectors, not only with a node.
#[test]
fn the_python_client_builds_and_reads_the_published_vectors() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/python");
    let out = Command::new("python3")
        .arg(format!("{dir}/check_vectors.py"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/vectors"))
        .current_dir(dir)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#""built": 4, "parsed": 5, "failures": []"#),
        "{stdout}"
    );
}
