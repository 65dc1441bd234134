//! [`Server`]: accept loops over one or more listeners, a task per connection, and a handle to observe
//! and steer them (counters, registry, cap, stop).

pub(crate) mod idle;
pub(crate) mod registry;
pub(crate) mod state;
pub(crate) mod stats;

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::backoff::BackoffPolicy;
use crate::accept::fan_in::FanIn;
use crate::accept::{AcceptError, Acceptor, OnExhaustion};
use crate::admission::Reject;
use crate::admission::{Admission, Gate};
use crate::drain::{self, DrainOptions, DrainReport};
use crate::handler::{Handler, Outcome};
use crate::handshake::{Front, DEFAULT_HANDSHAKE_GRACE, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::net::listener::{AcceptSource, ListenAddr};
use crate::proxy::{ProxyConfig, ProxyMode};
use crate::server::registry::Entry;
use crate::server::registry::{CloseError, ConnectionInfo};
use crate::server::state::Shared;
use crate::server::stats::{Stats, StatsSnapshot};
use crate::tls::TlsConfig;
use crate::Connection;

/// The default connection cap. Bounded by default: an unbounded server is one flood away from descriptor
/// exhaustion, and a cap lets clients wait in the backlog instead.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How long a forced close waits for the tasks holding the closed connections to drop them.
const FORCED_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Configures a [`Server`] (or a bare [`Acceptor`]).
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    max_connections: usize,
    idle_timeout: Option<Duration>,
    handshake_timeout: Duration,
    handshake_grace: Duration,
    /// The set-up steps of every listener's connections…
    front: Front,
    /// …except where a listener has its own PROXY or TLS setting.
    overrides: Vec<(ListenAddr, Override)>,
    admission: Option<Admission>,
    backoff: BackoffPolicy,
    on_exhaustion: OnExhaustion,
    acceptors: usize,
}

/// One listener's own setting, replacing the server-wide one.
#[derive(Debug, Clone)]
enum Override {
    Proxy(Option<Arc<ProxyConfig>>),
    Tls(Option<TlsConfig>),
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            handshake_grace: DEFAULT_HANDSHAKE_GRACE,
            front: Front::default(),
            overrides: Vec::new(),
            admission: None,
            backoff: BackoffPolicy::default(),
            on_exhaustion: OnExhaustion::default(),
            acceptors: 1,
        }
    }
}

impl ServerBuilder {
    /// The most connections held at once, across all listeners. Default [`DEFAULT_MAX_CONNECTIONS`];
    /// `usize::MAX` for no cap. Changeable later with [`ServerHandle::set_max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Closes a connection when no byte has moved either way for this long (slowloris, peers that
    /// vanished without a FIN). Checked by one sweep per server, a tenth of the timeout apart (100 ms to
    /// 1 s), so it costs nothing per read or write. Reaches connections served by tasks lariat spawned.
    /// Default: none.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Reads a PROXY protocol header at the start of every connection (see [`proxy`](crate::proxy)), in
    /// the connection's own task: the handler then sees the client the header names as
    /// [`Connection::peer_addr`]. `None` or [`ProxyMode::Off`](crate::proxy::ProxyMode::Off): no header.
    pub fn proxy_protocol(mut self, config: Option<ProxyConfig>) -> Self {
        self.front.proxy = proxy_setting(config);
        self
    }

    /// Like [`proxy_protocol`](Self::proxy_protocol), for the listener on `addr` only (say, PROXY on
    /// the port the load balancer uses and none on an internal one). `serve` fails if no listener is
    /// on `addr`.
    pub fn proxy_protocol_on(mut self, addr: ListenAddr, config: Option<ProxyConfig>) -> Self {
        self.overrides
            .push((addr, Override::Proxy(proxy_setting(config))));
        self
    }

    /// Runs a TLS handshake (see [`tls`](crate::tls)) on every connection, after the PROXY header if
    /// there is one, within the handshake timeout; the handler reads and writes plaintext. A failed
    /// handshake closes the connection and is counted (`tls_failed`). Default: none.
    pub fn tls(mut self, config: Option<TlsConfig>) -> Self {
        self.front.tls = config;
        self
    }

    /// Like [`tls`](Self::tls), for the listener on `addr` only.
    pub fn tls_on(mut self, addr: ListenAddr, config: Option<TlsConfig>) -> Self {
        self.overrides.push((addr, Override::Tls(config)));
        self
    }

