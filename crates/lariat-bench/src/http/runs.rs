//! One run against a fresh server: a protocol's load for a few seconds, or wrk through SIGHUP restarts.

use std::time::{Duration, Instant};

use crate::proc;
use crate::server::{Binaries, Kind, Server, SERVER_CPU};

use super::generators::{children_cpu, h2load, wrk};
use super::servers::{lariat_args, start};
use super::{HttpRun, HttpServer, Load, Protocol, RestartRun};

/// One run: a fresh `server`, loaded with `protocol` for `load.seconds`.
pub(super) async fn measure(
    binaries: &Binaries,
    load: &Load,
    server: HttpServer,
    protocol: Protocol,
    round: usize,
) -> HttpRun {
    let mut run = HttpRun {
        server,
        protocol,
        round,
        requests: 0,
        rate_per_s: f64::NAN,
        server_cpu_s: f64::NAN,
        cpu_per_request_us: f64::NAN,
        failed: 0,
        other_cores: f64::NAN,
        error: None,
    };
    let result = async {
        let running = start(binaries, server)?;
        let pid = running.pid();
        let port = running.port(protocol);
        let before = proc::cpu_time(pid)?;
        let (machine_before, generator_before) = (proc::machine_busy_time()?, children_cpu());
        let began = Instant::now();
        let generated = match protocol {
            Protocol::H1 => wrk(load.cpu, port, load.h1_connections, load.seconds).await?,
            Protocol::H2 => h2load(load.cpu, port, load).await?,
        };
        let cpu = proc::cpu_time(pid)?.saturating_sub(before);
        // The generator has been waited for: its CPU is in the children's usage now.
        let generator = children_cpu().saturating_sub(generator_before);
        let other = proc::machine_busy_time()?
            .saturating_sub(machine_before)
            .saturating_sub(cpu + generator);
        run.other_cores = other.as_secs_f64() / began.elapsed().as_secs_f64();
        drop(running);
        anyhow::Ok((generated, cpu))
    }
    .await;
    match result {
        Ok((g, cpu)) => {
            run.requests = g.requests;
            run.rate_per_s = g.requests as f64 / g.seconds;
            run.server_cpu_s = cpu.as_secs_f64();
            run.cpu_per_request_us = cpu.as_secs_f64() * 1e6 / g.requests.max(1) as f64;
            run.failed = g.failed;
        }
        Err(e) => run.error = Some(format!("{e:#}")),
    }
    run
}

/// wrk keep-alive load on `lariat serve --handler http-hello` through `load.restarts` SIGHUPs.
pub(super) async fn measure_restarts(binaries: &Binaries, load: &Load) -> RestartRun {
    let mut result = RestartRun {
        restarts: 0,
        requests: 0,
        rate_per_s: f64::NAN,
        failed: 0,
        failed_per_restart: f64::NAN,
        error: None,
    };
    let outcome = async {
        let server = Server::spawn(
            binaries.path(Kind::Lariat),
            &lariat_args(&["--drain-timeout", "5s"]),
            &SERVER_CPU.to_string(),
        )?;
        let interval = Duration::from_millis(load.restart_interval_ms);
        let seconds = (interval * (load.restarts as u32 + 1)).as_secs() + 1;
        let start = Instant::now();
        let (generated, restarted) = tokio::join!(
            wrk(
                load.cpu,
                server.addr.port(),
                load.restart_connections,
                seconds
            ),
            crate::restart::restart_repeatedly(
                &server,
                start,
                interval * (load.restarts as u32 + 1),
                load.restarts
            ),
        );
        let restarts = restarted?.len();
        drop(server);
        anyhow::Ok((generated?, restarts))
    }
    .await;
    match outcome {
        Ok((g, restarts)) => {
            result.restarts = restarts;
            result.requests = g.requests;
            result.rate_per_s = g.requests as f64 / g.seconds;
            result.failed = g.failed;
            result.failed_per_restart = g.failed as f64 / restarts.max(1) as f64;
        }
        Err(e) => result.error = Some(format!("{e:#}")),
    }
    result
}
