//! The server processes of one scale configuration: started on one port, found with their
//! descendants (a supervisor's workers), and stopped with every process of their trees.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::Placement;
use crate::proc;
use crate::server::{Binaries, Kind, Scale, Server};

/// After the servers stopped, how long processes left of their trees get before SIGKILL.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// The server processes of one configuration. Dropping it stops them (SIGTERM, then SIGKILL; a
/// supervisor drains and stops its workers), then kills whatever is left of their process trees.
pub(super) struct Deployment {
    pub(super) scale: Scale,
    pub(super) servers: Vec<Server>,
    /// Every descendant seen, with its start time (so a reused pid is never killed).
    pub(super) seen: Vec<(u32, u64)>,
}

/// A server process and its role.
pub(super) struct Process {
    pub(super) pid: u32,
    pub(super) role: String,
}

impl Deployment {
    pub(super) fn start(
        binaries: &Binaries,
        scale: Scale,
        placement: &Placement,
    ) -> anyhow::Result<Deployment> {
        let kind = Kind::LariatScale(scale);
        let binary = binaries.path(kind);
        // Process n runs on the n-th CPU list, or the last one.
        let cpus = |n: usize| {
            placement
                .server_cpus
                .get(n)
                .or(placement.server_cpus.last())
                .cloned()
                .unwrap_or_default()
        };
        // From here on the guard owns every process started, so each error path stops them.
        let mut deployment = Deployment {
            scale,
            servers: Vec::new(),
            seen: Vec::new(),
        };
        let mut args = kind.args();
        // `--threads 1` unless the placement gives each process more runtime threads.
        if let Some(at) = args.iter().position(|a| a == "--threads") {
            if let Some(value) = args.get_mut(at + 1) {
                *value = placement.threads.max(1).to_string();
            }
        }
        deployment
            .servers
            .push(Server::spawn(binary, &args, &cpus(0)).context("starting the first server")?);
        let addr = deployment.servers[0].addr;
        // The others bind the first one's port (with SO_REUSEPORT, as it did).
        let args: Vec<String> = args
            .into_iter()
            .map(|a| {
                if a == "127.0.0.1:0" {
                    addr.to_string()
                } else {
                    a
                }
            })
            .collect();
        for n in 1..scale.processes() {
            let server = Server::spawn(binary, &args, &cpus(n))
                .with_context(|| format!("starting server {} on {addr}", n + 1))?;
            if server.addr != addr {
                bail!("server {} listens on {}, not on {addr}", n + 1, server.addr);
            }
            deployment.servers.push(server);
        }
        deployment.processes();
        Ok(deployment)
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.servers[0].addr
    }

    /// Every server process now: each started one, then its descendants.
    pub(super) fn processes(&mut self) -> Vec<Process> {
        let several = self.servers.len() > 1;
        let mut all = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            let children = proc::descendants(server.pid());
            let role = match (self.scale, several) {
                (Scale::Workers(_), _) => "supervisor".to_string(),
                (_, true) => format!("process {}", i + 1),
                (_, false) => "process".to_string(),
            };
            all.push(Process {
                pid: server.pid(),
                role,
            });
            for pid in children {
                if let Ok(start) = proc::start_time(pid) {
                    if !self.seen.contains(&(pid, start)) {
                        self.seen.push((pid, start));
                    }
                }
                all.push(Process {
                    pid,
                    role: "worker".to_string(),
                });
            }
        }
        all
    }

    /// The descendants seen that still run (the same process: same pid and start time).
    pub(super) fn leftovers(&self) -> Vec<u32> {
        self.seen
            .iter()
            .filter(|&&(pid, start)| proc::alive(pid) && proc::start_time(pid).ok() == Some(start))
            .map(|&(pid, _)| pid)
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.processes();
        // Each server's own guard: SIGTERM, SIGKILL after a grace period.
        self.servers.clear();
        // A supervisor stops its workers before it exits; if it had to be killed, its workers got
        // SIGTERM (PDEATHSIG) and drain. Whatever is still running after a while is killed.
        let deadline = Instant::now() + LEFTOVER_TIMEOUT;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for pid in left {
                    eprintln!("lariat-bench: server process {pid} outlived its parent; SIGKILL");
                    if let Ok(pid) = libc::pid_t::try_from(pid) {
                        // SAFETY: kill(2) has no memory-safety preconditions; the pid's start time
                        // was just checked, so it is the server process seen, not a reused pid.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                let gone = Instant::now() + LEFTOVER_TIMEOUT;
                while !self.leftovers().is_empty() && Instant::now() < gone {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
