//! One run against a fresh server: handshakes for a few seconds, or a crowd of idle connections.

use std::path::Path;
use std::time::Duration;

use crate::proc;
use crate::server::Binaries;

use super::certs::Pair;
use super::client;
use super::servers::Running;
use super::{Load, Part, TlsRun, TlsServer};

/// Fills `run` against a fresh server.
pub(super) async fn measure(
    binaries: &Binaries,
    dir: &Path,
    load: Load,
    pair: &Pair,
    mut run: TlsRun,
) -> TlsRun {
    if let Err(e) = measure_into(&mut run, binaries, dir, load, pair).await {
        run.error = Some(format!("{e:#}"));
    }
    run
}

async fn measure_into(
    run: &mut TlsRun,
    binaries: &Binaries,
    dir: &Path,
    load: Load,
    pair: &Pair,
) -> anyhow::Result<()> {
    let running = Running::start(binaries, dir, run.server, pair)?;
    let pid = running.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    match run.part {
        Part::Handshake => {
            let cpu_before = proc::cpu_time(pid)?;
            let h = client::handshakes(
                running.addr(),
                load.concurrency,
                Duration::from_secs(load.seconds),
            )
            .await;
            let cpu = proc::cpu_time(pid)?.saturating_sub(cpu_before);
            run.handshakes = h.done;
            run.handshakes_per_s = h.done as f64 / h.seconds;
            run.server_cpu_us_per_handshake = cpu.as_secs_f64() * 1e6 / h.done.max(1) as f64;
            run.failed = h.failed;
            run.first_error = h.first_error;
        }
        Part::Idle => {
            run.rss_before_bytes = proc::vm_rss_bytes(pid)?;
            let (open, failed, first_error) = client::open_idle(
                running.addr(),
                load.idle_connections,
                64,
                run.server == TlsServer::LariatEcho,
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            run.rss_idle_bytes = proc::vm_rss_bytes(pid)?;
            run.opened = open.len() as u64;
            run.bytes_per_connection = (run.rss_idle_bytes as f64 - run.rss_before_bytes as f64)
                / run.opened.max(1) as f64;
            run.failed = failed;
            run.first_error = first_error;
            drop(open);
        }
    }
    drop(running);
    Ok(())
}
