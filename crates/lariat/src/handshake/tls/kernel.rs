//! Kernel TLS (kTLS): whether this kernel can take a session's record layer, and the fallback to user
//! space when it cannot.
//!
//! Asked for with [`TlsConfig::with_kernel_tls`](super::TlsConfig::with_kernel_tls) (which turns on
//! rustls' secret extraction). After each handshake the session would be handed to the kernel
//! (`TCP_ULP` "tls", then `TLS_TX`/`TLS_RX` with the traffic keys rustls extracts), so an idle
//! connection costs the process nothing but its socket. This build keeps every session in user space:
//! where the kernel lacks the `tls` module (`/proc/sys/net/ipv4/tcp_available_ulp`), and, until the
//! kernel record path is built (see `docs/performance.md`), everywhere. Each such connection is
//! counted ([`kernel_tls_fallbacks`]) and the first one logged once.
//!
//! The hand-off would plug into lariat's own record layer ([`records`](super::records)), which already
//! takes the session's keys, IVs and sequence numbers out of rustls after a TLS 1.3 handshake and keeps
//! rustls' key schedule for key updates: exactly what `TLS_TX`/`TLS_RX` take.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Once, OnceLock};

static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static LOGGED: Once = Once::new();

/// Whether this kernel offers the `tls` upper-layer protocol for TCP sockets (it is listed in
/// `/proc/sys/net/ipv4/tcp_available_ulp`). Read once per process.
pub fn kernel_tls_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .map(|list| lists_tls(&list))
            .unwrap_or(false)
    })
}

/// How many TLS connections asked for kernel TLS and stayed in user space, in this process.
pub fn kernel_tls_fallbacks() -> u64 {
    FALLBACKS.load(Relaxed)
}

fn lists_tls(ulps: &str) -> bool {
    ulps.split_whitespace().any(|ulp| ulp == "tls")
}

/// A connection that asked for kernel TLS stays in user space: counted, and the first one logged.
pub(super) fn fall_back() {
    FALLBACKS.fetch_add(1, Relaxed);
    LOGGED.call_once(|| {
        if kernel_tls_available() {
            tracing::info!(
                "kernel TLS asked for: this build keeps TLS sessions in user space; \
                 connections are served as usual"
            );
        } else {
            tracing::info!(
                "kernel TLS asked for, but this kernel has no `tls` module \
                 (net.ipv4.tcp_available_ulp); TLS stays in user space"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::lists_tls;

    #[test]
    fn reads_the_ulp_list() {
        assert!(lists_tls("espintcp mptcp tls\n"));
        assert!(lists_tls("tls"));
        assert!(!lists_tls("espintcp mptcp\n"));
        assert!(!lists_tls("tlsx mptcp"));
        assert!(!lists_tls(""));
    }
}
