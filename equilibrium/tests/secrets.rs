//! The node's secrets, checked before it starts: the samples shipped in this repository are
//! refused outside development mode, bad key text is a clear error, private key files open
//! to group or others are refused; and `cluster-credentials` writes private keys 0600, the CA
//! key apart from node material, one certificate per node naming its id. And key rotation
//! with real nodes: several key ids loaded, the newest signs, every one verifies; a node
//! without a token's key refuses it.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_equilibrium");

fn shipped_config() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml")).to_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "eq-secrets-{tag}-{}-{}",
        std::process::id(),
        server::secrets::random_hex(4)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `equilibrium node` with `args` on free ports and returns its exit code and stderr;
/// the node is expected to refuse to start.
fn refused(config: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--premium-listen",
            "",
        ])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    (status.code().unwrap_or(-1), err)
}

#[test]
fn the_shipped_sample_key_is_refused_without_development_mode() {
    let (code, err) = refused(&shipped_config(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cluster_key_hex is a sample"), "{err}");
    assert!(err.contains("--dev"), "{err}");
}

#[test]
fn with_the_dev_flag_the_shipped_config_starts_and_warns_loudly() {
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(shipped_config())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--premium-listen",
            "",
        ])
        .arg("--dev")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let started = out.read_line(&mut line).is_ok() && line.contains("listening on");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(started, "no banner: {line}\n{err}");
    let dev: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("DEVELOPMENT MODE"))
        .collect();
    // One line for the mode, one per sample (the key and three tokens).
    assert_eq!(dev.len(), 5, "{err}");
}

fn write_config(dir: &Path, key: &str, extra: &str) -> PathBuf {
    let engine = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/engine.toml");
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!("engine_config = \"{engine}\"\ncluster_key_hex = \"{key}\"\n{extra}"),
    )
    .expect("config");
    path
}

