//! `lariat-bench --only zoo`: `lariat probe --short` against a table of peers, each started with its own
//! documented graceful stop and reload signals (and its log file, where it keeps one), and the verdicts
//! side by side: a cell per scenario and peer with the deciding figure, the reasons under the table, and
//! for a failure what the peer's documentation promises.
//!
//! Peers missing on the machine (Go, nginx, HAProxy) are skipped with a note.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::probe::{one_line, probe_with, shell_quote, ProbeOutcome};

/// Longest one peer's probe run may take.
const TIMEOUT: Duration = Duration::from_secs(300);

/// One peer: how it is started and told to stop and reload, and what its documentation says.
struct Peer {
    name: &'static str,
    /// `--spawn`, with `{port}`.
    spawn: String,
    protocol: &'static str,
    stop: &'static str,
    restart: Option<&'static str>,
    server_log: Option<String>,
    /// Its documented signals and what they promise.
    documented: &'static str,
}

/// A peer's run.
struct Run {
    peer: Peer,
    outcomes: Vec<ProbeOutcome>,
    error: Option<String>,
    elapsed_s: f64,
}

/// The figure each scenario's cell shows next to its verdict.
const KEY_FIGURE: [(&str, &str); 11] = [
    ("first-packet", "lost or wrong"),
    ("fd-exhaustion", "server CPU while held"),
    ("flood", "server RSS growth"),
    ("slowloris", "fresh served"),
    ("cap", "hung"),
    ("drain", "failed after connect"),
    ("restart", "failed after connect"),
    ("keepalive", "requests failed"),
    ("sessions", "messages lost"),
    ("balancer-lag", "refused"),
    ("churn", "rate"),
];

