//! A line-based chat room: every line a client sends goes to every other client.
//!
//! `cargo run -p lariat --example chat [ADDR]` (default `127.0.0.1:7878`), then `nc 127.0.0.1 7878` from
//! a few terminals. It shows:
//! - lines in, through push delivery ([`Messages`]), with the drain as an event in the same loop;
//! - lines out, through an [`Outbox`] per client: a bounded queue that many tasks can send to;
//! - a client that does not read cannot make the server buffer without bound: when its queue is full,
//!   the sender waits for it (so a fast sender is slowed to what the room reads, through TCP), and a
//!   client whose queue stays full for [`SLOW_CLIENT_GRACE`] is disconnected (`ConnectionMeta::close`);
//! - SIGTERM (or Ctrl-C): every client gets a goodbye line, the server drains and exits 0.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lariat::delivery::{Event, Framing, Messages, Mode, Outbox, SendError};
use lariat::{Connection, DrainOptions, Listener, Server};

/// The longest line a client may send (longer closes its connection).
const MAX_LINE: usize = 4096;
/// Lines queued for a client before it counts as not keeping up.
const QUEUE: usize = 64;
/// How long a client's queue may stay full before it is disconnected.
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(2);

/// Who is in the room, by connection id. A plain mutex: it is never held across an `.await`.
#[derive(Clone, Default)]
struct Room(Arc<Mutex<HashMap<u64, Outbox>>>);

impl Room {
    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Outbox>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins `outbox`'s client; it leaves when the returned guard drops (even if its task is aborted).
    fn join(&self, outbox: Outbox) -> Member {
        let id = outbox.meta().id();
        self.members().insert(id, outbox);
        Member {
            room: self.clone(),
            id,
        }
    }

    /// Sends `line` from `from` to everyone else. When a client's queue is full, the sender waits for
    /// it (so the sender stops reading and TCP slows it down), at most [`SLOW_CLIENT_GRACE`]; then the
    /// client is disconnected: dropping lines would silently lose the conversation, and waiting longer
    /// would let one client that does not read stall the room.
    async fn broadcast(&self, from: u64, line: &[u8]) {
        let text = [format!("{from}: ").as_bytes(), line].concat();
        // Handles cloned (one reference count each) so the lock is not held across the waits.
        let others: Vec<Outbox> = self
            .members()
            .iter()
            .filter(|(id, _)| **id != from)
            .map(|(_, outbox)| outbox.clone())
            .collect();
        for outbox in others {
            let sent = match outbox.try_send(&text[..]) {
                Err(SendError::Full) => {
                    match tokio::time::timeout(SLOW_CLIENT_GRACE, outbox.send(&text[..])).await {
                        Ok(sent) => sent,
                        Err(_) => Err(SendError::Full),
                    }
                }
                sent => sent,
            };
            if sent.is_err() {
                outbox.meta().close();
                self.members().remove(&outbox.meta().id());
            }
        }
    }
}

/// A client's place in the room.
struct Member {
    room: Room,
    id: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.room.members().remove(&self.id);
    }
}

async fn client(conn: Connection, room: Room) -> Result<(), lariat::delivery::FrameError> {
    let lines = Framing::Lines { max: MAX_LINE };
    let (messages, write) = Messages::new(conn, lines, Mode::Push);
    let mut messages = messages.with_drain_event();
    let outbox = Outbox::new(write, Framing::lines(), QUEUE);
    let _member = room.join(outbox.clone());
    while let Some(event) = messages.next().await {
        match event {
            Event::Data(line) => room.broadcast(outbox.meta().id(), &line).await,
            Event::Draining => {
                // Queued after what the client is owed; the writer flushes it before it closes.
                let _ = outbox.send("server: goodbye").await;
                break;
            }
            Event::Closed => break,
            Event::Error(e) => return Err(e),
            Event::Passive => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".to_owned());
    let listener = Listener::bind(&addr.parse()?)?;
    let room = Room::default();
    let server = Server::builder()
        .max_connections(1_000)
        .serve([listener], move |conn: Connection| {
            client(conn, room.clone())
        })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.local_addrs()[0])?;
    out.flush()?;
    drop(out);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let handle = server.handle().clone();
    let report = handle
        .drain(DrainOptions {
            timeout: Duration::from_secs(10),
            ..DrainOptions::default()
        })
        .await;
    eprintln!("{report:?}");
    server.wait().await?;
    if !report.is_complete() {
        std::process::exit(3);
    }
    Ok(())
}
