//! Client connections, spread over several loopback source addresses.
//!
//! One source address has ~28k ephemeral ports, and each closed client connection holds its port
//! in TIME_WAIT for 60 s, so a few seconds of connection churn would run out. Connections are
//! therefore bound to 127.0.0.2 … 127.0.0.11 (all of 127/8 is local on Linux) with
//! IP_BIND_ADDRESS_NO_PORT, which defers the port choice to connect(), where only the full
//! 4-tuple must be unique.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use tokio::net::{TcpSocket, TcpStream};

/// How many source addresses connections rotate over.
pub const SOURCE_ADDRESSES: u32 = 10;

/// The source address connection number `n` uses: 127.0.0.2 + n mod SOURCE_ADDRESSES.
pub fn source_ip(n: u64) -> Ipv4Addr {
    let offset = u8::try_from(n % u64::from(SOURCE_ADDRESSES)).expect("fewer than 256 sources");
    Ipv4Addr::new(127, 0, 0, 2 + offset)
}

/// Connects to `server` from [`source_ip`]`(n)`.
pub async fn connect(server: SocketAddr, n: u64) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    set_bind_address_no_port(&socket)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source_ip(n), 0)))?;
    socket.connect(server).await
}

fn set_bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
