//! The servers under test: lariat's and hyper-hello started by the bench (stopped on drop), or nginx.

use std::path::PathBuf;

use crate::server::{Binaries, Kind, Server, SERVER_CPU};

use super::nginx::Nginx;
use super::{HttpServer, Protocol};

/// A server under test: one of the bench's own (stopped on drop), or nginx.
pub(super) enum Running {
    Bench(Server),
    Nginx(Nginx),
}

impl Running {
    pub(super) fn pid(&self) -> u32 {
        match self {
            Running::Bench(s) => s.pid(),
            Running::Nginx(n) => n.child.id(),
        }
    }

    pub(super) fn port(&self, protocol: Protocol) -> u16 {
        match (self, protocol) {
            (Running::Bench(s), _) => s.addr.port(),
            (Running::Nginx(n), Protocol::H1) => n.h1_port,
            (Running::Nginx(n), Protocol::H2) => n.h2_port,
        }
    }
}

pub(super) fn hyper_hello(binaries: &Binaries) -> PathBuf {
    binaries.path(Kind::Lariat).with_file_name("hyper-hello")
}

pub(super) fn lariat_args(extra: &[&str]) -> Vec<String> {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--max-connections",
        "20000",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

pub(super) fn start(binaries: &Binaries, server: HttpServer) -> anyhow::Result<Running> {
    let cpu = SERVER_CPU.to_string();
    Ok(match server {
        HttpServer::Lariat => Running::Bench(Server::spawn(
            binaries.path(Kind::Lariat),
            &lariat_args(&[]),
            &cpu,
        )?),
        HttpServer::Hyper => Running::Bench(Server::spawn(
            &hyper_hello(binaries),
            &["127.0.0.1:0".into()],
            &cpu,
        )?),
        HttpServer::Nginx => Running::Nginx(Nginx::start(SERVER_CPU)?),
    })
}
