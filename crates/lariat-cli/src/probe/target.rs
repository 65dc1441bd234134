//! The server under probe: one already running (`--target`), or one the probe starts (`--spawn`), with
//! its pid, CPU time and memory from `/proc`, its output, and signals.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How to start the server: a shell command with `{port}` where its port goes.
#[derive(Debug, Clone)]
pub struct Spawner {
    command: String,
}

impl Spawner {
    pub fn parse(command: &str) -> anyhow::Result<Spawner> {
        if !command.contains("{port}") {
            bail!("--spawn needs `{{port}}` where the server's port goes: {command:?}");
        }
        Ok(Spawner {
            command: command.to_owned(),
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
                    // Bounded: a server logging in a loop must not fill the probe's memory.
                    if out.len() < 4 << 20 {
                        out.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut target = Target {
            addr,
            child: Some(child),
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(target);
            }
            if let Some(status) = target.exit_status() {
                bail!(
                    "{command:?} exited before listening ({status}): {}",
                    target.output()
                );
            }
            if Instant::now() > deadline {
                bail!("{command:?} did not listen on {addr} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A server being probed.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Target {
    /// A server the probe did not start.
    pub fn existing(addr: SocketAddr) -> Target {
        Target {
            addr,
            child: None,
            output: Arc::new(Mutex::new(String::new())),
        }
    }

    /// The pid of the process the probe started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it printed (stdout and stderr) so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// CPU time (user + system) used so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let pid = self.pid().context("the probe did not start this server")?;
        cpu_time(pid)
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

/// `HUP`, `SIGHUP`, `USR2`, or a number.
pub fn parse_signal(name: &str) -> anyhow::Result<i32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Ok(match bare {
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        other => other
            .parse()
            .with_context(|| format!("unknown signal {name:?}"))?,
    })
}