    /// How long a connection's set-up may take, from `accept` to its handler: the PROXY header, the
    /// protocol router's sniffing and the TLS handshake together (and the admission hook and greeting).
    /// A connection that is not through in time is closed and counted (`handshake_timeouts`), so
    /// clients that connect and stay silent cannot hold the cap. Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT) (10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a connection may stay in its handshake before it gives way to clients queued behind
    /// it, when every slot under the cap is taken: past this grace, such connections are closed and
    /// counted (`handshake_evicted`), so silent clients cannot hold the cap for a whole handshake
    /// timeout per cap's worth of them (Linux TCP and Unix sockets, where a waiting queue is seen). Connections that
    /// reached their handler are never evicted. Default
    /// [`DEFAULT_HANDSHAKE_GRACE`](crate::DEFAULT_HANDSHAKE_GRACE) (1 s), at most the handshake timeout.
    pub fn handshake_grace(mut self, grace: Duration) -> Self {
        self.handshake_grace = grace;
        self
    }

    /// The application's admission check (see [`AdmissionHook`](crate::admission::AdmissionHook)), run in the connection's task after
    /// the PROXY header and TLS, before the handler. Default: none.
    pub fn admission_hook(
        mut self,
        hook: impl Fn(&Connection) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Self {
        self.front.hook = Some(Arc::new(hook));
        self
    }

    /// Bytes written to every admitted connection before its handler runs (after TLS and the admission
    /// hook): the client learns it was truly accepted, not just queued in the backlog. With
    /// a [`Router`](crate::route::Router) that has TLS routes, use [`Router::greeting`](crate::route::Router::greeting)
    /// instead: this one is written before the router sees the ClientHello, outside TLS.
    pub fn greeting(mut self, greeting: Option<Bytes>) -> Self {
        self.front.greeting = greeting.filter(|g| !g.is_empty());
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
    /// keep up. Default 1, which the benchmarks found as fast on two cores (see the README); for more
    /// cores per process than one loop can feed, or use `lariat serve --workers`. Each loop may hold
    /// one slot under the cap while it waits, so the cap stays exact. Needs sources that can be cloned
    /// ([`Listener`](crate::Listener) can).
    pub fn acceptors(mut self, n: usize) -> Self {
        self.acceptors = n.max(1);
        self
    }

    /// The delays used while short of resources.
    pub fn backoff(mut self, policy: BackoffPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// What to do with queued clients at descriptor exhaustion. Default [`OnExhaustion::Wait`].
    pub fn on_exhaustion(mut self, on_exhaustion: OnExhaustion) -> Self {
        self.on_exhaustion = on_exhaustion;
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
        let sources: Vec<S> = sources.into_iter().collect();
        // Each further accept loop gets its own descriptor for every listener.
        let mut groups = Vec::with_capacity(self.acceptors);
        for _ in 1..self.acceptors {
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
        let fronts = self.fronts(&addrs)?;
        let handle = self.handle();
        handle
            .shared
            .drain
            .accept_loops
            .store(fan_ins.len(), std::sync::atomic::Ordering::Relaxed);
        if let Some(timeout) = self.idle_timeout {
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
                    self.backoff,
                    self.on_exhaustion,
                )?;
                let spawner = Spawner {
                    handler: handler.clone(),
                    fronts: fronts.clone(),
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
        if !self.front.is_empty() || !self.overrides.is_empty() || self.acceptors > 1 {
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
            self.backoff,
            self.on_exhaustion,
        )?;
        Ok((acceptor, handle))
    }

    /// Each listener's set-up steps (by position), `None` where there are none.
    fn fronts(&self, addrs: &[ListenAddr]) -> io::Result<Vec<Option<Arc<Front>>>> {
        if let Some((addr, _)) = self.overrides.iter().find(|(a, _)| !addrs.contains(a)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a per-listener setting names {addr}, where no listener is"),
            ));
        }
        Ok(addrs
            .iter()
            .map(|addr| {
                let mut front = self.front.clone();
                for (_, o) in self.overrides.iter().filter(|(a, _)| a == addr) {
                    match o {
                        Override::Proxy(p) => front.proxy = p.clone(),
                        Override::Tls(t) => front.tls = t.clone(),
                    }
                }
                (!front.is_empty()).then(|| Arc::new(front))
            })
            .collect())
    }

    fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::new({
                let mut shared = Shared::new(self.max_connections);
                shared.gate = self.admission.clone().map(Gate::new);
                shared.handshake_timeout = self.handshake_timeout;
                shared.handshake_grace = self.handshake_grace;
                shared
            }),
            stop: CancellationToken::new(),
        }
    }
}

/// A PROXY setting as the front keeps it: `Off` is none.
fn proxy_setting(config: Option<ProxyConfig>) -> Option<Arc<ProxyConfig>> {
    config.filter(|c| c.mode != ProxyMode::Off).map(Arc::new)
}

/// Observes and steers a running server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
    stop: CancellationToken,
}

