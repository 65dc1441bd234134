//! `lariat serve`: bind, print where, serve with a built-in handler until a signal or a fatal error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use lariat::lifecycle::{Lifecycle, Readiness, Signals};
use lariat::restart::PassOn;
use lariat::restart::RestartOptions;
use lariat::{Handler, HandshakeSettings, Limits, Listener, OnExhaustion, Server, ServerBuilder};

use std::sync::Arc;

use lariat::route::{Matcher, Router};
use lariat::tls::TlsConfig;

use crate::admin;
use crate::cli::{
    Exhaustion, HandlerKind, ProxyArg, RouteProtocol, RouteSpec, ServeArgs, TrustedProxy,
};
use crate::handlers;
use crate::listeners::{self, Named};
use lariat::proxy::{ProxyConfig, ProxyMode};

/// Runs the server described by `args`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = args.listeners.bind_options();
    let mut inherited = lariat::activation::inherited().context("adopting the passed sockets")?;
    // Taken out first: with no --listen, every other passed socket is served.
    let admin = match &args.admin.metrics {
        Some(addr) => Some(admin::listener(
            addr,
            &mut inherited,
            &args.admin.bind_options()?,
        )?),
        None => None,
    };
    let mut named = listeners::resolve(&args.listeners.listen, inherited, &opts)?;
    if args.listeners.reuseport {
        warn_without_request_migration();
    }
    let tls = tls_config(&args)?;
    let greeting = args
        .handler
        .greeting
        .as_deref()
        .map(|g| bytes::Bytes::from(crate::cli::unescape(g)));
    // Each of the library's settings groups from the argument groups that mirror it.
    let limits = Limits {
        max_connections: args.limits.max_connections,
        acceptors: args.limits.acceptors,
        on_exhaustion: match args.limits.on_exhaustion {
            Exhaustion::Wait => OnExhaustion::Wait,
            Exhaustion::Shed => OnExhaustion::Shed,
        },
        idle_timeout: (!args.limits.idle_timeout.is_zero()).then_some(args.limits.idle_timeout),
        // No flag: the library's backoff.
        ..Limits::default()
    };
    let mut handshake = HandshakeSettings {
        timeout: args.handshake.handshake_timeout,
        // "At most --handshake-timeout": a shorter timeout with the default grace lowers the grace.
        grace: args
            .handshake
            .handshake_grace
            .min(args.handshake.handshake_timeout),
        // With routes, the router greets once the route is chosen (inside a TLS route's session).
        greeting: greeting.clone().filter(|_| args.routes.route.is_empty()),
        // Set just below, on every listener or on those named.
        proxy: None,
        tls: None,
    };
    front_per_listener(&mut handshake, &mut named, &args, tls.as_ref())?;
    let builder = Server::builder()
        .limits(limits)
        .handshake(handshake)
        .admission(Some(lariat::admission::Admission {
            allow: args.admission.allow.clone(),
            deny: args.admission.deny.clone(),
            max_per_ip: args.admission.max_per_ip,
            ipv6_prefix: args
                .admission
                .per_ip_v6_prefix
                .unwrap_or(lariat::admission::DEFAULT_IPV6_PREFIX),
            unix_uids: args.admission.unix_peer_uid.clone(),
        }));
    if !args.routes.route.is_empty() {
        let router = args
            .routes
            .route
            .iter()
            .try_fold(Router::new(), |router, spec| {
                add_route(router, spec, &tls, &args)
            })?
            .greeting(greeting);
        return serve(builder, named, admin, router, &args, tls).await;
    }
    // Monomorphised per handler: no boxing on the per-connection path.
    if let Some(mode) = args.handler.delivery {
        // Only with the echo handler and no routes (`checks`).
        let handler = move |conn| handlers::echo_messages::echo(conn, mode);
        return serve(builder, named, admin, handler, &args, tls).await;
    }
    match args.handler.handler {
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
            let handler = http_hello(&args);
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
    let (Some(cert), Some(key)) = (&args.tls.tls_cert, &args.tls.tls_key) else {
        return Ok(None);
    };
    let tls =
        TlsConfig::from_pem_files(cert, key).context("loading the TLS certificate and key")?;
    Ok(Some(if args.tls.alpn.is_empty() {
        tls
    } else {
        tls.with_alpn(args.tls.alpn.iter().map(|p| p.as_bytes().to_vec()))
    }))
}

