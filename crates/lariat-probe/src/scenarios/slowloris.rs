//! Slowloris: many connections that connect and then say nothing (for HTTP, half a request line), held
//! open; fresh clients must still be served. A server that caps connections and never closes silent ones
//! is starved by them; one that closes them (an idle timeout) or has room for them is not.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::open;
use crate::protocol::{self, Protocol};
use crate::{Context, Outcome};

/// Fresh clients that must be served while the silent connections are held.
const FRESH: u64 = 20;
/// Each fresh client must be answered within this.
const FRESH_LIMIT: Duration = Duration::from_secs(5);
/// Tags of fresh clients start here, apart from the silent ones'.
const FRESH_TAG: u64 = 1 << 32;

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    let mut server = ctx.server().await?;
    let protocol = ctx.protocol;
    let wanted = ctx.scale(2000, 500);
    let first: &'static [u8] = match protocol {
        Protocol::Echo => b"",
        Protocol::Http => b"GET / HTTP/1.1\r\n",
    };
    let open_deadline = Instant::now() + ctx.time(Duration::from_secs(15), Duration::from_secs(6));
    let opened = open::open(server.addr, wanted, open_deadline, move |_| first.to_vec()).await;
    let held_summary = opened.summary(wanted);
    let silent = opened.streams;

    let round = fresh_round(protocol, server.addr, FRESH_TAG).await;
    let (closed, still_open) = probe_silent(silent);
    let outcome = outcome
        .figure("silent held", held_summary)
        .figure("fresh served", format!("{} of {FRESH}", round.served))
        .figure("fresh max latency", round.max_latency())
        .figure(
            "silent closed by the server",
            format!("{closed} of {}", closed + still_open),
        );
    if let Some(status) = server.exit_status() {
        return Ok(outcome.fail(format!("the server exited: {status}")));
    }
    if round.served == FRESH {
        return Ok(outcome.pass(format!(
            "all {FRESH} fresh clients served within {} s while {} silent connections were held",
            FRESH_LIMIT.as_secs(),
            closed + still_open
        )));
    }
    let why = format!(
        "{} of {FRESH} fresh clients not served within {} s (first: {}) with {} silent connections held",
        FRESH - round.served,
        FRESH_LIMIT.as_secs(),
        round.first_error.as_deref().unwrap_or("?"),
        closed + still_open
    );
    if still_open > 0 || closed == 0 {
        return Ok(outcome.fail(format!("{why}; {still_open} still open")));
    }
    // Every silent connection was closed by the server: fresh clients must now be served.
    let again = fresh_round(protocol, server.addr, FRESH_TAG + FRESH).await;
    let outcome = outcome.figure(
        "fresh served after the silent ones were closed",
        format!("{} of {FRESH} (max {})", again.served, again.max_latency()),
    );
    Ok(outcome.judge(
        again.served == FRESH,
        format!(
            "{why}; the server closed every silent connection, and then served {} of {FRESH}",
            again.served
        ),
    ))
}

/// What a round of fresh clients saw.
struct Round {
    served: u64,
    max: Option<Duration>,
    first_error: Option<String>,
}

impl Round {
    fn max_latency(&self) -> String {
        self.max
            .map_or("n/a".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
    }
}

/// [`FRESH`] clients at once, each connecting and exchanging one request within [`FRESH_LIMIT`].
async fn fresh_round(protocol: Protocol, addr: SocketAddr, first_tag: u64) -> Round {
    let clients: Vec<_> = (first_tag..first_tag + FRESH)
        .map(|tag| {
            tokio::spawn(async move {
                let began = Instant::now();
                match tokio::time::timeout(
                    FRESH_LIMIT,
                    protocol::one_connection(protocol, addr, tag),
                )
                .await
                {
                    Ok(Ok(())) => Ok(began.elapsed()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer in {} s", FRESH_LIMIT.as_secs())),
                }
            })
        })
        .collect();
    let mut round = Round {
        served: 0,
        max: None,
        first_error: None,
    };
    for c in clients {
        match c.await {
            Ok(Ok(took)) => {
                round.served += 1;
                round.max = round.max.max(Some(took));
            }
            Ok(Err(e)) => {
                round.first_error.get_or_insert(e);
            }
            Err(e) => {
                round.first_error.get_or_insert(e.to_string());
            }
        }
    }
    round
}

/// Reads each silent connection without waiting: (closed by the server, still open).
fn probe_silent(silent: Vec<(u64, TcpStream)>) -> (u64, u64) {
    let (mut closed, mut open) = (0, 0);
    for (_, stream) in silent {
        // Still in non-blocking mode: a read tells at once whether the server closed it.
        let Ok(mut stream) = stream.into_std() else {
            closed += 1;
            continue;
        };
        let mut buf = [0u8; 4096];
        let is_closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                // The server said something (e.g. 408) and may have closed after it: read on.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if is_closed {
            closed += 1;
        } else {
            open += 1;
        }
    }
    (closed, open)
}
