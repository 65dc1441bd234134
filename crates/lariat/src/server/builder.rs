//! [`ServerBuilder`]: a server's settings, and starting its accept loops.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::accept_loop::accept_loop;
use super::dispatch::{spawn_connection, Dispatch};
use super::settings::{HandshakeSettings, Limits, SettingsError};
use super::state::ServerState;
use super::{Running, Server, ServerError, ServerHandle};
use crate::accept::backoff::BackoffPolicy;
use crate::accept::fan_in::FanIn;
use crate::accept::{Acceptor, OnExhaustion};
use crate::admission::{Admission, AdmissionHook, Gate, Reject};
use crate::handler::Handler;
use crate::handshake::{Handshake, ListenerHandshake};
use crate::net::source::AcceptSource;
use crate::proxy::{ProxyConfig, ProxyMode};
use crate::tls::TlsConfig;
use crate::Connection;

/// Configures a [`Server`] (or a bare [`Acceptor`]).
///
/// The settings come in typed groups, each with its defaults in its one [`Default`] impl: [`Limits`]
/// (the cap, the accept loops, exhaustion, backoff, the idle timeout) and [`HandshakeSettings`] (the
/// handshake's timeout and grace, PROXY, TLS, the greeting). Give a group whole ([`limits`](Self::limits),
/// [`handshake`](Self::handshake)) or one value at a time with the setters below, which write into it.
/// The admission rules and hook are set apart. PROXY and TLS for one listener only are carried by that
/// listener ([`Listener::with_handshake`](crate::Listener::with_handshake)). Values that could never
/// work are refused before anything starts ([`validate`](Self::validate), [`SettingsError`]).
#[derive(Clone, Default)]
pub struct ServerBuilder {
    limits: Limits,
    /// Every listener's set-up settings, except the PROXY and TLS settings of a listener that has its
    /// own ([`ListenerHandshake`]).
    handshake: HandshakeSettings,
    hook: Option<AdmissionHook>,
    admission: Option<Admission>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("limits", &self.limits)
            .field("handshake", &self.handshake)
            .field("hook", &self.hook.is_some())
            .field("admission", &self.admission)
            .finish()
    }
}

impl ServerBuilder {
    /// All of [`Limits`] at once (defaults: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// All of [`HandshakeSettings`] at once (defaults: [`HandshakeSettings::default`]). The admission
    /// hook, set with [`admission_hook`](Self::admission_hook), is kept.
    pub fn handshake(mut self, handshake: HandshakeSettings) -> Self {
        self.handshake = handshake;
        self
    }