/// PROXY and TLS: on every listener (in the server-wide `handshake`), or only on those `--proxy-on` /
/// `--tls-on` name (carried by each listener). With a `tls` route, TLS belongs to that route instead;
/// with routes but no `tls` route, TLS runs first and the routes see the plaintext.
fn front_per_listener(
    handshake: &mut HandshakeSettings,
    named: &mut Vec<Named>,
    args: &ServeArgs,
    tls: Option<&TlsConfig>,
) -> anyhow::Result<()> {
    for (flag, wanted) in [
        ("--proxy-on", &args.proxy.proxy_on),
        ("--tls-on", &args.tls.tls_on),
    ] {
        if let Some(missing) = wanted.iter().find(|w| !named.iter().any(|n| &n.name == *w)) {
            anyhow::bail!("{flag} {missing}: no --listen {missing}");
        }
    }
    let proxy = proxy_config(args);
    let tls_route = args.routes.has_tls_route();
    let tls = tls.filter(|_| !tls_route);
    if args.proxy.proxy_on.is_empty() && args.tls.tls_on.is_empty() {
        handshake.proxy = proxy;
        handshake.tls = tls.cloned();
        return Ok(());
    }
    // Each listener carries its own PROXY and TLS settings: the named ones get them, the others none.
    let own = |on: &[String], name: &String| on.is_empty() || on.contains(name);
    *named = std::mem::take(named)
        .into_iter()
        .map(|n| Named {
            listener: n.listener.with_handshake(lariat::ListenerHandshake {
                proxy: proxy.clone().filter(|_| own(&args.proxy.proxy_on, &n.name)),
                tls: tls.cloned().filter(|_| own(&args.tls.tls_on, &n.name)),
            }),
            name: n.name,
        })
        .collect();
    Ok(())
}

/// `http-hello` with the HTTP timeouts from the command line.
fn http_hello(args: &ServeArgs) -> impl Handler + Clone {
    handlers::http::http_hello(
        args.handler.request_timeout(),
        args.handler.http_keep_alive,
        args.handler.http_hibernate_after,
    )
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
        HandlerKind::HttpHello => with_route(router, spec, tls, http_hello(args)),
    }
}

fn with_route<H: Handler>(
    router: Router,
    spec: &RouteSpec,
    tls: &Option<TlsConfig>,
    handler: H,
) -> anyhow::Result<Router> {
    let name = route_name(&spec.protocol);
    Ok(match &spec.protocol {
        RouteProtocol::Tls => {
            let tls = tls
                .clone()
                .context("--route tls=… needs --tls-cert and --tls-key")?;
            router.tls(name, tls, handler)
        }
        RouteProtocol::Http => router.route(name, Matcher::Http1, handler),
        RouteProtocol::H2 => router.route(name, Matcher::Http2, handler),
        RouteProtocol::Prefix(p) => {
            router.route(name, Matcher::Prefix(Arc::from(p.as_bytes())), handler)
        }
        RouteProtocol::Default => router.fallback(handler),
    })
}

/// The name a `--route` has in the router (its logs and the `--metrics` connection list).
fn route_name(protocol: &RouteProtocol) -> &str {
    match protocol {
        RouteProtocol::Tls => "tls",
        RouteProtocol::Http => "http",
        RouteProtocol::H2 => "h2",
        RouteProtocol::Prefix(p) => p,
        RouteProtocol::Default => lariat::route::FALLBACK,
    }
}

/// What the `--metrics` connection list names as each connection's handler.
fn handler_names(args: &ServeArgs) -> admin::HandlerNames {
    if args.routes.route.is_empty() {
        return admin::HandlerNames::single(handler_name(args.handler.handler));
    }
    args.routes.route.iter().fold(
        // A connection whose first bytes the router has not matched yet.
        admin::HandlerNames::single("router"),
        |names, spec| names.route(route_name(&spec.protocol), handler_name(spec.handler)),
    )
}

