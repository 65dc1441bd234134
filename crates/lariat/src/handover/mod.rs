//! Connection hand-over: at a hitless restart, live connections move to the successor instead of
//! draining.
//!
//! When a restart's successor is ready, the old process offers it the live connections. A handler
//! that supports it learns of the offer ([`Connection::hand_over_offer`]), reaches a safe point
//! (between two messages: nothing half-read, nothing half-written), and calls
//! [`Connection::hand_over`] with a small state of its choosing. lariat passes the socket itself to the
//! successor (`SCM_RIGHTS` over a Unix socket the two processes share), with that state and any bytes
//! the handler read but did not consume ([`Connection::hand_over_with`]). The successor serves it in its
//! own handler, which finds the state in [`Connection::resumed_state`] and the bytes in
//! [`Connection::take_read_ahead`]. The peer sees a pause: the socket never closes, and bytes it sends
//! meanwhile wait in the kernel's buffer for whichever process reads next.
//!
//! A connection is owned by exactly one process at every instant: the successor serves it only once
//! the old process has let go, and the old process lets go only once the successor took it. If the
//! successor dies or stops answering, `hand_over` fails and gives the connection back: the handler goes
//! on serving it and it drains as it would without a hand-over. So does a handler that ignores the
//! offer, one that reaches no safe point before the window ends
//! ([`Lifecycle::hand_over_window`](crate::lifecycle::Lifecycle::hand_over_window)), and a connection
//! that cannot move soundly: TLS (its session keys live in this process; moving them would mean
//! exporting secrets) and connections whose peer a PROXY header named (the successor would not know
//! the client).
//!
//! ```no_run
//! use lariat::handover::Wake;
//! use lariat::Connection;
//! use tokio::io::AsyncWriteExt;
//!
//! async fn echo(mut conn: Connection) -> std::io::Result<()> {
//!     let mut listening = true; // false once a hand-over was tried
//!     loop {
//!         // Between messages: nothing half-read, nothing half-written, no buffer held.
//!         if conn.readable_or_offer(&mut listening).await? == Wake::HandOver {
//!             match conn.hand_over(b"").await {
//!                 Ok(()) => return Ok(()),                   // the successor serves it now
//!                 Err(refused) => conn = refused.connection, // serve on; it drains as before
//!             }
//!             continue;
//!         }
//!         let mut buf = Vec::with_capacity(4096);
//!         match conn.try_read_buf(&mut buf) {
//!             Ok(0) => return Ok(()),
//!             Ok(_) => conn.write_all(&buf).await?,
//!             Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
//!             Err(e) => return Err(e),
//!         }
//!     }
//! }
//! ```

mod incoming;
mod outgoing;
pub(crate) mod wire;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{Connection, Stream};
pub(crate) use incoming::connect_from_env;
pub(crate) use outgoing::Outgoing;
pub use wire::{MAX_READ_AHEAD, MAX_STATE};

/// The environment variable that tells a restart's successor where its predecessor offers connections.
pub(crate) const HANDOVER_ENV: &str = "LARIAT_HANDOVER_SOCKET";

/// Why a connection was not handed over. It is still the handler's: serve it on (it drains as usual).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No successor takes connections now (no restart under way, the successor does not take them,
    /// or the hand-over window is over).
    #[error("no successor takes connections now")]
    NoSuccessor,
    /// The successor died, or stopped answering, during the hand-over.
    #[error("the successor stopped taking connections")]
    SuccessorGone,
    /// A TLS connection: its session state cannot move without exporting its keys.
    #[error("a TLS connection cannot be handed over")]
    Tls,
    /// The connection's peer came from a PROXY header, which the successor would not know.
    #[error("a connection whose client a PROXY header named cannot be handed over")]
    Proxied,
    /// The halves given are not the two halves of one connection.
    #[error("the write half given is not this connection's")]
    NotWhole,
    /// A connection a `Router` routed: the successor's router would wait to sniff it again.
    #[error("a routed connection cannot be handed over")]
    Routed,
    /// The state or the read-ahead bytes are over [`MAX_STATE`] or [`MAX_READ_AHEAD`].
    #[error("the state ({state} bytes) or read-ahead ({read_ahead} bytes) is too large to carry")]
    TooLarge {
        /// The state's length.
        state: usize,
        /// The read-ahead's length.
        read_ahead: usize,
    },
}

