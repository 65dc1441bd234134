//! The PROXY protocol (v1 text, v2 binary): a load balancer in front of the server (HAProxy, AWS NLB, …)
//! sends the real client's address in a header before the client's bytes.
//!
//! The header is read in the connection's own task, under a timeout, so a slow or silent client never
//! holds up the accept loop. It is read with `MSG_PEEK` first and then consumed to its exact length, so
//! not one byte after it is taken from the socket: the handler reads the client's bytes from the socket
//! itself, intact (what a library reads ahead belongs to the handler). Parsing is the `ppp` crate's;
//! this module is the glue: trust, timeouts, and what the handler sees.
//!
//! Only peers in the trusted networks may send a header (anyone else could claim any address). A header
//! from an untrusted peer, or no header where one is required, is refused: the connection is closed and
//! counted. With [`Untrusted::PassThrough`], untrusted peers are served as plain connections instead.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::net::peek::{peek_at_least, Peeked};
use crate::{PeerAddr, Stream};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header is the signature, version/command, family, a 2-byte length, then that many bytes.
const V2_FIXED: usize = 16;
/// The longest v1 header, `\r\n` included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The largest v2 header lariat accepts (addresses plus TLVs); the format allows 64 KiB.
pub const V2_MAX: usize = 4096;

/// Which header versions a listener expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// No header: every connection is plain.
    Off,
    /// The text header only.
    V1,
    /// The binary header only.
    V2,
    /// Either.
    Any,
}

/// What to do with a connection from outside the trusted networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// Close it (counted): only the load balancer may connect.
    Reject,
    /// Serve it as a plain connection, reading no header from it.
    PassThrough,
}

/// PROXY protocol settings for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The versions accepted.
    pub mode: ProxyMode,
    /// The peers allowed to send a header (the load balancers). Default: loopback only. IPv4-mapped
    /// networks (`::ffff:10.0.0.1/128`) match the IPv4 peers they map.
    pub trusted: Vec<IpNet>,
    /// Whether the peers of a Unix socket may send a header. Default: false, since any local process
    /// that may open the socket can connect and claim any address; turn it on when the socket's
    /// permissions admit only the balancer.
    pub trusted_unix: bool,
    /// What to do with other peers. Default: reject.
    pub untrusted: Untrusted,
    /// How long the whole header may take to arrive. Default 5 s.
    pub timeout: Duration,
}

impl ProxyConfig {
    /// `mode`, trusting loopback only (not Unix peers), rejecting others, 5 s to send the header.
    pub fn new(mode: ProxyMode) -> ProxyConfig {
        ProxyConfig {
            mode,
            trusted: vec![
                "127.0.0.0/8".parse().expect("a valid network"),
                "::1/128".parse().expect("a valid network"),
            ],
            trusted_unix: false,
            untrusted: Untrusted::Reject,
            timeout: Duration::from_secs(5),
        }
    }

    fn trusts(&self, peer: &PeerAddr) -> bool {
        match peer {
            PeerAddr::Tcp(addr) => {
                // An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`.
                let ip = addr.ip().to_canonical();
                self.trusted
                    .iter()
                    .any(|net| crate::admission::canonical_net(*net).contains(&ip))
            }
            // A Unix socket's peers are local processes: trusted only when told so.
            PeerAddr::Unix => self.trusted_unix,
        }
    }
}

/// What the PROXY header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The header's version: 1 or 2.
    pub version: u8,
    /// The client as the load balancer saw it; `None` for `LOCAL` (a health check by the balancer
    /// itself) and `UNKNOWN`.
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the balancer.
    pub destination: Option<SocketAddr>,
    /// The v2 type-length-value extensions (type, value), in order.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The header did not arrive in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed before a complete header.
    #[error("the peer closed before a complete PROXY header ({0} bytes)")]
    Truncated(usize),
    /// The bytes are not a PROXY header of an accepted version.
    #[error("not a PROXY header of an accepted version ({mode:?})")]
    NotProxy {
        /// The accepted versions.
        mode: ProxyMode,
    },
    /// The header announces more than lariat accepts.
    #[error("PROXY v2 header of {0} bytes, limit {V2_MAX}")]
    TooLarge(usize),
    /// The header is malformed.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The peer is not a trusted proxy.
    #[error("{0} is not a trusted proxy")]
    Untrusted(PeerAddr),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What became of a connection's header.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// A header was read and consumed.
    Header(ProxyHeader),
    /// An untrusted peer let through as a plain connection.
    Plain,
}

