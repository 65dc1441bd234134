//! Helpers shared by the library's integration tests.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[cfg(feature = "http")]
pub mod http;
pub mod process;
pub mod tls;

use lariat::{AcceptSource, Connection, ListenAddr, Listener, PeerAddr, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Binds 127.0.0.1:0.
pub fn bind_loopback() -> (Listener, SocketAddr) {
    let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().tcp().unwrap();
    (listener, addr)
}

/// Echoes until EOF.
pub async fn echo(mut conn: Connection) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

/// A fault-injecting accept source: returns the scripted errnos first, then accepts for real.
pub struct Faulty {
    inner: Listener,
    pub script: Arc<Mutex<VecDeque<i32>>>,
    pub polls: Arc<AtomicUsize>,
    /// Dropped at the moment the next fault is injected: a connection that closes between the failed
    /// accept and the backoff, the window where a wake-up is easiest to miss.
    pub drop_on_fault: Arc<Mutex<Option<Connection>>>,
}

impl Faulty {
    pub fn new(inner: Listener) -> Self {
        Faulty {
            inner,
            script: Arc::default(),
            polls: Arc::default(),
            drop_on_fault: Arc::default(),
        }
    }
}

impl AcceptSource for Faulty {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, PeerAddr)>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = self.script.lock().unwrap().pop_front() {
            drop(self.drop_on_fault.lock().unwrap().take());
            return Poll::Ready(Err(io::Error::from_raw_os_error(code)));
        }
        self.inner.poll_accept(cx)
    }

    fn local_addr(&self) -> io::Result<ListenAddr> {
        Ok(self.inner.local_addr().clone())
    }
}

/// Collects formatted log lines in memory, for assertions on what was logged.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Installs a subscriber for this thread (tests run on a current-thread runtime).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// Seed 000's clients: `connections` of them, `concurrency` at a time, each sending `payload` the instant
/// its connection exists (before the server has even accepted it), closing its write side and expecting
/// `payload` back. Returns how many completed.
pub async fn seed_000_clients(
    addr: SocketAddr,
    payload: &'static [u8],
    connections: usize,
    concurrency: usize,
) -> usize {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while next.fetch_add(1, Ordering::Relaxed) < connections as u64 {
                    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                    c.write_all(payload).await.unwrap();
                    c.shutdown().await.unwrap();
                    let mut back = Vec::new();
                    c.read_to_end(&mut back).await.unwrap();
                    assert_eq!(back, payload);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("clients stalled")
            .unwrap();
    }
    total
}
