//! The network side: endpoints as text, binding, listening sockets (bound, adopted from systemd or a
//! predecessor), and the stream a connection reads and writes.

pub mod activation;
pub(crate) mod bind;
pub(crate) mod endpoint;
pub(crate) mod listener;
pub(crate) mod parked;
pub(crate) mod peek;
pub(crate) mod source;
pub(crate) mod stream;
