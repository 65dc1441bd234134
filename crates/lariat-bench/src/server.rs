//! The servers under test: started pinned to one CPU, found by the line they print, always stopped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The CPU the servers run on (the bench's client runs on another one).
pub const SERVER_CPU: usize = 0;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of a server's stderr is kept (the handovers are kept in full regardless).
const STDERR_LIMIT: usize = 1 << 20;

mod kind;

pub use kind::{Binaries, Delivery, Kind, Scale};

/// A running server. Dropping it stops the process: SIGTERM, then SIGKILL if it lingers; and if it
/// handed over to successors (a restart), SIGKILL to the last one.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<Stderr>>,
    /// The address of its `metrics on tcp://ADDR` line (`--metrics`), once read.
    metrics: Arc<Mutex<Option<SocketAddr>>>,
    /// The successor [`Server::kill_successor`] already killed.
    killed: Option<u32>,
}

/// What the server and its successors (which inherit the pipe) wrote on stderr, read as it arrives.
#[derive(Debug, Default)]
struct Stderr {
    /// The text, up to [`STDERR_LIMIT`] bytes.
    text: String,
    handovers: Vec<Handover>,
    /// The connection hand-over lines (`drained`, `hand-over channel closed`), when read.
    marks: Vec<(Instant, Mark)>,
}

/// A log line the hand-over measurement times: what lariat says when a restart's connections
/// have moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `drained finished=…`: an old process's drain is over (with hand-over, its last connection
    /// has moved or finished); it exits next.
    Drained,
    /// `hand-over channel closed resumed=N left_with_predecessor=M`: the successor resumed N
    /// connections; M it was sent but never told to serve stayed with the old process.
    ChannelClosed { resumed: u64, left: u64 },
}

impl Mark {
    /// The mark a log line of lariat's text format carries, if any.
    pub fn parse(line: &str) -> Option<Mark> {
        if line.contains(" drained finished=") {
            return Some(Mark::Drained);
        }
        if line.contains("hand-over channel closed") {
            return Some(Mark::ChannelClosed {
                resumed: field(line, "resumed")?,
                left: field(line, "left_with_predecessor")?,
            });
        }
        None
    }
}