impl ServerHandle {
    /// The counters, now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Every live connection.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.registry.list()
    }

    /// Bytes read and written so far by the live connections (closed ones are in [`stats`](Self::stats)).
    /// One pass over the registry, for a scrape; allocates nothing.
    #[cfg(feature = "metrics")]
    pub(crate) fn live_bytes(&self) -> (u64, u64) {
        self.shared.registry.live_bytes()
    }

    /// Closes a live connection by id: its socket is shut down both ways, so the handler and any half
    /// it moved into a task of its own see the end at once (the peer reads EOF), and its task is
    /// aborted. It leaves the registry, and frees its slot, when the last holder drops it. See
    /// [`Registry::close`](crate::Registry::close).
    pub fn close_connection(&self, id: u64) -> Result<(), CloseError> {
        self.shared.registry.close(id)
    }

    /// The connection cap.
    pub fn max_connections(&self) -> usize {
        self.shared.limit.max()
    }

    /// Changes the connection cap. Raising it admits clients waiting in the backlog at once; lowering it
    /// closes nothing and takes effect as connections end.
    pub fn set_max_connections(&self, max: usize) {
        self.shared.limit.set_max(max);
    }

    /// Stops accepting at once. The accept loop ends and drops its listeners; live connections are not
    /// touched. Clients already queued in the kernel are reset by the close: to lose none, use
    /// [`drain`](Self::drain).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Drains the server and reports what happened (see [`drain`](crate::drain)): handlers are told at
    /// once ([`Connection::draining`], [`DrainSignal`](crate::DrainSignal)), the listeners refuse new
    /// clients, the queued ones are accepted and served, the listeners close once their queues stay
    /// empty, and live connections get until `opts.timeout`; the rest are then closed (their sockets
    /// shut down, wherever their halves are) and counted. [`force`](Self::force) ends it at once.
    ///
    /// The accept loop must still be running (driven by [`Server`] or by the caller of
    /// [`ServerBuilder::run`]): it does the first stage. Calling `drain` again joins the same drain.
    pub async fn drain(&self, opts: DrainOptions) -> DrainReport {
        let control = &self.shared.drain;
        let started = tokio::time::Instant::now();
        let in_flight = self.shared.stats.snapshot().active;
        let closed_before = self.shared.stats.snapshot().closed;
        let deadline = control.begin(opts);

        // Stage one ends when the accept loop has closed the listeners (it obeys the same deadline).
        tokio::select! {
            _ = control.listeners_closed.cancelled() => {}
            _ = control.force.cancelled() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // Stage two: wait for the live connections.
        self.until_no_connections(async {
            tokio::select! {
                _ = control.force.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        })
        .await;
        // Counted before the forced close, so the two never overlap.
        let finished = self.shared.stats.snapshot().closed - closed_before;
        let forced = self.close_all().await;
        let report = DrainReport {
            in_flight,
            accepted_from_queue: control.accepted_from_queue(),
            finished,
            forced,
            left_in_queue: control.left_in_queue(),
            elapsed: started.elapsed(),
        };
        if report.is_complete() {
            tracing::info!(
                finished = report.finished,
                accepted_from_queue = report.accepted_from_queue,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "drained"
            );
        } else {
            tracing::warn!(
                finished = report.finished,
                forced = report.forced,
                left_in_queue = report.left_in_queue,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "drain ended by force"
            );
        }
        report
    }

    /// Stops accepting and leaves the listening sockets to another process that shares them (the
    /// successor of a hitless restart, see [`restart`](crate::restart)): the accept loop ends and closes
    /// its descriptors without filtering the sockets or unlinking their paths, so the successor keeps
    /// every queued client. Follow with [`drain`](Self::drain) to let the live connections finish.
    pub fn release_listeners(&self) {
        self.shared.drain.release.cancel();
    }

    /// Ends a drain at once: the listeners close and every live connection is closed.
    pub fn force(&self) {
        self.shared.drain.force.cancel();
    }

    /// True once a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.drain.draining.is_cancelled()
    }

    /// Waits until no connection is live (woken by each close during a drain), or until `give_up`
    /// completes.
    async fn until_no_connections(&self, give_up: impl Future<Output = ()>) {
        let control = &self.shared.drain;
        tokio::pin!(give_up);
        loop {
            let closed = control.connection_closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between the two is not missed.
            closed.as_mut().enable();
            if self.shared.registry.is_empty() {
                return;
            }
            tokio::select! {
                _ = &mut closed => {}
                _ = &mut give_up => return,
            }
        }
    }

    /// Closes every live connection and waits (briefly) for their holders to drop them. Returns how
    /// many were cut off: the ones this call closed, plus any whose raw stream a task lariat does not
    /// own took out (it cannot close those; they stay open and the drain is not complete). A
    /// connection closed earlier (by id, or the idle sweep) was counted then and is not again.
    async fn close_all(&self) -> u64 {
        let mut closed = 0;
        let mut not_owned = 0;
        for info in self.shared.registry.list() {
            match self.shared.registry.close_once(info.id) {
                Ok(true) => closed += 1,
                Ok(false) => {}
                Err(CloseError::NotOwned(_)) => not_owned += 1,
                Err(CloseError::NotFound(_)) => {}
            }
        }
        if not_owned > 0 {
            tracing::warn!(
                not_owned,
                "drain deadline: connections served by tasks lariat does not own stay open"
            );
        }
        if closed > 0 {
            self.shared.forced_closes.notify_waiters();
            Stats::add(&self.shared.stats.drain_forced, closed);
            // Their sockets are shut down: every holder's next read or write fails, and aborted tasks
            // drop theirs when next polled. Give them a moment.
            self.until_no_connections(tokio::time::sleep(FORCED_CLOSE_GRACE))
                .await;
            let held = self.shared.registry.len();
            if held > 0 {
                tracing::warn!(
                    held,
                    "drain deadline: closed connections still held by tasks that do not drop them \
                     (their peers saw the close; their slots stay taken until they are dropped)"
                );
            }
        }
        closed + not_owned
    }

    /// True once [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// What [`ServerBuilder::run`] returns besides the accept loop: the handle and the bound addresses.
#[derive(Debug, Clone)]
pub struct Running {
    /// Observes and steers the server.
    pub handle: ServerHandle,
    /// The addresses the listeners are bound to, in the order given.
    pub addrs: Vec<ListenAddr>,
}

/// A running server: accept loops on its listeners, each connection in its own task.
#[derive(Debug)]
pub struct Server {
    running: Running,
    accept_loop: JoinHandle<Result<(), ServerError>>,
}

/// Why a server stopped accepting other than by [`ServerHandle::stop`]: every listener failed for good.
#[derive(Debug, thiserror::Error)]
#[error("{} listener(s) failed for good; first: {}", failures.len(), failures.first().map(ToString::to_string).unwrap_or_default())]
pub struct ServerError {
    /// One entry per failed listener.
    pub failures: Vec<AcceptError>,
}

impl Server {
    /// A server with default settings; see [`ServerBuilder`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The handle that observes and steers this server.
    pub fn handle(&self) -> &ServerHandle {
        &self.running.handle
    }

    /// The addresses the listeners are bound to (real ports for port 0), in the order given.
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.running.addrs
    }

    /// Waits until every accept loop has ended: after [`ServerHandle::stop`] (`Ok`), or because a listener
    /// failed for good (`Err`, with why). Live connections may still be running.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.accept_loop.await {
            Ok(result) => result,
            // A panic is a bug in lariat, not in a handler (those are caught per connection): surface it.
            // A cancelled loop means the runtime is shutting down, which is a stop too.
            Err(join) => match join.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Ok(()),
            },
        }
    }
}

