//! A worker's command line, built from the supervisor's parsed settings: `serve`, every setting a
//! worker shares written back as its flag (`--flag=VALUE`, so a value may start with `-`), and
//! `--as-worker=PID`. The supervisor's own settings (`--workers`, `--lame-duck`, the `--metrics`
//! endpoint and its options) are left out: the group has one admin endpoint and one lame duck, the
//! supervisor's.
//!
//! Each group is taken apart field by field, so a new flag does not compile until it is either written
//! here or named as the supervisor's.

use std::ffi::OsString;
use std::time::Duration;

use clap::ValueEnum;

use crate::cli::{
    AdminArgs, AdmissionArgs, DrainArgs, HandlerArgs, HandshakeTimeouts, LimitArgs, ListenSpec,
    ListenerArgs, LoggingArgs, ProxyArgs, RouteArgs, RouteProtocol, RouteSpec, ServeArgs, TlsArgs,
    TrustedProxy,
};

/// The hidden flag a worker is started with.
pub const AS_WORKER: &str = "--as-worker";

/// The arguments of a worker of the supervisor `supervisor` (its pid) serving `args`.
pub fn worker_args(args: &ServeArgs, supervisor: u32) -> Vec<OsString> {
    let mut out = Argv(vec!["serve".into()]);
    let ServeArgs {
        listeners,
        proxy,
        tls,
        routes,
        admission,
        handshake,
        handler,
        limits,
        drain,
        admin,
        logging,
    } = args;

    let ListenerArgs {
        listen,
        backlog,
        reuseport,
        unix_mode,
    } = listeners;
    for spec in listen {
        out.value(
            "--listen",
            match spec {
                ListenSpec::Bind { text, .. } => text.clone(),
                ListenSpec::Systemd(name) => format!("systemd:{name}"),
            },
        );
    }
    out.some("--backlog", backlog);
    out.flag("--reuseport", *reuseport);
    out.some("--unix-mode", &unix_mode.map(|m| format!("{m:o}")));

    let ProxyArgs {
        proxy_protocol,
        trusted_proxy,
        proxy_on,
    } = proxy;
    out.value("--proxy-protocol", choice(proxy_protocol));
    for trusted in trusted_proxy {
        out.value(
            "--trusted-proxy",
            match trusted {
                TrustedProxy::Net(net) => net.to_string(),
                TrustedProxy::Unix => "unix".into(),
            },
        );
    }
    out.each("--proxy-on", proxy_on);

    let TlsArgs {
        tls_cert,
        tls_key,
        alpn,
        tls_on,
    } = tls;
    out.some("--tls-cert", &tls_cert.as_ref().map(|p| p.as_os_str()));
    out.some("--tls-key", &tls_key.as_ref().map(|p| p.as_os_str()));
    out.each("--alpn", alpn);
    out.each("--tls-on", tls_on);

    let RouteArgs { route } = routes;
    for spec in route {
        out.value("--route", route_text(spec));
    }

    let AdmissionArgs {
        allow,
        deny,
        max_per_ip,
        per_ip_v6_prefix,
        unix_peer_uid,
    } = admission;
    out.each("--allow", allow);
    out.each("--deny", deny);
    out.some("--max-per-ip", max_per_ip);
    out.some("--per-ip-v6-prefix", per_ip_v6_prefix);
    out.each("--unix-peer-uid", unix_peer_uid);

    let HandshakeTimeouts {
        handshake_timeout,
        handshake_grace,
    } = handshake;
    out.value("--handshake-timeout", duration(*handshake_timeout));
    out.value("--handshake-grace", duration(*handshake_grace));

    let HandlerArgs {
        handler,
        delivery,
        greeting,
        request_timeout,
        http_keep_alive,
        http_hibernate_after,
    } = handler;
    // `--handler` and `--route` exclude each other: with routes, each names its handler.
    if route.is_empty() {
        out.value("--handler", choice(handler));
    }
    out.some("--delivery", &delivery.map(delivery_text));
    out.some("--greeting", greeting);
    out.some("--request-timeout", &request_timeout.map(duration));
    out.value("--http-keep-alive", duration(*http_keep_alive));
    out.value("--http-hibernate-after", duration(*http_hibernate_after));

    let LimitArgs {
        max_connections,
        on_exhaustion,
        acceptors,
        idle_timeout,
        threads,
    } = limits;
    out.value("--max-connections", max_connections);
    out.value("--on-exhaustion", choice(on_exhaustion));
    out.value("--acceptors", acceptors);
    out.value("--idle-timeout", duration(*idle_timeout));
    out.some("--threads", threads);

    let DrainArgs {
        drain_timeout,
        lame_duck: _,
        hand_over_window,
        restart_timeout,
        restart_binary,
        workers: _,
        as_worker: _,
    } = drain;
    out.value("--drain-timeout", duration(*drain_timeout));
    out.value("--hand-over-window", duration(*hand_over_window));
    out.value("--restart-timeout", duration(*restart_timeout));
    out.some(
        "--restart-binary",
        &restart_binary.as_ref().map(|p| p.as_os_str()),
    );

    let AdminArgs {
        metrics: _,
        admin_token_file: _,
        admin_host: _,
        metrics_unix_mode: _,
    } = admin;

    let LoggingArgs { log_format } = logging;
    out.value("--log-format", choice(log_format));

    out.value(AS_WORKER, supervisor);
    out.0
}

/// An argument vector being written.
struct Argv(Vec<OsString>);

impl Argv {
    /// `--flag=VALUE`, one argument: a value that starts with `-` stays a value.
    fn value(&mut self, flag: &str, value: impl ToArg) {
        let mut arg = OsString::from(flag);
        arg.push("=");
        arg.push(value.to_arg());
        self.0.push(arg);
    }