/// Reads, checks and consumes the PROXY header of `stream`, within `config.timeout`.
pub(crate) async fn read_header(
    stream: &Stream,
    peer: &PeerAddr,
    config: &ProxyConfig,
) -> Result<Admitted, ProxyError> {
    if !config.trusts(peer) {
        return match config.untrusted {
            Untrusted::PassThrough => Ok(Admitted::Plain),
            Untrusted::Reject => Err(ProxyError::Untrusted(peer.clone())),
        };
    }
    match tokio::time::timeout(config.timeout, read_trusted(stream, config.mode)).await {
        Ok(result) => result.map(Admitted::Header),
        Err(_) => Err(ProxyError::Timeout(config.timeout)),
    }
}

async fn read_trusted(stream: &Stream, mode: ProxyMode) -> Result<ProxyHeader, ProxyError> {
    // Room for any v1 header and a v2 header's fixed part; grown once a v2 length is known.
    let mut buf = vec![0u8; V1_MAX];
    let mut want = 1;
    loop {
        let seen = peek_at_least(stream, &mut buf, want)
            .await
            .map_err(|e| match e {
                Peeked::Closed(n) => ProxyError::Truncated(n),
                Peeked::Io(e) => ProxyError::Io(e),
            })?;
        if let Some((header, len)) = parse_header(&buf[..seen], mode)? {
            // Take exactly the header off the socket; what follows stays for the handler.
            consume(stream, &mut buf[..len]).await?;
            return Ok(header);
        }
        if seen >= V2_FIXED {
            if let Some(total) = header_len(&buf[..V2_FIXED], mode)? {
                if buf.len() < total {
                    buf.resize(total, 0);
                }
            }
        }
        want = seen + 1;
    }
}

/// Parses the PROXY header at the start of `bytes` (which may hold more after it), as a connection
/// with `mode` would: the header and its length, or why not. `Ok(None)`: not enough bytes yet. This is
/// the whole parsing path of [`ServerBuilder::proxy_protocol`](crate::ServerBuilder::proxy_protocol),
/// without the socket: for tests and fuzzing.
pub fn parse_header(
    bytes: &[u8],
    mode: ProxyMode,
) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if bytes.len() < V2_FIXED {
        // Too short to hold a v2 header's fixed part: a v2 start (the signature, perhaps with a byte or
        // three after it) waits for more; otherwise it must be the start of a v1 header.
        let v2_ok = matches!(mode, ProxyMode::V2 | ProxyMode::Any);
        let v1_ok = matches!(mode, ProxyMode::V1 | ProxyMode::Any);
        let sig = bytes.len().min(V2_SIGNATURE.len());
        if v2_ok && bytes[..sig] == V2_SIGNATURE[..sig] {
            return Ok(None);
        }
        let v1_prefix = b"PROXY ";
        let n = bytes.len().min(v1_prefix.len());
        if !v1_ok || bytes[..n] != v1_prefix[..n] {
            return Err(ProxyError::NotProxy { mode });
        }
        if !bytes.windows(2).any(|w| w == b"\r\n") {
            return Ok(None);
        }
    }
    let len = match header_len(&bytes[..bytes.len().min(V2_FIXED)], mode)? {
        Some(len) => len,
        None => match bytes[..bytes.len().min(V1_MAX)]
            .windows(2)
            .position(|w| w == b"\r\n")
        {
            Some(end) => end + 2,
            None if bytes.len() >= V1_MAX => {
                return Err(ProxyError::Malformed(
                    "v1 header longer than 107 bytes".into(),
                ))
            }
            None => return Ok(None),
        },
    };
    if bytes.len() < len {
        return Ok(None);
    }
    parse(&bytes[..len]).map(|header| Some((header, len)))
}

/// The header's total length if the fixed part says it (v2), `None` for v1 (find `\r\n`).
fn header_len(start: &[u8], mode: ProxyMode) -> Result<Option<usize>, ProxyError> {
    let v2_ok = matches!(mode, ProxyMode::V2 | ProxyMode::Any);
    let v1_ok = matches!(mode, ProxyMode::V1 | ProxyMode::Any);
    if v2_ok && start.len() >= V2_FIXED && start[..12] == V2_SIGNATURE[..] {
        let len = V2_FIXED + u16::from_be_bytes([start[14], start[15]]) as usize;
        if len > V2_MAX {
            return Err(ProxyError::TooLarge(len));
        }
        return Ok(Some(len));
    }
    if v1_ok && start.starts_with(b"PROXY ") {
        return Ok(None);
    }
    Err(ProxyError::NotProxy { mode })
}

