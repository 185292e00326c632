//! The `equilibrium` binary as a user runs it: real process, real arguments.

use std::process::Command;

fn equilibrium(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_equilibrium"))
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
fn zone_prints_the_reference_h3_cell_of_a_point() {
    let (ok, out, _) = equilibrium(&["zone", "--lat", "40.758", "--lng", "-73.9855"]);
    assert!(ok);
    assert!(out.contains("882a100d67fffff"), "{out}");
}

#[test]
fn an_invalid_coordinate_fails_with_a_clear_message() {
    let (ok, _, err) = equilibrium(&["zone", "--lat", "91", "--lng", "0"]);
    assert!(!ok);
    assert!(err.contains("invalid latitude 91"), "{err}");
}

#[test]
fn config_check_accepts_the_shipped_config_and_names_the_bad_field_otherwise() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/engine.toml");
    let (ok, _, err) = equilibrium(&["config", "check", shipped]);
    assert!(ok, "{err}");

    let dir = std::env::temp_dir().join(format!("eq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[policy]\nneighbour_weight = 1.5\n").expect("write");
    let (ok, _, err) = equilibrium(&["config", "check", bad.to_str().expect("utf-8 path")]);
    assert!(!ok);
    assert!(err.contains("neighbour_weight"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_engine_only_demo_runs_end_to_end_and_shows_a_verified_explained_quote() {
    let (ok, out, err) = equilibrium(&[
        "demo",
        "--engine-only",
        "--seconds",
        "4",
        "--drivers",
        "300",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("verifies: true; same token with the amount altered verifies: false"),
        "{out}"
    );
    assert!(out.contains("matches the quote"), "{out}");
    assert!(out.contains(" 0 rejected"), "{out}");
}

#[test]
fn engine_only_options_without_engine_only_are_a_usage_error() {
    let (ok, _, err) = equilibrium(&["demo", "--drivers", "300"]);
    assert!(!ok);
    assert!(err.contains("--engine-only"), "{err}");
}