    /// Refuses settings that could never work (a cap of 0, no accept loop, a zero handshake timeout, a
    /// grace longer than it, a backoff that starts above its maximum, a zero idle timeout). `serve`,
    /// `run` and `acceptor` call it first; call it yourself to refuse a configuration earlier.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.limits.validate()?;
        self.handshake.validate()
    }

    /// The most connections held at once, across all listeners ([`Limits::max_connections`]);
    /// `usize::MAX` for no cap. Changeable later with [`ServerHandle::set_max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// Closes a connection when no byte has moved either way for this long (slowloris, peers that
    /// vanished without a FIN; [`Limits::idle_timeout`]). Checked by one sweep per server, a tenth of
    /// the timeout apart (100 ms to 1 s), so it costs nothing per read or write. Reaches connections
    /// served by tasks lariat spawned. Above [`MAX_IDLE_TIMEOUT`](crate::MAX_IDLE_TIMEOUT) (24 days) it
    /// acts as 24 days.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Reads a PROXY protocol header at the start of every connection (see [`proxy`](crate::proxy)), in
    /// the connection's own task: the handler then sees the client the header names as
    /// [`Connection::peer_addr`] ([`HandshakeSettings::proxy`]).
    pub fn proxy_protocol(mut self, config: Option<ProxyConfig>) -> Self {
        self.handshake.proxy = config;
        self
    }

    /// Runs a TLS handshake (see [`tls`](crate::tls)) on every connection, after the PROXY header if
    /// there is one, within the handshake timeout; the handler reads and writes plaintext. A failed
    /// handshake closes the connection and is counted (`tls_failed`; [`HandshakeSettings::tls`]).
    pub fn tls(mut self, config: Option<TlsConfig>) -> Self {
        self.handshake.tls = config;
        self
    }

    /// How long a connection's set-up may take, from `accept` to its handler: the PROXY header, the
    /// protocol router's sniffing and the TLS handshake together (and the admission hook and greeting).
    /// A connection that is not through in time is closed and counted (`handshake_timeouts`), so
    /// clients that connect and stay silent cannot hold the cap ([`HandshakeSettings::timeout`]). A
    /// grace longer than the new timeout is lowered to it.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake.timeout = timeout;
        self.handshake.grace = self.handshake.grace.min(timeout);
        self
    }

    /// How long a connection may stay in its handshake before it gives way to clients queued behind
    /// it, when every slot under the cap is taken: past this grace, such connections are closed and
    /// counted (`handshake_evicted`), so silent clients cannot hold the cap for a whole handshake
    /// timeout per cap's worth of them (Linux TCP and Unix sockets, where a waiting queue is seen).
    /// Connections that reached their handler are never evicted. At most the handshake timeout
    /// ([`HandshakeSettings::grace`]).
    pub fn handshake_grace(mut self, grace: Duration) -> Self {
        self.handshake.grace = grace;
        self
    }

    /// The application's admission check, run in the connection's task after the PROXY header and TLS,
    /// before the handler: `Ok` admits the connection, `Err` closes it (counted as `hook_refused`, logged
    /// at most once a second) before the handler runs. It runs within the handshake timeout, so it
    /// should decide quickly and must not block. Default: none.
    pub fn admission_hook(
        mut self,
        hook: impl Fn(&Connection) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Bytes written to every admitted connection before its handler runs (after TLS and the admission
    /// hook): the client learns it was truly accepted, not just queued in the backlog. With
    /// a [`Router`](crate::route::Router) that has TLS routes, use [`Router::greeting`](crate::route::Router::greeting)
    /// instead: this one is written before the router sees the ClientHello, outside TLS
    /// ([`HandshakeSettings::greeting`]).
    pub fn greeting(mut self, greeting: Option<Bytes>) -> Self {
        self.handshake.greeting = greeting;
        self
    }

    /// Admission rules (allow and deny networks, a per-address connection limit; see
    /// [`admission`](crate::admission)), checked right after `accept` (on a listener that reads PROXY
    /// headers: right after the header, on the client it names): a refused connection is closed at
    /// once and counted. Default: everyone admitted.
    pub fn admission(mut self, rules: Option<Admission>) -> Self {
        self.admission = rules.filter(|r| !r.is_open());
        self
    }

    /// How many accept loops take connections from the listeners (each on its own clone of every
    /// listener's descriptor, so all share one queue per socket), for runtimes where one loop cannot
    /// keep up ([`Limits::acceptors`]). 1, the default, was found as fast on two cores by the
    /// benchmarks; for more cores per process than one loop can feed, or use `lariat serve --workers`.
    /// Each loop may hold one slot under the cap while it waits, so the cap stays exact. Needs sources
    /// that can be cloned ([`Listener`](crate::Listener) can).
    pub fn acceptors(mut self, n: usize) -> Self {
        self.limits.acceptors = n;
        self
    }

    /// The delays used while short of resources ([`Limits::backoff`]).
    pub fn backoff(mut self, policy: BackoffPolicy) -> Self {
        self.limits.backoff = policy;
        self
    }

    /// What to do with queued clients at descriptor exhaustion ([`Limits::on_exhaustion`]).
    pub fn on_exhaustion(mut self, on_exhaustion: OnExhaustion) -> Self {
        self.limits.on_exhaustion = on_exhaustion;
        self
    }

    /// Starts one accept loop over all the sources, under one cap, registry and set of counters, each
    /// connection served by `handler` in its own task. Must be called inside a tokio runtime.
    pub fn serve<S, H>(self, sources: impl IntoIterator<Item = S>, handler: H) -> io::Result<Server>
    where
        S: AcceptSource,
        H: Handler,
    {
        let (running, accept_loop) = self.run(sources, handler)?;
        Ok(Server {
            running,
            accept_loop: tokio::spawn(accept_loop),
        })
    }

    /// Like [`serve`](Self::serve), but hands the accept loop back as a future for the caller to drive,
    /// instead of spawning it: for example on `block_on`'s own thread, so accepting and serving run on
    /// different threads. The future ends after [`ServerHandle::stop`] or when every listener failed.
    pub fn run<S, H>(
        self,
        sources: impl IntoIterator<Item = S>,
        handler: H,
    ) -> io::Result<(
        Running,
        impl Future<Output = Result<(), ServerError>> + Send + 'static,
    )>
    where
        S: AcceptSource,
        H: Handler,
    {
        self.validate().map_err(invalid)?;
        let sources: Vec<S> = sources.into_iter().collect();
        // Each further accept loop gets its own descriptor for every listener.
        let mut groups = Vec::with_capacity(self.limits.acceptors);
        for _ in 1..self.limits.acceptors {
            groups.push(
                sources
                    .iter()
                    .map(AcceptSource::try_clone_source)
                    .collect::<io::Result<Vec<S>>>()?,
            );
        }
        groups.insert(0, sources);
        // One acceptor for all of a loop's listeners, so each loop holds at most one slot for a
        // connection not yet accepted (see `accept/fan_in.rs`).
        let fan_ins = groups
            .into_iter()
            .map(FanIn::new)
            .collect::<io::Result<Vec<_>>>()?;
        let addrs = fan_ins[0].addrs();
        let handshakes = self.handshakes(&fan_ins[0].own_handshakes());
        let handle = self.handle();
        handle
            .shared
            .drain
            .accept_loops
            .store(fan_ins.len(), std::sync::atomic::Ordering::Relaxed);
        if let Some(timeout) = self.limits.idle_timeout {
            tokio::spawn(crate::server::idle::reap(
                Arc::downgrade(&handle.shared),
                timeout,
            ));
        }
        let handler = Arc::new(handler);
        {
            // Connections a restart's predecessor hands over start in the same handler.
            let handler = handler.clone();
            let _ = handle
                .shared
                .handover
                .resume
                .set(Box::new(move |conn| spawn_connection(conn, &*handler)));
        }
        let mut loops = fan_ins
            .into_iter()
            .map(|fan_in| {
                let acceptor = Acceptor::new(
                    fan_in,
                    handle.shared.clone(),
                    self.limits.backoff,
                    self.limits.on_exhaustion,
                )?;
                let spawner = Dispatch {
                    handler: handler.clone(),
                    handshakes: handshakes.clone(),
                };
                Ok(accept_loop(
                    acceptor,
                    spawner,
                    handle.stop.clone(),
                    handle.shared.clone(),
                ))
            })
            .collect::<io::Result<Vec<_>>>()?;
        // The first loop is the caller's to drive; the others run as tasks of their own, started when
        // the caller first polls, so that nothing is accepted before it does (a restart's successor
        // says READY in between, and a successor that is killed before must have accepted nothing).
        let first = loops.remove(0);
        let accept_loops = async move {
            let others: Vec<JoinHandle<Result<(), ServerError>>> =
                loops.into_iter().map(tokio::spawn).collect();
            let mut result = first.await;
            for other in others {
                let ended = match other.await {
                    Ok(ended) => ended,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Ok(()),
                };
                if let (Ok(()), Err(e)) = (&result, ended) {
                    result = Err(e);
                }
            }
            result
        };
        Ok((Running { handle, addrs }, accept_loops))
    }

    /// An acceptor for a loop of your own (the axum adapter uses this), with the handle that observes it.
    ///
    /// The connection set-up steps (TLS, PROXY, the admission hook, the greeting) and several accept
    /// loops run in the server's own loop, which a bare acceptor does not have: a builder with any of
    /// them is refused here rather than silently serving without them.
    pub fn acceptor<S: AcceptSource>(self, source: S) -> io::Result<(Acceptor<S>, ServerHandle)> {
        self.validate().map_err(invalid)?;
        if !self.base_handshake().is_empty()
            || source.handshake().is_some()
            || self.limits.acceptors > 1
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS, PROXY, an admission hook, a greeting and several acceptors need \
                 ServerBuilder::serve or run; a bare acceptor would skip them",
            ));
        }
        let handle = self.handle();
        let acceptor = Acceptor::new(
            source,
            handle.shared.clone(),
            self.limits.backoff,
            self.limits.on_exhaustion,
        )?;
        Ok((acceptor, handle))
    }

    /// Each listener's set-up steps (by position), `None` where there are none.
    fn handshakes(&self, own: &[Option<ListenerHandshake>]) -> Vec<Option<Arc<Handshake>>> {
        own.iter()
            .map(|own| {
                let mut handshake = self.base_handshake();
                if let Some(own) = own {
                    handshake.proxy = proxy_setting(own.proxy.clone());
                    handshake.tls = own.tls.clone();
                }
                (!handshake.is_empty()).then(|| Arc::new(handshake))
            })
            .collect()
    }

    /// The set-up steps of a listener without settings of its own.
    fn base_handshake(&self) -> Handshake {
        Handshake {
            proxy: proxy_setting(self.handshake.proxy.clone()),
            tls: self.handshake.tls.clone(),
            hook: self.hook.clone(),
            greeting: self.handshake.greeting.clone().filter(|g| !g.is_empty()),
        }
    }

    fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::new({
                let mut shared = ServerState::new(
                    self.limits.max_connections,
                    self.handshake.timeout,
                    self.handshake.grace,
                );
                shared.gate = self.admission.clone().map(Gate::new);
                shared
            }),
            stop: CancellationToken::new(),
        }
    }
}

/// A refused setting as the `io::Error` that `serve`, `run` and `acceptor` return.
fn invalid(e: SettingsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// A PROXY setting as the handshake keeps it: `Off` is none.
fn proxy_setting(config: Option<ProxyConfig>) -> Option<Arc<ProxyConfig>> {
    config.filter(|c| c.mode != ProxyMode::Off).map(Arc::new)
}

#[cfg(test)]
mod tests;
