//! `lariat serve`: bind, print where, serve with a built-in handler until a signal or a fatal error.

use std::future::Future;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::Context;
use lariat::metrics::{record_restart, RestartEvent};
use lariat::restart::{spawn_successor, Passed, RestartError, RestartOptions};
use lariat::{DrainOptions, Handler, Listener, OnExhaustion, Server, ServerBuilder, ServerHandle};

use std::sync::Arc;

use lariat::route::{Matcher, Router};
use lariat::tls::TlsConfig;

use crate::admin::{self, Phase};
use crate::cli::{
    Exhaustion, HandlerKind, ProxyArg, RouteProtocol, RouteSpec, ServeArgs, TrustedProxy,
};
use crate::handlers;
use crate::listeners::{self, Named};
use crate::signals::{Instruction, Order, Signals};
use lariat::proxy::{ProxyConfig, ProxyMode};

/// Runs the server described by `args`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = args.bind_options();
    let mut inherited = lariat::activation::inherited().context("adopting the passed sockets")?;
    // Taken out first: with no --listen, every other passed socket is served.
    let admin = match &args.metrics {
        Some(addr) => Some(admin::listener(
            addr,
            &mut inherited,
            &args.metrics_bind_options()?,
        )?),
        None => None,
    };
    let named = listeners::resolve(&args.listen, inherited, &opts)?;
    if args.reuseport {
        warn_without_request_migration();
    }
    let tls = tls_config(&args)?;
    let greeting = args
        .greeting
        .as_deref()
        .map(|g| bytes::Bytes::from(crate::cli::unescape(g)));
    let builder = Server::builder()
        .max_connections(args.max_connections)
        .acceptors(args.acceptors)
        .idle_timeout((!args.idle_timeout.is_zero()).then_some(args.idle_timeout))
        .handshake_timeout(args.handshake_timeout)
        .handshake_grace(args.handshake_grace)
        // With routes, the router greets once the route is chosen (inside a TLS route's session).
        .greeting(greeting.clone().filter(|_| args.route.is_empty()))
        .admission(Some(lariat::admission::Admission {
            allow: args.allow.clone(),
            deny: args.deny.clone(),
            max_per_ip: args.max_per_ip,
            ipv6_prefix: args
                .per_ip_v6_prefix
                .unwrap_or(lariat::admission::DEFAULT_IPV6_PREFIX),
            unix_uids: args.unix_peer_uid.clone(),
        }))
        .on_exhaustion(match args.on_exhaustion {
            Exhaustion::Wait => OnExhaustion::Wait,
            Exhaustion::Shed => OnExhaustion::Shed,
        });
    let builder = front_per_listener(builder, &named, &args, tls.as_ref())?;
    if !args.route.is_empty() {
        let router = args
            .route
            .iter()
            .try_fold(Router::new(), |router, spec| {
                add_route(router, spec, &tls, &args)
            })?
            .greeting(greeting);
        return serve(builder, named, admin, router, &args, tls).await;
    }
    // Monomorphised per handler: no boxing on the per-connection path.
    if let Some(mode) = args.delivery {
        // Only with the echo handler and no routes (`checks`).
        let handler = move |conn| handlers::echo_messages::echo(conn, mode);
        return serve(builder, named, admin, handler, &args, tls).await;
    }
    match args.handler {
        HandlerKind::Echo => serve(builder, named, admin, handlers::echo::echo, &args, tls).await,
        HandlerKind::Discard => {
            serve(
                builder,
                named,
                admin,
                handlers::discard::discard,
                &args,
                tls,
            )
            .await
        }
        HandlerKind::Whoami => {
            serve(builder, named, admin, handlers::whoami::whoami, &args, tls).await
        }
        HandlerKind::HttpHello => {
            let timeout = args.request_timeout();
            let handler = move |conn| handlers::http_hello::http_hello(conn, timeout);
            serve(builder, named, admin, handler, &args, tls).await
        }
    }
}

/// With `SO_REUSEPORT`, each process has its own accept queue. When one dies, Linux resets the clients
/// in its queue unless `net.ipv4.tcp_migrate_req` moves them to a sibling (Linux 5.14+). lariat's own
/// drain and restart empty the queue first, so this is about crashes and SIGKILL.
fn warn_without_request_migration() {
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => tracing::warn!(
            "--reuseport: net.ipv4.tcp_migrate_req is off, so if this process dies without draining \
             (a crash, SIGKILL), the clients queued on its socket are reset instead of moving to the \
             other processes on the port; `sysctl -w net.ipv4.tcp_migrate_req=1` turns it on (or use \
             --workers N, which shares one queue)"
        ),
        Err(_) => tracing::debug!("--reuseport: tcp_migrate_req unknown on this system"),
    }
}

