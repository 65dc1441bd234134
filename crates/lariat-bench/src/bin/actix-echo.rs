//! The alternative: a TCP echo server on `actix-server`, written the way its own `tcp-echo`
//! example is, which is what a user who picks actix instead of lariat would write.
//!
//! - One worker (`.workers(1)`), to match the single runtime worker of the other two servers.
//!   actix-server also runs its accept loop on a thread of its own, which hands each accepted
//!   socket to the worker over a channel, and its `System` on the main thread: three threads in
//!   all, which the bench pins to the same CPU as the others.
//! - Everything else is actix-server's default: a backlog of 2048, at most 25 600 connections per
//!   worker (beyond that the accept thread pauses), accept errors logged and retried (`EMFILE`
//!   pauses accepting for 500 ms), SIGTERM a graceful stop (workers get 30 s to finish), SIGINT
//!   and SIGQUIT a fast one. It has no restart: SIGHUP's default action ends the process.
//! - Its log (actix-server logs through `tracing`, accept errors included) goes to stderr at level
//!   `info` (`RUST_LOG` overrides), as the upstream example sets it up.
//! - Each connection reads into a 4 KiB `BytesMut` and writes it back until EOF; the buffer is
//!   cleared after each write (the upstream example keeps appending to it, which would hold every
//!   byte a connection ever sent), and lives as long as the connection, like naive-echo's.
//!
//! The listener is made here, the way `ServerBuilder::bind` makes it (socket2, `SO_REUSEADDR`,
//! backlog 2048), and handed over with `ServerBuilder::listen`: `bind` keeps the bound address to
//! itself, and the bench binds port 0 and needs to learn the port.
//!
//! Usage: `actix-echo [ADDR]` (default `127.0.0.1:0`). Prints `listening on tcp://ADDR` once bound.

// The global allocator `lariat` ships with, so the comparison stays like for like.
#[path = "../../../lariat-cli/src/allocator.rs"]
mod allocator;

use std::io::{self, IsTerminal as _, Write};
use std::net::{SocketAddr, TcpListener};

use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::fn_service;
use bytes::BytesMut;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing_subscriber::EnvFilter;

/// actix-server's default backlog (`ServerBuilder::backlog`).
const BACKLOG: i32 = 2048;
/// The buffer each connection reads into.
const BUFFER: usize = 4096;

#[actix_rt::main]
async fn main() -> io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = listen(addr)?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on tcp://{}", listener.local_addr()?)?;
        out.flush()?;
    }

    Server::build()
        .listen("echo", listener, || {
            fn_service(|mut stream: TcpStream| async move {
                let mut buf = BytesMut::with_capacity(BUFFER);
                loop {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok::<_, io::Error>(());
                    }
                    stream.write_all(&buf).await?;
                    buf.clear();
                }
            })
        })?
        .workers(1)
        .run()
        .await
}

/// A listening socket as `ServerBuilder::bind` makes one.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
