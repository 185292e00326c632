//! `equilibrium demo` as a user runs it: a real process that starts a real `redis-server`
//! and three real node processes, replays the city, writes its report and stops everything.
//! Checked: the exit status, the report files, and that no process the demo started (its
//! `pids` file names them) is left, also after a SIGINT or SIGTERM in the middle of the run and when
//! Redis is missing (the one-node fallback).
//!
//! Needs `redis-server` (scripts/test.sh installs it). The tests run one at a time.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "eq-demo-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The demo's children as it recorded them: (name, pid).
fn recorded_pids(out: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(out.join("pids")).expect("the demo writes a pid file");
    text.lines()
        .map(|l| {
            let (name, pid) = l.rsplit_once(' ').expect("NAME PID");
            (name.to_owned(), pid.parse().expect("pid"))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILLs every recorded child still alive (so a failing test leaves no cluster behind).
fn kill_recorded(out: &Path) {
    let Ok(text) = std::fs::read_to_string(out.join("pids")) else {
        return;
    };
    for pid in text
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
    {
        if alive(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn assert_none_left(out: &Path) -> Vec<(String, u32)> {
    let pids = recorded_pids(out);
    let left: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).cloned().collect();
    if !left.is_empty() {
        kill_recorded(out);
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
    pids
}

/// A running demo whose standard output is read line by line. If the test panics, the demo
/// and every child it recorded are killed.
struct Demo {
    child: Child,
    out: Option<PathBuf>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("demo starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let out = args
            .iter()
            .position(|a| *a == "--out")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from);
        Self {
            child,
            out,
            lines,
            seen: Vec::new(),
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(out) = &self.out {
                kill_recorded(out);
            }
        }
    }
}

impl Demo {
    /// Waits (bounded) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let hit = l.contains(needle);
                self.seen.push(l);
                if hit {
                    return;
                }
            }
        }
        panic!(
            "no line with {needle:?} within {within:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits (bounded) for the exit; returns the status, stdout and stderr.
    fn finish(mut self, within: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the demo did not exit within {within:?}; output:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        (status, self.seen.join("\n"), err)
    }
}

#[test]
fn the_demo_runs_a_three_node_cluster_writes_its_report_and_leaves_no_process() {
    let _g = lock();
    let out = temp_dir("run");
    let demo = Demo::start(&["--seconds", "5", "--out", out.to_str().expect("utf-8")]);
    let (status, stdout, stderr) = demo.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "demo failed: {status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("cluster formed"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");
    let objectives = json["objectives"]
        .as_array()
        .expect("an objectives section");
    assert!(!objectives.is_empty(), "no objective judged: {json}");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3), "{json}");
    assert!(json["totals"]["sent"].as_u64().unwrap_or(0) > 0, "{json}");
    let svg = std::fs::read_to_string(out.join("report.svg")).expect("report.svg written");
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    for i in 1..=3 {
        assert!(out.join(format!("logs/node{i}.log")).exists());
    }
    let pids = assert_none_left(&out);
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["redis-server", "node 1", "node 2", "node 3"]);
    let _ = std::fs::remove_dir_all(&out);
}

/// Starts a long demo, sends `signal` once the city is being replayed, and checks that the
/// demo exits promptly with `code` and leaves no process.
fn interrupt_mid_run(signal: &str, code: i32) {
    let out = temp_dir(signal);
    let mut demo = Demo::start(&["--seconds", "60", "--out", out.to_str().expect("utf-8")]);
    demo.wait_for("replaying the city", Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(2));
    let pids = recorded_pids(&out);
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert!(pids.iter().all(|(_, p)| alive(*p)), "{pids:?}");
    // The nodes listen on port 0; the cluster must still name their real client addresses.
    let started = demo
        .seen
        .iter()
        .find(|l| l.contains("started 3 nodes"))
        .expect("the demo names its nodes")
        .clone();
    let mut addrs: Vec<String> = started
        .split("node ")
        .filter_map(|p| p.split(" on ").nth(1)?.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(addrs.len(), 3, "{started}");
    // The demo makes fresh secrets per run and says which admin token it made.
    let admin_token = demo
        .seen
        .iter()
        .find_map(|l| l.split("admin token ").nth(1))
        .expect("the demo names this run's admin token")
        .trim()
        .to_owned();
    assert!(admin_token.starts_with("admin-"), "{admin_token}");
    assert_ne!(admin_token, "admin-demo-token");
    let members = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .args([
            "members",
            "--json",
            "--insecure",
            "--token",
            &admin_token,
            "--addr",
        ])
        .arg(&addrs[0])
        .output()
        .expect("members");
    let json: serde_json::Value = serde_json::from_slice(&members.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&members.stderr)));
    let mut seen: Vec<String> = json["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["client_addr"].as_str().expect("client_addr").to_owned())
        .collect();
    seen.sort();
    addrs.sort();
    assert_eq!(
        seen, addrs,
        "the members' client addresses are the ports they listen on"
    );
    let st = Command::new("kill")
        .args([&format!("-{signal}"), &demo.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let sent = Instant::now();
    let (status, stdout, stderr) = demo.finish(Duration::from_secs(20));
    println!("demo exited {:?} after SIG{signal}", sent.elapsed());
    assert_eq!(status.code(), Some(code), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("no process of the demo is left"),
        "{stdout}"
    );
    assert!(
        !out.join("report.json").exists(),
        "an interrupted run writes no report"
    );
    assert_none_left(&out);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sigint_in_the_middle_of_the_run_stops_the_demo_and_every_process_it_started() {
    let _g = lock();
    interrupt_mid_run("INT", 130);
}

#[test]
fn sigterm_in_the_middle_of_the_run_stops_the_demo_and_every_process_it_started() {
    let _g = lock();
    interrupt_mid_run("TERM", 143);
}

#[test]
fn without_redis_the_demo_warns_and_runs_one_standalone_node() {
    let _g = lock();
    let out = temp_dir("noredis");
    let demo = Demo::start(&[
        "--seconds",
        "3",
        "--out",
        out.to_str().expect("utf-8"),
        "--redis-server",
        "/nonexistent/redis-server",
    ]);
    let (status, stdout, stderr) = demo.finish(Duration::from_secs(40));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stderr.contains("THIS IS NOT THE CLUSTER DEMO"), "{stderr}");
    assert!(stdout.contains("ONE standalone node"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json written"),
    )
    .expect("JSON");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(1), "{json}");
    let pids = assert_none_left(&out);
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(pids[0].0, "node 1");
    let _ = std::fs::remove_dir_all(&out);
}
