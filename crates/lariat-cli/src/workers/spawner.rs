//! Starting worker processes: this executable, with the sockets as descriptors 3, 4, … and arguments
//! built from the supervisor's settings ([`super::args`]), and the private directory of the workers'
//! hand-over sockets, through which a replacement takes its predecessor's live connections.

use std::process::Child;

use anyhow::{bail, Context};
use lariat::lifecycle::Instruction;
use lariat::restart::{spawn_successor, PassOn, RestartError, RestartOptions, Successor};
use tokio::task::JoinSet;

use super::Parked;
use crate::cli::ServeArgs;

/// Starts workers: this executable, with the arguments of the supervisor's settings minus its own, plus
/// `--as-worker`.
pub struct Spawner {
    opts: RestartOptions,
    /// Where each worker's hand-over socket is (`None` if the directory could not be made: the
    /// workers then drain when replaced).
    hand_over_dir: Option<HandOverDir>,
}

/// The directory of the workers' hand-over sockets, one per worker named by its pid: made by the
/// supervisor, readable by its user only; removed when dropped.
struct HandOverDir(std::path::PathBuf);

impl HandOverDir {
    fn create() -> std::io::Result<HandOverDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = hand_over_dir(std::process::id());
        // Fails if it exists: a directory someone else prepared is never used.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(HandOverDir(path))
    }
}

impl Drop for HandOverDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of the hand-over sockets of the supervisor `supervisor`'s workers.
pub fn hand_over_dir(supervisor: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("lariat-workers-{supervisor}"))
}

/// The socket a worker binds in `dir` (made by its supervisor), after checking the directory is this
/// user's and closed to others: the worker replacing it connects there to take its connections.
pub fn worker_hand_over_socket(
    supervisor: u32,
) -> anyhow::Result<lariat::handover::HandOverSocket> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = hand_over_dir(supervisor);
    let meta = std::fs::symlink_metadata(&dir).context("the supervisor's hand-over directory")?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is not a private directory of this user", dir.display());
    }
    let path = dir.join(std::process::id().to_string());
    lariat::handover::HandOverSocket::bind(&path)
        .with_context(|| format!("binding {}", path.display()))
}

impl Spawner {
    pub fn new(args: &ServeArgs) -> anyhow::Result<Spawner> {
        let mut opts = RestartOptions::same_process().context("finding this executable")?;
        opts.args = super::args::worker_args(args, std::process::id());
        opts.ready_timeout = args.drain.restart_timeout;
        // Workers ignore SIGTERM (it may be the whole group's): one given up on is told to drain.
        opts.stop_signal = Instruction::Drain.signal();
        let hand_over_dir = match HandOverDir::create() {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the workers' hand-over directory; replaced workers drain");
                None
            }
        };
        Ok(Spawner {
            opts,
            hand_over_dir,
        })
    }

    /// Starts a worker process with the sockets; it is not serving yet. `replacing`: the pid of the
    /// worker it replaces, whose live connections it takes.
    pub fn spawn(
        &self,
        named: &[Parked],
        replacing: Option<u32>,
    ) -> Result<Successor, RestartError> {
        // The supervisor keeps the socket: a worker's drain must not filter or unlink it.
        let passed = named
            .iter()
            .map(|n| PassOn::supervised(n.name.clone(), &n.listener))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| RestartError::Spawn {
                program: self.opts.program.clone(),
                source,
            })?;
        match (&self.hand_over_dir, replacing) {
            (Some(dir), Some(old)) => {
                let mut opts = self.opts.clone();
                opts.hand_over_from = Some(dir.0.join(old.to_string()));
                spawn_successor(&passed, &opts)
            }
            _ => spawn_successor(&passed, &self.opts),
        }
    }

    /// Starts a worker for `slot` and waits for it to serve in `set`, in the background.
    pub fn start_in(
        &self,
        set: &mut JoinSet<(usize, anyhow::Result<Child>)>,
        slot: usize,
        named: &[Parked],
        replacing: Option<u32>,
    ) {
        match self.spawn(named, replacing) {
            Ok(successor) => {
                set.spawn(async move {
                    let ready = successor.ready_child().await.map_err(anyhow::Error::from);
                    (slot, ready)
                });
            }
            Err(e) => {
                set.spawn(async move { (slot, Err(anyhow::Error::from(e))) });
            }
        }
    }
}
