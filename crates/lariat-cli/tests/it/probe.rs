//! `lariat probe` end to end: lariat itself passes every scenario; the naive tokio loops
//! (`naive-echo` of `lariat-bench`, `examples/naive_http.rs`) fail the ones they are known to fail, so a
//! scenario that cannot fail is caught; real servers (nginx, HAProxy) are judged on their own signals
//! and logs, and a server that cannot start under a scenario's conditions is reported as such.

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

/// `target/<profile>/examples/NAME`, next to the `lariat` binary; built if `cargo test` did not (it
/// builds examples only when no target filter is given).
fn example(name: &str) -> PathBuf {
    built("examples", name, &["--example", name, "-p", "lariat-cli"])
}

/// `target/<profile>/DIR/NAME`, built with `cargo build TARGET` in the `lariat` binary's profile if
/// it is not there yet.
fn built(dir: &str, name: &str, target: &[&str]) -> PathBuf {
    let profile_dir = Path::new(lariat())
        .parent()
        .expect("the binary's directory");
    let path = profile_dir.join(dir).join(name);
    if path.exists() {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(target);
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
        .unwrap_or_else(|e| panic!("running cargo build {target:?}: {e}"));
    assert!(status.success(), "cargo build {target:?} failed");
    assert!(
        path.exists(),
        "{} still missing after building it",
        path.display()
    );
    path
}

/// The naive echo loop is the benchmark's baseline too: a binary of `lariat-bench`, next to `lariat`.
fn naive_echo() -> PathBuf {
    built(
        "",
        "naive-echo",
        &["--bin", "naive-echo", "-p", "lariat-bench"],
    )
}

/// The row of `scenario`.
fn row<'a>(rows: &'a [serde_json::Value], scenario: &str, report: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| field(r, "scenario") == scenario)
        .unwrap_or_else(|| panic!("no {scenario} row:\n{report}"))
}

/// The figure `name` of a row (figures are `[name, value]` pairs).
fn figure(row: &serde_json::Value, name: &str) -> String {
    row["figures"]
        .as_array()
        .and_then(|figures| {
            figures
                .iter()
                .find(|f| f[0].as_str() == Some(name))
                .and_then(|f| f[1].as_str())
        })
        .unwrap_or_default()
        .to_owned()
}

/// The path of `program` if it is installed (also looked for in the sbin directories, where Debian
/// puts nginx and haproxy); a printed note when it is not.
fn installed(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipped: {program} is not installed (.ci/run installs it)");
    }
    found
}

/// A scratch directory for a server's configuration and logs, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lariat-probe-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    /// Writes `text` to `name` and returns its path, as text for a shell command.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writing a scratch file");
        path.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn lariat_passes_every_scenario() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // As the docs recommend behind a load balancer: a lame duck at least as long as the balancer's
    // lag (5 s by default in `balancer-lag`), plus a margin.
    let spawn = format!(
        "{} serve --lame-duck 6s --listen 127.0.0.1:{{port}}",
        lariat()
    );
    let (code, rows, output) = probe(&["--spawn", &spawn, "--short", "--restart-signal", "HUP"]);
    let report = describe(&rows, &output);
    assert_eq!(rows.len(), 11, "one row per scenario:\n{report}");
    for row in &rows {
        let verdict = field(row, "verdict");
        let scenario = field(row, "scenario");
        // keepalive is HTTP's: with the echo protocol it is skipped (lariat_http_passes_keepalive).
        if scenario == "keepalive" {
            assert_eq!(verdict, "skipped", "{report}");
            continue;
        }
        assert!(
            verdict == "pass" || verdict == "info",
            "{scenario} is {verdict}, not pass or info:\n{report}"
        );
    }
    assert_eq!(
        figure(row(&rows, "sessions", &report), "messages lost"),
        "0",
        "{report}"
    );
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

