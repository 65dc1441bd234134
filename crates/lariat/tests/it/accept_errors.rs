//! Each errno class gets its behaviour, injected through a fault-injecting accept source: per-connection
//! errors are retried at once, shortage is backed off (once-per-episode warning, early wake when a
//! connection frees a descriptor, optional shedding), fatal errors end the loop without spinning.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{bind_loopback, echo, Faulty, LogCapture};
use lariat::{BackoffPolicy, OnExhaustion, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PER_CONNECTION: [i32; 13] = [
    libc::ECONNABORTED,
    libc::ECONNRESET,
    libc::EPERM,
    libc::EINTR,
    libc::ETIMEDOUT,
    libc::ENETDOWN,
    libc::EPROTO,
    libc::ENOPROTOOPT,
    libc::EHOSTDOWN,
    libc::ENONET,
    libc::EHOSTUNREACH,
    libc::EOPNOTSUPP,
    libc::ENETUNREACH,
];

/// A backoff far longer than any test may take: only an early wake (or shedding) can make progress.
const LONG_BACKOFF: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_secs(30),
    max: Duration::from_secs(30),
};

/// A constant 5 ms backoff, so that pauses are short but measurable.
const SHORT_BACKOFF: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_millis(5),
    max: Duration::from_millis(5),
};

/// An echo server whose accept(2) first fails with each of `codes`, in order.
fn serve_with_faults(
    codes: &[i32],
    policy: BackoffPolicy,
) -> (lariat::Server, std::net::SocketAddr) {
    let (listener, addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    faulty.script.lock().unwrap().extend(codes);
    let server = Server::builder()
        .backoff(policy)
        .serve([faulty], echo)
        .unwrap();
    (server, addr)
}

async fn round_trip(addr: std::net::SocketAddr) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn per_connection_errors_are_retried_at_once() {
    let (listener, addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    {
        let mut script = faulty.script.lock().unwrap();
        for _ in 0..10 {
            script.extend(PER_CONNECTION);
        }
    }
    let polls = faulty.polls.clone();
    let server = Server::builder().serve([faulty], echo).unwrap();
    let started = Instant::now();
    round_trip(addr).await;
    let stats = server.handle().stats();
    assert_eq!(stats.connection_errors, 130);
    assert_eq!(stats.shortage_errors, 0);
    assert_eq!(
        stats.paused,
        Duration::ZERO,
        "per-connection errors must not pause"
    );
    assert_eq!(stats.accepted, 1);
    assert!(polls.load(Ordering::Relaxed) >= 131);
    // 130 retries with no sleeping take far less than even one backoff step would.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn each_shortage_backs_off_warns_once_and_recovers() {
    for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
        let logs = LogCapture::default();
        let _guard = logs.install();
        let (listener, addr) = bind_loopback();
        let faulty = Faulty::new(listener);
        faulty.script.lock().unwrap().extend([code; 5]);
        let polls = faulty.polls.clone();
        let policy = BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        };
        let server = Server::builder()
            .backoff(policy)
            .serve([faulty], echo)
            .unwrap();
        round_trip(addr).await;
        let stats = server.handle().stats();
        assert_eq!(stats.shortage_errors, 5, "errno {code}");
        assert_eq!(stats.shortage_episodes, 1, "errno {code}");
        assert_eq!(stats.connection_errors, 0);
        // 10 + 20 + 40 + 40 + 40 ms of backoff (no connection closed to wake it early).
        assert!(
            stats.paused >= Duration::from_millis(150),
            "{:?}",
            stats.paused
        );
        // Never a busy loop: one poll per error plus a handful for the real accept.
        assert!(polls.load(Ordering::Relaxed) <= 5 + 4, "{polls:?}");
        // One warning for the episode, with its hint; the end of the episode is logged once too.
        assert!(
            common::eventually(Duration::from_secs(2), || logs.count("accept resumed") == 1).await,
            "{}",
            logs.text()
        );
        assert_eq!(logs.count("accept paused"), 1, "{}", logs.text());
        assert_eq!(logs.count("hint="), 1);
        server.handle().stop();
        server.wait().await.unwrap();
    }
}

#[tokio::test]
async fn emfile_hint_names_the_limit_and_how_to_raise_it() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let (listener, addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    faulty.script.lock().unwrap().push_back(libc::EMFILE);
    let _server = Server::builder().serve([faulty], echo).unwrap();
    round_trip(addr).await;
    let text = logs.text();
    assert!(text.contains("EMFILE"), "{text}");
    assert!(
        text.contains("ulimit -n") && text.contains("LimitNOFILE="),
        "{text}"
    );
    assert!(text.contains("RLIMIT_NOFILE soft"), "{text}");
}

