//! The load generators: `wrk` (HTTP/1.1 keep-alive) and `h2load` (HTTP/2), pinned to the client
//! CPU, what they reported, and the CPU time they used.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::Load;

/// User + system CPU time of the children this process has waited for (the load generators).
pub(super) fn children_cpu() -> Duration {
    // SAFETY: getrusage(2) writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
/// What a load generator reported.
#[derive(Debug, Default)]
pub(super) struct Generated {
    pub(super) requests: u64,
    pub(super) seconds: f64,
    pub(super) failed: u64,
}

/// `wrk`, pinned to `cpu`, one thread, `connections` keep-alive connections, for `seconds`.
pub(super) async fn wrk(
    cpu: usize,
    port: u16,
    connections: u32,
    seconds: u64,
) -> anyhow::Result<Generated> {
    let out = generator(
        "wrk",
        cpu,
        &[
            "-t1".into(),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            format!("http://127.0.0.1:{port}/"),
        ],
    )
    .await?;
    parse_wrk(&out)
}

/// `h2load`, pinned to `cpu`, HTTP/2 with prior knowledge.
pub(super) async fn h2load(cpu: usize, port: u16, load: &Load) -> anyhow::Result<Generated> {
    let out = generator(
        "h2load",
        cpu,
        &[
            "-c".into(),
            load.h2_connections.to_string(),
            "-m".into(),
            load.h2_streams.to_string(),
            "-D".into(),
            load.seconds.to_string(),
            format!("http://127.0.0.1:{port}/"),
        ],
    )
    .await?;
    parse_h2load(&out)
}

async fn generator(program: &str, cpu: usize, args: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {program} (is it installed?)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The numbers after each `key` in `line` (`connect 0, read 5` → [0, 5]).
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.trim_end_matches('.').parse().ok())
        .collect()
}

fn parse_wrk(out: &str) -> anyhow::Result<Generated> {
    let mut g = Generated::default();
    for line in out.lines().map(str::trim) {
        if line.contains(" requests in ") {
            let n = numbers(line);
            g.requests = *n.first().ok_or_else(|| anyhow!("wrk: {line}"))? as u64;
            g.seconds = *n.get(1).ok_or_else(|| anyhow!("wrk: {line}"))?;
            // `in 3.00s` or `in 1.00m`
            if line.contains("m,") {
                g.seconds *= 60.0;
            }
        } else if line.starts_with("Socket errors:") || line.starts_with("Non-2xx or 3xx") {
            // The counts after the colon (not the 2 of `Non-2xx`).
            let counts = line.split_once(':').map_or("", |(_, c)| c);
            g.failed += numbers(counts).iter().sum::<f64>() as u64;
        }
    }
    if g.seconds == 0.0 {
        bail!("no `requests in` line in wrk's output: {out}");
    }
    Ok(g)
}

fn parse_h2load(out: &str) -> anyhow::Result<Generated> {
    let mut g = Generated::default();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            g.seconds = *numbers(rest)
                .first()
                .ok_or_else(|| anyhow!("h2load: {line}"))?;
            if rest.starts_with(|c: char| c.is_ascii_digit()) && rest.contains("ms,") {
                g.seconds /= 1e3;
            }
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // N total, N started, N done, N succeeded, N failed, N errored, N timeout
            let n = numbers(rest);
            if n.len() < 7 {
                bail!("h2load: {line}");
            }
            // h2load's `failed` includes the errored and timed-out requests.
            g.requests = n[3] as u64;
            g.failed += n[4] as u64;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // N 2xx, N 3xx, N 4xx, N 5xx: the 4xx and 5xx ones count as failed.
            let codes: Vec<f64> = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect();
            g.failed += codes.iter().skip(2).sum::<f64>() as u64;
        }
    }
    if g.seconds == 0.0 {
        bail!("no `finished in` line in h2load's output: {out}");
    }
    Ok(g)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_summary() {
        let out = "Running 3s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  \
                   120000 requests in 3.00s, 10.00MB read\n  Socket errors: connect 0, read 5, write 1, timeout 0\n  \
                   Non-2xx or 3xx responses: 2\nRequests/sec:  40000.00\n";
        let g = parse_wrk(out).unwrap();
        assert_eq!((g.requests, g.seconds, g.failed), (120000, 3.0, 8));
    }

    #[test]
    fn reads_h2loads_summary() {
        let out = "finished in 3.00s, 50000.00 req/s, 1.00MB/s\n\
                   requests: 150000 total, 150100 started, 150000 done, 149990 succeeded, 10 failed, 0 errored, 0 timeout\n\
                   status codes: 149990 2xx, 0 3xx, 4 4xx, 6 5xx\n";
        let g = parse_h2load(out).unwrap();
        assert_eq!((g.requests, g.seconds, g.failed), (149990, 3.0, 20));
    }
}
