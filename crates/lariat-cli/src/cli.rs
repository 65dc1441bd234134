//! Command-line arguments.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use lariat::Endpoint;

/// TCP and Unix-socket servers that never lose a connection or a byte.
#[derive(Debug, Parser)]
#[command(name = "lariat", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server with a built-in handler.
    Serve(Box<ServeArgs>),
    /// Test any TCP server for the ways servers lose clients (first packet, descriptor exhaustion,
    /// flood, silent clients, the connection cap, stop, restarts, keep-alive and long-lived clients, a
    /// balancer's lag) and measure its churn.
    #[command(
        after_help = "Each scenario ends pass, FAIL, skipped (it needs --spawn, --restart-signal or \
        --protocol http), info (figures only) or could not run (the server did not start under the \
        scenario's conditions, e.g. a descriptor limit of 100; the reason is given).\n\
        Exit status: 1 when a scenario failed; skipped, info and could-not-run are not failures (0); \
        2 on a usage error."
    )]
    Probe(crate::probe::ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT, [IPv6]:PORT, unix:/path, unix:@abstract, or systemd:NAME for a
    /// socket passed by systemd. Repeatable. [default: the sockets systemd passed, if any, else
    /// 127.0.0.1:7878]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenSpec>,

    /// What to do with each connection (with --route, each route names its own).
    #[arg(long, value_enum, default_value_t = HandlerKind::Echo, conflicts_with = "route")]
    pub handler: HandlerKind,

    /// Run the echo handler on the message API, in this delivery mode: pull, once, push, or a count N
    /// (Erlang's {active, false | once | true | N}). Without it, echo uses plain reads.
    #[arg(long, value_name = "MODE", value_parser = parse_delivery)]
    pub delivery: Option<lariat::delivery::Mode>,

    /// Most connections held at once (others wait in the kernel backlog).
    #[arg(long, value_name = "N", default_value_t = lariat::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// listen(2) backlog [default: net.core.somaxconn].
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,

    /// Set SO_REUSEPORT, so several processes can listen on the same port.
    #[arg(long)]
    pub reuseport: bool,

    /// At descriptor exhaustion: let queued clients wait (default), or shed them with a clean close.
    #[arg(long, value_enum, default_value_t = Exhaustion::Wait)]
    pub on_exhaustion: Exhaustion,

    /// Permission bits for Unix socket files, in octal (e.g. 660).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

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

    /// Certificate chain (PEM) for TLS, with --tls-key. Every connection then starts with a TLS
    /// handshake (or, with --route tls=HANDLER, the ones that open with a ClientHello). SIGUSR1 reloads
    /// both files without a restart.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// An ALPN protocol to offer (repeatable, in order of preference), e.g. http/1.1.
    #[arg(long, value_name = "PROTOCOL", requires = "tls_cert")]
    pub alpn: Vec<String>,

    /// Use TLS only on this listener (as written in --listen; repeatable) [default: every listener].
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub tls_on: Vec<String>,

    /// Pick the handler by the connection's first bytes: PROTOCOL=HANDLER, where PROTOCOL is tls (a
    /// ClientHello: handshake, then HANDLER on the plaintext), http (an HTTP/1 request), h2 (the HTTP/2
    /// preface), prefix:TEXT, or default (anything else). Repeatable; the first match wins. Replaces
    /// --handler.
    #[arg(long, value_name = "PROTOCOL=HANDLER", value_parser = parse_route)]
    pub route: Vec<RouteSpec>,

    /// How long a connection's set-up may take from accept to its handler: PROXY header, protocol
    /// sniffing and TLS handshake together. Silent clients are closed then (counted).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// When the cap is full and clients are queued, connections still in their set-up after this long
    /// are closed to make room (slowloris; Linux TCP). At most --handshake-timeout.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub handshake_grace: Duration,

    /// http-hello: a request's head must arrive whole within this long (from the connection's start or
    /// the end of the previous answer; slow header senders are closed, counted), and its body at
    /// 1 KiB/s on average after this long, or the client gets 408 and a close (a client sending a byte
    /// now and then would otherwise hold its slot, as every byte resets --idle-timeout). [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Written to each admitted client before its handler runs (after TLS), so it knows it was accepted
    /// and not just queued. `\n` and `\r` are unescaped.
    #[arg(long, value_name = "TEXT")]
    pub greeting: Option<String>,

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

    /// Admit only processes running as this user to the Unix listeners (a uid, or `self` for the user
    /// lariat runs as; repeatable), checked with SO_PEERCRED [default: anyone the socket file's mode
    /// admits]. An abstract socket (unix:@name) has no file mode: this is how to keep other users out.
    #[arg(long, value_name = "UID|self", value_parser = parse_uid)]
    pub unix_peer_uid: Vec<u32>,

    /// For --max-per-ip, IPv6 clients in one network of this prefix length count as one address (one
    /// host usually holds a whole /64). [default: 64]
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub per_ip_v6_prefix: Option<u8>,

    /// Close a connection after this long without a byte either way (slowloris, vanished peers); 0
    /// disables it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// http-hello: close a connection idle this long between requests (HTTP/2: GOAWAY); 0 disables it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub http_keep_alive: Duration,

    /// http-hello: once an HTTP/1.1 connection has been quiet this long between requests, it
    /// hibernates: hyper's buffers and state are dropped until its next bytes arrive, so an idle
    /// keep-alive connection costs about what an idle raw connection does; 0 disables it.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub http_hibernate_after: Duration,

    /// On SIGTERM/SIGINT, how long live connections get to finish before they are closed (e.g. 30s,
    /// 500ms). A second signal closes them at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After a restart's successor is ready, how long live plain connections may move to it (the socket
    /// itself, with the bytes read and not yet echoed: the client sees a pause, not a close); the ones
    /// that have not moved by then drain. 0 turns moving off: every connection drains. Never longer
    /// than --drain-timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub hand_over_window: Duration,

    /// Serve metrics and health over HTTP on this address (IP:PORT or unix:/path): GET /metrics
    /// (Prometheus text), /healthz, /readyz; with the --admin-token-file token, GET /connections (JSON)
    /// and DELETE /connections/ID, which closes one.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<AdminAddr>,

    /// A file holding the token the --metrics endpoint's connection routes (the list, closing one) ask
    /// for, as `Authorization: Bearer TOKEN` [default: the LARIAT_ADMIN_TOKEN variable]. Without a token
    /// those routes are disabled.
    #[arg(long, value_name = "PATH", requires = "metrics")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// A host name the --metrics endpoint answers to (repeatable), besides IP addresses and localhost: a
    /// request naming another host is refused (DNS rebinding).
    #[arg(long, value_name = "NAME", requires = "metrics")]
    pub admin_host: Vec<String>,

    /// Permission bits for a Unix --metrics socket file, in octal [default: 600]. Apart from --unix-mode:
    /// whoever can connect to it reads the metrics (and, with the token, closes connections).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, requires = "metrics")]
    pub metrics_unix_mode: Option<u32>,

    /// On SIGTERM/SIGINT, first spend this long in lame duck: /readyz answers 503 while clients are still
    /// accepted and served, so a load balancer stops sending before the drain stops admitting. A second
    /// signal skips to the drain (and a third then forces it).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lame_duck: Duration,

    /// On SIGHUP, how long the successor gets to start serving before the restart is abandoned.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub restart_timeout: Duration,

    /// On SIGHUP, start this executable (same arguments) instead of the running one: an upgrade.
    #[arg(long, value_name = "PATH")]
    pub restart_binary: Option<std::path::PathBuf>,

    /// Accept loops in this process, each on its own descriptor of every listener (one queue per
    /// socket all the same).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub acceptors: usize,

    /// Run N worker processes that all accept from the same sockets (bound once, here), restarting any
    /// that dies; its queued clients stay in the shared queue for the others. SIGHUP replaces the
    /// workers (each new one serves before its old one hands over); SIGTERM drains them all. 0: serve in this process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,

    /// Internal: this process is a worker of the `--workers` supervisor with this pid (it obeys the
    /// supervisor's instructions only).
    #[arg(long, hide = true, value_name = "SUPERVISOR_PID")]
    pub as_worker: Option<u32>,

    /// Runtime worker threads [default: the CPUs this process may run on].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Log format on stderr. The level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// One `--route` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub protocol: RouteProtocol,
    pub handler: HandlerKind,
}

