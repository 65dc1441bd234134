//! Helpers for the tests of `lariat::http` (feature `http`).

/// A request that failed before the server took it: never sent, or above a GOAWAY's last stream.
pub fn refused_unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// Reads one HTTP/1.1 answer with a `content-length` from `c` (whatever follows stays in `rest`),
/// within 10 s.
pub async fn read_answer<S: tokio::io::AsyncRead + Unpin>(
    c: &mut S,
    rest: &mut Vec<u8>,
) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end + 4]).to_string();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= end + 4 + len {
                let whole = String::from_utf8_lossy(&rest[..end + 4 + len]).to_string();
                rest.drain(..end + 4 + len);
                return Ok(whole);
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), c.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        rest.extend_from_slice(&buf[..n]);
    }
}
