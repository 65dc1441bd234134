//! Verdicts, their figures, and how they are printed: a table for people, JSON for machines, progress on
//! stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;

use super::ScenarioName;

/// A scenario's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skipped,
    /// Figures only, no judgement (`churn`).
    Info,
    /// The scenario could not be run against this server (it did not start under the scenario's
    /// conditions, e.g. a low descriptor limit): neither a pass nor a failure, with the reason.
    #[serde(rename = "could-not-run")]
    CouldNotRun,
}

impl Verdict {
    /// As printed in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
            Verdict::Info => "info",
            Verdict::CouldNotRun => "could not run",
        }
    }
}

/// One scenario's result: the verdict, why, and the figures behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: ScenarioName,
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
    /// The measured figures, in order.
    pub figures: Vec<(String, String)>,
}

impl Outcome {
    pub fn new(scenario: ScenarioName) -> Outcome {
        Outcome {
            scenario,
            verdict: Verdict::Pass,
            reason: String::new(),
            figures: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn figure(mut self, name: &str, value: impl ToString) -> Outcome {
        self.figures.push((name.to_owned(), value.to_string()));
        self
    }

    pub fn pass(mut self, reason: impl Into<String>) -> Outcome {
        self.verdict = Verdict::Pass;
        self.reason = reason.into();
        self
    }

    pub fn fail(mut self, reason: impl Into<String>) -> Outcome {
        self.verdict = Verdict::Fail;
        self.reason = reason.into();
        self
    }

    pub fn skip(mut self, reason: impl Into<String>) -> Outcome {
        self.verdict = Verdict::Skipped;
        self.reason = reason.into();
        self
    }

    pub fn info(mut self, reason: impl Into<String>) -> Outcome {
        self.verdict = Verdict::Info;
        self.reason = reason.into();
        self
    }

    pub fn could_not_run(mut self, reason: impl Into<String>) -> Outcome {
        self.verdict = Verdict::CouldNotRun;
        self.reason = reason.into();
        self
    }

    /// `pass` when `ok`, else `fail`, with the same reason.
    pub fn judge(self, ok: bool, reason: impl Into<String>) -> Outcome {
        if ok {
            self.pass(reason)
        } else {
            self.fail(reason)
        }
    }
}

pub fn progress_start(name: ScenarioName) {
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{:<14} running…", name.as_str());
    } else {
        let _ = writeln!(err, "probe: {} …", name.as_str());
    }
    let _ = err.flush();
}

pub fn progress_end(outcome: &Outcome, took: Duration) {
    let mut err = std::io::stderr().lock();
    let line = format!(
        "{:<14} {} in {:.1} s",
        outcome.scenario.as_str(),
        outcome.verdict.as_str(),
        took.as_secs_f64()
    );
    if err.is_terminal() {
        let _ = writeln!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "probe: {line}");
    }
}

pub fn print_table(outcomes: &[Outcome]) {
    println!("| scenario | verdict | why | figures |");
    println!("|---|---|---|---|");
    for o in outcomes {
        let figures: Vec<String> = o.figures.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let verdict = match o.verdict {
            Verdict::Fail => "**FAIL**",
            other => other.as_str(),
        };
        println!(
            "| {} | {} | {} | {} |",
            o.scenario.as_str(),
            verdict,
            o.reason.replace('|', "/"),
            figures.join("; ").replace('|', "/")
        );
    }
}

pub fn print_json(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, outcomes)?;
    writeln!(out)?;
    Ok(())
}
