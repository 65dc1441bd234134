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

/// Most bytes of a response head or body a keep-alive exchange reads.
const MAX_RESPONSE: usize = 1 << 20;

/// How a keep-alive exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Answered; the connection may carry the next request.
    KeepOpen,
    /// Answered, and the server said it closes the connection now (`Connection: close`).
    Closing,
}

/// Where a keep-alive exchange failed: a request never sent is not a lost one.
#[derive(Debug)]
pub enum KeepAliveError {
    /// The server had closed the connection before the request went out (seen before writing): a clean
    /// end between requests.
    ClosedBefore,
    /// The request (or part of it) was sent and no whole answer came: lost.
    MidRequest(io::Error),
}

impl Protocol {
    /// One exchange on a connection kept open for more: checks first that the server has not closed
    /// it, sends `request` (in two writes `pause` apart when given, so the request is in flight for a
    /// while), and reads the whole answer (an HTTP response's head and body, so the next answer starts
    /// clean).
    pub async fn exchange_kept(
        self,
        stream: &mut TcpStream,
        request: &[u8],
        pause: Option<Duration>,
    ) -> Result<Answered, KeepAliveError> {
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Ok(0) => return Err(KeepAliveError::ClosedBefore),
            Ok(_) => {
                return Err(KeepAliveError::MidRequest(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bytes nobody asked for",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(KeepAliveError::ClosedBefore),
        }
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            match pause {
                Some(pause) => {
                    let (head, tail) = request.split_at(request.len() / 2);
                    stream.write_all(head).await?;
                    tokio::time::sleep(pause).await;
                    stream.write_all(tail).await?;
                }
                None => stream.write_all(request).await?,
            }
            match self {
                Protocol::Echo => {
                    self.read_answer(stream, request).await?;
                    Ok(Answered::KeepOpen)
                }
                Protocol::Http => read_http_response(stream).await,
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
        .and_then(|r| r)
        .map_err(KeepAliveError::MidRequest)
    }
}

/// Reads one whole HTTP/1.x response: the head, then a `Content-Length` or chunked body.
async fn read_http_response(stream: &mut TcpStream) -> io::Result<Answered> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let (head_len, body_len, chunked, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut body_len = 0usize;
                let mut chunked = false;
                let mut close = response.version == Some(0);
                for h in response.headers.iter() {
                    let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        body_len = value
                            .trim()
                            .parse()
                            .map_err(|_| invalid("bad content-length"))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = value.contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = value.contains("close");
                    }
                }
                if body_len > MAX_RESPONSE {
                    return Err(invalid("body too long"));
                }
                break (head_len, body_len, chunked, close);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => {}
            Ok(httparse::Status::Partial) => return Err(invalid("head too long")),
            Err(_) => return Err(invalid("not an HTTP/1.x answer")),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let done = |buf: &[u8]| {
        let body = &buf[head_len..];
        if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= body_len
        }
    };
    while !done(&buf) {
        if buf.len() > head_len + MAX_RESPONSE {
            return Err(invalid("body too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(if close {
        Answered::Closing
    } else {
        Answered::KeepOpen
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `answer` to whoever connects, after reading a request head.
    async fn answering(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(answer).await.unwrap();
            // Keep the connection open a while so only the body's end ends the read.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        addr
    }

    #[tokio::test]
    async fn keep_alive_answers_are_read_whole() {
        let cases: [(&[u8], Answered); 3] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                Answered::KeepOpen,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
                Answered::Closing,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                Answered::KeepOpen,
            ),
        ];
        for (answer, expected) in cases {
            let addr = answering(answer).await;
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = Protocol::Http.request(1);
            let got = Protocol::Http
                .exchange_kept(&mut stream, &request, None)
                .await;
            assert_eq!(
                got.ok(),
                Some(expected),
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn a_cut_answer_is_a_request_lost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nhel")
                .await
                .unwrap();
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let got = Protocol::Http
            .exchange_kept(&mut stream, &Protocol::Http.request(1), None)
            .await;
        assert!(matches!(got, Err(KeepAliveError::MidRequest(_))), "{got:?}");
    }
}
