//! `equilibrium backtest` as a user runs it: a real process on the shipped day city.

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn backtest(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
        .arg("backtest")
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_backtest_writes_its_report_and_a_policy_compared_with_itself_differs_nowhere() {
    let dir = std::env::temp_dir().join(format!("eq-backtest-{}", std::process::id()));
    let city = repo("configs/city-day.toml");
    let engine = repo("configs/engine.toml");
    let out = dir.to_string_lossy().into_owned();
    let args = [
        "--city",
        &city,
        "--hours",
        "0.5",
        "--start-hour",
        "17",
        "--quiet",
        "--out",
        &out,
        "--compare",
        &engine,
    ];
    let (ok, table, err) = backtest(&args);
    assert!(ok, "{err}");
    assert!(table.contains("zones over 0.5 h"), "{table}");
    assert!(err.contains("events/s of CPU"), "runtime on stderr: {err}");
    let text = std::fs::read_to_string(dir.join("backtest.json")).expect("backtest.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let report = &json["report"];
    assert!(
        report["zones"].as_u64().is_some_and(|z| z > 100),
        "{report}"
    );
    assert!(report["market"]["sessions"]
        .as_u64()
        .is_some_and(|s| s > 500));
    assert!(std::fs::read_to_string(dir.join("backtest.svg"))
        .expect("svg")
        .starts_with("<svg"));
    // The shipped engine.toml is the built-in defaults: the same policy on the same seed
    // is the same closed-loop run, so nothing differs.
    let diff = &json["compare"]["diff"];
    assert_eq!(diff["band_changed_zone_hours"], 0, "{diff}");
    assert!(
        diff["mean_abs_diff_by_hour"]
            .as_array()
            .expect("24 hours")
            .iter()
            .all(|v| v.as_f64() == Some(0.0)),
        "{diff}"
    );
    // A rerun writes the same bytes.
    let (ok, _, err) = backtest(&args);
    assert!(ok, "{err}");
    let again = std::fs::read_to_string(dir.join("backtest.json")).expect("backtest.json");
    assert!(again == text, "a rerun is byte-identical");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_backtest_without_demand_or_with_two_sources_is_refused() {
    let (ok, _, err) = backtest(&[]);
    assert!(!ok);
    assert!(err.contains("--city"), "{err}");
    let (ok, _, err) = backtest(&["--city", "a.toml", "--trace", "b.eqt"]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}