fn tls_config(args: &ServeArgs) -> anyhow::Result<Option<TlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let tls =
        TlsConfig::from_pem_files(cert, key).context("loading the TLS certificate and key")?;
    Ok(Some(if args.alpn.is_empty() {
        tls
    } else {
        tls.with_alpn(args.alpn.iter().map(|p| p.as_bytes().to_vec()))
    }))
}

/// PROXY and TLS: on every listener, or only on those `--proxy-on` / `--tls-on` name. With a `tls`
/// route, TLS belongs to that route instead; with routes but no `tls` route, TLS runs first and the
/// routes see the plaintext.
fn front_per_listener(
    mut builder: ServerBuilder,
    named: &[Named],
    args: &ServeArgs,
    tls: Option<&TlsConfig>,
) -> anyhow::Result<ServerBuilder> {
    for (flag, wanted) in [("--proxy-on", &args.proxy_on), ("--tls-on", &args.tls_on)] {
        if let Some(missing) = wanted.iter().find(|w| !named.iter().any(|n| &n.name == *w)) {
            anyhow::bail!("{flag} {missing}: no --listen {missing}");
        }
    }
    let proxy = proxy_config(args);
    if args.proxy_on.is_empty() {
        builder = builder.proxy_protocol(proxy);
    } else {
        for n in named.iter().filter(|n| args.proxy_on.contains(&n.name)) {
            builder = builder.proxy_protocol_on(n.listener.local_addr().clone(), proxy.clone());
        }
    }
    let tls_route = args.route.iter().any(|r| r.protocol == RouteProtocol::Tls);
    let tls = tls.filter(|_| !tls_route);
    if args.tls_on.is_empty() {
        builder = builder.tls(tls.cloned());
    } else {
        for n in named.iter().filter(|n| args.tls_on.contains(&n.name)) {
            builder = builder.tls_on(n.listener.local_addr().clone(), tls.cloned());
        }
    }
    Ok(builder)
}

fn add_route(
    router: Router,
    spec: &RouteSpec,
    tls: &Option<TlsConfig>,
    args: &ServeArgs,
) -> anyhow::Result<Router> {
    match spec.handler {
        HandlerKind::Echo => with_route(router, spec, tls, handlers::echo::echo),
        HandlerKind::Discard => with_route(router, spec, tls, handlers::discard::discard),
        HandlerKind::Whoami => with_route(router, spec, tls, handlers::whoami::whoami),
        HandlerKind::HttpHello => {
            let timeout = args.request_timeout();
            with_route(router, spec, tls, move |conn| {
                handlers::http_hello::http_hello(conn, timeout)
            })
        }
    }
}

fn with_route<H: Handler>(
    router: Router,
    spec: &RouteSpec,
    tls: &Option<TlsConfig>,
    handler: H,
) -> anyhow::Result<Router> {
    Ok(match &spec.protocol {
        RouteProtocol::Tls => {
            let tls = tls
                .clone()
                .context("--route tls=… needs --tls-cert and --tls-key")?;
            router.tls("tls", tls, handler)
        }
        RouteProtocol::Http => router.route("http", Matcher::Http1, handler),
        RouteProtocol::H2 => router.route("h2", Matcher::Http2, handler),
        RouteProtocol::Prefix(p) => {
            router.route(p, Matcher::Prefix(Arc::from(p.as_bytes())), handler)
        }
        RouteProtocol::Default => router.fallback(handler),
    })
}

/// A started successor being waited for; resolves to its pid once it serves.
type PendingRestart = Pin<Box<dyn Future<Output = Result<u32, RestartError>> + Send>>;

fn proxy_config(args: &ServeArgs) -> Option<ProxyConfig> {
    let mode = match args.proxy_protocol {
        ProxyArg::Off => return None,
        ProxyArg::V1 => ProxyMode::V1,
        ProxyArg::V2 => ProxyMode::V2,
        ProxyArg::Any => ProxyMode::Any,
    };
    let mut config = ProxyConfig::new(mode);
    if !args.trusted_proxy.is_empty() {
        config.trusted = args
            .trusted_proxy
            .iter()
            .filter_map(|t| match t {
                TrustedProxy::Net(net) => Some(*net),
                TrustedProxy::Unix => None,
            })
            .collect();
        config.trusted_unix = args.trusted_proxy.contains(&TrustedProxy::Unix);
    }
    Some(config)
}