async fn accept_loop<S: AcceptSource, H: Handler>(
    mut acceptor: Acceptor<FanIn<S>>,
    spawner: Spawner<H>,
    stop: CancellationToken,
    shared: Arc<Shared>,
) -> Result<(), ServerError> {
    // However the loop ends (even cancelled), a drain waiting for the listeners to close must learn it
    // (once every loop has ended).
    let _closed = LoopEnded(shared.clone());
    let control = &shared.drain;
    // Created once: a fresh `cancelled()` per iteration would register a waiter under the token's mutex
    // for every accepted connection.
    let stopped = stop.cancelled();
    let draining = control.draining.cancelled();
    let released = control.release.cancelled();
    tokio::pin!(stopped, draining, released);
    loop {
        let conn = tokio::select! {
            biased;
            _ = &mut stopped => {
                tracing::debug!("accept loop stopped");
                return Ok(());
            }
            _ = &mut released => {
                // Another process accepts from the same sockets now: close our descriptors only.
                acceptor.source_mut().release();
                tracing::info!("accept loop ended: listeners handed over");
                return Ok(());
            }
            _ = &mut draining => {
                drain::drain_queue(&mut acceptor, control, &stop, |conn, from| spawner.spawn(conn, from)).await;
                return Ok(());
            }
            conn = acceptor.accept() => match conn {
                Ok(conn) => conn,
                Err(last) => {
                    tracing::error!(listener = %last.addr, error = %last.source, "accept loop ended: no listener can accept any more");
                    let mut failures = acceptor.source_mut().take_failures();
                    failures.push(last);
                    return Err(ServerError { failures });
                }
            },
        };
        spawner.spawn(conn, acceptor.source().last_position());
    }
}

