//! [`Outbox`]: a connection's write half as a cheap, cloneable handle with a bounded queue, so many
//! tasks (a broadcast, a pub/sub fan-out, timers) can write frames to one connection without a lock
//! and without buffering without bound for a client that does not read.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;

use super::Framing;
use crate::connection::meta::ConnectionMeta;
use crate::connection::split::WriteHalf;

/// Stop gathering queued frames into one write past this many bytes.
const BATCH: usize = 64 * 1024;

/// A cloneable sender of frames to one connection, through a bounded queue and a writer task.
///
/// Each message is encoded by the sender (so a message that does not fit the framing is refused at
/// once, to the caller) and queued; one task per connection writes the queue out, gathering what is
/// queued into one write, and flushes when the queue is empty (TLS records go out then).
///
/// **Bounded.** At most `capacity` messages wait. When the client does not read, its socket buffer
/// fills, the writer waits, the queue fills, and then [`send`](Self::send) waits (back-pressure to the
/// producer) and [`try_send`](Self::try_send) reports [`SendError::Full`] (a broadcaster's cue to drop
/// the message, or [`close`](ConnectionMeta::close) a client that cannot keep up). Memory per
/// connection is bounded by `capacity` × the largest message.
///
/// The writer task holds the write half until every clone is dropped (then it flushes and shuts the
/// write direction down, so the peer reads EOF), a write fails, or the connection is closed by force
/// (then it ends at once, even while it waits for messages).
#[derive(Debug)]
pub struct Outbox<E = Framing> {
    tx: mpsc::Sender<Bytes>,
    encoder: E,
    meta: ConnectionMeta,
}

impl<E: Clone> Clone for Outbox<E> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            encoder: self.encoder.clone(),
            meta: self.meta.clone(),
        }
    }
}

/// Why an [`Outbox`] did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum SendError<E> {
    /// The queue is full: the client is not reading fast enough ([`Outbox::try_send`] only).
    #[error("the connection's queue is full")]
    Full,
    /// The writer task has ended (the connection closed, or a write failed).
    #[error("the connection's writer has ended")]
    Closed,
    /// The message does not fit the framing (for example a line holding a newline).
    #[error("the message cannot be encoded: {0}")]
    Encode(E),
}

impl<E> Outbox<E> {
    /// Starts the writer task for `write` (needs a tokio runtime) and returns the first handle.
    /// `encoder` frames each message (a [`Framing`], or any `tokio_util` [`Encoder`] that can be
    /// cloned: each send encodes with its own copy, so use encoders that keep no state between
    /// messages). `capacity`: the most messages queued (at least 1).
    pub fn new(write: WriteHalf, encoder: E, capacity: usize) -> Outbox<E> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let meta = write.meta().clone();
        tokio::spawn(write_out(rx, write));
        Outbox { tx, encoder, meta }
    }

    /// Queues `item`, waiting while the queue is full. Fails when the writer has ended or `item` cannot
    /// be encoded. Cancel-safe: dropped before it completes, nothing was queued.
    pub async fn send<T>(&self, item: T) -> Result<(), SendError<E::Error>>
    where
        E: Encoder<T> + Clone,
    {
        let permit = self.tx.reserve().await.map_err(|_| SendError::Closed)?;
        permit.send(self.encode(item)?);
        Ok(())
    }

    /// Queues `item` if there is room now; [`SendError::Full`] if not (nothing is encoded then).
    pub fn try_send<T>(&self, item: T) -> Result<(), SendError<E::Error>>
    where
        E: Encoder<T> + Clone,
    {
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => SendError::Full,
            mpsc::error::TrySendError::Closed(()) => SendError::Closed,
        })?;
        permit.send(self.encode(item)?);
        Ok(())
    }

    fn encode<T>(&self, item: T) -> Result<Bytes, SendError<E::Error>>
    where
        E: Encoder<T> + Clone,
    {
        let mut frame = BytesMut::new();
        self.encoder
            .clone()
            .encode(item, &mut frame)
            .map_err(SendError::Encode)?;
        Ok(frame.freeze())
    }

    /// Messages queued now and not yet written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// True once the writer task has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the writer task has ended.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// The connection's metadata (peer, age, bytes, the drain signal, `close`).
    pub fn meta(&self) -> &ConnectionMeta {
        &self.meta
    }
}

/// The writer task: writes what is queued (gathered into one write when several wait), flushes when
/// the queue is empty, shuts the write side down when every sender is gone.
async fn write_out(mut rx: mpsc::Receiver<Bytes>, mut write: WriteHalf) {
    let entry = write.meta().0.clone();
    let result: io::Result<()> = async {
        loop {
            let first = tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(frame) => frame,
                    None => return write.shutdown().await,
                },
                // Closed by force while waiting for messages: let the connection go now.
                _ = entry.closed_by_force() => return Ok(()),
            };
            match rx.try_recv() {
                Err(_) => write.write_all(&first).await?,
                Ok(second) => {
                    // Several wait: one write for as many as fit in a batch. The batch is dropped
                    // after the write, so an idle connection keeps no buffer.
                    let mut batch = BytesMut::with_capacity(BATCH.max(first.len() + second.len()));
                    batch.extend_from_slice(&first);
                    batch.extend_from_slice(&second);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(frame) => batch.extend_from_slice(&frame),
                            Err(_) => break,
                        }
                    }
                    write.write_all(&batch).await?;
                }
            }
            if rx.is_empty() {
                write.flush().await?;
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(conn = entry.id, error = %e, "outbox writer ended");
    }
}
