//! The built-in handlers `lariat serve` can run.

pub mod discard;
pub mod echo;
pub mod echo_messages;
pub mod http;
pub mod whoami;

/// The read buffer size while data flows. It is allocated when a connection becomes readable and freed
/// when it goes quiet, so an idle connection holds none.
pub const READ_BUFFER: usize = 64 * 1024;