/// What a route recognises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteProtocol {
    Tls,
    Http,
    H2,
    Prefix(String),
    Default,
}

pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let (protocol, handler) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("`{text}`: expected PROTOCOL=HANDLER, e.g. tls=echo"))?;
    let protocol = match protocol {
        "tls" => RouteProtocol::Tls,
        "http" => RouteProtocol::Http,
        "h2" => RouteProtocol::H2,
        "default" => RouteProtocol::Default,
        other => match other.strip_prefix("prefix:") {
            Some(p) if p.len() > lariat::route::MAX_SNIFF => {
                return Err(format!(
                    "`{other}`: a prefix is at most {} bytes, the most the router looks at",
                    lariat::route::MAX_SNIFF
                ))
            }
            Some(p) if !p.is_empty() => RouteProtocol::Prefix(p.to_owned()),
            _ => {
                return Err(format!(
                    "`{other}`: a protocol is tls, http, h2, prefix:TEXT or default"
                ))
            }
        },
    };
    let handler = HandlerKind::from_str(handler, true)?;
    Ok(RouteSpec { protocol, handler })
}

/// Turns `\n`, `\r` and `\\` in a command-line text into the characters.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('r')) => {
                out.push('\r');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// The `--request-timeout` default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl ServeArgs {
    /// `--request-timeout`, or its default.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// How the `--listen` sockets are bound.
    pub fn bind_options(&self) -> lariat::BindOptions {
        lariat::BindOptions {
            backlog: self.backlog,
            reuse_port: self.reuseport,
            unix_mode: self.unix_mode,
            ..lariat::BindOptions::default()
        }
    }

    /// How the `--metrics` socket is bound (its own file mode for a Unix path, never `--unix-mode`'s; no
    /// SO_REUSEPORT: one process answers it). A mode given for a socket that has no file is refused.
    pub fn metrics_bind_options(&self) -> anyhow::Result<lariat::BindOptions> {
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

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// Bind this endpoint, unless a socket passed by a restart's predecessor carries this spec as its
    /// name (then adopt it). `text` is the value as given.
    Bind {
        /// The parsed endpoint.
        endpoint: Endpoint,
        /// The value as given, the name a restart passes the socket under.
        text: String,
    },
    /// The socket systemd passed under this name (`FileDescriptorName=`).
    Systemd(String),
}

