//! Idle memory: how much the server's resident memory grows per open, idle connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client;
use crate::proc;
use crate::report::{Measured, Metric};
use crate::server::Server;

/// Wait after startup before the first reading, so lazy runtime setup is not counted.
const SETTLE: Duration = Duration::from_millis(500);
/// Wait with every connection open and idle before the second reading.
const IDLE: Duration = Duration::from_secs(1);
/// Longest opening one connection (connect + 1-byte echo) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub requested: u64,
    pub opened: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub open_s: f64,
    pub rss_before_bytes: u64,
    pub rss_idle_bytes: u64,
    /// After closing every connection (and a short wait): does the server give memory back?
    pub rss_after_close_bytes: u64,
    pub bytes_per_connection: f64,
    pub server_threads: u64,
}

/// Opens `connections` idle connections to `server`, `concurrency` at a time, and reads VmRSS.
pub async fn run(
    server: &Server,
    connections: u64,
    concurrency: usize,
) -> anyhow::Result<IdleResult> {
    let pid = server.pid();
    tokio::time::sleep(SETTLE).await;
    let rss_before = proc::vm_rss_bytes(pid)?;

    let started = std::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            let addr = server.addr;
            tokio::spawn(async move {
                let mut open = Vec::new();
                let mut failed = 0u64;
                let mut first_error = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= connections {
                        break;
                    }
                    match tokio::time::timeout(OPEN_TIMEOUT, open_one(addr, n)).await {
                        Ok(Ok(stream)) => open.push(stream),
                        Ok(Err(e)) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                        Err(_) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| {
                                format!("connect + 1-byte echo took over {OPEN_TIMEOUT:?}")
                            });
                        }
                    }
                }
                (open, failed, first_error)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(usize::try_from(connections).unwrap_or(0));
    let mut failed = 0;
    let mut first_error = None;
    for worker in workers {
        let (open, fails, err) = worker.await.context("an idle-connection task panicked")?;
        streams.extend(open);
        failed += fails;
        if first_error.is_none() {
            first_error = err;
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    let opened = streams.len() as u64;

    tokio::time::sleep(IDLE).await;
    let rss_idle = proc::vm_rss_bytes(pid)?;
    let server_threads = proc::threads(pid)?;

    drop(streams);
    tokio::time::sleep(IDLE).await;
    let rss_after_close = proc::vm_rss_bytes(pid)?;

    Ok(IdleResult {
        requested: connections,
        opened,
        failed,
        first_error,
        open_s,
        rss_before_bytes: rss_before,
        rss_idle_bytes: rss_idle,
        rss_after_close_bytes: rss_after_close,
        bytes_per_connection: if opened > 0 {
            (rss_idle as f64 - rss_before as f64) / opened as f64
        } else {
            f64::NAN
        },
        server_threads,
    })
}

/// Connects and does a 1-byte echo, which proves the server accepted it and its handler ran.
async fn open_one(addr: std::net::SocketAddr, n: u64) -> std::io::Result<TcpStream> {
    let mut stream = client::connect(addr, n).await?;
    let byte = [n as u8];
    stream.write_all(&byte).await?;
    let mut echo = [0u8; 1];
    stream.read_exact(&mut echo).await?;
    if echo != byte {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "1-byte echo differs from what was sent",
        ));
    }
    Ok(stream)
}

impl Measured for IdleResult {
    fn metrics(&self) -> Vec<(Metric, f64)> {
        vec![(Metric::IdleBytes, self.bytes_per_connection)]
    }

    fn summary(&self) -> String {
        format!(
            "{:.0} B/conn: VmRSS {:.1} MiB -> {:.1} MiB with {} idle connections (opened in {:.2} s), {:.1} MiB after closing; {} failed{}",
            self.bytes_per_connection,
            mib(self.rss_before_bytes),
            mib(self.rss_idle_bytes),
            self.opened,
            self.open_s,
            mib(self.rss_after_close_bytes),
            self.failed,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        )
    }

    fn errors(&self) -> u64 {
        self.failed
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
