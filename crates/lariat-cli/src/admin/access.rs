//! Who may use the `--metrics` endpoint, and for what.
//!
//! - `/healthz` and `/readyz` answer everyone: they reveal nothing, and an orchestrator refused by a
//!   check it cannot pass would restart a healthy process.
//! - Everything else is refused to web pages. A page on another site can make a browser send requests
//!   here (cross-site request forgery) or, through a hostile name that resolves to this address, read the
//!   answers (DNS rebinding). So a request with an `Origin` other than the endpoint's own, or a `Host`
//!   that is not an IP address, `localhost` or a name given with `--admin-host`, is refused.
//! - The connection list (client addresses) and closing a connection need `Authorization: Bearer TOKEN`,
//!   the token from `--admin-token-file` or `LARIAT_ADMIN_TOKEN`; with no token configured they are
//!   disabled. A cross-site form cannot add that header, and the comparison takes the same time wherever
//!   a guess goes wrong.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Context;
use subtle::ConstantTimeEq;

/// The environment variable a token is read from when `--admin-token-file` is not given.
pub const TOKEN_ENV: &str = "LARIAT_ADMIN_TOKEN";

/// The shortest token accepted: a guessable one would protect nothing.
const MIN_TOKEN_LEN: usize = 16;

/// The request headers the checks read (each at most once in a request).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub host: Option<String>,
    pub origin: Option<String>,
    pub authorization: Option<String>,
}

/// Why a request is refused: the status and the reason sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: a browser's cross-site request, a host name not configured, or the routes disabled.
    Forbidden(&'static str),
    /// 401: the token is missing or wrong.
    Unauthorized,
}

/// The endpoint's access rules.
#[derive(Default)]
pub struct Access {
    token: Option<Vec<u8>>,
    hosts: Vec<String>,
}

/// Never prints the token.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl Access {
    /// The token from `token_file`, else from `LARIAT_ADMIN_TOKEN`, else none; `hosts` from
    /// `--admin-host`.
    pub fn new(token_file: Option<&Path>, hosts: &[String]) -> anyhow::Result<Access> {
        let token = match token_file {
            Some(path) => Some(read_token_file(path)?),
            None => match std::env::var(TOKEN_ENV) {
                Ok(text) => Some(checked_token(&text).context(TOKEN_ENV)?),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    anyhow::bail!("{TOKEN_ENV} is not valid UTF-8")
                }
            },
        };
        Ok(Access {
            token,
            hosts: hosts.iter().map(|h| normalise_name(h)).collect(),
        })
    }

    /// Whether a token is configured (the connection routes are enabled).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Refuses what a web page could have sent: a foreign `Origin`, a `Host` not known to be this one.
    pub fn check_not_cross_site(&self, request: &Credentials) -> Result<(), Refusal> {
        if let Some(host) = &request.host {
            if !self.host_allowed(host) {
                return Err(Refusal::Forbidden(
                    "this Host is not one this endpoint answers to (an IP address, localhost or an --admin-host name)\n",
                ));
            }
        }
        if let Some(origin) = &request.origin {
            let own = request
                .host
                .as_ref()
                .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("http://{host}")));
            if !own {
                return Err(Refusal::Forbidden(
                    "cross-origin requests are refused (a web page cannot use this endpoint)\n",
                ));
            }
        }
        Ok(())
    }

    /// Requires the configured token; with none configured the route is disabled.
    pub fn check_token(&self, request: &Credentials) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Err(Refusal::Forbidden(
                "disabled: start lariat with --admin-token-file FILE (or LARIAT_ADMIN_TOKEN) and send Authorization: Bearer TOKEN\n",
            ));
        };
        let offered = request
            .authorization
            .as_deref()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credential)| credential.trim().as_bytes());
        match offered {
            Some(offered) if bool::from(offered.ct_eq(token)) => Ok(()),
            _ => Err(Refusal::Unauthorized),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [v6]:port or [v6]
            Some(rest) => {
                return rest.split_once(']').is_some_and(|(ip, port)| {
                    ip.parse::<Ipv6Addr>().is_ok() && valid_port_suffix(port)
                });
            }
            None => match host.rsplit_once(':') {
                Some((name, port)) if valid_port_suffix(&format!(":{port}")) => name,
                Some(_) => return false,
                None => host,
            },
        };
        if name.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        let name = normalise_name(name);
        name == "localhost" || self.hosts.contains(&name)
    }
}