/// Runs the zoo and prints the table and its notes (Markdown) on stdout.
pub async fn run(bench_dir: &Path) -> anyhow::Result<()> {
    let lariat = bench_dir.join("lariat");
    let scratch = std::env::temp_dir().join(format!("lariat-zoo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).context("creating the zoo's scratch directory")?;
    let (peers, mut notes) = peers(bench_dir, &scratch);
    let mut runs = Vec::new();
    for peer in peers {
        let mut args: Vec<String> = vec![
            "--spawn".into(),
            peer.spawn.clone(),
            "--protocol".into(),
            peer.protocol.into(),
            "--stop-signal".into(),
            peer.stop.into(),
        ];
        if let Some(restart) = peer.restart {
            args.extend(["--restart-signal".into(), restart.into()]);
        }
        if let Some(log) = &peer.server_log {
            args.extend(["--server-log".into(), log.clone()]);
        }
        let started = Instant::now();
        let result = probe_with(&lariat, &args, TIMEOUT).await;
        let elapsed_s = started.elapsed().as_secs_f64();
        let (outcomes, error) = match result {
            Ok((_, outcomes)) => (outcomes, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        };
        eprintln!(
            "[zoo] {:<12} {} in {elapsed_s:.0} s",
            peer.name,
            error.as_deref().map_or("done", |_| "FAILED")
        );
        runs.push(Run {
            peer,
            outcomes,
            error,
            elapsed_s,
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print!("{}", markdown(&runs));
    println!();
    for run in &runs {
        println!(
            "- **{}** (`--protocol {} --stop-signal {}{}`, {:.0} s): {}",
            run.peer.name,
            run.peer.protocol,
            run.peer.stop,
            run.peer
                .restart
                .map_or(String::new(), |r| format!(" --restart-signal {r}")),
            run.elapsed_s,
            run.peer.documented
        );
    }
    println!();
    notes.extend(reasons(&runs));
    for note in notes {
        println!("- {note}");
    }
    Ok(())
}

/// The peers found on this machine, and a note for each one missing.
fn peers(dir: &Path, scratch: &Path) -> (Vec<Peer>, Vec<String>) {
    let bin = |name: &str| shell_quote(&dir.join(name).to_string_lossy());
    let mut notes = Vec::new();
    let mut peers = vec![
        Peer {
            name: "lariat",
            spawn: format!(
                "{} serve --handler http-hello --lame-duck 6s --listen 127.0.0.1:{{port}}",
                bin("lariat")
            ),
            protocol: "http",
            stop: "TERM",
            restart: Some("HUP"),
            server_log: None,
            documented:
                "TERM/INT: lame duck (`--lame-duck`), then drain; HUP: a successor takes the \
                         listening sockets, the old process drains.",
        },
        Peer {
            name: "naive tokio",
            spawn: format!("{} 127.0.0.1:{{port}}", bin("naive-echo")),
            protocol: "echo",
            stop: "TERM",
            restart: None,
            server_log: None,
            documented: "no signal handling (tokio's README echo loop): TERM kills it.",
        },
        Peer {
            name: "actix-server",
            spawn: format!("{} 127.0.0.1:{{port}}", bin("actix-echo")),
            protocol: "echo",
            stop: "TERM",
            restart: None,
            server_log: None,
            documented:
                "TERM: graceful shutdown (workers finish their connections, 30 s by default); \
                         INT and QUIT: immediate; no reload.",
        },
        Peer {
            name: "axum",
            spawn: format!("{} 127.0.0.1:{{port}}", bin("axum-hello")),
            protocol: "http",
            stop: "TERM",
            restart: None,
            server_log: None,
            documented:
                "`serve(..).with_graceful_shutdown(signal)`: on the signal, stop accepting and \
                         wait for in-flight requests; no reload.",
        },
        Peer {
            name: "hyper-util",
            spawn: format!("{} 127.0.0.1:{{port}}", bin("hyper-graceful")),
            protocol: "http",
            stop: "TERM",
            restart: None,
            server_log: None,
            documented:
                "`GracefulShutdown`: on the signal, drop the listener, each watched connection \
                         finishes its request in flight and closes; no reload.",
        },
    ];
    match go_peer(scratch) {
        Ok(Some(go)) => peers.push(Peer {
            name: "Go net/http",
            spawn: format!("{} 127.0.0.1:{{port}}", shell_quote(&go.to_string_lossy())),
            protocol: "http",
            stop: "TERM",
            restart: None,
            server_log: None,
            documented: "`Server.Shutdown`: \"gracefully shuts down the server without interrupting any \
                         active connections\": closes the listeners, then idle connections, then waits \
                         for active ones; no reload.",
        }),
        Ok(None) => notes.push("Go net/http: skipped, `go` is not installed.".to_owned()),
        Err(e) => notes.push(format!("Go net/http: skipped, could not build it: {e:#}")),
    }
    match find("nginx") {
        Some(nginx) => match nginx_peer(&nginx, scratch) {
            Ok(peer) => peers.push(peer),
            Err(e) => notes.push(format!("nginx: skipped: {e:#}")),
        },
        None => notes.push("nginx: skipped, not installed.".to_owned()),
    }
    match find("haproxy") {
        Some(haproxy) => match haproxy_peer(&haproxy, scratch) {
            Ok(peer) => peers.push(peer),
            Err(e) => notes.push(format!("HAProxy: skipped: {e:#}")),
        },
        None => notes.push("HAProxy: skipped, not installed.".to_owned()),
    }
    (peers, notes)
}

/// `program` on the PATH or in the sbin directories.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Builds `crates/lariat-bench/go/hello.go` into the scratch directory; `None` without Go.
fn go_peer(scratch: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(go) = find("go") else {
        return Ok(None);
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/hello.go");
    let out = scratch.join("go-hello");
    let status = std::process::Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .env("GOCACHE", scratch.join("gocache"))
        .status()
        .context("running go build")?;
    anyhow::ensure!(status.success(), "go build {}: {status}", source.display());
    Ok(Some(out))
}

/// A `--spawn` command that fills `PORT` in `template` and starts `program ARGS` on the result (`{conf}`
/// in `args` is the filled-in file).
fn templated(
    scratch: &Path,
    name: &str,
    template: &str,
    program: &Path,
    args: &str,
) -> anyhow::Result<String> {
    let template_path = scratch.join(format!("{name}.in"));
    std::fs::write(&template_path, template).context("writing a configuration template")?;
    let conf = scratch.join(format!("{name}-{{port}}"));
    let conf = conf.to_string_lossy();
    let inner = format!(
        "sed s/PORT/{{port}}/g {} > {conf} && exec {} {}",
        template_path.display(),
        program.display(),
        args.replace("{conf}", &conf)
    );
    Ok(format!("sh -c {}", shell_quote(&inner)))
}

fn nginx_peer(nginx: &Path, scratch: &Path) -> anyhow::Result<Peer> {
    let dir = scratch.display();
    let template = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {dir}/nginx-PORT.pid;\n\
         error_log {dir}/nginx-error-PORT.log notice;\nevents {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         server {{ listen 127.0.0.1:PORT; location / {{ return 200 \"hello\\n\"; }} }}\n}}\n"
    );
    Ok(Peer {
        name: "nginx",
        spawn: templated(
            scratch,
            "nginx.conf",
            &template,
            nginx,
            &format!("-p {dir} -c {{conf}}"),
        )?,
        protocol: "http",
        stop: "QUIT",
        restart: Some("HUP"),
        server_log: Some(format!("{dir}/nginx-error-{{port}}.log")),
        documented: "QUIT: graceful shutdown; TERM/INT: fast shutdown; HUP: new workers with the new \
                     configuration, graceful shutdown of the old ones (the master keeps the sockets).",
    })
}

fn haproxy_peer(haproxy: &Path, scratch: &Path) -> anyhow::Result<Peer> {
    let template = "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 5s\n  \
                    timeout client 30s\n  timeout server 30s\nfrontend web\n  bind 127.0.0.1:PORT\n  \
                    http-request return status 200 content-type text/plain string hello\n";
    Ok(Peer {
        name: "HAProxy",
        spawn: templated(
            scratch,
            "haproxy.cfg",
            template,
            haproxy,
            "-W -db -f {conf}",
        )?,
        protocol: "http",
        stop: "USR1",
        restart: Some("USR2"),
        server_log: None,
        documented:
            "master-worker (`-W`): USR1: soft stop (stop listening, finish sessions); TERM: \
                     immediate; USR2: reload (new workers, old ones finish their sessions).",
    })
}

/// The table: a row per scenario, a column per peer; each cell the verdict and its deciding figure.
fn markdown(runs: &[Run]) -> String {
    let mut out = String::from("| scenario |");
    for run in runs {
        out.push_str(&format!(" {} |", run.peer.name));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(runs.len()));
    out.push('\n');
    for (scenario, key) in KEY_FIGURE {
        out.push_str(&format!("| {scenario} |"));
        for run in runs {
            let cell = match run.outcomes.iter().find(|o| o.scenario == scenario) {
                Some(o) => {
                    let verdict = match o.verdict.as_str() {
                        "fail" => "**FAIL**",
                        "could-not-run" => "could not run",
                        other => other,
                    };
                    match figure(o, key) {
                        Some(value) if o.verdict != "skipped" && o.verdict != "could-not-run" => {
                            format!("{verdict} ({key}: {value})")
                        }
                        _ => verdict.to_owned(),
                    }
                }
                None if run.error.is_some() => "error".to_owned(),
                None => "–".to_owned(),
            };
            out.push_str(&format!(" {} |", cell.replace('|', "/")));
        }
        out.push('\n');
    }
    out
}

/// A figure of an outcome by name (figures are `[name, value]` pairs).
fn figure(outcome: &ProbeOutcome, name: &str) -> Option<String> {
    outcome.figures.as_array()?.iter().find_map(|f| {
        (f.get(0)?.as_str()? == name).then(|| f.get(1)?.as_str().map(str::to_owned))?
    })
}

/// The reasons under the table: every failure and could-not-run, with what the peer promises.
fn reasons(runs: &[Run]) -> Vec<String> {
    let mut notes = Vec::new();
    for run in runs {
        if let Some(e) = &run.error {
            notes.push(format!(
                "{}: the probe did not finish: {}",
                run.peer.name,
                e.lines().next().unwrap_or_default()
            ));
        }
        for o in &run.outcomes {
            match o.verdict.as_str() {
                "fail" => notes.push(format!(
                    "{} {}: FAIL: {}",
                    run.peer.name,
                    o.scenario,
                    one_line(&o.reason)
                )),
                "could-not-run" => notes.push(format!(
                    "{} {}: could not run: {}",
                    run.peer.name,
                    o.scenario,
                    one_line(&o.reason)
                )),
                "skipped" => notes.push(format!(
                    "{} {}: skipped: {}",
                    run.peer.name,
                    o.scenario,
                    one_line(&o.reason)
                )),
                _ => {}
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &'static str) -> Peer {
        Peer {
            name,
            spawn: String::new(),
            protocol: "http",
            stop: "TERM",
            restart: None,
            server_log: None,
            documented: "",
        }
    }

    #[test]
    fn cells_carry_the_deciding_figure() {
        let outcomes: Vec<ProbeOutcome> = serde_json::from_str(
            r#"[{"scenario":"keepalive","verdict":"fail","reason":"cut",
                 "figures":[["clients","32"],["requests failed","9"]]},
                {"scenario":"fd-exhaustion","verdict":"could-not-run","reason":"no start","figures":[]}]"#,
        )
        .unwrap();
        let runs = [
            Run {
                peer: peer("a"),
                outcomes,
                error: None,
                elapsed_s: 1.0,
            },
            Run {
                peer: peer("b"),
                outcomes: Vec::new(),
                error: Some("broke".into()),
                elapsed_s: 1.0,
            },
        ];
        let table = markdown(&runs);
        assert!(
            table.starts_with("| scenario | a | b |\n|---|---|---|\n"),
            "{table}"
        );
        assert!(
            table.contains("| keepalive | **FAIL** (requests failed: 9) | error |\n"),
            "{table}"
        );
        assert!(
            table.contains("| fd-exhaustion | could not run | error |\n"),
            "{table}"
        );
        assert!(table.contains("| churn | – | error |\n"), "{table}");
        let notes = reasons(&runs);
        assert_eq!(
            notes,
            [
                "a keepalive: FAIL: cut",
                "a fd-exhaustion: could not run: no start",
                "b: the probe did not finish: broke",
            ]
        );
    }
}
