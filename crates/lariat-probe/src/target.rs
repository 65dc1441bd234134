//! The server under probe: one already running (`--target`), or one the probe starts (`--spawn`), with
//! its pid, CPU time and memory from `/proc`, what it said (its stdout and stderr, and its own log file
//! with `--server-log`), and signals.

use std::io::{Read, Seek};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Most of a server's output (pipes, or its log file) the probe keeps: a server logging in a loop must
/// not fill the probe's memory.
const MAX_SAID: usize = 4 << 20;

/// How to start the server: a shell command with `{port}` where its port goes, and where it writes its
/// own log (`{port}` substituted too), if it does not log to stderr.
#[derive(Debug, Clone)]
pub struct Spawner {
    command: String,
    server_log: Option<String>,
}

/// The server the probe started exited, or never listened: the scenario could not be run (a verdict of
/// its own, apart from a failure).
#[derive(Debug)]
pub struct NotStarted {
    /// The `RLIMIT_NOFILE` the scenario set, if any.
    pub limit: Option<u64>,
    /// What happened, with the first lines it said.
    pub why: String,
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit {
            Some(n) => write!(
                f,
                "the server did not start under the scenario's descriptor limit (RLIMIT_NOFILE {n}): {}",
                self.why
            ),
            None => write!(f, "the server did not start: {}", self.why),
        }
    }
}

impl std::error::Error for NotStarted {}

impl Spawner {
    pub fn parse(command: &str, server_log: Option<&str>) -> anyhow::Result<Spawner> {
        if !command.contains("{port}") {
            bail!("--spawn needs `{{port}}` where the server's port goes: {command:?}");
        }
        Ok(Spawner {
            command: command.to_owned(),
            server_log: server_log.map(str::to_owned),
        })
    }

    /// Starts the server on a free loopback port, with `RLIMIT_NOFILE` set to `nofile` if given, and
    /// waits until it accepts connections.
    pub async fn start(&self, nofile: Option<u64>) -> anyhow::Result<Target> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let command = self.command.replace("{port}", &port.to_string());
        let log = self
            .server_log
            .as_ref()
            .map(|path| ServerLog::at(PathBuf::from(path.replace("{port}", &port.to_string()))));
        let mut cmd = Command::new("/bin/sh");
        // `exec`: the pid we hold is the server's, not the shell's.
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so every process it starts (a restart's successors) can be
            // signalled and cleaned up together.
            .process_group(0);
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = output.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
                    if out.len() < MAX_SAID {
                        out.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut target = Target {
            addr,
            child: Some(child),
            output,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(target);
            }
            if let Some(status) = target.exit_status() {
                // Its last words may still be in the pipes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(NotStarted {
                    limit: nofile,
                    why: format!(
                        "{command:?} exited before listening ({status}){}",
                        last_lines(&target.said_since(&LogMark::default()), 3)
                    ),
                }
                .into());
            }
            if Instant::now() > deadline {
                return Err(NotStarted {
                    limit: nofile,
                    why: format!(
                        "{command:?} did not listen on {addr} within 20 s{}",
                        last_lines(&target.said_since(&LogMark::default()), 3)
                    ),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `": line; line; line"` from the last non-empty lines of `text` (where a server says why it gave
/// up), or nothing.
fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let lines = &all[all.len().saturating_sub(n)..];
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join("; "))
    }
}

/// The server's own log file (`--server-log`), read from where it stood when the server was started.
#[derive(Debug)]
struct ServerLog {
    path: PathBuf,
    /// Its length before the server started: what was there belongs to an earlier run.
    start: u64,
}

impl ServerLog {
    fn at(path: PathBuf) -> ServerLog {
        let start = std::fs::metadata(&path).map_or(0, |m| m.len());
        ServerLog { path, start }
    }

    /// Its length now.
    fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// What was written from `from` on (at most [`MAX_SAID`] bytes); nothing if the file is missing.
    fn read_from(&self, from: u64) -> String {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return String::new();
        };
        let from = from.max(self.start);
        if file.seek(std::io::SeekFrom::Start(from)).is_err() {
            return String::new();
        }
        let mut bytes = Vec::new();
        let _ = file.take(MAX_SAID as u64).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Where a server's output stood at some moment, to read what it said after.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogMark {
    pipes: usize,
    file: u64,
}

/// A server being probed.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    log: Option<ServerLog>,
}

impl Target {
    /// A server the probe did not start.
    pub fn existing(addr: SocketAddr) -> Target {
        Target {
            addr,
            child: None,
            output: Arc::new(Mutex::new(String::new())),
            log: None,
        }
    }

    /// The pid of the process the probe started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its output stands now, for [`Target::said_since`].
    pub fn log_mark(&self) -> LogMark {
        LogMark {
            pipes: self.output.lock().unwrap_or_else(|e| e.into_inner()).len(),
            file: self.log.as_ref().map_or(0, ServerLog::len),
        }
    }