/// A hand-over that did not happen: the connection, back to its handler, and why.
#[derive(Debug, thiserror::Error)]
#[error("connection not handed over: {reason}")]
pub struct HandOverError {
    /// The connection, still open and still this process's.
    pub connection: Connection,
    /// Why.
    pub reason: Refusal,
}

/// What a resumed connection brought from its previous process.
#[derive(Debug)]
pub(crate) struct Resumed {
    state: Bytes,
    read_ahead: Mutex<Bytes>,
}

impl Resumed {
    pub(crate) fn new(state: Bytes, read_ahead: Bytes) -> Resumed {
        Resumed {
            state,
            read_ahead: Mutex::new(read_ahead),
        }
    }
}

/// A server's hand-over state (in its `ServerState`).
#[derive(Default)]
pub(crate) struct HandOverState {
    /// The channel to a successor, while one takes connections.
    outgoing: Mutex<Option<Arc<Outgoing>>>,
    /// Fires when a successor takes connections.
    offer: CancellationToken,
    /// Starts a resumed connection in the server's handler (set by the server when it starts).
    pub(crate) resume: OnceLock<Box<dyn Fn(Connection) + Send + Sync>>,
    /// The tasks waiting in `Connection::readable_or_offer`, by connection id: the offer wakes them.
    /// Kept here rather than in each registry entry, so connections whose handlers never ask cost
    /// nothing; an entry leaves with its connection.
    parked: dashmap::DashMap<u64, std::task::Waker>,
    /// Cancelled when the channel from a predecessor has ended (set while one is open): a drain waits
    /// for it, so this process never exits between telling its predecessor it took a connection and
    /// reading the predecessor's go-ahead to serve it (the predecessor has let go by then).
    incoming: OnceLock<CancellationToken>,
}

impl std::fmt::Debug for HandOverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOverState")
            .field("offered", &self.offer.is_cancelled())
            .field("resumes", &self.resume.get().is_some())
            .finish()
    }
}

impl HandOverState {
    /// The offer's token, for the parking lot to wake sleeping connections with.
    #[cfg(feature = "http")]
    pub(crate) fn offer_token(&self) -> CancellationToken {
        self.offer.clone()
    }

    /// Offers the live connections to the successor at the other end of `channel`.
    pub(crate) fn offer(&self, channel: Arc<Outgoing>) {
        *self.outgoing.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel);
        self.offer.cancel();
        // After the cancel: a task parking from now on sees it before it waits.
        for parked in self.parked.iter() {
            parked.value().wake_by_ref();
        }
    }

    /// Notes that a channel from a predecessor is open; the token is cancelled when it ends.
    pub(crate) fn incoming_opened(&self) -> CancellationToken {
        self.incoming.get_or_init(CancellationToken::new).clone()
    }

    /// True while the channel from a predecessor is open: connections may still arrive.
    pub(crate) fn incoming_open(&self) -> Option<CancellationToken> {
        self.incoming.get().filter(|t| !t.is_cancelled()).cloned()
    }

    /// Forgets a closed connection's waker.
    pub(crate) fn unpark(&self, id: u64) {
        self.parked.remove(&id);
    }

    /// True while a successor takes connections (the offer was made and its window is open).
    #[cfg(feature = "http")]
    pub(crate) fn taking(&self) -> bool {
        self.channel().is_some()
    }

    fn channel(&self) -> Option<Arc<Outgoing>> {
        self.outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|c| c.is_open())
    }
}

/// The hand-over offer as an owned value (one small heap allocation), for a handler that split its
/// connection or reads it as [`Messages`](crate::delivery::Messages): await it beside the reads. A
/// handler that parks between messages on the whole connection uses
/// [`Connection::readable_or_offer`] instead, which allocates nothing.
#[derive(Debug)]
pub struct Offer(std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>);

/// What woke a handler parked in [`Connection::readable_or_offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// There is something to read (or the peer closed).
    Readable,
    /// A successor takes connections: reach a safe point and [`hand_over`](Connection::hand_over).
    HandOver,
}

impl std::future::Future for Offer {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl crate::ConnectionMeta {
    /// The hand-over offer, owned (see [`Offer`]): for a handler that split its connection or reads it
    /// as [`Messages`](crate::delivery::Messages); await it beside the reads.
    pub fn hand_over_signal(&self) -> Offer {
        Offer(Box::pin(
            self.0.shared.handover.offer.clone().cancelled_owned(),
        ))
    }
}

impl crate::ReadHalf {
    /// The state the connection was handed over with, if it was resumed here (see
    /// [`Connection::resumed_state`]).
    pub fn resumed_state(&self) -> Option<Bytes> {
        Some(self.meta().0.extras.get()?.resumed.get()?.state.clone())
    }
}

impl Connection {
    /// The hand-over offer, owned (see [`Offer`]).
    pub fn hand_over_signal(&self) -> Offer {
        self.meta().hand_over_signal()
    }

