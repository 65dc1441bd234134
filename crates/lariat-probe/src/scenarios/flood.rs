//! A peer that writes as fast as it can and never reads. A server that stops reading when its own writes
//! block stays bounded (the bytes wait in the kernel's socket buffers); one that buffers everything grows
//! without limit. Judged by the server's resident memory.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::Protocol;
use crate::{Context, Outcome};

/// Most the server's resident memory may grow.
const MAX_GROWTH: u64 = 16 << 20;
/// How often memory is sampled.
const SAMPLE: Duration = Duration::from_millis(20);
/// A write that cannot go on for this long is retried (so the peer notices the end of the run).
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// How the flooding peer ended.
enum PeerEnd {
    /// It wrote until the end of the run (or was stopped).
    Ran,
    /// The server closed or reset the connection.
    Closed(String),
    /// It never connected.
    NoConnect(String),
}

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    let Some(spawner) = &ctx.spawner else {
        return Ok(outcome.skip("needs --spawn: it reads the server's memory from /proc"));
    };
    let mut server = spawner.start(None).await?;
    let rss_before = server.rss_bytes()?;
    let duration = ctx.time(Duration::from_secs(5), Duration::from_secs(2));

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let peer = {
        let (stop, written, blocked) = (stop.clone(), written.clone(), blocked.clone());
        let (addr, protocol) = (server.addr, ctx.protocol);
        tokio::task::spawn_blocking(move || {
            flood(addr, protocol, duration, &stop, &written, &blocked)
        })
    };

    let began = Instant::now();
    let mut peak = rss_before;
    let mut over_at = None;
    let mut exited = None;
    while !peer.is_finished() {
        if let Some(status) = server.exit_status() {
            exited = Some(status);
            break;
        }
        if let Ok(rss) = server.rss_bytes() {
            peak = peak.max(rss);
        }
        if peak.saturating_sub(rss_before) > MAX_GROWTH {
            // Decided; stop before it eats the machine.
            over_at = Some(began.elapsed());
            break;
        }
        tokio::time::sleep(SAMPLE).await;
    }
    stop.store(true, Relaxed);
    let end = peer.await?;
    if let Ok(rss) = server.rss_bytes() {
        peak = peak.max(rss);
    }
    let exited = exited.or_else(|| server.exit_status());

    let growth = peak.saturating_sub(rss_before);
    let sent = written.load(Relaxed);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
    let mut outcome = outcome
        .figure("peer wrote", mib(sent))
        .figure("server RSS growth", mib(growth))
        .figure(
            "server RSS",
            format!("{} → peak {}", mib(rss_before), mib(peak)),
        )
        .figure(
            "peer blocked",
            if blocked.load(Relaxed) {
                "yes (the server stopped reading)"
            } else {
                "no"
            },
        );
    match &end {
        PeerEnd::Ran => {}
        PeerEnd::Closed(e) => outcome = outcome.figure("server closed the peer", e),
        PeerEnd::NoConnect(e) => {
            return Ok(outcome.fail(format!("the peer could not connect: {e}")));
        }
    }
    Ok(if let Some(status) = exited {
        outcome.fail(format!(
            "the server exited: {status}, after {} from a peer that never reads",
            mib(sent)
        ))
    } else if let Some(at) = over_at {
        outcome.fail(format!(
            "the server's memory grew over {} in {:.0} ms under a peer that never reads (it buffers without bound)",
            mib(MAX_GROWTH),
            at.as_secs_f64() * 1e3
        ))
    } else {
        outcome.judge(
            growth <= MAX_GROWTH,
            format!(
                "RSS grew {} (limit {}) while a peer wrote {} without reading",
                mib(growth),
                mib(MAX_GROWTH),
                mib(sent)
            ),
        )
    })
}

/// The peer: a blocking socket writing `protocol`'s traffic for `duration` or until `stop`, never
/// reading. Each write gives up after [`WRITE_TIMEOUT`] and is retried, so a stalled peer still ends on
/// time; `blocked` records that writes stalled.
fn flood(
    addr: SocketAddr,
    protocol: Protocol,
    duration: Duration,
    stop: &AtomicBool,
    written: &AtomicU64,
    blocked: &AtomicBool,
) -> PeerEnd {
    let deadline = Instant::now() + duration;
    let mut stream = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return PeerEnd::NoConnect(e.to_string()),
    };
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        return PeerEnd::NoConnect(e.to_string());
    }
    let unit: &[u8] = match protocol {
        Protocol::Echo => b"lariat probe flood: a peer that writes and never reads.\n",
        Protocol::Http => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    // Whole units, so HTTP requests stay well formed across partial writes.
    let pattern = unit.repeat((64 * 1024) / unit.len());
    let mut at = 0;
    while !stop.load(Relaxed) && Instant::now() < deadline {
        match stream.write(&pattern[at..]) {
            Ok(0) => return PeerEnd::Closed("write returned 0".to_owned()),
            Ok(n) => {
                written.fetch_add(n as u64, Relaxed);
                at = (at + n) % pattern.len();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                blocked.store(true, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return PeerEnd::Closed(e.to_string()),
        }
    }
    PeerEnd::Ran
}
