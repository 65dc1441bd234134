//! Readings of another process from /proc: CPU time used, resident memory, allowed CPUs, liveness.

use std::time::Duration;

use anyhow::{anyhow, Context};

/// User + system CPU time consumed so far by every thread of `pid` (fields 14 and 15 of
/// /proc/PID/stat), at clock-tick resolution.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Field 2 (comm) is in parentheses and may hold spaces or parentheses: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: no ')' after comm"))?;
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("{path}: no field {n}"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {n}"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_micros(
        ticks * 1_000_000 / clock_ticks_per_second(),
    ))
}

/// Whether `pid` is still running: it has a /proc/PID/stat and its state (field 3) is neither `Z`, a
/// zombie, which has exited and only waits for its parent to reap it, nor `X`, dead.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            Some(!matches!(rest.split_whitespace().next()?, "Z" | "X"))
        })
        .unwrap_or(false)
}

/// The unit of /proc/PID/stat times, `sysconf(_SC_CLK_TCK)` (almost always 100).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// Resident set size of `pid` in bytes (VmRSS of /proc/PID/status, given there in kB).
pub fn vm_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let kb = status_field(pid, "VmRSS")?
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .context("parsing VmRSS")?;
    Ok(kb * 1024)
}

/// The CPUs `pid` may run on, as the kernel lists them (e.g. "0").
pub fn cpus_allowed_list(pid: u32) -> anyhow::Result<String> {
    status_field(pid, "Cpus_allowed_list")
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "Threads")?
        .parse()
        .context("parsing Threads")
}

fn status_field(pid: u32, key: &str) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == key).then(|| v.trim().to_string())
        })
        .ok_or_else(|| anyhow!("{path}: no {key} line"))
}
