//! `lariat probe` end to end: lariat itself passes every scenario; the naive tokio echo loop
//! (`examples/naive_echo.rs`) fails the ones it is known to fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The probes measure time and CPU: one at a time, even when the harness runs tests in parallel.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lariat() -> &'static str {
    env!("CARGO_BIN_EXE_lariat")
}

/// `lariat probe ARGS --json`: the exit code and the parsed rows.
fn probe(args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, Output) {
    let output = Command::new(lariat())
        .arg("probe")
        .args(args)
        .arg("--json")
        .output()
        .expect("running lariat probe");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "probe output is not a JSON array ({e}):\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), rows, output)
}

fn field<'a>(row: &'a serde_json::Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or_default()
}

fn describe(rows: &[serde_json::Value], output: &Output) -> String {
    let mut s = String::new();
    for row in rows {
        s.push_str(&format!(
            "{}: {} — {} {}\n",
            field(row, "scenario"),
            field(row, "verdict"),
            field(row, "reason"),
            row["figures"]
        ));
    }
    s.push_str(&format!(
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    ));
    s
}

/// `target/<profile>/examples/naive_echo`, next to the `lariat` binary; built if `cargo test` did not
/// (it builds examples only when no target filter is given).
fn naive_echo() -> PathBuf {
    let profile_dir = Path::new(lariat())
        .parent()
        .expect("the binary's directory");
    let path = profile_dir.join("examples").join("naive_echo");
    if path.exists() {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "naive_echo", "-p", "lariat-cli"]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .expect("running cargo build --example naive_echo");
    assert!(status.success(), "cargo build --example naive_echo failed");
    assert!(
        path.exists(),
        "{} still missing after building the example",
        path.display()
    );
    path
}

#[test]
fn lariat_passes_every_scenario() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let spawn = format!("{} serve --listen 127.0.0.1:{{port}}", lariat());
    let (code, rows, output) = probe(&["--spawn", &spawn, "--short", "--restart-signal", "HUP"]);
    let report = describe(&rows, &output);
    assert_eq!(rows.len(), 8, "one row per scenario:\n{report}");
    for row in &rows {
        let verdict = field(row, "verdict");
        assert!(
            verdict == "pass" || verdict == "info",
            "{} is {verdict}, not pass or info:\n{report}",
            field(row, "scenario")
        );
    }
    assert_eq!(code, Some(0), "the probe's exit code:\n{report}");
}

#[test]
fn the_naive_echo_loop_fails_fd_exhaustion_and_drain() {
    let naive = naive_echo();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let spawn = format!("{} 127.0.0.1:{{port}}", naive.display());
    let (code, rows, output) = probe(&[
        "--spawn",
        &spawn,
        "--short",
        "--only",
        "fd-exhaustion",
        "--only",
        "drain",
    ]);
    let report = describe(&rows, &output);
    for scenario in ["fd-exhaustion", "drain"] {
        let row = rows
            .iter()
            .find(|r| field(r, "scenario") == scenario)
            .unwrap_or_else(|| panic!("no {scenario} row:\n{report}"));
        assert_eq!(
            field(row, "verdict"),
            "fail",
            "the naive loop must fail {scenario}:\n{report}"
        );
        assert!(
            !field(row, "reason").is_empty(),
            "a failure says why:\n{report}"
        );
    }
    assert_eq!(code, Some(1), "the probe's exit code:\n{report}");
}
