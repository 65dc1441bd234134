//! The values `lariat serve` flags take, and their parsers: listen and admin addresses, routes, trusted
//! proxies, durations, delivery modes, file modes, user ids.

use clap::ValueEnum;
use lariat::Endpoint;

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

/// `30s`, `500ms`, `2m`, or a bare number of seconds (`1.5`): the probe's parser, so both commands
/// read a duration the same way.
pub use lariat_probe::parse_duration;

/// A user id, or `self` for the effective user of this process.
pub fn parse_uid(text: &str) -> Result<u32, String> {
    if text == "self" {
        // SAFETY: geteuid has no preconditions.
        return Ok(unsafe { libc::geteuid() });
    }
    text.parse()
        .map_err(|_| format!("`{text}`: a numeric user id, or self"))
}

pub fn parse_mode(text: &str) -> Result<u32, String> {
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
    use std::time::Duration;

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
}