#[tokio::test]
async fn a_closing_connection_wakes_the_backoff_early() {
    let (listener, addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    let script = faulty.script.clone();
    let policy = LONG_BACKOFF;
    let server = Server::builder()
        .backoff(policy)
        .serve([faulty], echo)
        .unwrap();

    // One live connection, which we will close.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    first.read_exact(&mut one).await.unwrap();

    // The next accept fails with EMFILE and the acceptor goes to sleep for 30 s.
    script.lock().unwrap().push_back(libc::EMFILE);
    let second = tokio::spawn(async move { round_trip(addr).await });
    assert!(
        common::eventually(Duration::from_secs(5), || server
            .handle()
            .stats()
            .shortage_errors
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished(), "served during the backoff?");

    // Closing our connection frees a descriptor: the acceptor must retry now, not in 30 s.
    let woken = Instant::now();
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("acceptor not woken by the closed connection")
        .unwrap();
    assert!(woken.elapsed() < Duration::from_secs(5));
    assert_eq!(server.handle().stats().accepted, 2);
}

#[tokio::test]
async fn fatal_errors_end_the_loop_cleanly_without_spinning() {
    for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
        let (listener, _addr) = bind_loopback();
        let faulty = Faulty::new(listener);
        faulty.script.lock().unwrap().push_back(code);
        let polls = faulty.polls.clone();
        let server = Server::builder().serve([faulty], echo).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), server.wait())
            .await
            .expect("loop did not end")
            .expect_err("a fatal error must be reported");
        assert_eq!(err.failures.len(), 1);
        assert_eq!(err.failures[0].source.raw_os_error(), Some(code));
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "no retry after a fatal error"
        );
    }
}

#[tokio::test]
async fn an_undocumented_errno_is_backed_off_not_fatal() {
    let (server, addr) = serve_with_faults(&[libc::EDOM; 3], SHORT_BACKOFF);
    round_trip(addr).await;
    let stats = server.handle().stats();
    assert_eq!(stats.shortage_errors, 3);
    assert!(stats.paused >= Duration::from_millis(15));
}

#[tokio::test]
async fn shed_mode_closes_queued_clients_cleanly_and_counts_them() {
    let (listener, addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    let script = faulty.script.clone();
    // Queue 5 clients first, each with a request the server never reads.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"request").await.unwrap();
        clients.push(c);
    }
    script.lock().unwrap().push_back(libc::EMFILE);
    let policy = LONG_BACKOFF;
    let server = Server::builder()
        .backoff(policy)
        .on_exhaustion(OnExhaustion::Shed)
        .serve([faulty], echo)
        .unwrap();
    for mut c in clients {
        let mut buf = Vec::new();
        // A clean close: EOF (FIN), not a reset, even though the request was never answered.
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("shed client not closed promptly")
            .expect("shed client saw an error instead of a clean close");
        assert_eq!(n, 0);
    }
    let stats = server.handle().stats();
    assert_eq!(stats.shed, 5);
    assert_eq!(stats.accepted, 0, "shed connections are not served");
}

#[tokio::test]
async fn a_connection_closing_right_at_the_failed_accept_is_not_missed() {
    let (listener, addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    let script = faulty.script.clone();
    let victim = faulty.drop_on_fault.clone();
    // The first connection is parked where the fault injector will drop it.
    let handler = {
        let victim = victim.clone();
        move |conn: lariat::Connection| {
            let victim = victim.clone();
            async move {
                if conn.id() == 1 {
                    *victim.lock().unwrap() = Some(conn);
                    Ok(())
                } else {
                    echo(conn).await
                }
            }
        }
    };
    let server = Server::builder()
        .backoff(LONG_BACKOFF)
        .serve([faulty], handler)
        .unwrap();
    let _first = TcpStream::connect(addr).await.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || victim.lock().unwrap().is_some()).await);
    // EMFILE, and in the same instant our connection closes: the freed descriptor must end the pause.
    script.lock().unwrap().push_back(libc::EMFILE);
    tokio::time::timeout(Duration::from_secs(5), round_trip(addr))
        .await
        .expect("the release during the failed accept was missed: slept the whole backoff");
    assert_eq!(server.handle().stats().shortage_errors, 1);
}

#[tokio::test]
async fn a_persistent_per_connection_errno_is_backed_off_not_spun_on() {
    // An LSM hook refusing every accept returns EPERM without consuming the queued connection.
    let (server, addr) = serve_with_faults(&[libc::EPERM; 1000], SHORT_BACKOFF);
    round_trip(addr).await;
    let stats = server.handle().stats();
    assert_eq!(stats.connection_errors, 1000);
    assert!(stats.shortage_errors >= 3, "{stats:?}");
    assert!(stats.paused >= Duration::from_millis(15), "{stats:?}");
}

#[tokio::test]
async fn cancelling_accept_does_not_shorten_the_backoff() {
    let (listener, _addr) = bind_loopback();
    let faulty = Faulty::new(listener);
    faulty.script.lock().unwrap().extend([libc::EMFILE; 100]);
    let polls = faulty.polls.clone();
    let policy = BackoffPolicy {
        initial: Duration::from_millis(300),
        max: Duration::from_millis(300),
    };
    let (mut acceptor, _handle) = Server::builder().backoff(policy).acceptor(faulty).unwrap();
    // A caller whose select! cancels accept() every 5 ms.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(250) {
        let _ = tokio::time::timeout(Duration::from_millis(5), acceptor.accept()).await;
    }
    assert_eq!(
        polls.load(Ordering::Relaxed),
        1,
        "each cancellation restarted the accept"
    );
}
