//! The old process's end of the hand-over channel: passes connections and waits for each `Taken`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Message};
use super::Refusal;

/// How long the successor may go without answering while connections wait for it; past it the
/// successor is taken to have stopped, and every connection not yet taken stays here. Generous: a
/// successor taking thousands of connections on a loaded machine can be silent for a few seconds
/// (2 s was seen to pass under load), and giving up too early costs more than waiting (the waiting
/// connections are only paused, never lost, either way).
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel to a successor that takes connections, while the hand-over window is open.
#[derive(Debug)]
pub(crate) struct Outgoing {
    sock: AsyncFd<OwnedFd>,
    /// Connections passed and not yet taken: who to tell once `Commit` went out (true) or failed.
    pending: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    /// The successor died, misbehaved or stopped answering: nothing more is passed.
    failed: CancellationToken,
    /// The end of the window: a handler that reaches its safe point later drains instead.
    closes_at: tokio::time::Instant,
}

impl Outgoing {
    /// Starts the channel on `sock` (connected to the successor) for `window`; its reader runs as a
    /// task of its own until the channel ends.
    pub(crate) fn start(sock: socket2::Socket, window: Duration) -> io::Result<Arc<Outgoing>> {
        sock.set_nonblocking(true)?;
        let out = Arc::new(Outgoing {
            sock: wire::register(sock)?,
            pending: Mutex::new(HashMap::new()),
            failed: CancellationToken::new(),
            closes_at: crate::deadline::after(tokio::time::Instant::now(), window),
        });
        tokio::spawn(read_answers(out.clone()));
        Ok(out)
    }

    /// True while a connection may still be passed.
    pub(crate) fn is_open(&self) -> bool {
        !self.failed.is_cancelled() && tokio::time::Instant::now() < self.closes_at
    }

    /// Passes connection `id` (its socket `fd`, `state` and `read_ahead`) and waits until the successor
    /// took it and was told to serve it. On `Ok` the caller must let go of the connection at once; on
    /// `Err` it is still the caller's, and the successor never serves it.
    pub(crate) async fn pass(
        &self,
        id: u64,
        fd: RawFd,
        state: &[u8],
        read_ahead: &[u8],
    ) -> Result<(), Refusal> {
        if !self.is_open() {
            return Err(Refusal::NoSuccessor);
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        // A cancelled hand-over (the handler's task aborted) must not be committed later.
        let mut forget = Forget {
            out: self,
            id,
            armed: true,
        };
        let message = Message::Conn {
            id,
            state,
            read_ahead,
        }
        .encode();
        // No deadline of our own: the reader's watchdog fails the channel (answering every waiter)
        // when the successor stops answering.
        tokio::select! {
            sent = self.send(&message, Some(fd)) => if let Err(e) = sent {
                self.fail(&format!("sending a connection: {e}"));
                return Err(Refusal::SuccessorGone);
            },
            _ = self.failed.cancelled() => return Err(Refusal::SuccessorGone),
        }
        let answer = rx.await;
        forget.armed = false;
        match answer {
            Ok(true) => Ok(()),
            _ => Err(Refusal::SuccessorGone),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<bool>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one message, waiting while the channel is full.
    async fn send(&self, message: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        loop {
            let mut guard = self.sock.writable().await?;
            match guard.try_io(|s| wire::send(s.as_raw_fd(), message, fd)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Gives up on the successor: nothing more is passed, every connection waiting keeps its place here,
    /// and the successor (its channel shut) closes its copies of the sockets it was never told to serve.
    fn fail(&self, why: &str) {
        if self.failed.is_cancelled() {
            return;
        }
        self.failed.cancel();
        let waiting = {
            let mut pending = self.lock();
            let n = pending.len();
            pending.clear(); // dropping the senders answers "no" to every waiter
            n
        };
        let _ = socket2::SockRef::from(self.sock.get_ref()).shutdown(std::net::Shutdown::Both);
        if waiting == 0 {
            // Nothing was in flight (a successor that began its own drain closes its end so).
            tracing::info!(why, "connection hand-over ended");
        } else {
            tracing::warn!(
                why,
                waiting,
                "connection hand-over stopped: the remaining connections stay here and drain"
            );
        }
    }
}

/// Removes a pending entry when a hand-over is dropped half-way.
struct Forget<'a> {
    out: &'a Outgoing,
    id: u64,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.out.lock().remove(&self.id);
        }
    }
}

/// Reads the successor's `Taken`s and answers each with `Commit`, until the channel ends.
async fn read_answers(out: Arc<Outgoing>) {
    let mut buf = [0u8; 64];
    // The watchdog: the last time the successor answered, or nothing was waiting for it.
    let mut answered = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(ACK_TIMEOUT / 8);
    loop {
        let received = tokio::select! {
            _ = out.failed.cancelled() => return,
            _ = tick.tick() => {
                if out.lock().is_empty() {
                    answered = tokio::time::Instant::now();
                } else if answered.elapsed() > ACK_TIMEOUT {
                    out.fail("the successor stopped answering");
                    return;
                }
                continue;
            }
            ready = out.sock.readable() => match ready {
                Ok(mut guard) => match guard.try_io(|s| wire::recv(s.as_raw_fd(), &mut buf)) {
                    Ok(result) => result,
                    Err(_would_block) => continue,
                },
                Err(e) => Err(e),
            },
        };
        let id = match received {
            Ok((0, _)) => {
                // The successor's end closed: it exited. Everything not committed stays here.
                out.fail("the successor closed the channel");
                return;
            }
            Ok((n, None)) => match Message::decode(&buf[..n]) {
                Some(Message::Taken(id)) => id,
                _ => {
                    out.fail("the successor sent a malformed message");
                    return;
                }
            },
            Ok((_, Some(_))) => {
                out.fail("the successor sent a socket");
                return;
            }
            Err(e) => {
                out.fail(&format!("reading the channel: {e}"));
                return;
            }
        };
        answered = tokio::time::Instant::now();
        let Some(tx) = out.lock().remove(&id) else {
            // Timed out or cancelled: never committed, so the successor never serves it.
            continue;
        };
        let commit = Message::Commit(id).encode();
        match tokio::time::timeout(ACK_TIMEOUT, out.send(&commit, None)).await {
            Ok(Ok(())) => {
                let _ = tx.send(true);
            }
            _ => {
                drop(tx);
                out.fail("cannot tell the successor to serve a connection");
                return;
            }
        }
    }
}
