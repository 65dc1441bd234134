//! Publishing a server's counters to the [`metrics`] facade (feature `metrics`), at scrape time.
//!
//! lariat already counts everything in relaxed atomics ([`StatsSnapshot`](crate::StatsSnapshot)) and knows its live
//! connections ([`ServerHandle::connections`]). Mirroring each event into the facade as it happens would
//! add a recorder look-up (a lock and a hash) to every accept, close and read. Instead [`publish`] copies
//! the counters into the facade *when asked*, with `counter!(…).absolute(v)` and `gauge!(…).set(v)`: call
//! it right before your exporter renders (for Prometheus, in the `/metrics` handler), and nothing is added
//! to the per-connection path. `lariat serve --metrics ADDR` does exactly that.
//!
//! ```no_run
//! # fn scrape(handle: &lariat::ServerHandle, prometheus: &metrics_exporter_prometheus::PrometheusHandle) -> String {
//! lariat::metrics::publish(handle); // or handle.publish_metrics()
//! prometheus.render()
//! # }
//! ```
//!
//! # The metrics
//!
//! Every name starts with `lariat_`; counters end in `_total`.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `lariat_accepted_total` | counter | | connections accepted (admission refusals included: they are accepted, then closed) |
//! | `lariat_active` | gauge | | connections open now |
//! | `lariat_max_connections` | gauge | | the connection cap |
//! | `lariat_closed_total` | counter | | connections closed, for any reason |
//! | `lariat_refused_total` | counter | `cause`: `admission`, `proxy`, `tls`, `sniff`, `hook`, `timeout`, `evicted` | connections closed before their handler ran |
//! | `lariat_shed_total` | counter | | connections shed at descriptor exhaustion |
//! | `lariat_accept_errors_total` | counter | `class`: `connection`, `shortage` | failed `accept(2)` calls, by class |
//! | `lariat_shortage_episodes_total` | counter | | resource-shortage episodes (EMFILE, ENFILE, ENOBUFS, ENOMEM) |
//! | `lariat_accept_paused_seconds` | gauge | | time the accept loop spent paused for shortage, in total (it only grows) |
//! | `lariat_handshake_failures_total` | counter | `cause`: `proxy`, `tls`, `sniff`, `timeout`, `evicted` | connections whose opening handshake failed |
//! | `lariat_bytes_in_total`, `lariat_bytes_out_total` | counter | | bytes read and written: closed connections plus live ones |
//! | `lariat_idle_closed_total` | counter | | connections closed by the idle timeout |
//! | `lariat_drain_forced_total` | counter | | connections a drain closed at its deadline or when forced |
//! | `lariat_handler_errors_total`, `lariat_handler_panics_total` | counter | | handlers that returned an error, or panicked |
//! | `lariat_draining` | gauge | | 1 once a drain has begun |
//! | `lariat_restarts_total` | counter | `outcome`: `started`, `handed_over`, `failed` | restart events, bumped by the program through [`record_restart`] |
//!
//! The refusal causes and the handshake causes overlap on purpose: a failed PROXY header is both a
//! refusal (the handler never ran) and a handshake failure; so are a failed TLS handshake, an unroutable
//! first message (`sniff`) and a handshake timeout. The admission hook's refusals are refusals only.

use metrics::{counter, describe_counter, describe_gauge, gauge, Label, Unit};

use crate::ServerHandle;

