//! The successor's end of the hand-over channel: takes each connection, and serves it once told to.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;

use super::wire::{self, Message, MAX_MESSAGE};
use super::{Resumed, HANDOVER_ENV};
use crate::server::state::ServerState;
use crate::{Connection, PeerAddr, Stream};

/// A connection received and not yet committed.
struct Held {
    fd: OwnedFd,
    state: Bytes,
    read_ahead: Bytes,
}

/// If this process was started by a restart whose predecessor passes connections, and the server can
/// resume them, connects to the predecessor (before `READY=1`, so it finds us at once) and starts
/// taking connections. Returns whether it did.
pub(crate) fn connect_from_env(shared: &Arc<ServerState>) -> io::Result<bool> {
    let Some(path) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(false);
    };
    if shared.handover.resume.get().is_none() {
        return Ok(false);
    }
    let sock = wire::seqpacket()?;
    sock.set_nonblocking(false)?;
    sock.connect(&socket2::SockAddr::unix(&path)?)?;
    // Sockets are only taken from a process of this user (the path's directory is private anyway).
    // SAFETY: getuid has no preconditions.
    if wire::peer_uid(&sock)? != unsafe { libc::getuid() } {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the hand-over socket belongs to another user",
        ));
    }
    sock.set_nonblocking(true)?;
    let fd = wire::register(sock)?;
    tokio::spawn(take_connections(fd, shared.clone()));
    Ok(true)
}

/// Takes connections until the predecessor closes the channel.
///
/// When this server's own drain begins (it is being stopped, or replaced in turn) it takes no more:
/// connections received and not yet answered are left to the predecessor (our copies closed), our
/// end is shut for writing, and the predecessor, reading that end of stream after our last `Taken`,
/// commits those and keeps every other one. The channel then ends; the drain waits for that
/// ([`HandOverState::incoming_opened`](super::HandOverState::incoming_opened)), so the process does
/// not exit between a `Taken` and its `Commit`, when neither process would serve the connection.
///
/// The channel counts as open from this call, not from the future's first poll: a drain that begins
/// in between waits for it too.
pub(super) fn take_connections(
    sock: AsyncFd<OwnedFd>,
    shared: Arc<ServerState>,
) -> impl std::future::Future<Output = ()> {
    let ended = shared.handover.incoming_opened().drop_guard();
    async move {
        let _ended = ended;
        take_until_closed(sock, shared).await
    }
}

async fn take_until_closed(sock: AsyncFd<OwnedFd>, shared: Arc<ServerState>) {
    let draining = shared.drain.draining.clone().cancelled_owned();
    tokio::pin!(draining);
    let mut winding_down = false;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut held: HashMap<u64, Held> = HashMap::new();
    // `Taken`s not written yet. Reading never waits for writing: the predecessor may be blocked
    // writing `Conn`s to us while we answer, so each side always reads.
    let mut answers: VecDeque<u64> = VecDeque::new();
    let mut resumed = 0u64;
    let why = 'channel: loop {
        tokio::select! {
            _ = &mut draining, if !winding_down => {
                winding_down = true;
                for id in answers.drain(..) {
                    held.remove(&id);
                }
                let shut = socket2::SockRef::from(sock.get_ref()).shutdown(std::net::Shutdown::Write);
                tracing::debug!(waiting_for_commit = held.len(), "draining: taking no more connections from the predecessor");
                if let Err(e) = shut {
                    tracing::warn!(error = %e, "hand-over: closing the channel");
                    break 'channel "the channel failed";
                }
            }
            ready = sock.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::warn!(error = %e, "hand-over: reading the channel");
                        break 'channel "the channel failed";
                    }
                };
                loop {
                    let received = match guard.try_io(|s| wire::recv(s.as_raw_fd(), &mut buf)) {
                        Ok(result) => result,
                        Err(_would_block) => break,
                    };
                    match received {
                        Ok((0, _)) => break 'channel "the predecessor closed the channel",
                        Ok((n, fd)) => match (Message::decode(&buf[..n]), fd) {
                            // Draining: not taken. Our copy closes; the predecessor keeps it.
                            (Some(Message::Conn { .. }), Some(_)) if winding_down => {}
                            (Some(Message::Conn { id, state, read_ahead }), Some(fd)) => {
                                held.insert(
                                    id,
                                    Held {
                                        fd,
                                        state: Bytes::copy_from_slice(state),
                                        read_ahead: Bytes::copy_from_slice(read_ahead),
                                    },
                                );
                                answers.push_back(id);
                            }
                            (Some(Message::Commit(id)), None) => {
                                if let Some(h) = held.remove(&id) {
                                    match resume(&shared, h) {
                                        Ok(()) => resumed += 1,
                                        Err(e) => tracing::warn!(error = %e, "hand-over: cannot resume a connection"),
                                    }
                                }
                            }
                            _ => break 'channel "the predecessor sent a malformed message",
                        },
                        // A predecessor that closed without accepting us (one that hands no
                        // connections over, a supervisor starting a worker) resets the connection.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                            break 'channel "the predecessor closed the channel"
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "hand-over: reading the channel");
                            break 'channel "the channel failed";
                        }
                    }
                }
            }
            ready = sock.writable(), if !answers.is_empty() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::warn!(error = %e, "hand-over: answering the predecessor");
                        break 'channel "the channel failed";
                    }
                };
                while let Some(&id) = answers.front() {
                    let taken = Message::Taken(id).encode();
                    match guard.try_io(|s| wire::send(s.as_raw_fd(), &taken, None)) {
                        Ok(Ok(())) => {
                            answers.pop_front();
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "hand-over: answering the predecessor");
                            break 'channel "the channel failed";
                        }
                        Err(_would_block) => break,
                    }
                }
            }
        }
    };
    // Sockets never committed stay with the predecessor: closing our copies is invisible to their peers.
    if resumed == 0 && held.is_empty() {
        tracing::debug!(why, "hand-over channel closed; no connection came");
    } else {
        tracing::info!(
            resumed,
            left_with_predecessor = held.len(),
            why,
            "hand-over channel closed"
        );
    }
}

/// Serves a committed connection here: registered like an accepted one (over the cap if need be: it
/// was already served), with its state and read-ahead bytes, in the server's handler.
fn resume(shared: &Arc<ServerState>, held: Held) -> io::Result<()> {
    let socket = socket2::Socket::from(held.fd);
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let (stream, peer) = if local.is_unix() {
        let std = std::os::unix::net::UnixStream::from(OwnedFd::from(socket));
        (
            Stream::Unix(tokio::net::UnixStream::from_std(std)?),
            PeerAddr::Unix,
        )
    } else {
        let peer = socket
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("a passed socket with no peer address"))?;
        let std = std::net::TcpStream::from(OwnedFd::from(socket));
        (
            Stream::Tcp(tokio::net::TcpStream::from_std(std)?),
            PeerAddr::Tcp(peer),
        )
    };
    let Some(spawn) = shared.handover.resume.get() else {
        return Err(io::Error::other("the server resumes no connections"));
    };
    shared.limit.acquire_over_cap();
    let conn = Connection::new(stream, peer, shared.clone());
    let _ = conn
        .entry()
        .extras()
        .resumed
        .set(Resumed::new(held.state, held.read_ahead));
    spawn(conn);
    Ok(())
}
