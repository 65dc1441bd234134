//! What every nginx peer of the benchmark shares: whether nginx is installed, a free port, the
//! temporary-file paths of its configuration, starting it pinned in the foreground, and waiting until
//! it listens. Each measurement writes its own configuration and stops its own nginx.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Whether `nginx -v` runs and succeeds.
pub fn installed() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port free a moment ago on 127.0.0.1 (nginx binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The `http` block's temporary-file paths, all in `dir` (nginx's defaults are under /var).
pub fn temp_paths(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  \
         uwsgi_temp_path {dir};\n  scgi_temp_path {dir};"
    )
}

/// Starts `nginx -p dir -c conf` pinned to `cpu`, its output discarded (the configuration keeps it in
/// the foreground).
pub fn spawn(dir: &Path, conf: &Path, cpu: usize) -> anyhow::Result<Child> {
    Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")
}

/// Waits until every port in `ports` takes connections, at most 10 s.
pub fn wait_listening(ports: &[u16]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports
        .iter()
        .any(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err())
    {
        if Instant::now() > deadline {
            bail!("nginx did not listen within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