#[test]
fn the_naive_http_server_fails_keepalive_sessions_and_balancer_lag() {
    let naive = example("naive_http");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let spawn = format!("{} 127.0.0.1:{{port}}", naive.display());
    let (code, rows, output) = probe(&[
        "--spawn",
        &spawn,
        "--short",
        "--protocol",
        "http",
        "--restart-signal",
        "HUP",
        "--balancer-lag",
        "2s",
        "--only",
        "keepalive",
        "--only",
        "sessions",
        "--only",
        "balancer-lag",
    ]);
    let report = describe(&rows, &output);
    for scenario in ["keepalive", "sessions", "balancer-lag"] {
        let row = row(&rows, scenario, &report);
        assert_eq!(
            field(row, "verdict"),
            "fail",
            "the naive HTTP server must fail {scenario}:\n{report}"
        );
    }
    // Each for the reason the scenario is about.
    let keepalive = row(&rows, "keepalive", &report);
    assert_ne!(figure(keepalive, "requests failed"), "0", "{report}");
    let sessions = row(&rows, "sessions", &report);
    assert_ne!(figure(sessions, "messages lost"), "0", "{report}");
    let lag = row(&rows, "balancer-lag", &report);
    assert_ne!(figure(lag, "refused"), "0", "{report}");
    assert_eq!(code, Some(1), "the probe's exit code:\n{report}");
}

/// Without a lame duck, `lariat serve` stops admitting at the signal: `balancer-lag` fails it, so the
/// pass above is owed to the lame duck.
#[test]
fn lariat_without_a_lame_duck_fails_balancer_lag() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let spawn = format!("{} serve --listen 127.0.0.1:{{port}}", lariat());
    let (code, rows, output) = probe(&[
        "--spawn",
        &spawn,
        "--balancer-lag",
        "2s",
        "--only",
        "balancer-lag",
    ]);
    let report = describe(&rows, &output);
    assert_eq!(
        field(row(&rows, "balancer-lag", &report), "verdict"),
        "fail",
        "{report}"
    );
    assert_eq!(code, Some(1), "the probe's exit code:\n{report}");
}

/// HTTP/1.1 keep-alive clients (and HTTP/2 ones, h2c) through restarts and SIGTERM against `lariat serve
/// --handler http-hello`: no request lost (it answers with `Connection: close`, or GOAWAY, once it drains).
#[test]
fn lariat_http_passes_keepalive() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let spawn = format!(
        "{} serve --handler http-hello --listen 127.0.0.1:{{port}}",
        lariat()
    );
    let (code, rows, output) = probe(&[
        "--spawn",
        &spawn,
        "--short",
        "--protocol",
        "http",
        "--restart-signal",
        "HUP",
        "--only",
        "keepalive",
    ]);
    let report = describe(&rows, &output);
    let keepalive = row(&rows, "keepalive", &report);
    assert_eq!(field(keepalive, "verdict"), "pass", "{report}");
    assert_eq!(figure(keepalive, "requests failed"), "0", "{report}");
    assert!(
        figure(keepalive, "HTTP/2").contains(" answered, 0 failed"),
        "HTTP/2 clients ran too:\n{report}"
    );
    assert_eq!(code, Some(0), "the probe's exit code:\n{report}");
}