/// `lariat_accepted_total`: connections accepted.
pub const ACCEPTED: &str = "lariat_accepted_total";
/// `lariat_active`: connections open now.
pub const ACTIVE: &str = "lariat_active";
/// `lariat_max_connections`: the connection cap.
pub const MAX_CONNECTIONS: &str = "lariat_max_connections";
/// `lariat_closed_total`: connections closed.
pub const CLOSED: &str = "lariat_closed_total";
/// `lariat_refused_total{cause}`: connections closed before their handler ran.
pub const REFUSED: &str = "lariat_refused_total";
/// `lariat_shed_total`: connections shed at descriptor exhaustion.
pub const SHED: &str = "lariat_shed_total";
/// `lariat_accept_errors_total{class}`: failed `accept(2)` calls by class.
pub const ACCEPT_ERRORS: &str = "lariat_accept_errors_total";
/// `lariat_shortage_episodes_total`: resource-shortage episodes.
pub const SHORTAGE_EPISODES: &str = "lariat_shortage_episodes_total";
/// `lariat_accept_paused_seconds`: time paused for shortage, in total.
pub const ACCEPT_PAUSED: &str = "lariat_accept_paused_seconds";
/// `lariat_handshake_failures_total{cause}`: failed opening handshakes.
pub const HANDSHAKE_FAILURES: &str = "lariat_handshake_failures_total";
/// `lariat_bytes_in_total`: bytes read, closed and live connections.
pub const BYTES_IN: &str = "lariat_bytes_in_total";
/// `lariat_bytes_out_total`: bytes written, closed and live connections.
pub const BYTES_OUT: &str = "lariat_bytes_out_total";
/// `lariat_idle_closed_total`: connections closed by the idle timeout.
pub const IDLE_CLOSED: &str = "lariat_idle_closed_total";
/// `lariat_drain_forced_total`: connections a drain had to close.
pub const DRAIN_FORCED: &str = "lariat_drain_forced_total";
/// `lariat_handler_errors_total`: handlers that returned an error.
pub const HANDLER_ERRORS: &str = "lariat_handler_errors_total";
/// `lariat_handler_panics_total`: handlers that panicked.
pub const HANDLER_PANICS: &str = "lariat_handler_panics_total";
/// `lariat_draining`: 1 once a drain has begun.
pub const DRAINING: &str = "lariat_draining";
/// `lariat_restarts_total{outcome}`: restart events (see [`record_restart`]).
pub const RESTARTS: &str = "lariat_restarts_total";

/// A step of a hitless restart, for [`record_restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartEvent {
    /// A successor was started.
    Started,
    /// The successor became ready and took the listeners over.
    HandedOver,
    /// The restart was abandoned (the successor could not start, exited, or was not ready in time).
    Failed,
}

impl RestartEvent {
    fn label(self) -> &'static str {
        match self {
            RestartEvent::Started => "started",
            RestartEvent::HandedOver => "handed_over",
            RestartEvent::Failed => "failed",
        }
    }
}

/// Counts a restart event in `lariat_restarts_total{outcome}`. Restarts are driven by the program (see
/// [`restart`](crate::restart)), not by the server, so the program says when one happens. A no-op
/// without an installed recorder.
pub fn record_restart(event: RestartEvent) {
    counter!(RESTARTS, "outcome" => event.label()).increment(1);
}

