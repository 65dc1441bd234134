//! `lariat serve`'s flags, in groups that mirror the server's settings: each group is one help heading
//! (`lariat serve --help`), and the code reads a setting where it belongs (`args.tls.tls_cert`,
//! `args.drain.drain_timeout`). Every flag keeps its name, default and meaning.

use std::path::PathBuf;
use std::time::Duration;

use lariat::Endpoint;

use super::values::{
    parse_delivery, parse_duration, parse_mode, parse_route, parse_uid, AdminAddr, Exhaustion,
    HandlerKind, ListenSpec, LogFormat, ProxyArg, RouteProtocol, RouteSpec, TrustedProxy,
};

/// `lariat serve` arguments.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listeners: ListenerArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub routes: RouteArgs,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    #[command(flatten)]
    pub handshake: HandshakeTimeouts,
    #[command(flatten)]
    pub handler: HandlerArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub drain: DrainArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// Where to listen and how the sockets are bound.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Listeners")]
pub struct ListenerArgs {
    /// Address to listen on: IP:PORT, [IPv6]:PORT, unix:/path, unix:@abstract, or systemd:NAME for a
    /// socket passed by systemd. Repeatable. [default: the sockets systemd passed, if any, else
    /// 127.0.0.1:7878]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenSpec>,

    /// listen(2) backlog [default: net.core.somaxconn].
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,

    /// Set SO_REUSEPORT, so several processes can listen on the same port.
    #[arg(long)]
    pub reuseport: bool,

    /// Permission bits for Unix socket files, in octal (e.g. 660).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,
}

/// The handshake's first step: the PROXY protocol header a load balancer sends.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Handshake: PROXY protocol")]
pub struct ProxyArgs {
    /// Read a PROXY protocol header (from a load balancer such as HAProxy) at the start of each
    /// connection: off, v1, v2 or any.
    #[arg(long, value_enum, default_value_t = ProxyArg::Off)]
    pub proxy_protocol: ProxyArg,

    /// A network allowed to send PROXY headers (repeatable) [default: loopback]. Others are refused.
    /// `unix` trusts the peers of the Unix listeners (any local process that may open the socket).
    #[arg(long, value_name = "CIDR|unix")]
    pub trusted_proxy: Vec<TrustedProxy>,

    /// Read PROXY headers only on this listener (as written in --listen; repeatable) [default: on every
    /// listener].
    #[arg(long, value_name = "ADDR", requires = "proxy_protocol")]
    pub proxy_on: Vec<String>,
}

/// The handshake's TLS session.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Handshake: TLS")]
pub struct TlsArgs {
    /// Certificate chain (PEM) for TLS, with --tls-key. Every connection then starts with a TLS
    /// handshake (or, with --route tls=HANDLER, the ones that open with a ClientHello). SIGUSR1 reloads
    /// both files without a restart.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// An ALPN protocol to offer (repeatable, in order of preference), e.g. http/1.1.
    #[arg(long, value_name = "PROTOCOL", requires = "tls_cert")]
    pub alpn: Vec<String>,

    /// Use TLS only on this listener (as written in --listen; repeatable) [default: every listener].
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub tls_on: Vec<String>,
}

/// The handshake's routing: a handler picked by the connection's first bytes.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Handshake: routes")]
pub struct RouteArgs {
    /// Pick the handler by the connection's first bytes: PROTOCOL=HANDLER, where PROTOCOL is tls (a
    /// ClientHello: handshake, then HANDLER on the plaintext), http (an HTTP/1 request), h2 (the HTTP/2
    /// preface), prefix:TEXT, or default (anything else). Repeatable; the first match wins. Replaces
    /// --handler.
    #[arg(long, value_name = "PROTOCOL=HANDLER", value_parser = parse_route)]
    pub route: Vec<RouteSpec>,
}

impl RouteArgs {
    /// Whether a route takes TLS connections (`--route tls=…`): TLS then belongs to that route.
    pub fn has_tls_route(&self) -> bool {
        self.route.iter().any(|r| r.protocol == RouteProtocol::Tls)
    }
}

/// The handshake's admission: who may connect, and how many connections each may hold.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Handshake: admission")]
pub struct AdmissionArgs {
    /// Admit only peers in this network (repeatable) [default: everyone].
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<ipnet::IpNet>,

