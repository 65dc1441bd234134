//! Starts the real `lariat` binary and talks to it over loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `lariat serve`, in a process group of its own; on drop the whole group is killed (its
/// workers, a restart's successor, a wrapper's children), so no test leaves a process behind, even one
/// that fails half-way.
pub struct Lariat {
    child: Child,
    /// The addresses from the `listening on …` lines, in order.
    pub listening: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Stdout lines after the first `listening on` ones (a successor started by a restart prints its own).
    later_stdout: Arc<Mutex<Vec<String>>>,
}

impl Lariat {
    /// `lariat serve ARGS`, waiting for one `listening on` line per `--listen` (at least one).
    pub fn start(args: &[&str]) -> Lariat {
        Lariat::start_with(args, None)
    }

    /// As [`start`](Self::start), with `RLIMIT_NOFILE` (soft and hard) set to `nofile` in the child.
    pub fn start_with(args: &[&str], nofile: Option<u64>) -> Lariat {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lariat"));
        cmd.arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
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
        let expected = args.iter().filter(|a| **a == "--listen").count().max(1);
        Lariat::from_command(cmd, expected)
    }

    /// Starts `cmd` (which runs `lariat serve`, perhaps through a wrapper) and waits for `expected`
    /// `listening on` lines.
    pub fn from_command(mut cmd: Command, expected: usize) -> Lariat {
        use std::os::unix::process::CommandExt;
        // Its own group: the drop guard kills the tree with one kill(2), and a test can signal the whole
        // group as a terminal's Ctrl-C or systemd's default KillMode does.
        cmd.process_group(0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start lariat");
        let stderr = collect(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut listening = Vec::new();
        while listening.len() < expected {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).unwrap();
            if n == 0 {
                let status = child.wait().unwrap();
                let err = stderr.lock().unwrap().clone();
                panic!("lariat exited before listening ({status}): {err}");
            }
            let addr = line
                .trim_end()
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected stdout line {line:?}"));
            listening.push(addr.to_owned());
        }
        // Keep reading stdout: a successor inherits the pipe and must be able to print.
        let later_stdout = Arc::new(Mutex::new(Vec::new()));
        {
            let sink = later_stdout.clone();
            std::thread::spawn(move || {
                for line in stdout.lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Lariat {
            child,
            listening,
            stderr,
            later_stdout,
        }
    }

    /// Stdout lines printed after the first `listening on` ones.
    pub fn later_stdout(&self) -> Vec<String> {
        self.later_stdout.lock().unwrap().clone()
    }

    /// The first TCP address it listens on.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.listening
            .iter()
            .find_map(|a| a.strip_prefix("tcp://"))
            .expect("no tcp listener")
            .parse()
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Sends `sig` to its whole process group (the process and everything it started), as Ctrl-C in a
    /// terminal or systemd's `KillMode=control-group` does.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on the process group this test created for the child (its pid is the pgid).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), sig);
        }
    }

    /// Waits for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lariat did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// CPU time (user + system) the process has used, from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_micros((utime + stime) * 1_000_000 / ticks)
    }
}

impl Drop for Lariat {
    fn drop(&mut self) {
        // The whole group (while the child is unreaped its pid, the group's id, cannot be reused), then
        // the child itself in case it left the group.
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything `pipe` yields, gathered by a thread of its own as it comes.
pub fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    let gathered = sink.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    gathered
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// One churn connection from `source` (a loopback address, so TIME_WAIT is spread over many): connect,
/// 64 bytes, the echo back, close.
pub fn churn_once(source: std::net::Ipv4Addr, server: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    use std::io::Write;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::V4(std::net::SocketAddrV4::new(source, 0)).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(5))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let msg = [0x5a_u8; 64];
    stream.write_all(&msg)?;
    let mut back = [0u8; 64];
    stream.read_exact(&mut back)?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// The `--metrics` address from the `metrics on tcp://…` line.
pub fn admin_addr(server: &Lariat) -> SocketAddr {
    let mut addr = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            addr = server
                .later_stdout()
                .iter()
                .find_map(|l| l.strip_prefix("metrics on tcp://")?.parse().ok());
            addr.is_some()
        }),
        "no `metrics on` line; stdout after listening: {:?}",
        server.later_stdout()
    );
    addr.unwrap()
}

/// One HTTP/1.1 request (`Host` the address); the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &format!("Host: {addr}\r\n"))
}

/// One HTTP/1.1 request with these header lines (each ending in CRLF); the status and the body.
pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_fmt(
        &mut s,
        format_args!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"),
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    if method != "HEAD" {
        assert_eq!(body.len(), length, "{answer}");
    }
    (status, body.to_owned())
}

/// Whether `pid` still runs (a zombie has exited; only its parent has not reaped it yet).
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rfind(')')
                .is_some_and(|end| !stat[end + 2..].starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `sig` to `pid`, a process the test started (directly, through restarts or through a
/// supervisor); the test's process-group guard reaps nothing before the test ends, so the pid is not
/// reused meanwhile.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The pids of the successors that took over, in order, from the old processes' logs (each writes
/// `restart: successor ready … successor_pid=N` once).
pub fn successor_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("successor ready"))
        .filter_map(|l| l.split("successor_pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}