/// Counts an accept loop out when dropped; the last one tells the drain its listeners are closed.
struct LoopEnded(Arc<Shared>);

impl Drop for LoopEnded {
    fn drop(&mut self) {
        let drain = &self.0.drain;
        if drain
            .accept_loops
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            <= 1
        {
            drain.listeners_closed.cancel();
        }
    }
}

/// Starts each connection's task: the handler, after the listener's set-up steps if it has any.
struct Spawner<H> {
    handler: Arc<H>,
    /// By listener position.
    fronts: Vec<Option<Arc<Front>>>,
}

impl<H: Handler> Spawner<H> {
    /// `from`: the position of the listener that accepted `conn`.
    fn spawn(&self, conn: Connection, from: usize) {
        let front = self.fronts.get(from).and_then(Option::as_ref);
        // Behind a PROXY header the socket's peer is the balancer: the front judges the client the
        // header names instead. Elsewhere the peer is judged here, before a task exists.
        let refused = crate::admission::judge_socket(conn.entry(), conn.stream()).is_err()
            || (front.is_none_or(|f| f.proxy.is_none()) && conn.admit().is_err());
        if refused {
            // Dropping it closes the socket and frees its slot.
            return;
        }
        match front {
            None => spawn_connection(conn, &*self.handler),
            Some(front) => spawn_behind_front(conn, self.handler.clone(), front.clone()),
        }
    }
}

/// Like [`spawn_connection`], with the set-up steps (PROXY header, TLS, admission hook, greeting) first,
/// in the task: a slow or hostile client holds up only itself. A failed set-up closes the connection
/// (counted by cause); the handler never runs.
fn spawn_behind_front<H: Handler>(conn: Connection, handler: Arc<H>, front: Arc<Front>) {
    let entry = conn.entry().clone();
    let done = entry.clone();
    let serve = async move {
        let conn = front.open(conn).await?;
        Some(handler.call(conn).await)
    };
    let serve = AssertUnwindSafe(serve)
        .catch_unwind()
        .map(move |result| match result {
            Ok(Some(outcome)) => account(&done, Ok(outcome)),
            Ok(None) => {}
            Err(panic) => account::<()>(&done, Err(panic)),
        });
    let task = tokio::spawn(serve);
    let _ = entry.task.set(task.abort_handle());
}

/// Counts and logs how a handler ended.
fn account<O: Outcome>(entry: &Entry, result: std::thread::Result<O>) {
    match result {
        Ok(outcome) => {
            if let Some(err) = outcome.failure() {
                Stats::add(&entry.shared.stats.handler_errors, 1);
                tracing::debug!(conn = entry.id, error = %err, "handler returned an error");
            }
        }
        Err(panic) => {
            Stats::add(&entry.shared.stats.handler_panics, 1);
            tracing::error!(
                conn = entry.id,
                panic = panic_message(&*panic),
                "handler panicked; its connection is closed, the others are unaffected"
            );
        }
    }
}

/// Runs the handler in a task of its own, with panics caught and counted so they harm no other connection.
///
/// Built from combinators rather than an `async move` block: a block that awaits the handler's future
/// stores it twice (once captured, once moved into the await), which doubles the task's size for every
/// idle connection.
fn spawn_connection<H: Handler>(conn: Connection, handler: &H) {
    let entry = conn.entry().clone();
    // `call` runs here, on the accept loop: a panic in it must not end the loop either.
    let serve = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(conn))) {
        Ok(serve) => serve,
        Err(panic) => {
            Stats::add(&entry.shared.stats.handler_panics, 1);
            tracing::error!(
                conn = entry.id,
                panic = panic_message(&*panic),
                "handler panicked before its future started; its connection is closed"
            );
            return;
        }
    };
    // The wrapper keeps one pointer (the entry) so the task of an idle connection stays small.
    let done = entry.clone();
    let serve = AssertUnwindSafe(serve)
        .catch_unwind()
        .map(move |result| account(&done, result));
    let task = tokio::spawn(serve);
    // If the task already finished, the entry is gone from the registry and this is harmless.
    let _ = entry.task.set(task.abort_handle());
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
