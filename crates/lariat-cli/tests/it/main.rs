//! The `lariat` command's integration tests, in one test binary: one link instead of one per file. Each
//! module below is one area and starts the real binary (`CARGO_BIN_EXE_lariat`); `common` holds the
//! helpers they share (the kill-on-drop process guard, signals, clients). No test here sets state of the
//! test process itself (limits, environment, signal handlers): that is done to the spawned server, so the
//! areas can share one process.

mod common;

mod activation;
mod admin;
mod config;
mod delivery;
mod drain;
mod fd_store;
mod handover;
mod haproxy;
mod http;
mod http_handover;
mod http_hello;
mod probe;
mod restart;
mod reuseport;
mod seeds;
mod serve;
mod tls;
mod workers;
