//! `lariat::lifecycle` as a process sees it: the lifecycle example (`examples/lifecycle.rs`) runs in a
//! process of its own (this test binary, started again with `LIFECYCLE_CHILD` set) and is signalled.
//! SIGTERM drains and exits 0; a second SIGTERM forces and exits 3; the readiness turns unready during
//! the lame duck while new clients are still served; SIGHUP hands the socket to a successor, or rolls
//! back when the successor fails; SIGUSR1 runs the reload hook.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::process::Spawned;
use lariat::lifecycle::Instruction;

#[allow(dead_code)] // its `main` is the example's; the child runs `serve`
#[path = "../../examples/lifecycle.rs"]
mod example;

/// Generous bounds: the machine may be loaded; no test asserts a speed.
const PATIENCE: Duration = Duration::from_secs(20);

const CHILD_ENV: &str = "LIFECYCLE_CHILD";
const CHILD_TEST: &str = "lifecycle_signals::lifecycle_child_process";

/// The child: serves with the lifecycle as configured in `LIFECYCLE_CHILD` (`lame=MS drain=MS
/// [restart=PROGRAM] [worker]`) and exits with its code. Started by the tests below, never on its own.
#[test]
#[ignore = "run by the other tests in a process of its own"]
fn lifecycle_child_process() {
    let Ok(words) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut config = example::Config {
        addr: "127.0.0.1:0".into(),
        lame_duck: Duration::ZERO,
        drain_timeout: Duration::from_secs(30),
        restart_program: None,
        supervisor: None,
    };
    let millis = |v: &str| Duration::from_millis(v.parse().unwrap());
    for word in words.split_whitespace() {
        match word.split_once('=') {
            Some(("lame", v)) => config.lame_duck = millis(v),
            Some(("drain", v)) => config.drain_timeout = millis(v),
            Some(("restart", v)) => config.restart_program = Some(v.into()),
            // The test that started this process plays the supervisor.
            _ if word == "worker" => config.supervisor = Some(std::os::unix::process::parent_id()),
            _ => panic!("unknown child setting {word}"),
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let code = match runtime.block_on(example::serve(config)) {
        Ok(exit) => i32::from(exit.code()),
        Err(e) => {
            eprintln!("child: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The child process, in a process group of its own that is killed on drop (a successor too), so no
/// test leaves a process behind.
struct Child {
    proc: Spawned,
    addr: SocketAddr,
}

impl Child {
    fn start(config: &str) -> Child {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([CHILD_TEST, "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, config);
        let mut proc = Spawned::start(command);
        let Some(addr) = next_listening_line(&mut proc.stdout) else {
            let status = proc.child.wait().unwrap();
            panic!(
                "the child exited before listening ({status}): {}",
                proc.stderr()
            );
        };
        Child { proc, addr }
    }

    fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    fn stderr(&self) -> String {
        self.proc.stderr()
    }

    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.proc.exit_within(limit)
    }
}

/// The address on the next `listening on ADDR` line; `None` at the end of the output.
fn next_listening_line(stdout: &mut impl BufRead) -> Option<SocketAddr> {
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if let Some(addr) = line.trim_end().strip_prefix("listening on tcp://") {
            return Some(addr.parse().unwrap());
        }
    }
}

/// A client of the example: asks for the readiness on one connection.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// The server's readiness now, as it answers on this connection.
    fn ask(&mut self) -> String {
        self.reader.get_mut().write_all(b"?").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    /// Asks until the answer is `want`; panics after [`PATIENCE`].
    fn wait_for(&mut self, want: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.ask();
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {got:?}, never {want:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server closed this connection (EOF or reset) within [`PATIENCE`].
    fn closed_by_server(mut self) -> bool {
        let _ = self.reader.get_mut().write_all(b"?");
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

#[test]
fn sigterm_drains_a_live_connection_and_exits_zero() {
    let mut server = Child::start("drain=20000");
    let mut client = Client::connect(server.addr);
    assert_eq!(client.ask(), "serving");
    server.signal(libc::SIGTERM);
    // The live connection is still served while the drain waits for it; the process reports stopping.
    client.wait_for("stopping");
    assert!(
        server.exit_within(Duration::from_millis(300)).is_none(),
        "exited before its live connection ended"
    );
    drop(client);
    let status = server.exit_within(PATIENCE).expect("did not exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn a_second_sigterm_forces_the_drain_and_exits_three() {
    let mut server = Child::start("drain=60000");
    let mut client = Client::connect(server.addr);
    client.ask();
    server.signal(libc::SIGTERM);
    client.wait_for("stopping");
    server.signal(libc::SIGTERM);
    let status = server
        .exit_within(PATIENCE)
        .expect("a second SIGTERM did not end the drain");
    assert_eq!(status.code(), Some(3), "{}", server.stderr());
    assert!(client.closed_by_server());
    assert!(server.stderr().contains("closing every connection now"));
}

#[test]
fn the_lame_duck_reports_unready_while_new_clients_are_still_served() {
    let lame_duck = Duration::from_secs(4);
    let mut server = Child::start(&format!("lame={} drain=20000", lame_duck.as_millis()));
    let mut early = Client::connect(server.addr);
    assert_eq!(early.ask(), "serving");
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    early.wait_for("lame-duck");
    // Accepting still: a client that arrives during the lame duck is served, and sees it.
    let mut late = Client::connect(server.addr);
    assert_eq!(late.ask(), "lame-duck");
    early.wait_for("stopping");
    assert!(
        signalled.elapsed() >= lame_duck,
        "the lame duck ended after {:?}",
        signalled.elapsed()
    );
    drop((early, late));
    let status = server.exit_within(PATIENCE).expect("did not exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn sighup_hands_the_socket_to_a_successor_and_the_old_process_drains() {
    let mut server = Child::start("drain=20000");
    let mut old_client = Client::connect(server.addr);
    assert_eq!(old_client.ask(), "serving");
    server.signal(libc::SIGHUP);
    let successor_addr = next_listening_line(&mut server.proc.stdout).expect("no successor");
    assert_eq!(
        successor_addr, server.addr,
        "the successor bound a new socket"
    );
    // The old process drains its own connection; new clients go to the successor, which serves.
    old_client.wait_for("stopping");
    let mut new_client = Client::connect(server.addr);
    assert_eq!(new_client.ask(), "serving");
    drop(old_client);
    let status = server
        .exit_within(PATIENCE)
        .expect("the old process did not exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert_eq!(new_client.ask(), "serving");
}

#[test]
fn a_successor_that_fails_leaves_the_process_serving() {
    let mut server = Child::start("drain=20000 restart=/bin/false");
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    while !server.stderr().contains("restart failed; still serving") {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(Client::connect(server.addr).ask(), "serving");
    server.signal(libc::SIGTERM);
    let status = server.exit_within(PATIENCE).expect("did not exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[test]
fn sigusr1_runs_the_reload_hook_and_sigusr2_changes_nothing() {
    let mut server = Child::start("drain=20000");
    let mut client = Client::connect(server.addr);
    server.signal(libc::SIGUSR1);
    server.signal(libc::SIGUSR2);
    let deadline = Instant::now() + PATIENCE;
    while !server
        .stderr()
        .contains("reload hook: configuration reloaded")
    {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.ask(), "serving");
    assert!(server.exit_within(Duration::from_millis(200)).is_none());
    drop(client);
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit_within(PATIENCE).unwrap().code(), Some(0));
}

#[test]
fn after_a_hand_over_the_first_sigterm_lets_the_drain_go_on_and_a_second_forces() {
    let mut server = Child::start("drain=60000");
    let mut old_client = Client::connect(server.addr);
    old_client.ask();
    server.signal(libc::SIGHUP);
    next_listening_line(&mut server.proc.stdout).expect("no successor");
    old_client.wait_for("stopping");
    // `systemctl stop` reaches every process of the unit: the old one is draining already, and goes on.
    server.signal(libc::SIGTERM);
    assert!(
        server.exit_within(Duration::from_millis(500)).is_none(),
        "the first SIGTERM after a hand-over ended the drain: {}",
        server.stderr()
    );
    assert_eq!(old_client.ask(), "stopping");
    server.signal(libc::SIGTERM);
    let status = server
        .exit_within(PATIENCE)
        .expect("a second SIGTERM did not force");
    assert_eq!(status.code(), Some(3), "{}", server.stderr());
}

#[test]
fn a_worker_ignores_the_operators_signals_and_obeys_its_supervisors_instructions() {
    let mut server = Child::start("drain=60000 worker");
    let mut client = Client::connect(server.addr);
    assert_eq!(client.ask(), "serving");
    // Signals meant for the whole group: the supervisor (here, this test) acts on them, the worker not.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
        server.signal(sig);
    }
    assert!(server.exit_within(Duration::from_millis(300)).is_none());
    assert_eq!(client.ask(), "serving");
    Instruction::Drain.send(server.proc.pid());
    client.wait_for("stopping");
    server.signal(libc::SIGTERM);
    assert!(
        server.exit_within(Duration::from_millis(300)).is_none(),
        "a group SIGTERM forced a worker's drain"
    );
    Instruction::Force.send(server.proc.pid());
    let status = server
        .exit_within(PATIENCE)
        .expect("the force instruction did not end the drain");
    assert_eq!(status.code(), Some(3), "{}", server.stderr());
}
