//! A server's settings in a few typed groups, each with every default in its one [`Default`] impl:
//! [`Limits`] (how much the server holds and how its accept loops behave) and [`HandshakeSettings`]
//! (what runs between `accept` and the handler). The drain's settings are [`DrainOptions`](crate::DrainOptions),
//! given when a drain begins. [`ServerBuilder`](crate::ServerBuilder) takes them whole or one value at
//! a time, and checks them before it starts anything ([`SettingsError`]).

use std::time::Duration;

use bytes::Bytes;

use crate::accept::backoff::BackoffPolicy;
use crate::accept::OnExhaustion;
use crate::proxy::ProxyConfig;
use crate::tls::TlsConfig;

/// The default connection cap ([`Limits::max_connections`]). Bounded by default: an unbounded server is
/// one flood away from descriptor exhaustion, and a cap lets clients wait in the backlog instead.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The default handshake timeout ([`HandshakeSettings::timeout`]): long enough for a TLS handshake over
/// a slow mobile link, short enough that silent connections cannot hold the cap for long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default grace before a handshake gives way to queued clients when the cap is full
/// ([`HandshakeSettings::grace`]): enough for a TLS handshake across a continent, a tenth of the
/// default handshake timeout.
pub const DEFAULT_HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// How much a server holds at once and how its accept loops behave: the cap, the accept loops, what
/// happens when descriptors run out, and when a silent connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most connections held at once, across all listeners; `usize::MAX` for no cap; at least 1.
    /// Changeable later with [`ServerHandle::set_max_connections`](crate::ServerHandle::set_max_connections).
    pub max_connections: usize,
    /// How many accept loops take connections from the listeners, each on its own clone of every
    /// listener's descriptor; at least 1.
    pub acceptors: usize,
    /// What to do with queued clients at descriptor exhaustion.
    pub on_exhaustion: OnExhaustion,
    /// The delays between accept retries while short of resources; `initial` at most `max`.
    pub backoff: BackoffPolicy,
    /// Closes a connection when no byte has moved either way for this long; `None`: never. Not zero;
    /// above [`MAX_IDLE_TIMEOUT`] (24 days) it acts as 24 days.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    /// - `max_connections`: [`DEFAULT_MAX_CONNECTIONS`] (10 000);
    /// - `acceptors`: 1, which the benchmarks found as fast on two cores;
    /// - `on_exhaustion`: [`OnExhaustion::Wait`], so queued clients are never lost;
    /// - `backoff`: [`BackoffPolicy::default`] (5 ms doubling to 1 s);
    /// - `idle_timeout`: none.
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acceptors: 1,
            on_exhaustion: OnExhaustion::default(),
            backoff: BackoffPolicy::default(),
            idle_timeout: None,
        }
    }
}

/// What runs on every connection between `accept` and its handler, and how long it may take. A
/// listener with settings of its own ([`Listener::with_handshake`](crate::Listener::with_handshake))
/// replaces `proxy` and `tls` for its connections. The admission hook, a closure, is set apart
/// ([`ServerBuilder::admission_hook`](crate::ServerBuilder::admission_hook)).
#[derive(Debug, Clone)]
pub struct HandshakeSettings {
    /// How long a connection's set-up may take, from `accept` to its handler; not zero.
    pub timeout: Duration,
    /// How long a set-up may go on before it gives way to queued clients when the cap is full; at most
    /// `timeout`.
    pub grace: Duration,
    /// The PROXY header every connection starts with; `None` (or
    /// [`ProxyMode::Off`](crate::proxy::ProxyMode::Off)): none.
    pub proxy: Option<ProxyConfig>,
    /// TLS on every connection; `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// Bytes written to every admitted connection before its handler runs; `None` (or empty): none.
    pub greeting: Option<Bytes>,
}

impl Default for HandshakeSettings {
    /// - `timeout`: [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s);
    /// - `grace`: [`DEFAULT_HANDSHAKE_GRACE`] (1 s);
    /// - `proxy`, `tls`, `greeting`: none.
    fn default() -> Self {
        HandshakeSettings {
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            grace: DEFAULT_HANDSHAKE_GRACE,
            proxy: None,
            tls: None,
            greeting: None,
        }
    }
}

