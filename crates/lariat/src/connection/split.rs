//! A [`Connection`] split into a read half and a write half that can live in different tasks (a
//! message stream on one side, writers from elsewhere on the other).
//!
//! Both halves share the connection itself (one `Arc`), socket and guard together, so the socket is
//! closed and then the slot and registry entry are given back exactly when the last half is dropped,
//! and a forced close, which shuts the socket down, reaches both halves wherever they are. Both count
//! bytes and both hand out the connection's [`ConnectionMeta`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::meta::ConnectionMeta;
use crate::Connection;

/// The read half of a split [`Connection`].
#[derive(Debug)]
pub struct ReadHalf {
    conn: Arc<Connection>,
}

/// The write half of a split [`Connection`]. Dropping it shuts the write direction down (the peer reads
/// EOF; under TLS after a close_notify), as tokio's owned write halves do.
#[derive(Debug)]
pub struct WriteHalf {
    conn: Arc<Connection>,
    /// Set by `reunite`: the connection goes on whole, so the drop must not shut its write side.
    reunited: bool,
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        if !self.reunited {
            self.conn.stream().close_write();
        }
    }
}

/// [`ReadHalf::reunite`] was given a write half of another connection.
#[derive(Debug, thiserror::Error)]
#[error("the halves belong to different connections")]
pub struct ReuniteError(pub ReadHalf, pub WriteHalf);

impl Connection {
    /// Splits the connection into halves that can be used from different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let conn = Arc::new(self);
        (
            ReadHalf { conn: conn.clone() },
            WriteHalf {
                conn,
                reunited: false,
            },
        )
    }
}

impl ReadHalf {
    /// Joins the halves back into the connection.
    pub fn reunite(self, mut write: WriteHalf) -> Result<Connection, ReuniteError> {
        if !Arc::ptr_eq(&self.conn, &write.conn) {
            return Err(ReuniteError(self, write));
        }
        write.reunited = true;
        drop(write);
        match Arc::try_unwrap(self.conn) {
            Ok(conn) => Ok(conn),
            // The two halves hold the only references, and they are the same connection's.
            Err(_) => unreachable!("halves of one connection always reunite"),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.conn.id()
    }

    /// The connection's metadata (peer, TLS, age, bytes, the drain signal).
    pub fn meta(&self) -> &ConnectionMeta {
        self.conn.meta()
    }

    /// Polls for read readiness without a buffer (see [`Connection::readable`]).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.stream().poll_read_ready(cx)
    }

    /// Reads what is available now into the spare capacity of `buf`, or fails with
    /// [`io::ErrorKind::WouldBlock`]. Counted.
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        self.conn.try_read_buf(buf)
    }
}

impl WriteHalf {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.conn.id()
    }

    /// The connection's metadata (peer, TLS, age, bytes, the drain signal).
    pub fn meta(&self) -> &ConnectionMeta {
        self.conn.meta()
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.conn.poll_read_shared(cx, buf)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.poll_write_shared(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.conn.poll_write_shared(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.stream().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.stream().poll_flush_ref(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.stream().poll_shutdown_ref(cx)
    }
}