/// The number of a `KEY=DIGITS` field of a log line (a whole key: ` KEY=` or at the start).
fn field(line: &str, key: &str) -> Option<u64> {
    let pattern = format!("{key}=");
    line.match_indices(&pattern)
        .find(|&(at, _)| at == 0 || line[..at].ends_with(' '))
        .and_then(|(at, _)| {
            line[at + pattern.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// A `successor_pid=PID` line: a process handed its listeners over to PID, which now serves.
#[derive(Debug, Clone, Copy)]
pub struct Handover {
    pub successor_pid: u32,
    /// When the bench read the line.
    pub seen: Instant,
}

impl Server {
    /// Starts `kind` (with its arguments, see [`Kind`]) under `taskset -c SERVER_CPU` and waits for its `listening on tcp://…` line.
    pub fn start(binaries: &Binaries, kind: Kind) -> anyhow::Result<Self> {
        Server::spawn(binaries.path(kind), &kind.args(), &SERVER_CPU.to_string())
    }

    /// Starts `binary` with `args` under `taskset -c CPUS` (a list such as `0` or `0-1`) and waits
    /// for its `listening on tcp://…` line.
    pub fn spawn(binary: &Path, args: &[String], cpus: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(cpus)
            .arg(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting taskset -c {cpus} {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = read_stderr(child.stderr.take().expect("stderr is piped"));
        // From here on the guard owns the child, so every error path below stops it.
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            stderr,
            metrics: Arc::default(),
            killed: None,
        };
        server.addr = wait_for_address(stdout, Arc::clone(&server.metrics), READY_TIMEOUT)
            .with_context(|| format!("waiting for {} to listen", binary.display()))?;
        Ok(server)
    }

    /// The address of the `--metrics` endpoint, from the `metrics on tcp://ADDR` line lariat prints
    /// after its `listening on` lines; waits for it up to a few seconds.
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(addr) = *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) {
                return Ok(addr);
            }
            if Instant::now() >= deadline {
                bail!("no `metrics on tcp://…` line within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Every handover seen on stderr so far, in order: the last one names the serving process.
    pub fn handovers(&self) -> Vec<Handover> {
        self.lock_stderr().handovers.clone()
    }

    /// Every [`Mark`] line seen on stderr so far, in order, with when the bench read it.
    pub fn marks(&self) -> Vec<(Instant, Mark)> {
        self.lock_stderr().marks.clone()
    }

    /// The last `lines` lines the server (and its successors) wrote on stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let stderr = self.lock_stderr();
        let all: Vec<&str> = stderr.text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn lock_stderr(&self) -> std::sync::MutexGuard<'_, Stderr> {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILLs the last successor and waits until it is gone. Returns its pid and how long it
    /// took to go, or None if there was no successor (or it was already killed).
    pub fn kill_successor(&mut self) -> anyhow::Result<Option<(u32, Duration)>> {
        let Some(last) = self.handovers().last().map(|h| h.successor_pid) else {
            return Ok(None);
        };
        if self.killed == Some(last) {
            return Ok(None);
        }
        self.killed = Some(last);
        let pid = libc::pid_t::try_from(last).context("pid out of range")?;
        let sent = Instant::now();
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is a successor this server
        // started, which serves until it is told to stop, so it has not been reused.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err).with_context(|| format!("SIGKILL to successor {last}"));
            }
        }
        while crate::proc::alive(last) {
            if sent.elapsed() > STOP_TIMEOUT {
                bail!("successor {last} still running {STOP_TIMEOUT:?} after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Some((last, sent.elapsed())))
    }

    /// The server's pid. taskset execs the server, so taskset's child is the server itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the server ended, if it is no longer running.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// Stops the server and waits for it: SIGTERM, then SIGKILL after a grace period.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = self.kill_successor();
    }
}

/// Reads the server's stderr on a thread until every writer (successors included) has closed it,
/// keeping the text and noting each `successor_pid=PID` line when it arrives.
fn read_stderr(stderr: impl Read + Send + 'static) -> Arc<Mutex<Stderr>> {
    let shared = Arc::new(Mutex::new(Stderr::default()));
    let sink = Arc::clone(&shared);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let seen = Instant::now();
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(successor_pid) = successor_pid(&line) {
                log.handovers.push(Handover {
                    successor_pid,
                    seen,
                });
            }
            if let Some(mark) = Mark::parse(&line) {
                log.marks.push((seen, mark));
            }
            if log.text.len() + line.len() < STDERR_LIMIT {
                log.text.push_str(&line);
                log.text.push('\n');
            }
        }
    });
    shared
}

/// The PID of a `… successor_pid=PID …` log line.
fn successor_pid(line: &str) -> Option<u32> {
    line.split("successor_pid=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Reads lines from the server's stdout until `listening on tcp://ADDR`, within `timeout`.
/// A thread does the blocking reads; after the line it keeps draining stdout until the server exits,
/// putting the address of a `metrics on tcp://ADDR` line (`lariat serve --metrics`) in `metrics`.
fn wait_for_address(
    stdout: impl Read + Send + 'static,
    metrics: Arc<Mutex<Option<SocketAddr>>>,
    timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.trim().strip_prefix("metrics on tcp://") {
                if let Ok(addr) = addr.parse::<SocketAddr>() {
                    *metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                }
            }
            if !sent {
                if let Some(addr) = line.trim().strip_prefix("listening on tcp://") {
                    sent = true;
                    let _ = tx.send(
                        addr.parse::<SocketAddr>()
                            .map_err(|e| anyhow!("unparsable address in `{line}`: {e}")),
                    );
                }
            }
        }
        if !sent {
            let _ = tx.send(Err(anyhow!(
                "it exited (stdout closed) without printing `listening on tcp://…`"
            )));
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => bail!("no `listening on tcp://…` line within {timeout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_and_metrics_lines() {
        let stdout = "listening on tcp://127.0.0.1:4000\nmetrics on tcp://127.0.0.1:4001\n";
        let metrics = Arc::default();
        let addr = wait_for_address(
            std::io::Cursor::new(stdout),
            Arc::clone(&metrics),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 4000)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.lock().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            *metrics.lock().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 4001)))
        );
    }

    #[test]
    fn hand_over_marks() {
        assert_eq!(
            Mark::parse(
                "2026-01-01T00:00:00.000000Z  INFO drained finished=1000 accepted_from_queue=0 elapsed_ms=42"
            ),
            Some(Mark::Drained)
        );
        assert_eq!(
            Mark::parse(
                r#"2026-01-01T00:00:00.000000Z  INFO hand-over channel closed resumed=9998 left_with_predecessor=2 why="the predecessor closed it""#
            ),
            Some(Mark::ChannelClosed {
                resumed: 9998,
                left: 2
            })
        );
        // A longer key ending in the one asked for is another field.
        assert_eq!(field("not_resumed=5 resumed=7", "resumed"), Some(7));
        assert_eq!(field("resumed=x", "resumed"), None);
        // Without its counts the line names nothing to count.
        assert_eq!(Mark::parse("INFO hand-over channel closed why=x"), None);
        assert_eq!(
            Mark::parse("INFO listeners closed after draining their queues accepted=0"),
            None
        );
        assert_eq!(
            Mark::parse("INFO restart: successor ready; handing over the listeners and draining successor_pid=7 active=3"),
            None
        );
    }

    #[test]
    fn successor_pids() {
        assert_eq!(
            successor_pid(
                "2024-01-01T00:00:00Z  INFO restart: successor ready; handing over the listeners and draining successor_pid=1234 active=3"
            ),
            Some(1234)
        );
        assert_eq!(successor_pid(r#"{"successor_pid":1234}"#), None);
        assert_eq!(
            successor_pid("INFO restart: successor started pid=99"),
            None
        );
    }
}