/// Registers the help text and units of every lariat metric with the installed recorder. [`publish`]
/// calls it each time (it costs a few map look-ups, once per scrape), so a recorder installed late still
/// learns them; call it yourself to describe metrics before the first publish.
pub fn describe() {
    describe_counter!(
        ACCEPTED,
        "Connections accepted (including ones refused right after accept)."
    );
    describe_gauge!(ACTIVE, "Connections open now.");
    describe_gauge!(
        MAX_CONNECTIONS,
        "The connection cap; at the cap, clients wait in the kernel backlog."
    );
    describe_counter!(
        CLOSED,
        "Connections closed (by the handler, the peer, a timeout, a drain or close by id)."
    );
    describe_counter!(
        REFUSED,
        "Connections closed before their handler ran, by cause (admission rules, PROXY header, TLS handshake, protocol sniffing, admission hook, handshake timeout, evicted to make room for queued clients)."
    );
    describe_counter!(
        SHED,
        "Connections accepted with the reserved descriptor at exhaustion and closed (on-exhaustion shed)."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accept(2) calls by class: connection (retried at once), shortage (backed off)."
    );
    describe_counter!(
        SHORTAGE_EPISODES,
        "Resource-shortage episodes (EMFILE, ENFILE, ENOBUFS, ENOMEM), each ended by a drained backlog."
    );
    describe_gauge!(
        ACCEPT_PAUSED,
        Unit::Seconds,
        "Time the accept loop spent paused for resource shortage, in total (only grows; a gauge because the facade's counters are integers)."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        "Connections whose opening handshake failed, by cause (proxy: missing, malformed or untrusted PROXY header; tls; sniff: no route; timeout: not through within the handshake timeout; evicted: past its grace while the cap was full and clients queued)."
    );
    describe_counter!(
        BYTES_IN,
        Unit::Bytes,
        "Bytes read from peers: closed connections plus the live ones."
    );
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Bytes written to peers: closed connections plus the live ones."
    );
    describe_counter!(
        IDLE_CLOSED,
        "Connections closed after no byte moved either way for the idle timeout."
    );
    describe_counter!(
        DRAIN_FORCED,
        "Connections a drain closed at its deadline, or when forced."
    );
    describe_counter!(HANDLER_ERRORS, "Handlers that returned an error.");
    describe_counter!(
        HANDLER_PANICS,
        "Handlers that panicked (caught; only their connection was closed)."
    );
    describe_gauge!(
        DRAINING,
        "1 once the server has begun to drain (no new clients; live ones finishing)."
    );
    describe_counter!(
        RESTARTS,
        "Hitless restart events by outcome: started, handed_over, failed."
    );
}

/// Copies `handle`'s counters into the installed recorder (see the [module docs](self) for the names).
/// Call it at scrape time, right before rendering. Without an installed recorder it does nothing.
pub fn publish(handle: &ServerHandle) {
    publish_with_labels(handle, &[]);
}

/// Like [`publish`], with `labels` added to every metric: for several servers in one process, for
/// example `[Label::new("server", "api")]`.
pub fn publish_with_labels(handle: &ServerHandle, labels: &[Label]) {
    describe();
    // The counters first, the live connections' bytes second: a connection leaves the registry before its
    // bytes join the closed totals, so in this order a connection closing meanwhile is at worst missed for
    // one scrape, never counted twice (the Prometheus recorder's `absolute` keeps the larger value, so the
    // published counters never go backwards).
    let s = handle.stats();
    let (live_in, live_out) = handle.live_bytes();
    let base = labels.to_vec();
    let with = |key: &'static str, value: &'static str| {
        let mut l = base.clone();
        l.push(Label::new(key, value));
        l
    };

    counter!(ACCEPTED, base.clone()).absolute(s.accepted);
    gauge!(ACTIVE, base.clone()).set(s.active as f64);
    gauge!(MAX_CONNECTIONS, base.clone()).set(cap(handle.max_connections()));
    counter!(CLOSED, base.clone()).absolute(s.closed);
    counter!(REFUSED, with("cause", "admission")).absolute(s.admission_refused);
    counter!(REFUSED, with("cause", "proxy")).absolute(s.proxy_refused);
    counter!(REFUSED, with("cause", "tls")).absolute(s.tls_failed);
    counter!(REFUSED, with("cause", "sniff")).absolute(s.sniff_failed);
    counter!(REFUSED, with("cause", "hook")).absolute(s.hook_refused);
    counter!(REFUSED, with("cause", "timeout")).absolute(s.handshake_timeouts);
    counter!(REFUSED, with("cause", "evicted")).absolute(s.handshake_evicted);
    counter!(SHED, base.clone()).absolute(s.shed);
    counter!(ACCEPT_ERRORS, with("class", "connection")).absolute(s.connection_errors);
    counter!(ACCEPT_ERRORS, with("class", "shortage")).absolute(s.shortage_errors);
    counter!(SHORTAGE_EPISODES, base.clone()).absolute(s.shortage_episodes);
    gauge!(ACCEPT_PAUSED, base.clone()).set(s.paused.as_secs_f64());
    // Handshake failures by cause (each also under REFUSED above). A timeout is counted under
    // `timeout` only, whichever step it interrupted.
    counter!(HANDSHAKE_FAILURES, with("cause", "proxy")).absolute(s.proxy_refused);
    counter!(HANDSHAKE_FAILURES, with("cause", "tls")).absolute(s.tls_failed);
    counter!(HANDSHAKE_FAILURES, with("cause", "sniff")).absolute(s.sniff_failed);
    counter!(HANDSHAKE_FAILURES, with("cause", "timeout")).absolute(s.handshake_timeouts);
    counter!(HANDSHAKE_FAILURES, with("cause", "evicted")).absolute(s.handshake_evicted);
    counter!(BYTES_IN, base.clone()).absolute(s.bytes_in.saturating_add(live_in));
    counter!(BYTES_OUT, base.clone()).absolute(s.bytes_out.saturating_add(live_out));
    counter!(IDLE_CLOSED, base.clone()).absolute(s.idle_closed);
    counter!(DRAIN_FORCED, base.clone()).absolute(s.drain_forced);
    counter!(HANDLER_ERRORS, base.clone()).absolute(s.handler_errors);
    counter!(HANDLER_PANICS, base.clone()).absolute(s.handler_panics);
    gauge!(DRAINING, base).set(if handle.is_draining() { 1.0 } else { 0.0 });
    // Restarts belong to the process, not to a server: no server labels. Adding 0 makes every outcome's
    // series exist (at 0) before the first restart, without touching a count already there.
    for event in [
        RestartEvent::Started,
        RestartEvent::HandedOver,
        RestartEvent::Failed,
    ] {
        counter!(RESTARTS, "outcome" => event.label()).increment(0);
    }
}