/// Why the serving loop ended.
enum Ending {
    /// Asked to stop: drain. `why` names the signal; `by_operator`: the operator's signal (a further one
    /// forces the drain), not the drain instruction of the process that started this one.
    Stop {
        why: &'static str,
        by_operator: bool,
    },
    /// A successor took the listeners over: drain our own connections.
    HandedOver { successor: u32 },
    /// A worker told by its supervisor to leave the shared sockets to the others and finish.
    Retired,
}

/// The `--handler` value, as the `--metrics` connection list names it.
fn handler_name(kind: HandlerKind) -> &'static str {
    match kind {
        HandlerKind::Echo => "echo",
        HandlerKind::Discard => "discard",
        HandlerKind::HttpHello => "http-hello",
        HandlerKind::Whoami => "whoami",
    }
}

async fn serve<H: Handler>(
    builder: ServerBuilder,
    named: Vec<Named>,
    admin_listener: Option<Listener>,
    handler: H,
    args: &ServeArgs,
    tls: Option<TlsConfig>,
) -> anyhow::Result<ExitCode> {
    // Register for signals before announcing readiness, so a signal sent right after the line is seen.
    let mut signals = match args.as_worker {
        Some(_) => Signals::worker()?,
        None => Signals::operator()?,
    };
    if let Some(supervisor) = args.as_worker {
        // After the drain instruction's handler is installed: a supervisor's death then drains this
        // worker.
        crate::workers::tie_to_supervisor(supervisor);
    }

    // What a restart passes on: each socket under its name. Duplicates, so a listener the accept loop
    // drops (failed for good) cannot leave a stale number behind.
    let mut passable = named
        .iter()
        .map(|n| {
            Ok(PassOn {
                name: n.name.clone(),
                fd: n.listener.as_fd().try_clone_to_owned()?,
                supervised: n.listener.is_supervised(),
            })
        })
        .chain(args.metrics.iter().zip(&admin_listener).map(|(addr, l)| {
            Ok(PassOn {
                name: admin::passed_name(addr),
                fd: l.as_fd().try_clone_to_owned()?,
                supervised: false,
            })
        }))
        .collect::<std::io::Result<Vec<_>>>()
        .context("duplicating the listening sockets for restarts")?;
    let listeners: Vec<Listener> = named.into_iter().map(|n| n.listener).collect();

    // The accept loop runs on this (block_on's) thread and the connections on the runtime's workers, so
    // accepting and serving proceed in parallel even with one worker.
    let (running, accept_loop) = builder
        .run(listeners, handler)
        .context("starting the accept loop")?;
    let handle = running.handle;
    // What /readyz reports; moved on by the signals below.
    let phase = Phase::default();
    let admin = admin_listener
        .map(|l| {
            admin::start(
                l,
                Some(handle.clone()),
                phase.clone(),
                handler_name(args.handler),
                admin::Access::new(args.admin_token_file.as_deref(), &args.admin_host)?,
            )
        })
        .transpose()?;
    announce(&running.addrs, admin.as_ref().map(admin::Admin::addr));
    match lariat::activation::notify_ready() {
        Ok(true) => tracing::debug!("told NOTIFY_SOCKET we are ready"),
        Ok(false) => {}
        // A lariat process that started us (a restart, a supervisor) gave up waiting and stopped
        // listening for our READY: it goes on serving (or is stopping), so we must not. Nothing has been
        // accepted yet and the sockets are left as they are.
        Err(e) if std::env::var_os(lariat::activation::HANDOFF_ENV).is_some() => {
            return Err(anyhow::Error::from(e).context(
                "the process that started us no longer waits for our READY; exiting without serving",
            ))
        }
        Err(e) => tracing::warn!(error = %e, "cannot notify NOTIFY_SOCKET that we are ready"),
    }
    tokio::pin!(accept_loop);

    // At most one restart at a time: the successor being waited for.
    let mut restart: Option<PendingRestart> = None;
    // Told to close every connection without a drain first (a worker's supervisor).
    let mut force_at_once = false;
    let ending = loop {
        tokio::select! {
            result = &mut accept_loop => {
                // The accept loop ended on its own: every listener failed for good.
                result.context("the server stopped accepting")?;
                return Ok(ExitCode::SUCCESS);
            }
            order = signals.recv() => match order {
                Order::Stop(why) => break Ending::Stop { why, by_operator: true },
                Order::Drain => break Ending::Stop { why: "drain instruction", by_operator: false },
                // Only a worker is told this, by its supervisor, after a drain instruction: drain and
                // close at once.
                Order::Force => {
                    force_at_once = true;
                    break Ending::Stop { why: "force instruction", by_operator: false };
                }
                Order::Reload => reload(tls.as_ref()),
                Order::Retire => break Ending::Retired,
                Order::Ignored(signal) => tracing::info!(signal, "nothing to do on this signal; ignored"),
                Order::Restart => {
                    if restart.is_some() {
                        tracing::warn!("SIGHUP: a restart is already in progress; ignored");
                        continue;
                    }
                    match start_successor(&passable, args) {
                        Ok(successor) => {
                            record_restart(RestartEvent::Started);
                            restart = Some(Box::pin(successor.ready()));
                        }
                        Err(e) => {
                            record_restart(RestartEvent::Failed);
                            tracing::error!(error = %e, "restart failed; still serving");
                        }
                    }
                }
            },
            result = async { restart.as_mut().expect("guarded").await }, if restart.is_some() => {
                restart = None;
                match result {
                    Ok(successor) => break Ending::HandedOver { successor },
                    Err(e) => {
                        record_restart(RestartEvent::Failed);
                        tracing::error!(error = %e, "restart failed; still serving");
                    }
                }
            }
        }
    };
    // A signal that raced a successor's READY: if it is serving already, it takes over and is told to
    // drain (an instruction, not the signal: if the signal reached the whole group, the successor got it
    // too, and two would force its drain); otherwise the restart is abandoned (dropping it stops the
    // successor, which accepts nothing before it says READY).
    let ending = match (ending, restart.take()) {
        (
            Ending::Stop {
                why: signal,
                by_operator,
            },
            Some(pending),
        ) => match tokio::time::timeout(std::time::Duration::ZERO, pending).await {
            Ok(Ok(successor)) => {
                tracing::info!(
                    successor_pid = successor,
                    signal,
                    "a signal arrived as the successor became ready; passing it on"
                );
                Instruction::Drain.send(successor);
                Ending::HandedOver { successor }
            }
            _ => Ending::Stop {
                why: signal,
                by_operator,
            },
        },
        (ending, _) => ending,
    };
    if matches!(ending, Ending::Stop { .. }) {
        // No restart will follow: holding duplicates would keep the sockets listening after the drain
        // closes them, leaving new clients unanswered instead of refused.
        passable.clear();
    }
    let mut accept_loop_done = false;
    // A stop signal skips the lame duck, or forces the drain, when one already began it. After a
    // hand-over (a restart, or a worker's retirement) or a drain instruction it began without one: the
    // first stop signal (`systemctl stop` reaches every process of the unit) lets it go on, and only a
    // second one acts.
    let mut stop_seen = matches!(
        ending,
        Ending::Stop {
            by_operator: true,
            ..
        }
    );
    match ending {
        Ending::Stop { why: signal, .. } => {
            if !args.lame_duck.is_zero() {
                // /readyz turns 503 now, while the listeners keep accepting: a load balancer checking it
                // stops sending before the drain stops admitting.
                phase.lame_duck();
                tracing::info!(
                    signal,
                    lame_duck_ms = args.lame_duck.as_millis() as u64,
                    active = handle.stats().active,
                    "lame duck: /readyz answers 503; still accepting and serving until the period ends"
                );
                let lame_duck = tokio::time::sleep(args.lame_duck);
                tokio::pin!(lame_duck);
                let why = loop {
                    tokio::select! {
                        _ = &mut lame_duck => break "the period is over",
                        result = &mut accept_loop => {
                            accept_loop_done = true;
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "the server stopped accepting during the lame duck");
                            }
                            break "the server stopped accepting";
                        }
                        order = signals.recv() => match order {
                            Order::Stop(signal) if !stop_seen => {
                                stop_seen = true;
                                tracing::info!(signal, "already in the lame duck; a second signal skips it");
                            }
                            Order::Stop("SIGINT") => break "a second signal (SIGINT) skips it",
                            Order::Stop(_) => break "a second signal (SIGTERM) skips it",
                            Order::Force => {
                                force_at_once = true;
                                break "told to close every connection";
                            }
                            Order::Reload => reload(tls.as_ref()),
                            Order::Restart => tracing::warn!("SIGHUP during the lame duck: ignored, shutting down"),
                            Order::Drain | Order::Retire | Order::Ignored(_) => {}
                        },
                    }
                };
                tracing::info!(why, "lame duck over");
            }
            phase.stopping();
            tracing::info!(
                signal,
                active = handle.stats().active,
                deadline_ms = args.drain_timeout.as_millis() as u64,
                "draining: serving the queued clients and the live connections, admitting no new ones"
            );
        }
        Ending::HandedOver { successor } => {
            record_restart(RestartEvent::HandedOver);
            phase.stopping();
            match lariat::activation::notify_main_pid(successor) {
                Ok(true) => tracing::debug!(
                    successor_pid = successor,
                    "told our supervisor the new main pid"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot tell our supervisor the new main pid"),
            }
            tracing::info!(
                successor_pid = successor,
                active = handle.stats().active,
                "restart: successor ready; handing over the listeners and draining"
            );
            handle.release_listeners();
            if let Some(admin) = &admin {
                admin.hand_over();
            }
        }
        Ending::Retired => {
            phase.stopping();
            tracing::info!(
                active = handle.stats().active,
                "worker retiring: leaving the sockets to the other workers and draining"
            );
            handle.release_listeners();
            if let Some(admin) = &admin {
                admin.hand_over();
            }
        }
    }
    let opts = DrainOptions {
        timeout: args.drain_timeout,
        ..DrainOptions::default()
    };
    // The drain needs the accept loop driven (it empties the queues), so both run here.
    let drain = handle.drain(opts);
    tokio::pin!(drain);
    if force_at_once {
        force(&handle, "force instruction");
    }
    let report = loop {
        tokio::select! {
            result = &mut accept_loop, if !accept_loop_done => {
                accept_loop_done = true;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a listener failed while draining");
                }
            }
            report = &mut drain => break report,
            order = signals.recv() => match order {
                Order::Stop(signal) if stop_seen => force(&handle, signal),
                Order::Stop(signal) => {
                    stop_seen = true;
                    tracing::info!(signal, "already draining; a second signal closes every connection");
                }
                Order::Force => force(&handle, "force instruction"),
                Order::Reload => reload(tls.as_ref()),
                Order::Restart => tracing::warn!("SIGHUP while draining: ignored"),
                Order::Drain | Order::Retire | Order::Ignored(_) => {}
            },
        }
    };
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FORCED)
    })
}

