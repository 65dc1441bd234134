//! Closed-loop client load shared by the scenarios: `concurrency` workers, each connecting, exchanging
//! one request and closing, again and again, until told to stop; every outcome counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{self, Protocol};

/// What a load saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Exchanges answered correctly.
    pub ok: AtomicU64,
    /// Connects refused or timed out (nothing was accepted: a refusal is clean).
    pub not_connected: AtomicU64,
    /// Failures after a successful connect: resets, timeouts, wrong answers.
    pub failed_after_connect: AtomicU64,
    /// Latencies of successful exchanges, in microseconds (connect to answer).
    pub latencies_us: Mutex<Vec<u32>>,
    /// The first failure after connect, for the report.
    pub first_failure: Mutex<Option<String>>,
}

impl Tally {
    /// The `p`-th percentile latency (0..=100).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut l = self
            .latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if l.is_empty() {
            return None;
        }
        l.sort_unstable();
        let i = ((l.len() - 1) as f64 * p / 100.0).round() as usize;
        Some(Duration::from_micros(l[i] as u64))
    }
}

/// A running load; [`Load::stop`] ends it and returns the tally.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Tally>,
    started: Instant,
}

impl Load {
    pub fn start(protocol: Protocol, addr: SocketAddr, concurrency: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let workers = (0..concurrency as u64)
            .map(|w| {
                let (stop, tally) = (stop.clone(), tally.clone());
                tokio::spawn(async move {
                    let mut n = w;
                    while !stop.load(Relaxed) {
                        n += concurrency as u64;
                        let began = Instant::now();
                        let mut stream = match protocol::connect(addr, n).await {
                            Ok(s) => s,
                            Err(_) => {
                                tally.not_connected.fetch_add(1, Relaxed);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        };
                        match protocol.exchange(&mut stream, &protocol.request(n)).await {
                            Ok(()) => {
                                tally.ok.fetch_add(1, Relaxed);
                                let us = began.elapsed().as_micros().min(u32::MAX as u128) as u32;
                                tally
                                    .latencies_us
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(us);
                            }
                            Err(e) => {
                                tally.failed_after_connect.fetch_add(1, Relaxed);
                                tally
                                    .first_failure
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            workers,
            tally,
            started: Instant::now(),
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Stops the workers (each finishes its exchange) and returns the tally and the elapsed time.
    pub async fn stop(self) -> (Arc<Tally>, Duration) {
        self.stop.store(true, Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        (self.tally, self.started.elapsed())
    }
}
