//! Settings `lariat serve` refuses at start, each with an error that names the flag: values that could
//! never serve anyone (a cap of 0), and combinations where a flag would be silently ignored (a TLS
//! listener list next to a TLS route, `--delivery` under `--route`). A server that starts must do what
//! its command line says.

use anyhow::bail;
use lariat::Endpoint;

use crate::cli::{HandlerKind, ListenSpec, ProxyArg, ServeArgs, TrustedProxy};

/// Refuses what `args` cannot mean.
pub fn serve_args(args: &ServeArgs) -> anyhow::Result<()> {
    if args.limits.max_connections == 0 {
        bail!("--max-connections 0 would never serve a connection; use at least 1");
    }
    if args.admission.max_per_ip == Some(0) {
        bail!("--max-per-ip 0 would refuse every client; use at least 1, or leave it out for no limit");
    }
    if args.admission.per_ip_v6_prefix.is_some() && args.admission.max_per_ip.is_none() {
        bail!("--per-ip-v6-prefix has no effect without --max-per-ip");
    }
    if args.handshake.handshake_timeout.is_zero() {
        bail!("--handshake-timeout 0 would close every connection before its handler; use a positive duration");
    }
    if let Some(timeout) = args.handler.request_timeout {
        if timeout.is_zero() {
            bail!(
                "--request-timeout 0 would answer every request with 408; use a positive duration"
            );
        }
        let http_hello = if args.routes.route.is_empty() {
            args.handler.handler == HandlerKind::HttpHello
        } else {
            args.routes
                .route
                .iter()
                .any(|r| r.handler == HandlerKind::HttpHello)
        };
        if !http_hello {
            bail!("--request-timeout applies to the http-hello handler only, and none is in use");
        }
    }
    if args.limits.acceptors == 0 {
        bail!("--acceptors 0: at least one accept loop is needed");
    }
    if args.limits.threads == Some(0) {
        bail!("--threads 0: at least one runtime thread is needed");
    }
    let proxy_off = args.proxy.proxy_protocol == ProxyArg::Off;
    if proxy_off && !args.proxy.trusted_proxy.is_empty() {
        bail!("--trusted-proxy has no effect without --proxy-protocol v1, v2 or any");
    }
    if proxy_off && !args.proxy.proxy_on.is_empty() {
        bail!("--proxy-on has no effect without --proxy-protocol v1, v2 or any");
    }
    if args.drain.restart_binary.is_some()
        && (args.drain.workers > 0 || args.drain.as_worker.is_some())
    {
        bail!(
            "--restart-binary is not used with --workers: the supervisor starts its workers from its own \
             executable; restart the supervisor to upgrade"
        );
    }
    if args.handler.delivery.is_some() {
        if !args.routes.route.is_empty() {
            bail!("--delivery runs the echo handler on the message API; it cannot be combined with --route");
        }
        if args.handler.handler != HandlerKind::Echo {
            bail!(
                "--delivery runs the echo handler; it cannot be combined with --handler {:?}",
                args.handler.handler
            );
        }
    }
    let tls_route = args.routes.has_tls_route();
    if tls_route && !args.tls.tls_on.is_empty() {
        bail!(
            "--tls-on cannot be combined with --route tls=…: the tls route picks TLS per connection by its \
             first bytes; leave out --tls-on, or the tls route (then TLS runs first and the routes see \
             the plaintext)"
        );
    }
    let abstract_listen = args.listeners.listen.iter().find_map(|l| match l {
        ListenSpec::Bind {
            endpoint: Endpoint::UnixAbstract(_),
            text,
        } => Some(text.as_str()),
        _ => None,
    });
    if let Some(text) = abstract_listen {
        if args.proxy.trusted_proxy.contains(&TrustedProxy::Unix) {
            bail!(
                "--trusted-proxy unix cannot apply to {text}: any local user may connect to an \
                 abstract socket and claim any client address; use a socket path with --unix-mode"
            );
        }
    }
    let only_tcp = !args.listeners.listen.is_empty()
        && args.listeners.listen.iter().all(|l| {
            matches!(
                l,
                ListenSpec::Bind {
                    endpoint: Endpoint::Tcp(_),
                    ..
                }
            )
        });
    if only_tcp && !args.admission.unix_peer_uid.is_empty() {
        bail!("--unix-peer-uid has no effect without a Unix --listen");
    }
    if args.listeners.unix_mode.is_some() {
        let abstract_metrics = args
            .admin
            .metrics
            .as_ref()
            .filter(|m| matches!(m.endpoint, Endpoint::UnixAbstract(_)))
            .map(|m| m.text.as_str());
        if let Some(text) = abstract_listen.or(abstract_metrics) {
            bail!(
                "--unix-mode cannot apply to {text}: an abstract socket has no file, so no permission \
                 bits; any local user may connect to it (use a socket path to restrict access)"
            );
        }
    }
    Ok(())
}
