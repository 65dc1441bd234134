//! nginx `return 200` as a peer: started in the foreground in a temporary directory, killed on drop.

use std::path::PathBuf;

use anyhow::Context;

use crate::nginx::{free_port, spawn, temp_paths, wait_listening};

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
             http {{\n  access_log off;\n  {temp_paths}\n  \
             keepalive_requests 1000000;\n  default_type text/plain;\n  server {{\n    \
             listen 127.0.0.1:{h1_port};\n    listen 127.0.0.1:{h2_port} http2;\n    \
             location / {{ return 200 \"Hello, world!\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            temp_paths = temp_paths(&dir),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = spawn(&dir, &conf_path, cpu)?;
        let nginx = Nginx {
            child,
            h1_port,
            h2_port,
            dir,
        };
        wait_listening(&[h1_port, h2_port])?;
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