    fn some<T: ToArg + Clone>(&mut self, flag: &str, value: &Option<T>) {
        if let Some(value) = value {
            self.value(flag, value.clone());
        }
    }

    fn each<T: ToArg + Clone>(&mut self, flag: &str, values: &[T]) {
        for value in values {
            self.value(flag, value.clone());
        }
    }

    fn flag(&mut self, flag: &str, on: bool) {
        if on {
            self.0.push(flag.into());
        }
    }
}

/// A value written as one argument.
trait ToArg {
    fn to_arg(&self) -> OsString;
}

impl ToArg for &std::ffi::OsStr {
    fn to_arg(&self) -> OsString {
        (*self).to_owned()
    }
}

macro_rules! to_arg_by_display {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn to_arg(&self) -> OsString {
                self.to_string().into()
            }
        }
    )*};
}
to_arg_by_display!(
    String,
    &String,
    &str,
    u8,
    u32,
    usize,
    &u8,
    &u32,
    &usize,
    ipnet::IpNet
);

/// A `ValueEnum` value as its flag spells it.
fn choice(value: &impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// A duration as `parse_duration` reads it back exactly: whole seconds, whole milliseconds, or seconds
/// with nine decimals.
fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }
}

fn delivery_text(mode: lariat::delivery::Mode) -> String {
    use lariat::delivery::Mode;
    match mode {
        Mode::Passive => "pull".into(),
        Mode::Once => "once".into(),
        Mode::Push => "push".into(),
        Mode::Count(n) => n.to_string(),
    }
}

fn route_text(spec: &RouteSpec) -> String {
    let protocol = match &spec.protocol {
        RouteProtocol::Tls => "tls".to_owned(),
        RouteProtocol::Http => "http".to_owned(),
        RouteProtocol::H2 => "h2".to_owned(),
        RouteProtocol::Prefix(text) => format!("prefix:{text}"),
        RouteProtocol::Default => "default".to_owned(),
    };
    format!("{protocol}={}", choice(&spec.handler))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve(argv: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["lariat", "serve"].iter().chain(argv))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            Command::Serve(args) => *args,
            Command::Probe(_) => panic!("not serve"),
        }
    }

    /// What a worker parses from its arguments: the supervisor's settings without its own.
    fn round_trip(argv: &[&str]) {
        let supervisor = serve(argv);
        let rendered = worker_args(&supervisor, 4242);
        let text: Vec<String> = rendered
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(text[0], "serve");
        let refs: Vec<&str> = text[1..].iter().map(String::as_str).collect();
        let worker = serve(&refs);
        let mut expected = supervisor.clone();
        expected.drain.workers = 0;
        expected.drain.lame_duck = Duration::ZERO;
        expected.drain.as_worker = Some(4242);
        expected.admin = serve(&[]).admin;
        assert_eq!(worker, expected, "worker arguments: {text:?}");
    }

    /// Every flag but the routes, none at its default (the supervisor's own included).
    #[rustfmt::skip]
    const EVERY_FLAG: &[&str] = &[
        "--listen", "127.0.0.1:0", "--listen", "unix:@lariat-test", "--listen", "systemd:web",
        "--backlog", "77", "--reuseport", "--unix-mode", "640",
        "--proxy-protocol", "v2", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "unix",
        "--proxy-on", "127.0.0.1:0",
        "--tls-cert", "/etc/cert.pem", "--tls-key", "/etc/key.pem",
        "--alpn", "h2", "--alpn", "http/1.1", "--tls-on", "127.0.0.1:0",
        "--allow", "10.1.2.3/8", "--deny", "10.9.0.0/16", "--max-per-ip", "3",
        "--per-ip-v6-prefix", "56", "--unix-peer-uid", "1000", "--unix-peer-uid", "self",
        "--handshake-timeout", "1.25", "--handshake-grace", "300ms",
        "--handler", "http-hello", "--delivery", "7", "--greeting=-hi\\n",
        "--idle-timeout", "2m", "--request-timeout", "0.000000001", "--http-keep-alive", "0", "--http-hibernate-after", "0",
        "--max-connections", "9", "--on-exhaustion", "shed", "--acceptors", "2", "--threads", "3",
        "--drain-timeout", "12s", "--lame-duck", "2s", "--hand-over-window", "1500ms",
        "--restart-timeout", "45s", "--restart-binary", "/usr/bin/lariat-next",
        "--workers", "4",
        "--metrics", "127.0.0.1:9100", "--admin-token-file", "/etc/token",
        "--admin-host", "example.com", "--metrics-unix-mode", "640",
        "--log-format", "json",
    ];

    #[test]
    fn a_worker_parses_the_supervisors_settings_without_its_own() {
        round_trip(EVERY_FLAG);
        round_trip(&[]);
        round_trip(&["--workers=2", "--delivery", "pull", "--handler", "echo"]);
    }

    #[test]
    fn routes_are_passed_on_and_the_handler_left_out() {
        round_trip(&[
            "--route",
            "tls=http-hello",
            "--route",
            "prefix:a=b=whoami",
            "--route",
            "default=discard",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--workers",
            "2",
        ]);
    }

    #[test]
    fn the_test_line_sets_every_flag() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "as-worker", "route"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            assert!(
                EVERY_FLAG
                    .iter()
                    .any(|a| *a == flag || a.starts_with(&format!("{flag}="))),
                "--{long} is missing from EVERY_FLAG"
            );
        }
    }

    #[test]
    fn durations_are_written_exactly() {
        for text in ["0", "1s", "250ms", "1.5", "0.000000001", "2m", "86400"] {
            let d = crate::cli::parse_duration(text).unwrap();
            assert_eq!(
                crate::cli::parse_duration(&duration(d)).unwrap(),
                d,
                "{text}"
            );
        }
    }
}
