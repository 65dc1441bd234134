//! nginx `return 200` as a peer: started in the foreground in a temporary directory, killed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// nginx in the foreground, one process (`master_process off`), configured in a temporary directory
/// it is given; killed on drop.
pub(super) struct Nginx {
    pub(super) child: std::process::Child,
    pub(super) h1_port: u16,
    pub(super) h2_port: u16,
    dir: PathBuf,
}

impl Nginx {
    pub(super) fn start(cpu: usize) -> anyhow::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("lariat-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (h1_port, h2_port) = (free_port()?, free_port()?);
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log stderr;\n\
             pid {dir}/nginx.pid;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  \
             fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
             keepalive_requests 1000000;\n  default_type text/plain;\n  server {{\n    \
             listen 127.0.0.1:{h1_port};\n    listen 127.0.0.1:{h2_port} http2;\n    \
             location / {{ return 200 \"Hello, world!\"; }}\n  }}\n}}\n",
            dir = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = std::process::Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Nginx {
            child,
            h1_port,
            h2_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", h2_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", h1_port)).is_err()
        {
            if Instant::now() > deadline {
                bail!("nginx did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
/// A port free a moment ago on 127.0.0.1 (nginx binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub(super) fn nginx_installed() -> bool {
    std::process::Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