/// A setting that could never work, refused before the server starts anything. `serve`, `run` and
/// `acceptor` return it inside an [`io::Error`](std::io::Error) of kind `InvalidInput` (reach it with
/// `get_ref` and `downcast_ref`); [`ServerBuilder::validate`](crate::ServerBuilder::validate) returns it
/// as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A cap of 0 would never serve a connection.
    #[error("max_connections is 0: no connection could ever be served; use at least 1")]
    NoConnections,
    /// No accept loop would take any connection.
    #[error("acceptors is 0: at least one accept loop is needed")]
    NoAcceptors,
    /// An idle timeout of zero would close every connection at once.
    #[error("idle_timeout is zero: every connection would be closed at once; use None for no idle timeout")]
    ZeroIdleTimeout,
    /// The backoff would start above its own ceiling.
    #[error("backoff starts at {initial:?}, above its maximum {max:?}")]
    BackoffInverted {
        /// The first delay.
        initial: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// A zero handshake timeout would close every connection before its handler.
    #[error("handshake timeout is zero: every connection would be closed before its handler")]
    ZeroHandshakeTimeout,
    /// The grace is a part of the handshake timeout, so it cannot be longer.
    #[error("handshake grace {grace:?} is longer than the handshake timeout {timeout:?}")]
    GraceOverTimeout {
        /// The grace.
        grace: Duration,
        /// The handshake timeout.
        timeout: Duration,
    },
}

/// The longest [`Limits::idle_timeout`] the idle sweep keeps: 24 days; a longer one acts as 24 days.
/// The sweep packs each connection's quiet time in a word it shares with the byte count (it sits in
/// every connection's registry entry), which holds about 24.8 days.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 24 * 60 * 60);

impl Limits {
    /// Refuses values that could never work.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_connections == 0 {
            return Err(SettingsError::NoConnections);
        }
        if self.acceptors == 0 {
            return Err(SettingsError::NoAcceptors);
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(SettingsError::ZeroIdleTimeout);
        }
        if self.backoff.initial > self.backoff.max {
            return Err(SettingsError::BackoffInverted {
                initial: self.backoff.initial,
                max: self.backoff.max,
            });
        }
        Ok(())
    }
}

impl HandshakeSettings {
    /// Refuses values that could never work.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.timeout.is_zero() {
            return Err(SettingsError::ZeroHandshakeTimeout);
        }
        if self.grace > self.timeout {
            return Err(SettingsError::GraceOverTimeout {
                grace: self.grace,
                timeout: self.timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
        assert_eq!(HandshakeSettings::default().validate(), Ok(()));
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        let refused = |change: fn(&mut Limits)| {
            let mut limits = Limits::default();
            change(&mut limits);
            limits.validate().unwrap_err()
        };
        assert_eq!(
            refused(|l| l.max_connections = 0),
            SettingsError::NoConnections
        );
        assert_eq!(refused(|l| l.acceptors = 0), SettingsError::NoAcceptors);
        assert_eq!(
            refused(|l| l.idle_timeout = Some(Duration::ZERO)),
            SettingsError::ZeroIdleTimeout
        );
        assert_eq!(
            refused(|l| l.backoff.initial = l.backoff.max + Duration::from_millis(1)),
            SettingsError::BackoffInverted {
                initial: Duration::from_millis(1001),
                max: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn handshake_settings_that_cannot_work_are_refused() {
        let zero = HandshakeSettings {
            timeout: Duration::ZERO,
            grace: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(zero.validate(), Err(SettingsError::ZeroHandshakeTimeout));
        let over = HandshakeSettings {
            timeout: Duration::from_millis(500),
            ..Default::default()
        };
        assert_eq!(
            over.validate(),
            Err(SettingsError::GraceOverTimeout {
                grace: DEFAULT_HANDSHAKE_GRACE,
                timeout: Duration::from_millis(500)
            })
        );
        let equal = HandshakeSettings {
            timeout: Duration::from_millis(500),
            grace: Duration::from_millis(500),
            ..Default::default()
        };
        assert_eq!(equal.validate(), Ok(()));
    }
}