    /// Waits until the connection is readable or, while `listening` is true, until a successor takes
    /// connections; it then sets `listening` to false (ask once: a hand-over that fails leaves the
    /// connection to drain). Holds no read buffer and adds nothing to the handler's future: the waker
    /// waits in a server-wide table (an entry per parked connection), and the offer wakes them all.
    pub fn readable_or_offer<'a>(
        &'a self,
        listening: &'a mut bool,
    ) -> impl std::future::Future<Output = std::io::Result<Wake>> + 'a {
        std::future::poll_fn(move |cx| {
            if *listening {
                let entry = self.entry();
                let state = &entry.shared.handover;
                // Registered before the check, so an offer in between is not missed. A task's waker
                // rarely changes: it is stored again only when it does.
                let known = entry.closer.has_flag(crate::connection::closer::PARKED)
                    && state
                        .parked
                        .get(&entry.id)
                        .is_some_and(|w| w.will_wake(cx.waker()));
                if !known {
                    state.parked.insert(entry.id, cx.waker().clone());
                    entry.closer.set_flag(crate::connection::closer::PARKED);
                }
                if state.offer.is_cancelled() {
                    *listening = false;
                    return std::task::Poll::Ready(Ok(Wake::HandOver));
                }
            }
            self.stream()
                .poll_read_ready(cx)
                .map_ok(|()| Wake::Readable)
        })
    }

    /// Completes when a successor takes connections (at once if one does): the moment to reach a safe
    /// point and call [`hand_over`](Self::hand_over). Never completes in a process that is not being
    /// replaced. Cancel-safe: use it in `select!` beside reads.
    pub fn hand_over_offer(&self) -> WaitForCancellationFuture<'_> {
        self.entry().shared.handover.offer.cancelled()
    }

    /// True once a successor takes connections (see [`hand_over_offer`](Self::hand_over_offer)).
    pub fn hand_over_offered(&self) -> bool {
        self.entry().shared.handover.offer.is_cancelled()
    }

    /// Hands the connection to the successor with `state` (at most [`MAX_STATE`] bytes), which its
    /// handler reads back with [`resumed_state`](Self::resumed_state). Call it at a safe point: every
    /// byte read from the connection consumed, every reply written. On success the successor serves
    /// the connection and this process has let go of it; on failure the connection comes back in the
    /// error, still open: serve it on.
    pub async fn hand_over(self, state: &[u8]) -> Result<(), HandOverError> {
        self.hand_over_with(state, &[]).await
    }

    /// Like [`hand_over`](Self::hand_over), carrying also `read_ahead` (at most [`MAX_READ_AHEAD`]
    /// bytes): bytes read from the socket that the handler has not consumed. The successor's handler
    /// gets them from [`take_read_ahead`](Self::take_read_ahead) before anything still in the socket.
    pub async fn hand_over_with(
        self,
        state: &[u8],
        read_ahead: &[u8],
    ) -> Result<(), HandOverError> {
        let refuse = |connection, reason| Err(HandOverError { connection, reason });
        if state.len() > MAX_STATE || read_ahead.len() > MAX_READ_AHEAD {
            let reason = Refusal::TooLarge {
                state: state.len(),
                read_ahead: read_ahead.len(),
            };
            return refuse(self, reason);
        }
        if matches!(self.stream(), Stream::Tls(_)) {
            return refuse(self, Refusal::Tls);
        }
        if self.entry().proxy().is_some() {
            return refuse(self, Refusal::Proxied);
        }
        if self
            .entry()
            .extras
            .get()
            .is_some_and(|e| e.routed.get().is_some())
        {
            return refuse(self, Refusal::Routed);
        }
        let Some(channel) = self.entry().shared.handover.channel() else {
            return refuse(self, Refusal::NoSuccessor);
        };
        let fd = self.stream().raw_fd();
        match channel.pass(self.id(), fd, state, read_ahead).await {
            Ok(()) => {
                tracing::debug!(
                    conn = self.id(),
                    read_ahead = read_ahead.len(),
                    "handed over to the successor"
                );
                // Closing our descriptor leaves the socket open in the successor.
                drop(self);
                Ok(())
            }
            Err(reason) => refuse(self, reason),
        }
    }

    /// The state the previous process handed this connection over with, if it was resumed here.
    pub fn resumed_state(&self) -> Option<Bytes> {
        Some(self.resumed()?.state.clone())
    }

    /// The bytes the previous process read from this connection and its handler had not consumed
    /// (empty if none, or if taken already): they come before anything still in the socket.
    pub fn take_read_ahead(&mut self) -> Bytes {
        match self.resumed() {
            Some(r) => std::mem::take(&mut *r.read_ahead.lock().unwrap_or_else(|e| e.into_inner())),
            None => Bytes::new(),
        }
    }

    /// Whether this connection could move at all: not TLS, not named by a PROXY header, not routed
    /// (what [`hand_over_with`](Self::hand_over_with) would refuse whatever the successor says).
    #[cfg(feature = "http")]
    pub(crate) fn movable(&self) -> bool {
        !matches!(self.stream(), Stream::Tls(_))
            && self.entry().proxy().is_none()
            && self
                .entry()
                .extras
                .get()
                .is_none_or(|e| e.routed.get().is_none())
    }

    fn resumed(&self) -> Option<&Resumed> {
        self.entry().extras.get()?.resumed.get()
    }
}

