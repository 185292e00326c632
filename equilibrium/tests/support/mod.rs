//! A real `equilibrium node` process for end-to-end tests: its own config, certificate and
//! port, stopped (SIGTERM, then SIGKILL) when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, Trust};

pub(crate) const PREMIUM: &str = "premium-test-token";
pub(crate) const SHARED: &str = "shared-test-token";
pub(crate) const ADMIN: &str = "admin-test-token";
pub(crate) const READER: &str = "reader-test-token";

/// The cluster key of every node this test process starts: fresh per run (a key in the
/// source would be a published secret), the same for all its nodes so their tokens verify
/// on each other.
pub(crate) fn cluster_key_hex() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| server::secrets::random_hex(32))
}

/// The engine configuration test nodes run: the market's time constants in seconds, so that a
/// test of a few seconds sees prices move.
pub(crate) const FAST_ENGINE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/engine-fast.toml"
);

pub(crate) struct TestNode {
    pub(crate) child: Option<Child>,
    pub(crate) addr: SocketAddr,
    /// The premium tier's own endpoint, when started with one.
    pub(crate) premium_addr: Option<SocketAddr>,
    /// Where the node serves `/metrics` and `/health`.
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) dir: PathBuf,
    pub(crate) cert_der: Vec<u8>,
    /// The node's standard error, when started with [`TestNode::start_logged`].
    pub(crate) log_path: Option<PathBuf>,
}

impl TestNode {
    /// Starts a node with extra `[limits]` lines.
    pub(crate) fn start(limits: &str) -> Self {
        Self::start_on("127.0.0.1:0", limits)
    }

    /// Starts a node with extra `[limits]` lines whose log (standard error, `RUST_LOG=warn`
    /// unless `EQ_TEST_LOG` says otherwise) goes to the file [`TestNode::log`] reads.
    pub(crate) fn start_logged(limits: &str) -> Self {
        LOG_TO_FILE.with(|l| l.set(true));
        let node = Self::start(limits);
        LOG_TO_FILE.with(|l| l.set(false));
        node
    }

