//! How the hand-over measurement reads: a progress line per part, and the two tables with the
//! failures under them.

use super::{
    HandoverResults, IdleHandover, SessionRun, CHURN_CONCURRENCY, DRAIN_TIMEOUT, SESSIONS,
    SESSION_PERIOD, SESSION_RESTARTS, SESSION_RUN,
};

fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

impl IdleHandover {
    pub(super) fn line(&self) -> String {
        format!(
            "{} idle connections ({} opened in {:.2} s): SIGHUP to successor serving {:.1} ms, to the old process's last connection moved {} ms, to its exit {:.1} ms; resumed {}, left with the old process {}; {} echoed after, {} lost{}",
            self.connections,
            self.opened,
            self.open_s,
            self.sighup_to_successor_ms,
            or_dash(self.sighup_to_drained_ms.map(|v| format!("{v:.1}"))),
            self.sighup_to_exit_ms,
            or_dash(self.resumed),
            or_dash(self.left_with_predecessor),
            self.echoed_after,
            self.lost,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default(),
        )
    }
}

impl SessionRun {
    pub(super) fn line(&self) -> String {
        format!(
            "{}: {} sessions ({} opened), {} SIGHUPs in {:.1} s: sessions closed {}, exchanges answered {}, failed {}; churn {} connections, {} failed{}{}; old processes gone {} after the load, {} still running",
            self.mode,
            self.sessions,
            self.sessions_opened,
            self.restarts.len(),
            self.elapsed_s,
            self.sessions_closed,
            self.exchanges,
            self.exchanges_failed,
            self.churn_completed,
            self.churn_errors.total(),
            self.churn_errors
                .first
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            self.first_session_error
                .as_deref()
                .map(|e| format!("; first session error: {e}"))
                .unwrap_or_default(),
            self.old_processes_exited_after_s
                .map_or("never".to_string(), |s| format!("{s:.2} s")),
            self.old_processes_alive,
        )
    }
}

impl HandoverResults {
    /// Whether any part could not be measured (a lost connection is a figure, not a failure).
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// The two tables, and the failures under them.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| idle echo connections | SIGHUP → successor serving | SIGHUP → last connection moved (`drained`) | SIGHUP → old process gone | resumed / left behind | lost (no echo after) |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.idle {
            out.push_str(&format!(
                "| {} | {:.1} ms | {} | {:.1} ms | {} / {} | {} of {} |\n",
                r.connections,
                r.sighup_to_successor_ms,
                or_dash(r.sighup_to_drained_ms.map(|v| format!("{v:.1} ms"))),
                r.sighup_to_exit_ms,
                or_dash(r.resumed),
                or_dash(r.left_with_predecessor),
                r.lost,
                r.opened,
            ));
        }
        out.push_str(&format!(
            "\n| {} sessions (a line every {} s each) + churn ({} clients), {} SIGHUPs in {} s, --drain-timeout {} | sessions closed | exchanges answered / failed | churn connections | failed churn connections | old processes gone after the load |\n|---|---|---|---|---|---|\n",
            SESSIONS,
            SESSION_PERIOD.as_secs(),
            CHURN_CONCURRENCY,
            SESSION_RESTARTS,
            SESSION_RUN.as_secs(),
            DRAIN_TIMEOUT,
        ));
        for r in &self.sessions {
            out.push_str(&format!(
                "| {} | {} of {} | {} / {} | {} ({:.0}/s) | {} | {} |\n",
                if r.mode == "drain" {
                    "drain (`--hand-over-window 0`)"
                } else {
                    "hand-over"
                },
                r.sessions_closed,
                r.sessions_opened,
                r.exchanges,
                r.exchanges_failed,
                r.churn_completed,
                r.churn_completed as f64 / r.elapsed_s,
                r.churn_errors.total(),
                r.old_processes_exited_after_s
                    .map_or("not all".to_string(), |s| format!("{s:.2} s")),
            ));
        }
        for failure in &self.failures {
            out.push_str(&format!("\n- FAILED: {failure}\n"));
        }
        out
    }
}
