//! Connection churn: many short connections (connect, 64-byte echo, close) as fast as possible.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client;
use crate::proc;
use crate::report::{Measured, Metric};
use crate::server::Server;

/// Bytes each connection sends and expects back.
const MESSAGE: usize = 64;
/// Longest a single connection may take before it counts as an error.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct ChurnResult {
    pub concurrency: usize,
    pub completed: u64,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    pub server_cpu_us: u64,
    pub server_cpu_us_per_connection: f64,
    /// Server CPU time over wall time: 1.0 is one core kept busy.
    pub server_cpu_utilisation: f64,
    /// The bench's own (client) CPU time over wall time.
    pub client_cpu_utilisation: f64,
    pub errors: Errors,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub io: u64,
    pub mismatch: u64,
    pub timeout: u64,
    /// The first error message seen, if any.
    pub first: Option<String>,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.mismatch + self.timeout
    }

    pub fn merge(&mut self, other: Errors) {
        self.connect += other.connect;
        self.io += other.io;
        self.mismatch += other.mismatch;
        self.timeout += other.timeout;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    fn record(&mut self, failure: Failure) {
        let message = match &failure {
            Failure::Connect(e) => {
                self.connect += 1;
                format!("connect: {e}")
            }
            Failure::Io(e) => {
                self.io += 1;
                format!("read/write: {e}")
            }
            Failure::Mismatch => {
                self.mismatch += 1;
                "echo differs from what was sent".to_string()
            }
            Failure::Timeout => {
                self.timeout += 1;
                format!("no echo within {CONNECTION_TIMEOUT:?}")
            }
        };
        self.first.get_or_insert(message);
    }
}

enum Failure {
    Connect(std::io::Error),
    Io(std::io::Error),
    Mismatch,
    Timeout,
}

/// Runs `concurrency` client loops against `server` for `duration`.
pub async fn run(
    server: &Server,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<ChurnResult> {
    preflight(server.addr).await?;

    let pid = server.pid();
    let me = std::process::id();
    let server_cpu_before = proc::cpu_time(pid)?;
    let client_cpu_before = proc::cpu_time(me)?;
    let start = Instant::now();
    let (completed, errors) = load(server.addr, start + duration, concurrency).await?;
    let elapsed = start.elapsed();
    let server_cpu = proc::cpu_time(pid)?.saturating_sub(server_cpu_before);
    let client_cpu = proc::cpu_time(me)?.saturating_sub(client_cpu_before);

    Ok(ChurnResult::from_parts(
        concurrency,
        completed,
        elapsed,
        server_cpu,
        client_cpu,
        errors,
    ))
}

impl ChurnResult {
    /// The result of `completed` connections in `elapsed`, which cost the server(s) `server_cpu`
    /// and the client `client_cpu`.
    pub fn from_parts(
        concurrency: usize,
        completed: u64,
        elapsed: Duration,
        server_cpu: Duration,
        client_cpu: Duration,
        errors: Errors,
    ) -> ChurnResult {
        let secs = elapsed.as_secs_f64();
        let server_cpu_us = u64::try_from(server_cpu.as_micros()).unwrap_or(u64::MAX);
        ChurnResult {
            concurrency,
            completed,
            elapsed_s: secs,
            rate_per_s: completed as f64 / secs,
            server_cpu_us,
            server_cpu_us_per_connection: if completed > 0 {
                server_cpu_us as f64 / completed as f64
            } else {
                f64::NAN
            },
            server_cpu_utilisation: server_cpu.as_secs_f64() / secs,
            client_cpu_utilisation: client_cpu.as_secs_f64() / secs,
            errors,
        }
    }
}

/// Runs `concurrency` client loops against `addr` until `deadline`: connect, 64-byte echo, close,
/// over and over. Returns the connections completed and the failures.
pub async fn load(
    addr: SocketAddr,
    deadline: Instant,
    concurrency: usize,
) -> anyhow::Result<(u64, Errors)> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut completed = 0u64;
                let mut errors = Errors::default();
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    match one_connection(addr, n).await {
                        Ok(()) => completed += 1,
                        Err(failure) => errors.record(failure),
                    }
                }
                (completed, errors)
            })
        })
        .collect();
    let mut completed = 0;
    let mut errors = Errors::default();
    for task in tasks {
        let (done, errs) = task.await.context("a churn client task panicked")?;
        completed += done;
        errors.merge(errs);
    }
    Ok((completed, errors))
}

/// One connection from each source address, checking the bind took and the echo works.
pub async fn preflight(addr: SocketAddr) -> anyhow::Result<()> {
    for n in 0..u64::from(client::SOURCE_ADDRESSES) {
        let stream = tokio::time::timeout(CONNECTION_TIMEOUT, client::connect(addr, n))
            .await
            .context("preflight connect timed out")?
            .with_context(|| format!("preflight connect from {}", client::source_ip(n)))?;
        let local = stream.local_addr()?;
        if local.ip() != client::source_ip(n) {
            bail!(
                "connection meant to come from {} came from {local}",
                client::source_ip(n)
            );
        }
        drop(stream);
        match one_connection(addr, n).await {
            Ok(()) => {}
            Err(Failure::Connect(e) | Failure::Io(e)) => bail!("preflight echo failed: {e}"),
            Err(Failure::Mismatch) => bail!("preflight echo differs from what was sent"),
            Err(Failure::Timeout) => bail!("preflight echo timed out"),
        }
    }
    Ok(())
}

/// Connect, send 64 bytes, read exactly 64 back and compare, close.
async fn one_connection(addr: SocketAddr, n: u64) -> Result<(), Failure> {
    let work = async {
        let mut stream = client::connect(addr, n).await.map_err(Failure::Connect)?;
        let mut message = [0u8; MESSAGE];
        for (i, byte) in message.iter_mut().enumerate() {
            *byte = (n as u8).wrapping_add(i as u8);
        }
        stream.write_all(&message).await.map_err(Failure::Io)?;
        let mut echo = [0u8; MESSAGE];
        stream.read_exact(&mut echo).await.map_err(Failure::Io)?;
        if echo != message {
            return Err(Failure::Mismatch);
        }
        Ok(())
    };
    match tokio::time::timeout(CONNECTION_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout),
    }
}

impl Measured for ChurnResult {
    fn metrics(&self) -> Vec<(Metric, f64)> {
        vec![
            (Metric::ChurnRate, self.rate_per_s),
            (Metric::CpuPerConnection, self.server_cpu_us_per_connection),
        ]
    }

    fn summary(&self) -> String {
        format!(
            "{:.0} conn/s ({} in {:.2} s), server CPU {:.1} µs/conn ({:.0}% of a core), client CPU {:.0}%, errors {}{}",
            self.rate_per_s,
            self.completed,
            self.elapsed_s,
            self.server_cpu_us_per_connection,
            self.server_cpu_utilisation * 100.0,
            self.client_cpu_utilisation * 100.0,
            self.errors.total(),
            self.errors
                .first
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        )
    }

    fn errors(&self) -> u64 {
        self.errors.total()
    }
}