    /// Refuse peers in this network (repeatable; wins over --allow).
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<ipnet::IpNet>,

    /// The most connections one peer address may hold at once [default: no limit]. Behind
    /// --proxy-protocol, the client the header names; an IPv6 client, by its network (see
    /// --per-ip-v6-prefix).
    #[arg(long, value_name = "N")]
    pub max_per_ip: Option<u32>,

    /// For --max-per-ip, IPv6 clients in one network of this prefix length count as one address (one
    /// host usually holds a whole /64). [default: 64]
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub per_ip_v6_prefix: Option<u8>,

    /// Admit only processes running as this user to the Unix listeners (a uid, or `self` for the user
    /// lariat runs as; repeatable), checked with SO_PEERCRED [default: anyone the socket file's mode
    /// admits]. An abstract socket (unix:@name) has no file mode: this is how to keep other users out.
    #[arg(long, value_name = "UID|self", value_parser = parse_uid)]
    pub unix_peer_uid: Vec<u32>,
}

/// How long the handshake may take (with the PROXY, TLS and greeting flags, the library's
/// `lariat::HandshakeSettings`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Handshake: timeouts")]
pub struct HandshakeTimeouts {
    /// How long a connection's set-up may take from accept to its handler: PROXY header, protocol
    /// sniffing and TLS handshake together. Silent clients are closed then (counted).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// When the cap is full and clients are queued, connections still in their set-up after this long
    /// are closed to make room (slowloris; Linux TCP). At most --handshake-timeout.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub handshake_grace: Duration,
}

/// The built-in handler and how bytes reach it.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Delivery: handler and connections")]
pub struct HandlerArgs {
    /// What to do with each connection (with --route, each route names its own).
    #[arg(long, value_enum, default_value_t = HandlerKind::Echo, conflicts_with = "route")]
    pub handler: HandlerKind,

    /// Run the echo handler on the message API, in this delivery mode: pull, once, push, or a count N
    /// (Erlang's {active, false | once | true | N}). Without it, echo uses plain reads.
    #[arg(long, value_name = "MODE", value_parser = parse_delivery)]
    pub delivery: Option<lariat::delivery::Mode>,

    /// Written to each admitted client before its handler runs (after TLS), so it knows it was accepted
    /// and not just queued. `\n` and `\r` are unescaped.
    #[arg(long, value_name = "TEXT")]
    pub greeting: Option<String>,

    /// http-hello: a request's head must arrive whole within this long (from the connection's start or
    /// the end of the previous answer; slow header senders are closed, counted), and its body at
    /// 1 KiB/s on average after this long, or the client gets 408 and a close (a client sending a byte
    /// now and then would otherwise hold its slot, as every byte resets --idle-timeout). [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// http-hello: close a connection idle this long between requests (HTTP/2: GOAWAY); 0 disables it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub http_keep_alive: Duration,

    /// http-hello: once an HTTP/1.1 connection has been quiet this long between requests, it
    /// hibernates: hyper's buffers and state are dropped until its next bytes arrive, so an idle
    /// keep-alive connection costs about what an idle raw connection does; 0 disables it.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub http_hibernate_after: Duration,
}

/// How many connections, and the loops and threads that accept and run them (the library's
/// `lariat::Limits`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Limits and accept loop")]
pub struct LimitArgs {
    /// Most connections held at once (others wait in the kernel backlog).
    #[arg(long, value_name = "N", default_value_t = lariat::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// At descriptor exhaustion: let queued clients wait (default), or shed them with a clean close.
    #[arg(long, value_enum, default_value_t = Exhaustion::Wait)]
    pub on_exhaustion: Exhaustion,

    /// Accept loops in this process, each on its own descriptor of every listener (one queue per
    /// socket all the same).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub acceptors: usize,

    /// Close a connection after this long without a byte either way (slowloris, vanished peers); 0
    /// disables it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Runtime worker threads [default: the CPUs this process may run on].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Stopping (lame duck, drain), restarting, and worker processes.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Drain and restart")]
pub struct DrainArgs {
    /// On SIGTERM/SIGINT, how long live connections get to finish before they are closed (e.g. 30s,
    /// 500ms). A second signal closes them at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// On SIGTERM/SIGINT, first spend this long in lame duck: /readyz answers 503 while clients are still
    /// accepted and served, so a load balancer stops sending before the drain stops admitting. A second
    /// signal skips to the drain (and a third then forces it).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lame_duck: Duration,

