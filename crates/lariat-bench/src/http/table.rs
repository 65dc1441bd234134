//! The Markdown table: each server's median over the undisturbed rounds and lariat's ratios.

use std::fmt::Write as _;

use crate::report;

use super::{HttpResults, HttpRun, HttpServer, Load, Protocol, DISTURBED};

/// The median of `key` over the rounds of `server` and `protocol` that other work did not disturb (over
/// all its rounds if every one was).
fn median(
    results: &HttpResults,
    server: HttpServer,
    protocol: Protocol,
    key: fn(&HttpRun) -> f64,
) -> Option<f64> {
    let runs: Vec<&HttpRun> = results
        .runs
        .iter()
        .filter(|r| r.server == server && r.protocol == protocol && r.error.is_none())
        .collect();
    let quiet: Vec<f64> = runs
        .iter()
        .filter(|r| r.other_cores <= DISTURBED)
        .map(|r| key(r))
        .collect();
    if quiet.is_empty() {
        report::median(&runs.iter().map(|r| key(r)).collect::<Vec<_>>())
    } else {
        report::median(&quiet)
    }
}

/// A row of the table: its name, the value of a run, the digits shown, the goal of lariat / hyper.
type Column = (&'static str, fn(&HttpRun) -> f64, usize, &'static str);

/// The table: per protocol, each server's median rate and CPU per request, and lariat's ratios to
/// hyper-hello (the median of the per-round ratios) and to nginx (between medians).
pub fn markdown(results: &HttpResults, load: &Load) -> String {
    if results.runs.is_empty() && results.restart.is_none() {
        return String::new();
    }
    let rounds = results.runs.iter().map(|r| r.round).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "HTTP: {} s per run, {rounds} round(s); each server's median over the rounds (of the undisturbed \
         ones: other work at most {DISTURBED} cores); lariat / hyper is the median of the per-round \
         ratios (the two back to back, the first alternating); wrk -t1 -c{}; h2load -c{} -m{}\n",
        load.seconds, load.h1_connections, load.h2_connections, load.h2_streams
    );
    let _ = writeln!(
        out,
        "| protocol | metric | lariat http-hello | hyper-hello | lariat / hyper (goal) | nginx return 200 | lariat / nginx |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    for protocol in [Protocol::H1, Protocol::H2] {
        let metrics: [Column; 2] = [
            ("requests/s", |r| r.rate_per_s, 0, "≥ 0.97"),
            (
                "server CPU µs/request",
                |r| r.cpu_per_request_us,
                2,
                "≤ 1.03",
            ),
        ];
        let paired = results
            .median_ratios
            .iter()
            .find(|(p, _, _)| *p == protocol);
        for (i, (name, key, digits, goal)) in metrics.into_iter().enumerate() {
            let [l, h, n] = HttpServer::ALL.map(|s| median(results, s, protocol, key));
            let per_round = paired.map(|&(_, rate, cpu)| if i == 0 { rate } else { cpu });
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} ({goal}) | {} | {} |",
                protocol.name(),
                fmt(l, digits),
                fmt(h, digits),
                fmt(per_round, 3),
                fmt(n, digits),
                fmt(ratio(l, n), 3),
            );
        }
    }
    if let Some(r) = &results.restart {
        let _ = writeln!(
            out,
            "\nRestarts: lariat http-hello, {} SIGHUPs {} ms apart under wrk -c{} (keep-alive): {} requests, \
             {} failed, {} failed per restart (goal 0){}",
            r.restarts,
            load.restart_interval_ms,
            load.restart_connections,
            r.requests,
            r.failed,
            fmt(Some(r.failed_per_restart), 2),
            r.error.as_deref().map(|e| format!("; FAILED: {e}")).unwrap_or_default()
        );
    }
    out
}
