//! The built-in handlers `lariat serve` can run.

pub mod discard;
pub mod echo;
pub mod echo_messages;
pub mod http;
pub mod whoami;

/// At a restart, moves the connection to the successor at a safe point (the handlers call this between
/// two reads, with every byte read written back): the bytes already in the socket are read now and
/// carried as read-ahead when `echo_back` (the successor's echo writes them back first), so the
/// pause costs the peer nothing. Returns the connection when it stays here (no successor takes it, or
/// the hand-over failed; read-ahead bytes are then echoed here); `None` when it moved. Boxed by the
/// callers: an idle connection's future carries a pointer, not this one.
pub async fn move_on(
    conn: lariat::Connection,
    echo_back: bool,
) -> std::io::Result<Option<lariat::Connection>> {
    use tokio::io::AsyncWriteExt;
    let keep_read_ahead = echo_back;
    let mut read_ahead = Vec::new();
    if keep_read_ahead {
        while read_ahead.len() < lariat::handover::MAX_READ_AHEAD {
            let room = lariat::handover::MAX_READ_AHEAD - read_ahead.len();
            let mut chunk = Vec::with_capacity(room.min(READ_BUFFER));
            match conn.try_read_buf(&mut chunk) {
                // EOF after data: the successor sees it too (the socket is the same).
                Ok(0) => break,
                Ok(_) => read_ahead.extend_from_slice(&chunk),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    match conn.hand_over_with(b"", &read_ahead).await {
        Ok(()) => Ok(None),
        Err(refused) => {
            tracing::debug!(reason = %refused.reason, "connection stays; it drains here");
            let mut conn = refused.connection;
            conn.write_all(&read_ahead).await?;
            Ok(Some(conn))
        }
    }
}

/// Writes back the bytes a restart's predecessor read and did not echo (for `echo` and `whoami`).
pub async fn echo_carried(mut conn: lariat::Connection) -> std::io::Result<lariat::Connection> {
    use tokio::io::AsyncWriteExt;
    let carried = conn.take_read_ahead();
    conn.write_all(&carried).await?;
    Ok(conn)
}

/// The read buffer size while data flows. It is allocated when a connection becomes readable and freed
/// when it goes quiet, so an idle connection holds none.
pub const READ_BUFFER: usize = 64 * 1024;