/// Parses a complete header (exactly its bytes).
fn parse(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let malformed = |e: &dyn std::fmt::Display| ProxyError::Malformed(e.to_string());
    if bytes.starts_with(V2_SIGNATURE) {
        let header = ppp::v2::Header::try_from(bytes).map_err(|e| malformed(&e))?;
        let (source, destination) = match (header.command, header.addresses) {
            (ppp::v2::Command::Local, _) => (None, None),
            (_, ppp::v2::Addresses::IPv4(a)) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            (_, ppp::v2::Addresses::IPv6(a)) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                ))),
            ),
            (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => (None, None),
        };
        let tlvs = header
            .tlvs()
            .map(|tlv| {
                tlv.map(|t| (t.kind, t.value.to_vec()))
                    .map_err(|e| malformed(&e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(ProxyHeader {
            version: 2,
            source,
            destination,
            tlvs,
        });
    }
    let header = ppp::v1::Header::try_from(bytes).map_err(|e| malformed(&e))?;
    let (source, destination) = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        ppp::v1::Addresses::Tcp6(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        ppp::v1::Addresses::Unknown => (None, None),
    };
    Ok(ProxyHeader {
        version: 1,
        source,
        destination,
        tlvs: Vec::new(),
    })
}

/// Reads exactly `buf.len()` bytes that a peek showed are there.
async fn consume(stream: &Stream, buf: &mut [u8]) -> Result<(), ProxyError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let n = stream
            .read_io(|fd| {
                // SAFETY: `rest` is valid for writes of its length.
                let n = unsafe { libc::recv(fd, rest.as_mut_ptr().cast(), rest.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await?;
        if n == 0 {
            return Err(ProxyError::Truncated(done));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_parse() {
        let v1 = parse(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n").unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(v1.destination, Some("198.51.100.1:443".parse().unwrap()));
        let v1 = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").unwrap();
        assert_eq!(v1.source, Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().source, None);

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12 + 4]);
        v2.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb]);
        v2.extend_from_slice(&[0x04, 0, 1, 42]); // a NOOP TLV
        assert_eq!(
            header_len(&v2[..16], ProxyMode::Any).unwrap(),
            Some(v2.len())
        );
        let h = parse(&v2).unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.tlvs, vec![(4, vec![42])]);

        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().source, None);
    }

    #[test]
    fn wrong_versions_oversized_and_malformed_headers_are_errors() {
        assert!(matches!(
            header_len(b"PROXY TCP4 ", ProxyMode::V2),
            Err(ProxyError::NotProxy { .. })
        ));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            header_len(&big, ProxyMode::Any),
            Err(ProxyError::TooLarge(65551))
        ));
        assert!(matches!(
            header_len(&big, ProxyMode::V1),
            Err(ProxyError::NotProxy { .. })
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 999.0.2.1 198.51.100.1 1 2\r\n"),
            Err(ProxyError::Malformed(_))
        ));
        assert!(header_len(b"GET / HTTP/1.1\r\n", ProxyMode::Any).is_err());
    }

    #[test]
    fn trust_is_by_network() {
        let mut config = ProxyConfig::new(ProxyMode::Any);
        assert!(config.trusts(&PeerAddr::Tcp("127.0.0.9:1".parse().unwrap())));
        assert!(config.trusts(&PeerAddr::Tcp("[::ffff:127.0.0.1]:1".parse().unwrap())));
        assert!(!config.trusts(&PeerAddr::Tcp("10.0.0.1:1".parse().unwrap())));
        config.trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(config.trusts(&PeerAddr::Tcp("10.9.9.9:1".parse().unwrap())));
        assert!(!config.trusts(&PeerAddr::Tcp("127.0.0.1:1".parse().unwrap())));
    }

    #[test]
    fn ipv4_mapped_trusted_networks_match_ipv4_peers() {
        let mut config = ProxyConfig::new(ProxyMode::Any);
        config.trusted = vec!["::ffff:10.0.0.1/128".parse().unwrap()];
        assert!(config.trusts(&PeerAddr::Tcp("10.0.0.1:1".parse().unwrap())));
        assert!(config.trusts(&PeerAddr::Tcp("[::ffff:10.0.0.1]:1".parse().unwrap())));
        assert!(!config.trusts(&PeerAddr::Tcp("10.0.0.2:1".parse().unwrap())));
    }

    #[test]
    fn unix_peers_are_trusted_only_when_configured() {
        let mut config = ProxyConfig::new(ProxyMode::Any);
        assert!(!config.trusts(&PeerAddr::Unix));
        config.trusted_unix = true;
        assert!(config.trusts(&PeerAddr::Unix));
    }
}