/// A listening socket a restart passes on.
struct PassOn {
    name: String,
    fd: OwnedFd,
    supervised: bool,
}

fn start_successor(
    passable: &[PassOn],
    args: &ServeArgs,
) -> Result<lariat::restart::Successor, RestartError> {
    let mut opts = RestartOptions::same_process().map_err(|source| RestartError::Spawn {
        program: "(this executable)".into(),
        source,
    })?;
    if let Some(binary) = &args.restart_binary {
        opts.program = binary.clone();
    }
    opts.ready_timeout = args.restart_timeout;
    tracing::info!(program = %opts.program.display(), "SIGHUP: restarting");
    let passed: Vec<Passed<'_>> = passable
        .iter()
        .map(|p| Passed {
            name: &p.name,
            fd: p.fd.as_fd(),
            supervised: p.supervised,
        })
        .collect();
    spawn_successor(&passed, &opts)
}

/// Prints one `listening on ADDR` line per listener on stdout, then `metrics on ADDR` for `--metrics`,
/// flushed. A closed stdout is logged, not fatal: a successor started by a restart inherits a stdout its
/// supervisor may have stopped reading.
pub fn announce(addrs: &[lariat::ListenAddr], metrics: Option<&lariat::ListenAddr>) {
    let mut out = std::io::stdout().lock();
    let printed = addrs
        .iter()
        .try_for_each(|addr| writeln!(out, "listening on {addr}"))
        .and_then(|()| metrics.map_or(Ok(()), |addr| writeln!(out, "metrics on {addr}")))
        .and_then(|()| out.flush());
    if let Err(e) = printed {
        tracing::warn!(error = %e, "cannot print the listening addresses on stdout");
    }
    for addr in addrs {
        tracing::info!(listener = %addr, "listening");
    }
    if let Some(addr) = metrics {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz, /readyz, /connections");
    }
}

/// The exit code after a drain that had to close connections (or left clients queued).
pub const EXIT_FORCED: u8 = 3;

/// SIGUSR1 (a worker: its supervisor's reload instruction): new handshakes use the files' current pair.
fn reload(tls: Option<&TlsConfig>) {
    match tls {
        Some(tls) => match tls.reload() {
            Ok(()) => tracing::info!("SIGUSR1: TLS certificate and key reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGUSR1: TLS reload failed; the current certificate stays")
            }
        },
        None => tracing::info!("SIGUSR1: no TLS configured; nothing to reload"),
    }
}

fn force(handle: &ServerHandle, signal: &str) {
    tracing::warn!(signal, "second signal: closing every connection now");
    handle.force();
}
