//! Several independent `lariat serve --reuseport` processes on one port, in a network namespace the test
//! creates (so it can turn `net.ipv4.tcp_migrate_req` on without touching the host): when one process is
//! killed with clients in its accept queue, Linux moves them to its sibling, which serves every one. With
//! the setting off, lariat warns at start. Skipped unless root with `ip` (`.ci/run` runs as root).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::{eventually, signal, Lariat};

const PATIENCE: Duration = Duration::from_secs(10);

/// A network namespace of our own, with loopback up; deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create(tag: &str) -> Option<NetNs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to create a network namespace");
            return None;
        }
        let name = format!("lariat-{tag}-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            eprintln!("skipped: `ip netns add` failed");
            return None;
        }
        let ns = NetNs { name };
        assert!(ok(&["-n", &ns.name, "link", "set", "lo", "up"]));
        Some(ns)
    }

    fn set_migrate_req(&self, on: bool) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw"])
            .arg(format!("net.ipv4.tcp_migrate_req={}", u8::from(on)))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Moves the calling thread (and the processes it starts from now on) into the namespace.
    fn enter(&self) {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on a namespace file we opened; affects only this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

#[test]
fn a_killed_processs_queue_moves_to_its_sibling_with_tcp_migrate_req() {
    let Some(ns) = NetNs::create("migrate") else {
        return;
    };
    ns.set_migrate_req(true);
    // Everything below runs in the namespace, on a thread of its own.
    std::thread::spawn(move || {
        ns.enter();
        let first = Lariat::start(&["--listen", "127.0.0.1:0", "--reuseport"]);
        let addr = first.tcp_addr();
        let spec = addr.to_string();
        let second = Lariat::start(&["--listen", &spec, "--reuseport"]);
        assert!(!first.stderr().contains("tcp_migrate_req is off"));
        // Neither accepts: the clients wait in the two queues, spread by the kernel's hash.
        signal(first.pid(), libc::SIGSTOP);
        signal(second.pid(), libc::SIGSTOP);
        let mut clients = Vec::new();
        for i in 0..64u32 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.write_all(format!("client {i:03}").as_bytes()).unwrap();
            clients.push(s);
        }
        signal(first.pid(), libc::SIGKILL);
        signal(second.pid(), libc::SIGCONT);
        for (i, s) in clients.iter_mut().enumerate() {
            let mut back = [0u8; 10];
            s.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("client {i} lost with its process: {e}"));
            assert_eq!(back, format!("client {i:03}").as_bytes());
        }
        drop(second);
        drop(ns);
    })
    .join()
    .unwrap();
}

#[test]
fn reuseport_warns_when_tcp_migrate_req_is_off() {
    let Some(ns) = NetNs::create("nomigrate") else {
        return;
    };
    ns.set_migrate_req(false);
    std::thread::spawn(move || {
        ns.enter();
        let server = Lariat::start(&["--listen", "127.0.0.1:0", "--reuseport"]);
        assert!(
            eventually(PATIENCE, || server
                .stderr()
                .contains("tcp_migrate_req is off")),
            "{}",
            server.stderr()
        );
        let addr: SocketAddr = server.tcp_addr();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"ok").unwrap();
        let mut back = [0u8; 2];
        s.read_exact(&mut back).unwrap();
        drop(server);
        drop(ns);
    })
    .join()
    .unwrap();
}
