//! The builder keeps each settings group's defaults, and refuses what cannot work before starting.

use super::*;
use crate::Listener;

#[test]
fn a_default_builder_holds_each_groups_defaults() {
    let builder = ServerBuilder::default();
    assert_eq!(builder.limits, Limits::default());
    let defaults = HandshakeSettings::default();
    assert_eq!(builder.handshake.timeout, defaults.timeout);
    assert_eq!(builder.handshake.grace, defaults.grace);
    assert!(builder.handshake.proxy.is_none() && builder.handshake.tls.is_none());
    assert!(builder.handshake.greeting.is_none() && builder.hook.is_none());
    assert!(builder.base_handshake().is_empty());
    assert_eq!(builder.validate(), Ok(()));
}

#[test]
fn the_one_value_setters_write_into_the_groups() {
    let backoff = BackoffPolicy {
        initial: Duration::from_millis(2),
        max: Duration::from_millis(40),
    };
    let builder = ServerBuilder::default()
        .max_connections(7)
        .acceptors(3)
        .on_exhaustion(OnExhaustion::Shed)
        .backoff(backoff)
        .idle_timeout(Some(Duration::from_secs(9)))
        .handshake_timeout(Duration::from_secs(4))
        .handshake_grace(Duration::from_secs(2))
        .greeting(Some(Bytes::from_static(b"hi")));
    assert_eq!(
        builder.limits,
        Limits {
            max_connections: 7,
            acceptors: 3,
            on_exhaustion: OnExhaustion::Shed,
            backoff,
            idle_timeout: Some(Duration::from_secs(9)),
        }
    );
    assert_eq!(builder.handshake.timeout, Duration::from_secs(4));
    assert_eq!(builder.handshake.grace, Duration::from_secs(2));
    assert_eq!(builder.handshake.greeting.as_deref(), Some(&b"hi"[..]));
}

#[test]
fn a_shorter_handshake_timeout_lowers_the_grace_with_it() {
    let builder = ServerBuilder::default().handshake_timeout(Duration::from_millis(300));
    assert_eq!(builder.handshake.grace, Duration::from_millis(300));
    assert_eq!(builder.validate(), Ok(()));
    // A grace given after the timeout is the caller's word, and checked.
    let builder = builder.handshake_grace(Duration::from_secs(1));
    assert_eq!(
        builder.validate(),
        Err(SettingsError::GraceOverTimeout {
            grace: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
        })
    );
}

/// `run` (and so `serve`) and `acceptor` refuse before starting anything.
#[tokio::test]
async fn starting_with_settings_that_cannot_work_is_refused() {
    let refusals = [
        (
            ServerBuilder::default().max_connections(0),
            SettingsError::NoConnections,
        ),
        (
            ServerBuilder::default().acceptors(0),
            SettingsError::NoAcceptors,
        ),
        (
            ServerBuilder::default().handshake(HandshakeSettings {
                timeout: Duration::ZERO,
                grace: Duration::ZERO,
                ..Default::default()
            }),
            SettingsError::ZeroHandshakeTimeout,
        ),
        (
            ServerBuilder::default().backoff(BackoffPolicy {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(1),
            }),
            SettingsError::BackoffInverted {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(1),
            },
        ),
    ];
    let refused_with = |e: io::Error| {
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<SettingsError>())
            .cloned()
    };
    for (builder, why) in refusals {
        let Err(e) = builder
            .clone()
            .run(Vec::<Listener>::new(), |_conn: Connection| async {})
        else {
            panic!("run started with {why}");
        };
        assert_eq!(refused_with(e), Some(why.clone()));
        let endpoint = "127.0.0.1:0".parse().expect("a loopback endpoint");
        let listener = Listener::bind(&endpoint).expect("binding loopback");
        let Err(e) = builder.acceptor(listener) else {
            panic!("acceptor made with {why}");
        };
        assert_eq!(refused_with(e), Some(why));
    }
}