/// A `SOCK_SEQPACKET` Unix socket for the predecessor's end of the channel (bound and listened on by
/// the restart; see [`Successor::take_handover_listener`](crate::restart::Successor::take_handover_listener)).
pub(crate) fn listening_socket() -> std::io::Result<socket2::Socket> {
    wire::seqpacket()
}

/// A socket a replacement process connects to, to take this process's connections when it retires:
/// what a supervisor's worker binds (at a path in a directory only its user can enter), so that the
/// worker replacing it ([`RestartOptions::hand_over_from`](crate::restart::RestartOptions::hand_over_from))
/// finds it. Give it to [`Lifecycle::hand_over_socket`](crate::lifecycle::Lifecycle::hand_over_socket).
/// The path is removed when it is dropped.
#[derive(Debug)]
pub struct HandOverSocket {
    socket: socket2::Socket,
    path: std::path::PathBuf,
}

impl HandOverSocket {
    /// Binds and listens at `path`.
    pub fn bind(path: impl Into<std::path::PathBuf>) -> std::io::Result<HandOverSocket> {
        let path = path.into();
        let socket = wire::seqpacket()?;
        socket.bind(&socket2::SockAddr::unix(&path)?)?;
        socket.listen(8)?;
        Ok(HandOverSocket { socket, path })
    }

    pub(crate) fn socket(&self) -> &socket2::Socket {
        &self.socket
    }
}

impl Drop for HandOverSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the successor's connection on `listener` (pending since before its `READY=1`), checks it
/// comes from `successor_pid` (or, when it is not known, from a process of this user), and opens the
/// hand-over for `window`. `None` if the successor does not take connections.
pub(crate) fn accept_successor(
    listener: &socket2::Socket,
    successor_pid: Option<u32>,
    window: std::time::Duration,
) -> Option<Arc<Outgoing>> {
    let (sock, _) = match listener.accept() {
        Ok(accepted) => accepted,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tracing::info!("the successor takes no connections; the live ones drain");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "hand-over: cannot accept the successor's channel");
            return None;
        }
    };
    match (wire::peer_pid(&sock), successor_pid) {
        (Ok(pid), Some(successor_pid)) if pid != successor_pid => {
            tracing::warn!(
                pid,
                successor_pid,
                "hand-over: a channel from another process; refused"
            );
            return None;
        }
        (Ok(_), Some(_)) => {}
        (Ok(_), None) => match wire::peer_uid(&sock) {
            // SAFETY: getuid has no preconditions.
            Ok(uid) if uid == unsafe { libc::getuid() } => {}
            Ok(uid) => {
                tracing::warn!(uid, "hand-over: a channel from another user; refused");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "hand-over: cannot identify the channel's peer");
                return None;
            }
        },
        (Err(e), _) => {
            tracing::warn!(error = %e, "hand-over: cannot identify the channel's peer");
            return None;
        }
    }
    match Outgoing::start(sock, window) {
        Ok(channel) => Some(channel),
        Err(e) => {
            tracing::warn!(error = %e, "hand-over: cannot start the channel");
            None
        }
    }
}

#[cfg(test)]
mod tests;
