//! The scraper: `GET /metrics` every [`SCRAPE_PERIOD`] on the client's runtime while a part runs
//! against the server with `--metrics`, and what the scrapes found.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::SCRAPE_PERIOD;
use crate::report;

/// Longest one scrape (connect, request, the whole answer) may take before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// A series every answer must hold.
const EXPECTED_SERIES: &str = "lariat_accepted_total";
/// The scrapes made during one part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrapeStats {
    pub period_ms: u64,
    /// Answers read in full: 200, with the `lariat_accepted_total` series.
    pub scrapes: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// The size of the last full answer, head included.
    pub answer_bytes: u64,
    /// Connect to the end of the answer.
    pub latency_ms_median: Option<f64>,
    pub latency_ms_max: Option<f64>,
}

/// Scrapes `GET /metrics` every [`SCRAPE_PERIOD`] on the client's runtime until stopped.
pub struct Scraper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ScrapeStats>,
}

impl Scraper {
    /// Starts scraping `addr` now (the first scrape at once).
    pub fn start(addr: SocketAddr) -> Scraper {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut stats = ScrapeStats {
                period_ms: u64::try_from(SCRAPE_PERIOD.as_millis()).unwrap_or(u64::MAX),
                ..ScrapeStats::default()
            };
            let mut latencies = Vec::new();
            let mut interval = tokio::time::interval(SCRAPE_PERIOD);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = interval.tick() => {}
                }
                let started = Instant::now();
                match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(addr)).await {
                    Ok(Ok(bytes)) => {
                        stats.scrapes += 1;
                        stats.answer_bytes = bytes;
                        latencies.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(Err(e)) => {
                        stats.failed += 1;
                        stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        stats.failed += 1;
                        stats.first_error.get_or_insert_with(|| {
                            format!("no full answer within {SCRAPE_TIMEOUT:?}")
                        });
                    }
                }
            }
            stats.latency_ms_median = report::median(&latencies);
            stats.latency_ms_max = latencies.iter().copied().reduce(f64::max);
            stats
        });
        Scraper { stop, task }
    }

    /// Stops scraping (after the scrape under way, if any) and says how it went.
    pub async fn stop(self) -> anyhow::Result<ScrapeStats> {
        let _ = self.stop.send(());
        self.task.await.context("the scraper task panicked")
    }
}

/// One scrape: connect, `GET /metrics`, read the answer to its end (the endpoint closes every
/// connection after answering). Returns the answer's size.
async fn scrape(addr: SocketAddr) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .context("sending the request")?;
    let mut answer = Vec::with_capacity(8 * 1024);
    stream
        .read_to_end(&mut answer)
        .await
        .context("reading the answer")?;
    check_answer(&answer)?;
    Ok(answer.len() as u64)
}

/// A 200 with lariat's series in it.
fn check_answer(answer: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(answer);
    let status = text.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("answered `{status}`");
    }
    if !text.contains(EXPECTED_SERIES) {
        bail!(
            "no {EXPECTED_SERIES} in the answer ({} bytes)",
            answer.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n\r\nlariat_accepted_total 3\n").is_ok());
        let err = check_answer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "answered `HTTP/1.1 503 Service Unavailable`"
        );
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n\r\nother 1\n").is_err());
    }
}