/// The cap as a gauge value; "no cap" (`usize::MAX`) is published as +Inf.
fn cap(max: usize) -> f64 {
    if max == usize::MAX {
        f64::INFINITY
    } else {
        max as f64
    }
}

impl ServerHandle {
    /// Publishes this server's counters to the `metrics` facade: [`publish`](crate::metrics::publish).
    pub fn publish_metrics(&self) {
        publish(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[tokio::test]
    async fn publishes_every_metric_with_help_text() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let server = crate::Server::builder()
            .max_connections(7)
            .serve(
                [crate::Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap()],
                |_conn: crate::Connection| async {},
            )
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            publish_with_labels(server.handle(), &[Label::new("server", "t")]);
            record_restart(RestartEvent::Started);
        });
        let text = prometheus.render();
        for line in [
            "lariat_accepted_total{server=\"t\"} 0",
            "lariat_active{server=\"t\"} 0",
            "lariat_max_connections{server=\"t\"} 7",
            "lariat_refused_total{server=\"t\",cause=\"admission\"} 0",
            "lariat_refused_total{server=\"t\",cause=\"proxy\"} 0",
            "lariat_accept_errors_total{server=\"t\",class=\"shortage\"} 0",
            "lariat_handshake_failures_total{server=\"t\",cause=\"proxy\"} 0",
            "lariat_handshake_failures_total{server=\"t\",cause=\"tls\"} 0",
            "lariat_handshake_failures_total{server=\"t\",cause=\"timeout\"} 0",
            "lariat_refused_total{server=\"t\",cause=\"hook\"} 0",
            "lariat_draining{server=\"t\"} 0",
            "lariat_restarts_total{outcome=\"started\"} 1",
            "# HELP lariat_bytes_in_total Bytes read from peers: closed connections plus the live ones.",
            "# TYPE lariat_accept_paused_seconds gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn no_cap_is_infinite() {
        assert_eq!(cap(usize::MAX), f64::INFINITY);
        assert_eq!(cap(10), 10.0);
    }
}
