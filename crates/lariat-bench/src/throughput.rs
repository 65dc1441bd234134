//! Echo throughput: one connection, a writer pushing 64 KiB chunks while a reader takes the echo.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client;
use crate::proc;
use crate::report::{Measured, Metric};
use crate::server::Server;

const CHUNK: usize = 64 * 1024;
/// The stream carries byte `offset % PATTERN` at each offset, so the echo can be checked cheaply.
const PATTERN: usize = 251;
/// After the writer stops, how long the echo may take to drain before the run counts as failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    pub chunk_bytes: usize,
    pub bytes_written: u64,
    pub bytes_echoed: u64,
    pub elapsed_s: f64,
    /// Echoed bytes per second, in MB (10^6 bytes).
    pub mb_per_s: f64,
    pub server_cpu_utilisation: f64,
    pub client_cpu_utilisation: f64,
}

pub async fn run(server: &Server, duration: Duration) -> anyhow::Result<ThroughputResult> {
    let stream = client::connect(server.addr, 0)
        .await
        .context("connecting")?;
    let (mut reader, mut writer) = stream.into_split();
    // PATTERN extra bytes, so any chunk can start at any phase of the pattern.
    let pattern: Vec<u8> = (0..CHUNK + PATTERN).map(|i| (i % PATTERN) as u8).collect();
    let pattern_w = pattern.clone();

    let pid = server.pid();
    let me = std::process::id();
    let server_cpu_before = proc::cpu_time(pid)?;
    let client_cpu_before = proc::cpu_time(me)?;
    let start = Instant::now();
    let deadline = start + duration;

    let write = tokio::spawn(async move {
        let mut written = 0u64;
        while Instant::now() < deadline {
            let phase = (written % PATTERN as u64) as usize;
            writer.write_all(&pattern_w[phase..phase + CHUNK]).await?;
            written += CHUNK as u64;
        }
        writer.shutdown().await?;
        Ok::<u64, std::io::Error>(written)
    });
    let read = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut echoed = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, anyhow::Error>(echoed);
            }
            let phase = (echoed % PATTERN as u64) as usize;
            if buf[..n] != pattern[phase..phase + n] {
                bail!(
                    "echo differs from what was sent, within bytes {echoed}..{}",
                    echoed + n as u64
                );
            }
            echoed += n as u64;
        }
    });
    let write_abort = write.abort_handle();
    let read_abort = read.abort_handle();

    let limit = deadline + DRAIN_TIMEOUT;
    let outcome = async {
        let written = tokio::time::timeout_at(limit.into(), write)
            .await
            .map_err(|_| {
                anyhow!("the writer was still blocked {DRAIN_TIMEOUT:?} after the deadline")
            })?
            .context("the writer task failed")?
            .context("writing")?;
        let echoed = tokio::time::timeout_at(limit.into(), read)
            .await
            .map_err(|_| {
                anyhow!("the echo did not drain within {DRAIN_TIMEOUT:?} of the deadline")
            })?
            .context("the reader task failed")??;
        Ok::<_, anyhow::Error>((written, echoed))
    }
    .await;
    let elapsed = start.elapsed();
    write_abort.abort();
    read_abort.abort();
    let (written, echoed) = outcome?;
    if written != echoed {
        bail!("wrote {written} bytes but {echoed} came back");
    }
    let server_cpu = proc::cpu_time(pid)?.saturating_sub(server_cpu_before);
    let client_cpu = proc::cpu_time(me)?.saturating_sub(client_cpu_before);

    let secs = elapsed.as_secs_f64();
    Ok(ThroughputResult {
        chunk_bytes: CHUNK,
        bytes_written: written,
        bytes_echoed: echoed,
        elapsed_s: secs,
        mb_per_s: echoed as f64 / secs / 1e6,
        server_cpu_utilisation: server_cpu.as_secs_f64() / secs,
        client_cpu_utilisation: client_cpu.as_secs_f64() / secs,
    })
}

impl Measured for ThroughputResult {
    fn metrics(&self) -> Vec<(Metric, f64)> {
        vec![(Metric::Throughput, self.mb_per_s)]
    }

    fn summary(&self) -> String {
        format!(
            "{:.1} MB/s ({:.1} MB echoed in {:.2} s), server CPU {:.0}%, client CPU {:.0}%",
            self.mb_per_s,
            self.bytes_echoed as f64 / 1e6,
            self.elapsed_s,
            self.server_cpu_utilisation * 100.0,
            self.client_cpu_utilisation * 100.0,
        )
    }

    fn errors(&self) -> u64 {
        0
    }
}
