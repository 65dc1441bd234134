//! Probe verdicts: `lariat probe --spawn CMD --short --json --restart-signal HUP` against each
//! server, and the verdict per scenario per server.
//!
//! The probe starts (and restarts, and signals) the servers itself, one fresh process per
//! scenario that needs one, so they are not pinned like in the other measurements: the probe and
//! its servers may use every CPU. That is fine for verdicts, which are about behaviour, not speed.
//! Exit status 1 (a scenario failed) is a normal outcome; only a probe that could not run, or
//! whose output is not the JSON array it promises, counts as an error.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::server::{Binaries, Kind};

/// The order the probe runs the servers in, and of the table's columns.
pub const SERVERS: [Kind; 3] = [Kind::Naive, Kind::Lariat, Kind::Actix];
/// Longest one probe run (every scenario against one server) may take.
const TIMEOUT: Duration = Duration::from_secs(240);
/// How much of the probe's stderr is kept when it fails.
const STDERR_TAIL_LINES: usize = 20;

/// One `lariat probe` run against one server.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRun {
    pub server: Kind,
    /// The `--spawn` command, with `{port}` where the probe puts the port.
    pub spawn: String,
    /// The probe's exit code: 0 when nothing failed, 1 when a scenario failed.
    pub exit_code: Option<i32>,
    pub elapsed_s: f64,
    /// The scenarios, in the order the probe ran them.
    pub outcomes: Vec<ProbeOutcome>,
    /// Why there are no outcomes, if there are none.
    pub error: Option<String>,
}

/// One scenario's result, as `lariat probe --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeOutcome {
    pub scenario: String,
    /// `pass`, `fail`, `skipped`, `info` or `could-not-run`.
    pub verdict: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub figures: serde_json::Value,
}

impl ProbeRun {
    /// `3 pass, 1 fail, 4 skipped in 12.3 s`, or the error.
    pub fn summary(&self) -> String {
        if let Some(err) = &self.error {
            return format!("FAILED: {err}");
        }
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for o in &self.outcomes {
            match counts.iter_mut().find(|(v, _)| *v == o.verdict) {
                Some((_, n)) => *n += 1,
                None => counts.push((&o.verdict, 1)),
            }
        }
        let counts: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
        format!(
            "{} in {:.1} s (exit {})",
            counts.join(", "),
            self.elapsed_s,
            self.exit_code
                .map_or("by signal".to_string(), |c| c.to_string())
        )
    }
}

/// The `--spawn` command for `kind`: its binary (quoted for `/bin/sh`) listening on `{port}`.
pub fn spawn_command(binaries: &Binaries, kind: Kind) -> String {
    let binary = shell_quote(&binaries.path(kind).to_string_lossy());
    match kind {
        Kind::Lariat | Kind::LariatDelivery(_) | Kind::LariatScale(_) | Kind::LariatMetrics => {
            // The lame duck the docs recommend behind a balancer (at least the probe's 5 s lag).
            format!("{binary} serve --lame-duck 6s --listen 127.0.0.1:{{port}}")
        }
        Kind::Naive | Kind::Actix => format!("{binary} 127.0.0.1:{{port}}"),
    }
}

/// Runs the probe against `kind`; never fails, an error is kept in the result.
pub async fn run(binaries: &Binaries, kind: Kind) -> ProbeRun {
    let spawn = spawn_command(binaries, kind);
    let started = Instant::now();
    let mut run = ProbeRun {
        server: kind,
        spawn: spawn.clone(),
        exit_code: None,
        elapsed_s: 0.0,
        outcomes: Vec::new(),
        error: None,
    };
    match probe(binaries, &spawn).await {
        Ok((code, outcomes)) => {
            run.exit_code = code;
            run.outcomes = outcomes;
        }
        Err(err) => run.error = Some(format!("{err:#}")),
    }
    run.elapsed_s = started.elapsed().as_secs_f64();
    run
}

async fn probe(
    binaries: &Binaries,
    spawn: &str,
) -> anyhow::Result<(Option<i32>, Vec<ProbeOutcome>)> {
    let args: Vec<String> = ["--spawn", spawn, "--restart-signal", "HUP"]
        .map(String::from)
        .to_vec();
    probe_with(binaries.path(Kind::Lariat), &args, TIMEOUT).await
}

