//! The servers under test: `lariat serve` with TLS, or nginx with OpenSSL; each stopped on drop.

use std::path::Path;

use anyhow::Context;

use crate::nginx;
use crate::server::{Binaries, Kind, Server, SERVER_CPU};

use super::certs::Pair;
use super::TlsServer;

/// nginx with TLS, in the foreground, one process; killed on drop.
pub(super) struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, pair: &Pair) -> anyhow::Result<Nginx> {
        let port = nginx::free_port()?;
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log stderr crit;\n\
             worker_rlimit_nofile 20000;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 16000; }}\n\
             http {{\n  access_log off;\n  {temp_paths}\n  \
             keepalive_requests 1000000;\n  keepalive_timeout 600s;\n  default_type text/plain;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    \
             ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
             location / {{ return 200 \"Hello, world!\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            temp_paths = nginx::temp_paths(dir),
            cert = pair.cert.display(),
            key = pair.key.display(),
        );
        let conf_path = dir.join("nginx-tls.conf");
        std::fs::write(&conf_path, conf).context("writing nginx-tls.conf")?;
        let child = nginx::spawn(dir, &conf_path, SERVER_CPU)?;
        let nginx = Nginx { child, port };
        nginx::wait_listening(&[port])?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server under test, stopped on drop.
pub(super) enum Running {
    Lariat(Server),
    Nginx(Nginx),
}

impl Running {
    pub(super) fn start(
        binaries: &Binaries,
        dir: &Path,
        server: TlsServer,
        pair: &Pair,
    ) -> anyhow::Result<Self> {
        Ok(match server {
            TlsServer::Lariat | TlsServer::LariatEcho => {
                let handler = if server == TlsServer::Lariat {
                    "http-hello"
                } else {
                    "echo"
                };
                let args: Vec<String> = [
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--handler",
                    handler,
                    "--max-connections",
                    "20000",
                    "--tls-cert",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([pair.cert.display().to_string(), "--tls-key".into()])
                .chain([pair.key.display().to_string()])
                // As nginx does on a TLS listener: ALPN `http/1.1`, so the client's ALPN lands on
                // HTTP/1 (whose idle connections hibernate) rather than on the HTTP/1-or-2 sniffer.
                .chain(
                    (server == TlsServer::Lariat)
                        .then(|| ["--alpn".to_string(), "http/1.1".to_string()])
                        .into_iter()
                        .flatten(),
                )
                .collect();
                Running::Lariat(Server::spawn(
                    binaries.path(Kind::Lariat),
                    &args,
                    &SERVER_CPU.to_string(),
                )?)
            }
            TlsServer::Nginx => Running::Nginx(Nginx::start(dir, pair)?),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        match self {
            Running::Lariat(s) => s.pid(),
            Running::Nginx(n) => n.child.id(),
        }
    }

    pub(super) fn addr(&self) -> std::net::SocketAddr {
        match self {
            Running::Lariat(s) => s.addr,
            Running::Nginx(n) => std::net::SocketAddr::from(([127, 0, 0, 1], n.port)),
        }
    }
}