/// nginx, started by the probe with its graceful stop (SIGQUIT) and its error log: out of descriptors
/// it writes `accept4() failed (24: Too many open files)` to that log, not to stderr, and is judged on
/// that and on its behaviour (no spin, serves again), not failed for silence.
#[test]
fn nginx_is_judged_on_its_own_stop_signal_and_log() {
    let Some(nginx) = installed("nginx") else {
        return;
    };
    let scratch = Scratch::new("nginx");
    let template = scratch.write(
        "nginx.conf.in",
        &format!(
            "daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx-PORT.pid;
error_log {dir}/error-PORT.log notice;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{ listen 127.0.0.1:PORT; location / {{ return 200 \"hello\\n\"; }} }}
}}
",
            dir = scratch.0.display()
        ),
    );
    let conf = scratch.path("nginx-{port}.conf");
    let spawn = format!(
        "sh -c 'sed s/PORT/{{port}}/g {template} > {conf} && exec {} -p {} -c {conf}'",
        nginx.display(),
        scratch.0.display()
    );
    let log = scratch.path("error-{port}.log");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (code, rows, output) = probe(&[
        "--spawn",
        &spawn,
        "--short",
        "--protocol",
        "http",
        "--stop-signal",
        "QUIT",
        "--server-log",
        &log,
        "--only",
        "fd-exhaustion",
        "--only",
        "drain",
    ]);
    let report = describe(&rows, &output);
    let exhaustion = row(&rows, "fd-exhaustion", &report);
    assert_eq!(field(exhaustion, "verdict"), "pass", "{report}");
    assert!(
        figure(exhaustion, "server said").contains("Too many open files"),
        "the evidence comes from nginx's error log:\n{report}"
    );
    assert!(
        figure(exhaustion, "read from").contains("error-"),
        "{report}"
    );
    // Its graceful stop, judged on what it does: the requests it had begun are all answered and it
    // exits by itself (clients still in its accept queue when it closes its listeners may be reset,
    // which the verdict reports as it finds it).
    let drain = row(&rows, "drain", &report);
    assert_eq!(figure(drain, "stop signal"), "SIGQUIT", "{report}");
    assert_eq!(figure(drain, "live answered"), "50 of 50", "{report}");
    assert_eq!(figure(drain, "exit"), "exit status: 0", "{report}");
    let failed = field(drain, "verdict") == "fail";
    assert_eq!(
        code,
        Some(i32::from(failed)),
        "the probe's exit code:\n{report}"
    );
}

/// HAProxy refuses to start when it cannot raise its descriptor limit: under `fd-exhaustion`'s limit of
/// 100 the scenario could not be run, which is said as such and is not a failure.
#[test]
fn haproxy_under_a_small_descriptor_limit_could_not_run() {
    let Some(haproxy) = installed("haproxy") else {
        return;
    };
    let scratch = Scratch::new("haproxy");
    let template = scratch.write(
        "haproxy.cfg.in",
        "global
  maxconn 2000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend web
  bind 127.0.0.1:PORT
  http-request return status 200 content-type text/plain string hello
",
    );
    let conf = scratch.path("haproxy-{port}.cfg");
    let spawn = format!(
        "sh -c 'sed s/PORT/{{port}}/g {template} > {conf} && exec {} -W -db -f {conf}'",
        haproxy.display()
    );
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (code, rows, output) = probe(&[
        "--spawn",
        &spawn,
        "--short",
        "--protocol",
        "http",
        "--stop-signal",
        "USR1",
        "--only",
        "fd-exhaustion",
        "--only",
        "first-packet",
    ]);
    let report = describe(&rows, &output);
    let exhaustion = row(&rows, "fd-exhaustion", &report);
    assert_eq!(field(exhaustion, "verdict"), "could-not-run", "{report}");
    assert!(
        field(exhaustion, "reason").contains("RLIMIT_NOFILE 100"),
        "the reason names the limit:\n{report}"
    );
    // With its own limits it runs, and is judged.
    assert_eq!(
        field(row(&rows, "first-packet", &report), "verdict"),
        "pass",
        "{report}"
    );
    assert_eq!(code, Some(0), "could-not-run is not a failure:\n{report}");
}

/// `lariat probe --help` describes every scenario in a user's words.
#[test]
fn help_explains_every_scenario() {
    let output = Command::new(lariat())
        .args(["probe", "--help"])
        .output()
        .expect("running lariat probe --help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for scenario in [
        "first-packet",
        "fd-exhaustion",
        "flood",
        "slowloris",
        "cap",
        "drain",
        "restart",
        "keepalive",
        "sessions",
        "balancer-lag",
        "churn",
    ] {
        assert!(
            help.lines().any(|l| l
                .trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{scenario}:"))),
            "no description of {scenario}:\n{help}"
        );
    }
    assert!(!help.to_lowercase().contains("seed"), "{help}");
    assert!(help.contains("could not run"), "{help}");
}