fn proxy_config(args: &ServeArgs) -> Option<ProxyConfig> {
    let mode = match args.proxy.proxy_protocol {
        ProxyArg::Off => return None,
        ProxyArg::V1 => ProxyMode::V1,
        ProxyArg::V2 => ProxyMode::V2,
        ProxyArg::Any => ProxyMode::Any,
    };
    let mut config = ProxyConfig::new(mode);
    if !args.proxy.trusted_proxy.is_empty() {
        config.trusted = args
            .proxy
            .trusted_proxy
            .iter()
            .filter_map(|t| match t {
                TrustedProxy::Net(net) => Some(*net),
                TrustedProxy::Unix => None,
            })
            .collect();
        config.trusted_unix = args.proxy.trusted_proxy.contains(&TrustedProxy::Unix);
    }
    Some(config)
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
    // Registered before readiness is announced, so a signal sent right after the line is seen. A worker
    // obeys its supervisor's instructions only (and drains when the supervisor dies).
    let signals = match args.drain.as_worker {
        Some(supervisor) => Signals::worker(supervisor)?,
        None => Signals::operator()?,
    };
    // What a restart passes on: each socket under its name, and the --metrics socket.
    let passable = named
        .iter()
        .map(|n| PassOn::new(n.name.clone(), &n.listener))
        .chain(
            args.admin
                .metrics
                .iter()
                .zip(&admin_listener)
                .map(|(addr, l)| PassOn::new(admin::passed_name(addr), l)),
        )
        .collect::<std::io::Result<Vec<_>>>()
        .context("duplicating the listening sockets for restarts")?;
    let listeners: Vec<Listener> = named.into_iter().map(|n| n.listener).collect();

    // The accept loop runs on this (block_on's) thread, driven by the lifecycle, and the connections on
    // the runtime's workers, so accepting and serving proceed in parallel even with one worker.
    let (running, accept_loop) = builder
        .run(listeners, handler)
        .context("starting the accept loop")?;
    // What /readyz reports; moved on by the lifecycle.
    let readiness = Readiness::new();
    let mut lifecycle = Lifecycle::new(running.handle.clone(), accept_loop)
        .signals(signals)
        .readiness(readiness.clone())
        .lame_duck(args.drain.lame_duck)
        .drain_timeout(args.drain.drain_timeout)
        .hand_over_window(args.drain.hand_over_window)
        .restart(restart_options(args)?, passable);
    if let Some(tls) = tls {
        lifecycle = lifecycle.on_reload(move || reload(&tls));
    }
    // A worker's replacement takes its connections through this socket.
    if let Some(supervisor) = args.drain.as_worker {
        match crate::workers::worker_hand_over_socket(supervisor) {
            Ok(socket) => lifecycle = lifecycle.hand_over_socket(socket),
            Err(e) => {
                tracing::warn!(error = %e, "no hand-over socket: this worker drains when replaced")
            }
        }
    }
    let admin = admin_listener
        .map(|l| {
            admin::start(
                l,
                Some(running.handle.clone()),
                readiness,
                handler_names(args),
                admin::Access::new(
                    args.admin.admin_token_file.as_deref(),
                    &args.admin.admin_host,
                )?,
            )
        })
        .transpose()?;
    announce(&running.addrs, admin.as_ref().map(admin::Admin::addr));
    if let Some(admin) = admin {
        // The successor answers on the same --metrics socket.
        lifecycle = lifecycle.on_hand_over(move || admin.hand_over());
    }
    Ok(lifecycle.run().await?.into())
}

/// The successor a SIGHUP starts: this executable (or `--restart-binary`) with the same arguments.
fn restart_options(args: &ServeArgs) -> anyhow::Result<RestartOptions> {
    let mut opts = RestartOptions::same_process().context("finding this executable")?;
    if let Some(binary) = &args.drain.restart_binary {
        opts.program = binary.clone();
    }
    opts.ready_timeout = args.drain.restart_timeout;
    Ok(opts)
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

/// SIGUSR1 (a worker: its supervisor's reload instruction): new handshakes use the files' current pair.
fn reload(tls: &TlsConfig) {
    match tls.reload() {
        Ok(()) => tracing::info!("SIGUSR1: TLS certificate and key reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "SIGUSR1: TLS reload failed; the current certificate stays")
        }
    }
}