#[test]
fn a_non_ascii_character_in_the_cluster_key_is_a_config_error_not_a_panic() {
    let dir = temp_dir("hex");
    let config = write_config(
        &dir,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeé",
        "",
    );
    let (code, err) = refused(&config, &[]);
    assert_eq!(code, 1, "exit 1 (an error), not 101 (a panic): {err}");
    assert!(err.contains("cluster_key_hex"), "{err}");
    assert!(err.contains("not valid hex"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_key_file_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("mode");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("key");
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let config = write_config(
        &dir,
        &server::secrets::random_hex(32),
        "[tls]\ncert_path = \"cert.pem\"\nkey_path = \"key.pem\"\n",
    );
    let (code, err) = refused(&config, &["--dev"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mode 0644"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn cert_of(p: &Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(p).expect("certificate")
}

#[test]
fn cluster_credentials_writes_keys_0600_the_ca_apart_and_one_certificate_per_node_naming_its_id() {
    let dir = temp_dir("creds");
    let run = |nodes: &str| {
        let out = Command::new(BIN)
            .args(["cluster-credentials", "--nodes", nodes, "--out"])
            .arg(&dir)
            .output()
            .expect("cluster-credentials");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = run("1-3");
    assert!(said.contains("wrote"), "{said}");
    let ca = dir.join("ca");
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);
    for id in 1..=3u16 {
        let nd = dir.join(format!("node-{id}"));
        assert_eq!(mode(&nd), 0o700, "{}", nd.display());
        assert_eq!(mode(&nd.join("node-key.pem")), 0o600);
        assert!(!nd.join("ca-key.pem").exists(), "the CA key is kept apart");
        let names: Vec<String> = std::fs::read_dir(&nd)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            server::cluster::node_id_of(&cert_of(&nd.join("node.pem"))),
            Some(id),
            "node {id}'s certificate names it"
        );
        assert_eq!(
            std::fs::read(nd.join("ca.pem")).expect("ca"),
            std::fs::read(ca.join("ca.pem")).expect("ca")
        );
    }
    // Certificates differ per node (one key each).
    assert_ne!(
        std::fs::read(dir.join("node-1/node.pem")).expect("pem"),
        std::fs::read(dir.join("node-2/node.pem")).expect("pem")
    );
    // A node added later gets its certificate from the same CA.
    let ca_before = std::fs::read(ca.join("ca-key.pem")).expect("key");
    let said = run("4");
    assert!(said.contains("used the existing CA"), "{said}");
    assert_eq!(
        std::fs::read(ca.join("ca-key.pem")).expect("key"),
        ca_before
    );
    assert_eq!(
        server::cluster::node_id_of(&cert_of(&dir.join("node-4/node.pem"))),
        Some(4)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A quote token from `node` for a zone it prices (created by one event first).
async fn quote_token(node: &support::TestNode) -> [u8; engine::TOKEN_LEN] {
    let c = node.client(support::PREMIUM).await;
    let zone = engine::ZoneId::from_lat_lng(48.8584, 2.2945, 8)
        .expect("zone")
        .raw();
    let ev = protocol::msg::WireEvent {
        id: 1,
        zone,
        driver: 0,
        kind: protocol::msg::event_kind::RIDER_DEMAND,
    };
    c.send_events(vec![ev]).await.expect("event");
    c.quote_zone(zone, 3_000, 600).await.expect("quote").token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_node_signs_with_the_newest_key_verifies_the_old_and_a_node_without_the_old_key_refuses_it(
) {
    let key1 = support::cluster_key_hex();
    let key2 = server::secrets::random_hex(32);
    // Before the rotation: key 1 only (SECURITY.md, "Rotating the cluster key").
    let before = support::TestNode::start_with_keys(&format!("cluster_key_hex = \"{key1}\""));
    let old = quote_token(&before).await;
    let info = before
        .client(support::PREMIUM)
        .await
        .verify(old)
        .await
        .expect("its own token");
    assert_eq!(info.key_id, 1);
    drop(before);
    // Switched: keys 1 and 2 loaded, no signing_key_id, so the newest (2) signs.
    let rotated = support::TestNode::start_with_keys(&format!(
        "cluster_key_hex = \"{key1}\"\ncluster_keys = [{{ id = 2, hex = \"{key2}\" }}]"
    ));
    let c = rotated.client(support::PREMIUM).await;
    let verified = c
        .verify(old)
        .await
        .expect("a token signed with key 1 verifies");
    assert_eq!(verified.key_id, 1);
    let new = quote_token(&rotated).await;
    let verified = c.verify(new).await.expect("its own token");
    assert_eq!(verified.key_id, 2, "the newest key signs");
    assert_eq!(
        u16::from_le_bytes([new[94], new[95]]),
        2,
        "key id in bytes 94-95"
    );
    // Staged: keys 1 and 2 loaded, still signing with 1.
    let staged = support::TestNode::start_with_keys(&format!(
        "cluster_key_hex = \"{key1}\"\ncluster_keys = [{{ id = 2, hex = \"{key2}\" }}]\nsigning_key_id = 1"
    ));
    let staged_token = quote_token(&staged).await;
    assert_eq!(u16::from_le_bytes([staged_token[94], staged_token[95]]), 1);
    let c = staged.client(support::PREMIUM).await;
    assert_eq!(c.verify(new).await.expect("key 2 verifies").key_id, 2);
    // Retired: key 2 only. Key 1's tokens are refused, saying why; key 2's verify.
    let retired = support::TestNode::start_with_keys(&format!(
        "cluster_key_hex = \"\"\ncluster_keys = [{{ id = 2, hex = \"{key2}\" }}]"
    ));
    let c = retired.client(support::PREMIUM).await;
    let e = c.verify(old).await.expect_err("key 1 is retired");
    assert_eq!(e.code(), Some(protocol::ErrorCode::InvalidToken), "{e}");
    assert!(e.to_string().contains("unknown key id 1"), "{e}");
    assert_eq!(c.verify(new).await.expect("key 2 verifies").key_id, 2);
    let e = c.verify(staged_token).await.expect_err("signed with key 1");
    assert!(e.to_string().contains("unknown key id 1"), "{e}");
    assert_eq!(
        u16::from_le_bytes({
            let t = quote_token(&retired).await;
            [t[94], t[95]]
        }),
        2
    );
}