/// `lariat probe --short --json ARGS` run by the `lariat` at `lariat`: its exit code and rows.
pub async fn probe_with(
    lariat: &std::path::Path,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, Vec<ProbeOutcome>)> {
    let mut command = tokio::process::Command::new(lariat);
    command
        .args(["probe", "--short", "--json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // On a timeout or an interrupt the output future is dropped, which kills the probe.
        .kill_on_drop(true);
    // SAFETY: sched_setaffinity is async-signal-safe and changes only the child.
    unsafe {
        command.pre_exec(crate::host::unpin_self);
    }
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("`lariat probe` took over {timeout:?}; killed"))?
        .with_context(|| format!("running {} probe", lariat.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = || {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
    };
    let code = output.status.code();
    if let Some(signal) = output.status.signal() {
        bail!(
            "`lariat probe` ended by signal {signal}; stderr:\n{}",
            tail()
        );
    }
    match serde_json::from_slice::<Vec<ProbeOutcome>>(&output.stdout) {
        Ok(outcomes) if !outcomes.is_empty() => Ok((code, outcomes)),
        Ok(_) => bail!(
            "`lariat probe` printed no scenario ({}); stderr:\n{}",
            output.status,
            tail()
        ),
        Err(err) => bail!(
            "`lariat probe` did not print its JSON ({}: {err}); stderr:\n{}",
            output.status,
            tail()
        ),
    }
}

/// `s` in single quotes, for `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The Markdown table of verdicts: a row per scenario (in the order the probe ran them), a column
/// per server. `error` when the probe could not run against that server, `–` when its run did not
/// include the scenario.
pub fn markdown(runs: &[ProbeRun]) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for run in runs {
        for o in &run.outcomes {
            if !scenarios.contains(&o.scenario.as_str()) {
                scenarios.push(&o.scenario);
            }
        }
    }
    let mut out = String::from("| probe scenario |");
    for run in runs {
        out.push_str(&format!(" {} |", run.server));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(runs.len()));
    out.push('\n');
    if scenarios.is_empty() {
        out.push_str("| (none) |");
        out.push_str(&" error |".repeat(runs.len()));
        out.push('\n');
    }
    for scenario in scenarios {
        out.push_str(&format!("| {scenario} |"));
        for run in runs {
            let cell = match run.outcomes.iter().find(|o| o.scenario == scenario) {
                Some(o) => verdict_cell(&o.verdict),
                None if run.error.is_some() => "error".to_string(),
                None => "–".to_string(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

fn verdict_cell(verdict: &str) -> String {
    match verdict {
        "fail" => "**FAIL**".to_string(),
        "could-not-run" => "could not run".to_string(),
        other => other.to_string(),
    }
}

/// Notes for the table: each failed scenario with its reason, skipped ones with theirs when the
/// reason is the same for every server (once), and each probe that could not run.
pub fn notes(runs: &[ProbeRun]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for run in runs {
        if let Some(err) = &run.error {
            let first = err.lines().next().unwrap_or_default();
            notes.push(format!("probe ({}): could not run: {first}", run.server));
        }
        for o in &run.outcomes {
            match o.verdict.as_str() {
                "fail" => notes.push(format!(
                    "probe {} ({}): FAIL: {}",
                    o.scenario,
                    run.server,
                    one_line(&o.reason)
                )),
                "could-not-run" => notes.push(format!(
                    "probe {} ({}): could not run: {}",
                    o.scenario,
                    run.server,
                    one_line(&o.reason)
                )),
                "skipped" => {
                    let key = (o.scenario.clone(), one_line(&o.reason));
                    if !skipped.contains(&key) {
                        skipped.push(key);
                    }
                }
                _ => {}
            }
        }
    }
    for (scenario, reason) in skipped {
        let servers: Vec<String> = runs
            .iter()
            .filter(|r| {
                r.outcomes.iter().any(|o| {
                    o.scenario == scenario
                        && o.verdict == "skipped"
                        && one_line(&o.reason) == reason
                })
            })
            .map(|r| r.server.to_string())
            .collect();
        notes.push(format!(
            "probe {scenario} ({}): skipped: {reason}",
            servers.join(", ")
        ));
    }
    notes
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(scenario: &str, verdict: &str, reason: &str) -> ProbeOutcome {
        ProbeOutcome {
            scenario: scenario.to_string(),
            verdict: verdict.to_string(),
            reason: reason.to_string(),
            figures: serde_json::Value::Null,
        }
    }

    fn run(server: Kind, outcomes: Vec<ProbeOutcome>, error: Option<&str>) -> ProbeRun {
        ProbeRun {
            server,
            spawn: String::new(),
            exit_code: Some(1),
            elapsed_s: 1.0,
            outcomes,
            error: error.map(String::from),
        }
    }

    #[test]
    fn parses_the_probe_json() {
        let json = r#"[{"scenario":"first-packet","verdict":"pass","reason":"ok",
            "figures":[["connections","2000"]]},{"scenario":"churn","verdict":"info"}]"#;
        let outcomes: Vec<ProbeOutcome> = serde_json::from_str(json).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes[0].figures[0][1], "2000");
        assert_eq!(outcomes[1].reason, "");
    }

    #[test]
    fn table_and_notes() {
        let runs = [
            run(
                Kind::Naive,
                vec![
                    outcome("first-packet", "pass", ""),
                    outcome("fd-exhaustion", "fail", "accept loop\nended"),
                    outcome("restart", "skipped", "no restart"),
                ],
                None,
            ),
            run(
                Kind::Lariat,
                vec![
                    outcome("first-packet", "pass", ""),
                    outcome("restart", "skipped", "no restart"),
                ],
                None,
            ),
            run(Kind::Actix, Vec::new(), Some("exit 2\nusage")),
        ];
        let table = markdown(&runs);
        assert!(
            table.starts_with("| probe scenario | naive | lariat | actix |\n|---|---|---|---|\n")
        );
        assert!(
            table.contains("| first-packet | pass | pass | error |\n"),
            "{table}"
        );
        assert!(
            table.contains("| fd-exhaustion | **FAIL** | – | error |\n"),
            "{table}"
        );
        let notes = notes(&runs);
        assert_eq!(
            notes,
            [
                "probe fd-exhaustion (naive): FAIL: accept loop ended",
                "probe (actix): could not run: exit 2",
                "probe restart (naive, lariat): skipped: no restart",
            ]
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("/work/target/release/lariat"),
            "/work/target/release/lariat"
        );
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
