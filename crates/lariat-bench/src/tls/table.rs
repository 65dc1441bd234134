//! The Markdown tables: medians over the rounds and the median of the per-round ratios to nginx.

use std::fmt::Write as _;

use crate::report::median;

use super::{Cert, Part, TlsResults, TlsRun, TlsServer};

/// Median over the rounds of `value` for one server and certificate.
fn med(
    results: &TlsResults,
    part: Part,
    server: TlsServer,
    cert: Cert,
    value: fn(&TlsRun) -> f64,
) -> Option<f64> {
    let values: Vec<f64> = results
        .runs
        .iter()
        .filter(|r| r.part == part && r.server == server && r.cert == cert && r.error.is_none())
        .map(value)
        .filter(|v| v.is_finite())
        .collect();
    median(&values)
}

/// Median of the per-round ratios `value(nginx) / value(lariat)` (above 1: lariat does better when
/// smaller is better).
fn round_ratio(
    results: &TlsResults,
    part: Part,
    cert: Cert,
    value: fn(&TlsRun) -> f64,
) -> Option<f64> {
    round_ratio_of(results, TlsServer::Lariat, part, cert, value)
}

/// [`round_ratio`] for another lariat server.
fn round_ratio_of(
    results: &TlsResults,
    lariat: TlsServer,
    part: Part,
    cert: Cert,
    value: fn(&TlsRun) -> f64,
) -> Option<f64> {
    let rounds = results.runs.iter().map(|r| r.round).max().unwrap_or(0);
    let ratios: Vec<f64> = (1..=rounds)
        .filter_map(|round| {
            let find = |server| {
                results
                    .runs
                    .iter()
                    .find(|r| {
                        r.part == part
                            && r.server == server
                            && r.cert == cert
                            && r.round == round
                            && r.error.is_none()
                    })
                    .map(value)
            };
            Some(find(TlsServer::Nginx)? / find(lariat)?)
        })
        .filter(|v| v.is_finite())
        .collect();
    median(&ratios)
}

/// The Markdown tables: one per part measured.
pub fn markdown(results: &TlsResults, rounds: usize) -> String {
    let mut out = String::new();
    let f = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let parts: Vec<Part> = [Part::Handshake, Part::Idle]
        .into_iter()
        .filter(|p| results.runs.iter().any(|r| r.part == *p))
        .collect();
    for part in parts {
        match part {
            Part::Handshake => {
                let _ = writeln!(out, "| certificate | lariat handshakes/s | nginx handshakes/s | lariat µs CPU/handshake | nginx µs CPU/handshake | handshakes per core, lariat / nginx (median of {rounds} per-round ratios) |");
                let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
                for cert in Cert::ALL {
                    let rate = |s| med(results, part, s, cert, |r| r.handshakes_per_s);
                    let cpu = |s| med(results, part, s, cert, |r| r.server_cpu_us_per_handshake);
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {}× |",
                        cert.name(),
                        f(rate(TlsServer::Lariat), 0),
                        f(rate(TlsServer::Nginx), 0),
                        f(cpu(TlsServer::Lariat), 0),
                        f(cpu(TlsServer::Nginx), 0),
                        f(
                            round_ratio(results, part, cert, |r| r.server_cpu_us_per_handshake),
                            2
                        ),
                    );
                }
            }
            Part::Idle => {
                if !out.is_empty() {
                    out.push('\n');
                }
                let _ = writeln!(out, "| certificate | lariat http-hello B per idle TLS connection | nginx return 200 | lariat http-hello / nginx (median of {rounds} per-round ratios) | lariat echo (the TLS layer alone) | lariat echo / nginx |");
                let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
                for cert in Cert::ALL {
                    let bytes = |s| med(results, part, s, cert, |r| r.bytes_per_connection);
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {}× | {} | {}× |",
                        cert.name(),
                        f(bytes(TlsServer::Lariat), 0),
                        f(bytes(TlsServer::Nginx), 0),
                        f(
                            round_ratio(results, part, cert, |r| 1.0 / r.bytes_per_connection),
                            2
                        ),
                        f(bytes(TlsServer::LariatEcho), 0),
                        f(
                            round_ratio_of(results, TlsServer::LariatEcho, part, cert, |r| {
                                1.0 / r.bytes_per_connection
                            }),
                            2
                        ),
                    );
                }
            }
        }
    }
    out
}