impl std::str::FromStr for ListenSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("systemd:") {
            if name.is_empty() || name.contains(':') {
                return Err(format!(
                    "`{text}`: a systemd socket name is not empty and has no `:`"
                ));
            }
            return Ok(ListenSpec::Systemd(name.to_owned()));
        }
        let endpoint = text.parse::<Endpoint>().map_err(|e| e.to_string())?;
        Ok(ListenSpec::Bind {
            endpoint,
            text: text.to_owned(),
        })
    }
}

/// The `--metrics` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAddr {
    /// The parsed endpoint.
    pub endpoint: Endpoint,
    /// The value as given: a restart passes the socket on under a name made from it.
    pub text: String,
}

impl std::str::FromStr for AdminAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let endpoint = text.parse::<Endpoint>().map_err(|e| e.to_string())?;
        Ok(AdminAddr {
            endpoint,
            text: text.to_owned(),
        })
    }
}

/// One `--trusted-proxy` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedProxy {
    /// Peers in this network.
    Net(ipnet::IpNet),
    /// The peers of Unix listeners.
    Unix,
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "unix" {
            return Ok(TrustedProxy::Unix);
        }
        text.parse()
            .map(TrustedProxy::Net)
            .map_err(|e| format!("`{text}`: a network (10.0.0.0/8) or unix: {e}"))
    }
}

