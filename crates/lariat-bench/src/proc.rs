//! Readings of another process from /proc: CPU time used, resident memory, allowed CPUs, liveness,
//! descendants; and the whole machine's busy CPU time.

use std::time::Duration;

use anyhow::{anyhow, Context};

/// User + system CPU time consumed so far by every thread of `pid` (fields 14 and 15 of
/// /proc/PID/stat), at clock-tick resolution.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let fields = stat_fields(pid)?;
    let ticks = stat_field(&fields, pid, 14)? + stat_field(&fields, pid, 15)?;
    Ok(Duration::from_micros(
        ticks * 1_000_000 / clock_ticks_per_second(),
    ))
}

/// When `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat): with the pid, it
/// names one process, not whichever process reuses the pid later.
pub fn start_time(pid: u32) -> anyhow::Result<u64> {
    stat_field(&stat_fields(pid)?, pid, 22)
}

/// Every process descended from `pid` (its children, their children, …), found by the parent pid
/// (field 4) of each /proc/*/stat, parents before their children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parents: Vec<(u32, u32)> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let fields = stat_fields(p).ok()?;
            Some((p, u32::try_from(stat_field(&fields, p, 4).ok()?).ok()?))
        })
        .collect();
    parents.sort_unstable();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|&&(_, ppid)| ppid == parent) {
            if !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// The fields of /proc/PID/stat from field 3 (state) on: field 2 (comm) is in parentheses and may
/// hold spaces or parentheses, so the line is split after the last ')'.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: no ')' after comm"))?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// Field `n` (numbered as in proc(5)) of [`stat_fields`], which start at field 3.
fn stat_field(fields: &[String], pid: u32, n: usize) -> anyhow::Result<u64> {
    fields
        .get(n - 3)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no field {n}"))?
        .parse::<u64>()
        .with_context(|| format!("/proc/{pid}/stat: field {n}"))
}

/// CPU time the whole machine spent busy so far, every CPU together: user, nice, system, irq,
/// softirq and steal (time a hypervisor gave to someone else) of the `cpu` line of /proc/stat.
pub fn machine_busy_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat: no cpu line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().context("/proc/stat: cpu line"))
        .collect::<anyhow::Result<_>>()?;
    // user nice system idle iowait irq softirq steal …
    let ticks: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_and_start_times() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("spawning sleep");
        let me = std::process::id();
        let found = descendants(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(!found.contains(&me));
        assert!(start_time(me).unwrap() > 0);
        assert!(cpu_time(me).is_ok());
        assert!(machine_busy_time().unwrap() > Duration::ZERO);
    }
}