    /// What the node has logged so far (started with [`TestNode::start_logged`]).
    pub(crate) fn log(&self) -> String {
        let path = self.log_path.as_ref().expect("started with start_logged");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The node's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the node's process is still running.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts a node whose engine configuration is `engine` (a path) instead of the tests'
    /// fast market (`tests/support/engine-fast.toml`).
    pub(crate) fn start_with_engine(engine: &str) -> Self {
        let ck =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        Self::start_inner(
            "127.0.0.1:0",
            "",
            engine,
            ck.cert.pem(),
            ck.signing_key.serialize_pem(),
            ck.cert.der().to_vec(),
            None,
        )
    }

    /// Starts a node with a premium endpoint (`premium_listen`) on a free port.
    pub(crate) fn start_premium() -> Self {
        let ck =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        Self::start_inner(
            "127.0.0.1:0\"\npremium_listen = \"127.0.0.1:0",
            "",
            FAST_ENGINE,
            ck.cert.pem(),
            ck.signing_key.serialize_pem(),
            ck.cert.der().to_vec(),
            None,
        )
    }

    /// Starts a node on a given address with extra `[limits]` lines.
    pub(crate) fn start_on(listen: &str, limits: &str) -> Self {
        let ck =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        Self::start_inner(
            listen,
            limits,
            FAST_ENGINE,
            ck.cert.pem(),
            ck.signing_key.serialize_pem(),
            ck.cert.der().to_vec(),
            None,
        )
    }

    /// Starts a node with the certificate (and key) of a node started earlier in this thread.
    pub(crate) fn start_with_cert(listen: &str, limits: &str, cert_der: Vec<u8>) -> Self {
        let (cert_pem, key_pem) = SAVED
            .with(|s| s.borrow().get(&cert_der).cloned())
            .expect("certificate of an earlier node");
        Self::start_inner(
            listen,
            limits,
            FAST_ENGINE,
            cert_pem,
            key_pem,
            cert_der,
            None,
        )
    }

    /// Starts a node whose quote-token keys are `keys` (TOML lines: `cluster_key_hex`,
    /// `cluster_keys`, `signing_key_id`) instead of the tests' one cluster key.
    pub(crate) fn start_with_keys(keys: &str) -> Self {
        let ck =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        Self::start_inner(
            "127.0.0.1:0",
            "",
            FAST_ENGINE,
            ck.cert.pem(),
            ck.signing_key.serialize_pem(),
            ck.cert.der().to_vec(),
            Some(keys),
        )
    }

    fn start_inner(
        listen: &str,
        limits: &str,
        engine: &str,
        cert_pem: String,
        key_pem: String,
        cert_der: Vec<u8>,
        keys: Option<&str>,
    ) -> Self {
        SAVED.with(|s| {
            s.borrow_mut()
                .insert(cert_der.clone(), (cert_pem.clone(), key_pem.clone()))
        });
        let dir =
            std::env::temp_dir().join(format!("eq-node-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write cert");
        server::secrets::write_private(&dir.join("key.pem"), key_pem.as_bytes())
            .expect("write key");
        let keys = match keys {
            Some(k) => k.to_owned(),
            None => format!("cluster_key_hex = \"{}\"", cluster_key_hex()),
        };
        std::fs::write(
            dir.join("node.toml"),
            format!(
                r#"listen = "{listen}"
engine_config = "{engine}"
metrics_listen = "127.0.0.1:0"
{keys}
[tls]
cert_path = "cert.pem"
key_path = "key.pem"
[limits]
{limits}
[[clients]]
token = "{PREMIUM}"
tier = "premium"
name = "test-premium"
[[clients]]
token = "{SHARED}"
tier = "shared"
name = "test-shared"
[[clients]]
token = "{ADMIN}"
tier = "premium"
role = "admin"
name = "test-admin"
[[clients]]
token = "{READER}"
tier = "shared"
role = "read"
name = "test-reader"
"#
            ),
        )
        .expect("write config");
        let log_path = LOG_TO_FILE.with(|l| l.get()).then(|| dir.join("node.log"));
        let stderr = match &log_path {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
            .args(["node", "--config"])
            .arg(dir.join("node.toml"))
            .env(
                "RUST_LOG",
                std::env::var("EQ_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        // The banner: the client address, the premium endpoint's (when configured), then the
        // metrics address; the address ends each line.
        let mut banner_line = |what: &str| {
            let mut line = String::new();
            reader.read_line(&mut line).expect("node prints its banner");
            let last = line.trim().rsplit([' ', '/']).next().unwrap_or_default();
            let addr: SocketAddr = last
                .parse()
                .unwrap_or_else(|_| panic!("no {what} address in {line:?}"));
            (line, addr)
        };
        let (_, addr) = banner_line("client");
        let (line, mut metrics_addr) = banner_line("premium or metrics");
        let mut premium_addr = None;
        if line.contains("premium tier endpoint on") {
            premium_addr = Some(metrics_addr);
            metrics_addr = banner_line("metrics").1;
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Self {
            child: Some(child),
            addr,
            premium_addr,
            metrics_addr,
            dir,
            cert_der,
            log_path,
        }
    }

    /// `GET path` on the node's metrics endpoint: (HTTP status, body).
    pub(crate) fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr, path)
    }

    pub(crate) fn trust(&self) -> Trust {
        Trust::Roots(vec![self.cert_der.clone()])
    }

    pub(crate) async fn client(&self, token: &str) -> Client {
        Client::connect(self.addr, ClientConfig::new(token, self.trust()))
            .await
            .expect("client connects")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status.
    pub(crate) fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

thread_local! {
    /// Set while [`TestNode::start_logged`] starts a node.
    static LOG_TO_FILE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// PEM pairs of the certificates started so far, by DER, so a restarted node can reuse one.
    static SAVED: std::cell::RefCell<std::collections::HashMap<Vec<u8>, (String, String)>> = Default::default();
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A minimal HTTP/1.1 GET (the node answers one request per connection and closes it).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    (status, body.to_owned())
}
