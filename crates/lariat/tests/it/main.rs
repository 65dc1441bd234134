//! The library's integration tests, in one test binary: one link instead of one per file (each file was
//! a binary of its own, and linking them dominated the build of the tests on a small machine). Each
//! module below is one area; `common` holds the helpers they share.
//!
//! `tests/idle_memory.rs` stays a binary of its own: it installs a counting global allocator that counts
//! every allocation of its process, so other tests running beside it would change its figure.

mod common;

mod accept_errors;
mod acceptors;
mod admission;
mod axum;
mod axum_lifecycle;
mod cap;
mod chat;
mod delivery;
mod drain;
mod forced_close;
mod front;
mod grpc;
mod handoff;
mod http;
mod http_answers;
mod http_hibernate;
mod lifecycle;
mod lifecycle_signals;
mod outbox;
mod pressure;
mod proxy;
mod route;
mod tls;
mod tls_edges;
mod tls_options;
mod tls_sleep;