/// `--proxy-protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyArg {
    Off,
    V1,
    V2,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandlerKind {
    /// Write back every byte read.
    Echo,
    /// Read and drop every byte.
    Discard,
    /// Answer every HTTP/1.1 or HTTP/2 (h2c, or h2 by ALPN) request with `200 Hello, world!`, keep-alive
    /// (for wrk, h2load, curl); a restart moves idle HTTP/1.1 connections to the successor, drains end
    /// the others after an answer.
    HttpHello,
    /// Write `peer=ADDR hop=ADDR` (the client as a PROXY header named it, and the socket's peer), then echo.
    Whoami,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Exhaustion {
    /// Leave queued clients in the backlog until a descriptor frees.
    Wait,
    /// Accept and close them with a reserved descriptor.
    Shed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `pull`, `once`, `push`, or a count of messages.
pub fn parse_delivery(text: &str) -> Result<lariat::delivery::Mode, String> {
    use lariat::delivery::Mode;
    match text {
        "pull" | "passive" | "false" => Ok(Mode::Passive),
        "once" => Ok(Mode::Once),
        "push" | "true" => Ok(Mode::Push),
        n => match n.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Mode::Count(n)),
            _ => Err(format!(
                "`{text}`: use pull, once, push, or a count above 0"
            )),
        },
    }
}

/// `30s`, `500ms`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// A user id, or `self` for the effective user of this process.
fn parse_uid(text: &str) -> Result<u32, String> {
    if text == "self" {
        // SAFETY: geteuid has no preconditions.
        return Ok(unsafe { libc::geteuid() });
    }
    text.parse()
        .map_err(|_| format!("`{text}`: a numeric user id, or self"))
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|e| format!("`{text}` is not an octal mode: {e}"))?;
    if mode > 0o7777 {
        return Err(format!("`{text}`: permission bits go up to 7777 (octal)"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        assert_eq!(
            "systemd:web".parse::<ListenSpec>().unwrap(),
            ListenSpec::Systemd("web".into())
        );
        assert!("systemd:".parse::<ListenSpec>().is_err());
        match "127.0.0.1:0".parse::<ListenSpec>().unwrap() {
            ListenSpec::Bind { endpoint, text } => {
                assert_eq!(endpoint, "127.0.0.1:0".parse().unwrap());
                assert_eq!(text, "127.0.0.1:0");
            }
            other => panic!("{other:?}"),
        }
        assert!("nonsense".parse::<ListenSpec>().is_err());
    }

    #[test]
    fn delivery_modes() {
        use lariat::delivery::Mode;
        assert_eq!(parse_delivery("pull").unwrap(), Mode::Passive);
        assert_eq!(parse_delivery("once").unwrap(), Mode::Once);
        assert_eq!(parse_delivery("push").unwrap(), Mode::Push);
        assert_eq!(parse_delivery("100").unwrap(), Mode::Count(100));
        assert!(parse_delivery("0").is_err());
        assert!(parse_delivery("sometimes").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert!(parse_mode("9").is_err());
        assert_eq!(parse_mode("7777").unwrap(), 0o7777);
        assert!(parse_mode("17777").is_err(), "beyond the permission bits");
    }

    #[test]
    fn defaults() {
        let cli = Cli::parse_from(["lariat", "serve"]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert!(args.listen.is_empty());
        assert_eq!(args.handler, HandlerKind::Echo);
        assert_eq!(args.max_connections, lariat::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(args.metrics, None);
        assert_eq!(args.lame_duck, Duration::ZERO);
    }

    #[test]
    fn metrics_and_lame_duck() {
        let cli = Cli::parse_from([
            "lariat",
            "serve",
            "--metrics",
            "127.0.0.1:9100",
            "--lame-duck",
            "5s",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let metrics = args.metrics.unwrap();
        assert_eq!(metrics.endpoint, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(metrics.text, "127.0.0.1:9100");
        assert_eq!(args.lame_duck, Duration::from_secs(5));
        assert!(Cli::try_parse_from(["lariat", "serve", "--metrics", "nowhere"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
