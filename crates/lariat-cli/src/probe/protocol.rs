//! What a request and a valid answer are, per protocol.

use std::io;
use std::time::Duration;

use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The bytes sent come back.
    Echo,
    /// `GET /` gets an `HTTP/1.x` response.
    Http,
}

/// Longest a single exchange may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

impl Protocol {
    /// The request a client sends the moment it connects (`tag` makes echo requests distinct).
    pub fn request(self, tag: u64) -> Vec<u8> {
        match self {
            Protocol::Echo => format!("lariat probe {tag:016x}\n").into_bytes(),
            Protocol::Http => {
                b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: keep-alive\r\n\r\n".to_vec()
            }
        }
    }

    /// Sends `request` and checks the answer, within [`EXCHANGE_TIMEOUT`].
    pub async fn exchange(self, stream: &mut TcpStream, request: &[u8]) -> io::Result<()> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            stream.write_all(request).await?;
            self.read_answer(stream, request).await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
    }

    /// Reads and checks the answer to `request`.
    pub async fn read_answer(self, stream: &mut TcpStream, request: &[u8]) -> io::Result<()> {
        match self {
            Protocol::Echo => {
                let mut back = vec![0u8; request.len()];
                stream.read_exact(&mut back).await?;
                if back != request {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "echo mismatch"));
                }
                Ok(())
            }
            Protocol::Http => {
                let mut head = Vec::with_capacity(256);
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.len() > 64 * 1024 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
                    }
                }
                if !head.starts_with(b"HTTP/1.") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not an HTTP/1.x answer",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Connects to `addr` within [`EXCHANGE_TIMEOUT`]. Against a loopback target the source address cycles
/// through 127.0.1.0/24 by `n`, so thousands of connections per second do not run one address out of
/// ephemeral ports (each closed connection sits in TIME_WAIT on the client side).
pub async fn connect(addr: std::net::SocketAddr, n: u64) -> io::Result<TcpStream> {
    let connect = async {
        match addr {
            std::net::SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (n % 250) as u8);
                socket.bind((source, 0).into())?;
                socket.connect(addr).await
            }
            _ => TcpStream::connect(addr).await,
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Connects, sends a request at once, checks the answer.
pub async fn one_connection(
    protocol: Protocol,
    addr: std::net::SocketAddr,
    tag: u64,
) -> io::Result<()> {
    let mut stream = connect(addr, tag).await?;
    protocol.exchange(&mut stream, &protocol.request(tag)).await
}