/// Empty, or `:` and a port number.
fn valid_port_suffix(rest: &str) -> bool {
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|port| port.parse::<u16>().is_ok())
}

/// Lower case, without the root's trailing dot.
fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn read_token_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --admin-token-file {}", path.display()))?;
    let token =
        checked_token(&text).with_context(|| format!("--admin-token-file {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the admin token file is readable by other users; chmod 600 it");
        }
    }
    Ok(token)
}

/// The token without surrounding whitespace (a file's final newline); long enough, and sendable in a
/// header.
fn checked_token(text: &str) -> anyhow::Result<Vec<u8>> {
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        anyhow::bail!(
            "the admin token has {} characters; use at least {MIN_TOKEN_LEN} (e.g. `head -c 32 /dev/urandom | base64`)",
            token.len()
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("the admin token must be printable ASCII without spaces");
    }
    Ok(token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    fn access() -> Access {
        Access {
            token: Some(TOKEN.as_bytes().to_vec()),
            hosts: vec!["metrics.internal".into()],
        }
    }

    fn with_host(host: &str) -> Credentials {
        Credentials {
            host: Some(host.into()),
            ..Credentials::default()
        }
    }

    #[test]
    fn hosts_ip_literals_localhost_and_configured_names_only() {
        let a = access();
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9100",
            "10.0.0.11:9100",
            "[::1]:9100",
            "[::1]",
            "localhost:9100",
            "LOCALHOST",
            "localhost.",
            "metrics.internal:9100",
            "Metrics.Internal",
        ] {
            assert_eq!(a.check_not_cross_site(&with_host(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:9100",
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1]x",
            "127.0.0.1:99999",
            "",
        ] {
            assert!(a.check_not_cross_site(&with_host(bad)).is_err(), "{bad}");
        }
        // No Host at all: an HTTP/1.0 client (HAProxy's httpchk), not a browser.
        assert_eq!(a.check_not_cross_site(&Credentials::default()), Ok(()));
    }

    #[test]
    fn only_the_endpoints_own_origin() {
        let a = access();
        let mut request = with_host("127.0.0.1:9100");
        request.origin = Some("http://127.0.0.1:9100".into());
        assert_eq!(a.check_not_cross_site(&request), Ok(()));
        for bad in ["https://evil.example", "null", "http://127.0.0.1:9101"] {
            request.origin = Some(bad.into());
            assert!(a.check_not_cross_site(&request).is_err(), "{bad}");
        }
        let no_host = Credentials {
            origin: Some("http://127.0.0.1:9100".into()),
            ..Credentials::default()
        };
        assert!(a.check_not_cross_site(&no_host).is_err());
    }

    #[test]
    fn the_token_is_required_and_compared_whole() {
        let a = access();
        let with = |auth: &str| Credentials {
            authorization: Some(auth.into()),
            ..Credentials::default()
        };
        assert_eq!(a.check_token(&with(&format!("Bearer {TOKEN}"))), Ok(()));
        assert_eq!(a.check_token(&with(&format!("bearer {TOKEN}"))), Ok(()));
        for bad in [
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            format!("Basic {TOKEN}"),
            TOKEN.to_owned(),
            "Bearer ".to_owned(),
        ] {
            assert_eq!(
                a.check_token(&with(&bad)),
                Err(Refusal::Unauthorized),
                "{bad}"
            );
        }
        assert_eq!(
            a.check_token(&Credentials::default()),
            Err(Refusal::Unauthorized)
        );
        assert!(matches!(
            Access::default().check_token(&with(&format!("Bearer {TOKEN}"))),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn tokens_are_checked_when_read() {
        assert_eq!(
            checked_token(&format!("{TOKEN}\n")).unwrap(),
            TOKEN.as_bytes()
        );
        assert!(checked_token("short").is_err());
        assert!(checked_token("0123456789 abcdef ghij").is_err());
    }
}