    /// After a restart's successor is ready, how long live plain connections may move to it (the socket
    /// itself, with the bytes read and not yet echoed: the client sees a pause, not a close); the ones
    /// that have not moved by then drain. 0 turns moving off: every connection drains. Never longer
    /// than --drain-timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub hand_over_window: Duration,

    /// On SIGHUP, how long the successor gets to start serving before the restart is abandoned.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub restart_timeout: Duration,

    /// On SIGHUP, start this executable (same arguments) instead of the running one: an upgrade.
    #[arg(long, value_name = "PATH")]
    pub restart_binary: Option<PathBuf>,

    /// Run N worker processes that all accept from the same sockets (bound once, here), restarting any
    /// that dies; its queued clients stay in the shared queue for the others. SIGHUP replaces the
    /// workers (each new one serves before its old one hands over); SIGTERM drains them all. 0: serve in
    /// this process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,

    /// Internal: this process is a worker of the `--workers` supervisor with this pid (it obeys the
    /// supervisor's instructions only).
    #[arg(long, hide = true, value_name = "SUPERVISOR_PID")]
    pub as_worker: Option<u32>,
}

/// The admin endpoint: metrics, health, and the connection list.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Admin and metrics")]
pub struct AdminArgs {
    /// Serve metrics and health over HTTP on this address (IP:PORT or unix:/path): GET /metrics
    /// (Prometheus text), /healthz, /readyz; with the --admin-token-file token, GET /connections (JSON)
    /// and DELETE /connections/ID, which closes one.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<AdminAddr>,

    /// A file holding the token the --metrics endpoint's connection routes (the list, closing one) ask
    /// for, as `Authorization: Bearer TOKEN` [default: the LARIAT_ADMIN_TOKEN variable]. Without a token
    /// those routes are disabled.
    #[arg(long, value_name = "PATH", requires = "metrics")]
    pub admin_token_file: Option<PathBuf>,

    /// A host name the --metrics endpoint answers to (repeatable), besides IP addresses and localhost: a
    /// request naming another host is refused (DNS rebinding).
    #[arg(long, value_name = "NAME", requires = "metrics")]
    pub admin_host: Vec<String>,

    /// Permission bits for a Unix --metrics socket file, in octal [default: 600]. Apart from --unix-mode:
    /// whoever can connect to it reads the metrics (and, with the token, closes connections).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, requires = "metrics")]
    pub metrics_unix_mode: Option<u32>,
}

/// Where the log goes and how it looks.
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LoggingArgs {
    /// Log format on stderr. The level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The `--request-timeout` default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl HandlerArgs {
    /// `--request-timeout`, or its default.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }
}

impl ListenerArgs {
    /// How the `--listen` sockets are bound.
    pub fn bind_options(&self) -> lariat::BindOptions {
        lariat::BindOptions {
            backlog: self.backlog,
            reuse_port: self.reuseport,
            unix_mode: self.unix_mode,
            ..lariat::BindOptions::default()
        }
    }
}

impl AdminArgs {
    /// How the `--metrics` socket is bound (its own file mode for a Unix path, never `--unix-mode`'s; no
    /// SO_REUSEPORT: one process answers it). A mode given for a socket that has no file is refused.
    pub fn bind_options(&self) -> anyhow::Result<lariat::BindOptions> {
        let file = matches!(
            self.metrics.as_ref().map(|m| &m.endpoint),
            Some(Endpoint::Unix(_))
        );
        if self.metrics_unix_mode.is_some() && !file {
            anyhow::bail!("--metrics-unix-mode applies only to a --metrics unix:/path socket");
        }
        Ok(lariat::BindOptions {
            unix_mode: Some(self.metrics_unix_mode.unwrap_or(DEFAULT_METRICS_UNIX_MODE)),
            ..lariat::BindOptions::default()
        })
    }
}

/// The `--metrics` socket file's mode unless `--metrics-unix-mode` says otherwise: its owner only.
pub const DEFAULT_METRICS_UNIX_MODE: u32 = 0o600;

/// The address to use when no `--listen` is given and no socket was passed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
