//! Where a listener binds, parsed from text.
//!
//! `127.0.0.1:7878`, `[::1]:0`, `0.0.0.0:80` and `tcp://…` name TCP endpoints; `unix:/run/app.sock` names a
//! Unix-domain socket path, and on Linux `unix:@name` an abstract one (no file, nothing to clean up).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// An address to listen on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address; port 0 asks the kernel for a free port (see [`crate::Listener::local_addr`]).
    Tcp(SocketAddr),
    /// A Unix-domain socket at a filesystem path.
    Unix(PathBuf),
    /// A Linux abstract Unix-domain socket (`unix:@name`): no file on disk. Linux only.
    UnixAbstract(String),
}

/// Why a piece of text is not an [`Endpoint`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseEndpointError {
    /// The text was empty.
    #[error("empty endpoint")]
    Empty,
    /// `unix:` with nothing after it.
    #[error("`unix:` needs a path, as in `unix:/run/app.sock`")]
    EmptyUnixPath,
    /// Not an `IP:PORT` nor `[IPv6]:PORT`.
    #[error("`{text}` is not an endpoint: expected `IP:PORT`, `[IPv6]:PORT` or `unix:/path`")]
    Invalid {
        /// The text that failed to parse.
        text: String,
    },
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ParseEndpointError::Empty);
        }
        if let Some(rest) = text.strip_prefix("unix:") {
            // Accept `unix:///path` as well as `unix:/path`.
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.is_empty() {
                return Err(ParseEndpointError::EmptyUnixPath);
            }
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    return Err(ParseEndpointError::EmptyUnixPath);
                }
                return Ok(Endpoint::UnixAbstract(name.to_owned()));
            }
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        let addr = text.strip_prefix("tcp://").unwrap_or(text);
        addr.parse::<SocketAddr>()
            .map(Endpoint::Tcp)
            .map_err(|_| ParseEndpointError::Invalid {
                text: text.to_owned(),
            })
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Tcp(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::UnixAbstract(name) => write!(f, "unix:@{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_v4_v6_and_scheme() {
        assert_eq!(
            "127.0.0.1:7878".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:7878".parse().unwrap())
        );
        assert_eq!(
            "[::1]:0".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            "tcp://0.0.0.0:80".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("0.0.0.0:80".parse().unwrap())
        );
    }

    #[test]
    fn parses_unix_paths() {
        assert_eq!(
            "unix:/path/to.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/path/to.sock".into())
        );
        assert_eq!(
            "unix:///run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "unix:relative.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("relative.sock".into())
        );
        assert_eq!(
            "unix:@lariat".parse::<Endpoint>().unwrap(),
            Endpoint::UnixAbstract("lariat".into())
        );
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        assert_eq!("".parse::<Endpoint>(), Err(ParseEndpointError::Empty));
        assert_eq!(
            "unix:".parse::<Endpoint>(),
            Err(ParseEndpointError::EmptyUnixPath)
        );
        assert_eq!(
            "unix:@".parse::<Endpoint>(),
            Err(ParseEndpointError::EmptyUnixPath)
        );
        for bad in ["localhost:80", "127.0.0.1", ":80", "[::1]", "1.2.3.4:99999"] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "tcp://127.0.0.1:7878",
            "tcp://[::1]:0",
            "unix:/a/b.sock",
            "unix:@n",
        ] {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!(endpoint.to_string(), text);
            assert_eq!(endpoint.to_string().parse::<Endpoint>().unwrap(), endpoint);
        }
    }
}