    /// What it said after `mark`: on stdout and stderr, then in its log file.
    pub fn said_since(&self, mark: &LogMark) -> String {
        let mut said = self
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mark.pipes..)
            .unwrap_or("")
            .to_owned();
        if let Some(log) = &self.log {
            if !said.is_empty() && !said.ends_with('\n') {
                said.push('\n');
            }
            said.push_str(&log.read_from(mark.file));
        }
        said
    }

    /// Where the probe reads what it says: "stdout/stderr", and the log file if there is one.
    pub fn said_where(&self) -> String {
        match &self.log {
            Some(log) => format!("stdout/stderr and {}", log.path.display()),
            None => "stdout/stderr".to_owned(),
        }
    }

    /// Sends `signal` to the process the probe started.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid().context("the probe did not start this server")?;
        signal_pid(pid, signal)
    }

    /// Sends `signal` to every process of its group (it and what it started).
    pub fn signal_group(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid().context("the probe did not start this server")?;
        // SAFETY: kill(2) on the process group the probe created.
        if unsafe { libc::kill(-(pid as libc::pid_t), signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// How it exited, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for it to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `limit` for every process of its group to exit (after restarts, the one serving is a
    /// successor, and older ones may still be draining); true if they all did.
    pub async fn wait_group_exit(&mut self, limit: Duration) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let deadline = Instant::now() + limit;
        loop {
            // Reaps the first process once it exits, so it is not seen as alive.
            let _ = self.exit_status();
            if group_members(pid).is_empty() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// CPU time (user + system) used so far by its live processes (it and its workers: its process
    /// group), from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let pid = self.pid().context("the probe did not start this server")?;
        let mut total = cpu_time(pid)?;
        for member in group_members(pid) {
            if member != pid {
                // One that exited meanwhile is simply not counted.
                total += cpu_time(member).unwrap_or_default();
            }
        }
        Ok(total)
    }

    /// Resident memory now, from `/proc/PID/status`.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.pid().context("the probe did not start this server")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // The whole group: successors a restart started belong to it too.
            // SAFETY: kill(2) on the process group the probe created.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal_pid(pid: u32, signal: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// CPU time of `pid` from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("bad stat")?.parse()?;
    let stime: u64 = fields.get(12).context("bad stat")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// The signals a server is commonly told to stop, restart or reload with, by name.
const SIGNALS: [(&str, i32); 8] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("WINCH", libc::SIGWINCH),
    ("KILL", libc::SIGKILL),
];

/// `HUP`, `SIGHUP`, `USR2`, or a number.
pub fn parse_signal(name: &str) -> anyhow::Result<i32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    match SIGNALS.iter().find(|(n, _)| *n == bare) {
        Some((_, number)) => Ok(*number),
        None => bare
            .parse()
            .with_context(|| format!("unknown signal {name:?}")),
    }
}

/// `SIGTERM` for 15, `signal 40` for one without a name here.
pub fn signal_name(signal: i32) -> String {
    match SIGNALS.iter().find(|(_, n)| *n == signal) {
        Some((name, _)) => format!("SIG{name}"),
        None => format!("signal {signal}"),
    }
}

/// The live processes whose process group is `pgrp`, from `/proc/PID/stat`.
pub fn group_members(pgrp: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After "pid (comm) ": state, ppid, pgrp.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        let group: u32 = fields.nth(1)?.parse().ok()?;
        (group == pgrp && state != "Z").then_some(pid)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_back() {
        for name in ["TERM", "SIGQUIT", "usr1", "USR2", "HUP", "INT"] {
            let number = parse_signal(name).unwrap();
            let bare = name.to_ascii_uppercase();
            let bare = bare.strip_prefix("SIG").unwrap_or(&bare).to_owned();
            assert_eq!(signal_name(number), format!("SIG{bare}"));
        }
        assert_eq!(parse_signal("40").unwrap(), 40);
        assert_eq!(signal_name(40), "signal 40");
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn a_server_log_is_read_from_where_it_stood_at_start() {
        let path = std::env::temp_dir().join(format!("lariat-probe-log-{}", std::process::id()));
        std::fs::write(&path, "an earlier run\n").unwrap();
        let log = ServerLog::at(path.clone());
        std::fs::write(&path, "an earlier run\nthis run\n").unwrap();
        assert_eq!(log.read_from(0), "this run\n");
        let mark = log.len();
        std::fs::write(&path, "an earlier run\nthis run\nlater\n").unwrap();
        assert_eq!(log.read_from(mark), "later\n");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(log.read_from(0), "");
    }

    #[test]
    fn the_last_lines_say_why() {
        assert_eq!(last_lines("a\n\nb\nc\nd\n", 2), ": c; d");
        assert_eq!(last_lines("\n \n", 3), "");
    }
}
