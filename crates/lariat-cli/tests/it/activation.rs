//! Socket activation: `lariat serve` adopts listening sockets passed with `LISTEN_FDS` (issue 4).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::Lariat;

fn echo_once(stream: &mut (impl Read + Write), msg: &[u8]) {
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// `lariat serve ARGS` with `fds` as descriptors 3, 4, … and `LISTEN_FDS`, `LISTEN_FDNAMES` set, and
/// `LISTEN_PID` set to the pid lariat will have (a shell sets it to its own pid, then execs lariat),
/// or to `listen_pid` when given.
fn activated(fds: &[i32], names: &str, listen_pid: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("/bin/sh");
    let pid = listen_pid.map_or("$$".to_owned(), str::to_owned);
    cmd.arg("-c")
        .arg(format!("LISTEN_PID={pid} exec \"$0\" serve \"$@\""))
        .arg(env!("CARGO_BIN_EXE_lariat"))
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .env_remove("LARIAT_HANDOFF");
    let fds = fds.to_vec();
    // SAFETY: dup2 is async-signal-safe; the sources are open in the parent, numbered above the targets.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// A descriptor number above 3..3+n, so dup2 into 3.. cannot clobber another source.
fn high(fd: &impl AsRawFd) -> i32 {
    // SAFETY: F_DUPFD on an open descriptor; the duplicate lives as long as the test process.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) }
}

#[test]
fn adopts_sockets_by_name_and_all_of_them_without_listen() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let path = std::env::temp_dir().join(format!("lariat-activation-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let unix = UnixListener::bind(&path).unwrap();
    let fds = [high(&tcp), high(&unix)];

    // By name: only `web` is served; the other passed socket is closed with a warning.
    {
        let cmd = activated(&fds, "web:admin", None, &["--listen", "systemd:web"]);
        let server = Lariat::from_command(cmd, 1);
        assert_eq!(server.listening, vec![format!("tcp://{tcp_addr}")]);
        let mut c = TcpStream::connect(tcp_addr).unwrap();
        echo_once(&mut c, b"by name");
        // The log is read from a pipe by another thread: give it a moment.
        assert!(
            common::eventually(Duration::from_secs(5), || server
                .stderr()
                .contains("matches no --listen")),
            "{}",
            server.stderr()
        );
        // systemd keeps its own descriptor: leaving, lariat neither filters nor unlinks anything.
    }
    // No --listen: every passed socket.
    {
        let cmd = activated(&fds, "web:admin", None, &[]);
        let server = Lariat::from_command(cmd, 2);
        assert_eq!(
            server.listening,
            vec![
                format!("tcp://{tcp_addr}"),
                format!("unix:{}", path.display())
            ]
        );
        echo_once(&mut TcpStream::connect(tcp_addr).unwrap(), b"tcp");
        echo_once(&mut UnixStream::connect(&path).unwrap(), b"unix");
        assert!(
            common::eventually(Duration::from_secs(5), || server
                .stderr()
                .contains("supervised=true")),
            "{}",
            server.stderr()
        );
    }
    // The supervisor's socket outlived both servers, queue and path included.
    assert!(path.exists());
    let _queued = TcpStream::connect(tcp_addr).unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn variables_for_another_pid_are_ignored() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let fds = [high(&tcp)];
    let cmd = activated(&fds, "web", Some("1"), &["--listen", "127.0.0.1:0"]);
    let server = Lariat::from_command(cmd, 1);
    let addr: SocketAddr = server.tcp_addr();
    assert_ne!(
        addr,
        tcp.local_addr().unwrap(),
        "adopted a socket passed to another pid"
    );
    assert!(!server.stderr().contains("adopted"));
}

#[test]
fn a_missing_systemd_name_fails_clearly() {
    let out = activated(&[], "", None, &["--listen", "systemd:web"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("systemd:web"), "{err}");
}

#[test]
fn works_under_systemd_socket_activate() {
    let Ok(tool) = which("systemd-socket-activate") else {
        eprintln!("skipped: systemd-socket-activate is not installed (.ci/run installs it)");
        return;
    };
    // Reserve a free port, then let systemd-socket-activate bind it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(tool);
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=web")
        .arg(env!("CARGO_BIN_EXE_lariat"))
        .args(["serve", "--listen", "systemd:web"]);
    // It starts lariat on the first connection, which waits in the socket's queue meanwhile: the
    // client that triggered the start is served, not lost.
    let first = std::thread::spawn(move || {
        let mut c = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        echo_once(&mut c, b"activated");
    });
    let server = Lariat::from_command(cmd, 1);
    assert_eq!(server.listening, vec![format!("tcp://127.0.0.1:{port}")]);
    first.join().unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_once(&mut c, b"again");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

#[test]
fn a_restart_keeps_systemd_sockets_supervised() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let fds = [high(&tcp)];
    let cmd = activated(&fds, "web", None, &["--listen", "systemd:web"]);
    let mut server = Lariat::from_command(cmd, 1);
    server.signal(libc::SIGHUP);
    assert!(common::eventually(Duration::from_secs(10), || server
        .stderr()
        .contains("successor_pid=")));
    // The successor, too, took the socket as systemd's.
    let log = server.stderr();
    assert_eq!(log.matches("supervised=true").count(), 2, "{log}");
    let successor: u32 = log
        .split("successor_pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap();
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    echo_once(&mut TcpStream::connect(addr).unwrap(), b"successor");
    // SAFETY: kill(2) on the successor this test caused.
    unsafe {
        libc::kill(successor as libc::pid_t, libc::SIGTERM);
    }
    assert!(common::eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{successor}/stat"))
            .map(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
            .unwrap_or(true)
    }));
    // Both are gone, and systemd's socket still admits clients: no drain put a filter on it.
    let queued = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        queued.is_ok(),
        "the supervisor's socket was left refusing clients"
    );
}
