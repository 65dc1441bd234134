//! The servers under test: started pinned to one CPU, found by the line they print, always stopped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

/// The CPU the servers run on (the bench's client runs on another one).
pub const SERVER_CPU: usize = 0;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Naive,
    Lariat,
}

impl Kind {
    /// In the order each round runs them.
    pub const ALL: [Kind; 2] = [Kind::Naive, Kind::Lariat];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Naive => "naive",
            Kind::Lariat => "lariat",
        }
    }

    fn binary_name(self) -> &'static str {
        match self {
            Kind::Naive => "naive-echo",
            Kind::Lariat => "lariat",
        }
    }

    fn args(self) -> Vec<&'static str> {
        match self {
            Kind::Naive => vec!["127.0.0.1:0"],
            Kind::Lariat => vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--handler",
                "echo",
                "--max-connections",
                "20000",
            ],
        }
    }
}

/// Where the two server binaries are: next to the bench's own executable.
#[derive(Debug, Clone)]
pub struct Binaries {
    naive: PathBuf,
    lariat: PathBuf,
}

impl Binaries {
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the bench's own executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
        let find = |kind: Kind| -> anyhow::Result<PathBuf> {
            let path = dir.join(kind.binary_name());
            if !path.is_file() {
                bail!(
                    "{} not found (the bench looks next to its own executable).\n\
                     Build both servers first, in the same profile as the bench:\n    \
                     cargo build --release -p lariat-cli -p lariat-bench",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Binaries {
            naive: find(Kind::Naive)?,
            lariat: find(Kind::Lariat)?,
        })
    }

    pub fn path(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Naive => &self.naive,
            Kind::Lariat => &self.lariat,
        }
    }
}

/// A running server. Dropping it stops the process: SIGTERM, then SIGKILL if it lingers.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
}

impl Server {
    /// Starts `kind` under `taskset -c SERVER_CPU` and waits for its `listening on tcp://…` line.
    pub fn start(binaries: &Binaries, kind: Kind) -> anyhow::Result<Self> {
        let binary = binaries.path(kind);
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(SERVER_CPU.to_string())
            .arg(binary)
            .args(kind.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting taskset -c {SERVER_CPU} {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // From here on the guard owns the child, so every error path below stops it.
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
        };
        server.addr = wait_for_address(stdout, READY_TIMEOUT)
            .with_context(|| format!("waiting for {} to listen", binary.display()))?;
        Ok(server)
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
    }
}

/// Reads lines from the server's stdout until `listening on tcp://ADDR`, within `timeout`.
/// A thread does the blocking reads; after the line it keeps draining stdout until the server exits.
fn wait_for_address(
    stdout: impl Read + Send + 'static,
    timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
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
