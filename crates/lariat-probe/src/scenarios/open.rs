//! Opening many connections at once, for the scenarios that need a crowd (`cap`, `fd-exhaustion`,
//! `slowloris`): a bounded number of connects in flight, stopping at the first that takes so long the
//! server's backlog must be full.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::protocol;

/// Connects in flight at once while opening.
pub(super) const OPEN_CONCURRENCY: usize = 64;
/// A connect not done by then means the server's backlog is full: it takes no more.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`open`] got.
#[derive(Debug, Default)]
pub(super) struct Opened {
    /// The connections made (and their first bytes sent), with their tags.
    pub streams: Vec<(u64, TcpStream)>,
    /// Connects refused (nothing listening, or a clean refusal).
    pub refused: u64,
    /// Connects that did not complete within [`CONNECT_TIMEOUT`]; opening stops at the first.
    pub timed_out: u64,
    /// Connected, but closed or reset by the server while the first bytes were sent.
    pub closed_at_once: u64,
    /// Other connect errors (e.g. the probe out of ports or descriptors).
    pub other: u64,
    /// The first of those other errors.
    pub first_other: Option<String>,
}

impl Opened {
    /// A short account for the figures: "N of M (k refused, …)".
    pub fn summary(&self, wanted: usize) -> String {
        let mut s = format!("{} of {wanted}", self.streams.len());
        let mut extra = Vec::new();
        if self.refused > 0 {
            extra.push(format!("{} refused", self.refused));
        }
        if self.timed_out > 0 {
            extra.push(format!(
                "{} connect timeouts: the server took no more",
                self.timed_out
            ));
        }
        if self.closed_at_once > 0 {
            extra.push(format!("{} closed at once", self.closed_at_once));
        }
        if self.other > 0 {
            extra.push(format!(
                "{} failed: {}",
                self.other,
                self.first_other.as_deref().unwrap_or("?")
            ));
        }
        if !extra.is_empty() {
            s.push_str(&format!(" ({})", extra.join(", ")));
        }
        s
    }
}

/// Opens up to `count` connections to `addr`, [`OPEN_CONCURRENCY`] at a time, sending `first(tag)` on each
/// as soon as it connects (nothing if empty), and keeps them. Stops early at the first connect that times
/// out (the server takes no more) or at `deadline`.
pub(super) async fn open<F>(addr: SocketAddr, count: usize, deadline: Instant, first: F) -> Opened
where
    F: Fn(u64) -> Vec<u8> + Send + Sync + 'static,
{
    let first = Arc::new(first);
    let next = Arc::new(AtomicU64::new(0));
    let full = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(Mutex::new(Opened::default()));
    let workers: Vec<_> = (0..OPEN_CONCURRENCY.min(count.max(1)))
        .map(|_| {
            let (first, next, full, opened) =
                (first.clone(), next.clone(), full.clone(), opened.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    if n >= count as u64 || full.load(Relaxed) || Instant::now() >= deadline {
                        return;
                    }
                    let connected =
                        tokio::time::timeout(CONNECT_TIMEOUT, protocol::connect(addr, n)).await;
                    let lock = || opened.lock().unwrap_or_else(|e| e.into_inner());
                    let mut stream = match connected {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            lock().refused += 1;
                            continue;
                        }
                        Ok(Err(e)) if e.kind() != io::ErrorKind::TimedOut => {
                            let mut o = lock();
                            o.other += 1;
                            o.first_other.get_or_insert_with(|| e.to_string());
                            continue;
                        }
                        _ => {
                            lock().timed_out += 1;
                            full.store(true, Relaxed);
                            continue;
                        }
                    };
                    let bytes = first(n);
                    if !bytes.is_empty() {
                        let sent =
                            tokio::time::timeout(CONNECT_TIMEOUT, stream.write_all(&bytes)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            lock().closed_at_once += 1;
                            continue;
                        }
                    }
                    lock().streams.push((n, stream));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let mut opened = std::mem::take(&mut *opened.lock().unwrap_or_else(|e| e.into_inner()));
    opened.streams.sort_by_key(|(n, _)| *n);
    opened
}
