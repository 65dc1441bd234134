//! What a run measures: the measurements (`--only`), what each round of one runs against which
//! server, and the settings (`--quick` or not) they run with.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::scale::cores::Layout;
use crate::server::{self, Delivery, Kind};
use crate::{client, handover, host, http, metrics, tls, Args, CLIENT_CPU};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measurement {
    /// Short connections: connect, 64-byte echo, close.
    Churn,
    /// Resident memory per open, idle connection.
    Idle,
    /// Bulk echo over one connection.
    Throughput,
    /// Repeated SIGHUP restarts of lariat under connection churn.
    Restart,
    /// lariat's `--delivery` modes against its plain echo: bulk echo throughput, idle memory.
    Delivery,
    /// `lariat probe --short` verdicts for each server (started by the probe, not pinned).
    Probe,
    /// lariat under churn with 1 accept loop, --acceptors 2, --workers 2 and 2 × --reuseport,
    /// pinned and unpinned, then across cores: N accept loops, runtime threads or processes on N
    /// of the server's half of the CPUs, client threads on the other half (not in the default run).
    Scale,
    /// lariat with --metrics, scraped every 100 ms, against lariat without it: idle memory, churn
    /// rate and server CPU per connection.
    Metrics,
    /// `lariat serve --handler http-hello` against the same hyper service on hyper-util and nginx:
    /// HTTP/1.1 (wrk) and HTTP/2 (h2load) requests/s and server CPU per request; failed requests
    /// per restart (not in the default run).
    Http,
    /// `lariat probe --short` against peers (lariat, the naive tokio loop, actix-server, axum,
    /// hyper-util, Go net/http, nginx, HAProxy), each with its own graceful stop and reload signals; a
    /// Markdown table on stdout (not in the default run).
    Zoo,
    /// Resident memory per idle HTTP/1.1 keep-alive connection (one request each) of `lariat serve
    /// --handler http-hello`, with and without hibernation, against nginx `return 200` (not in the
    /// default run).
    IdleHttp,
    /// Connection hand-over at restart: the time to move 1,000 and 10,000 idle echo connections to
    /// the successor (and none lost), and restarts under churn with 5,000 live sessions, against
    /// `--hand-over-window 0` (drain) in the same run (not in the default run).
    Handover,
    /// TLS full handshakes per second and server CPU per handshake (no resumption), lariat against
    /// nginx with OpenSSL, ECDSA P-256 and RSA-2048 certificates (not in the default run).
    TlsHandshake,
    /// Resident memory per idle TLS keep-alive connection (3,000), lariat against nginx, both
    /// certificates (not in the default run).
    TlsIdle,
}

/// The `--delivery N` count measured.
const DELIVERY_COUNT: u32 = 100;

impl Measurement {
    pub const ALL: [Measurement; 7] = [
        Measurement::Churn,
        Measurement::Idle,
        Measurement::Throughput,
        Measurement::Restart,
        Measurement::Delivery,
        Measurement::Metrics,
        Measurement::Probe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measurement::Churn => "churn",
            Measurement::Idle => "idle",
            Measurement::Throughput => "throughput",
            Measurement::Restart => "restart",
            Measurement::Delivery => "delivery",
            Measurement::Probe => "probe",
            Measurement::Scale => "scale",
            Measurement::Metrics => "metrics",
            Measurement::Http => "http",
            Measurement::Zoo => "zoo",
            Measurement::Handover => "handover",
            Measurement::IdleHttp => "idle-http",
            Measurement::TlsHandshake => "tls-handshake",
            Measurement::TlsIdle => "tls-idle",
        }
    }

    /// The TLS measurement's part, for the TLS measurements.
    pub fn tls_part(self) -> Option<tls::Part> {
        match self {
            Measurement::TlsHandshake => Some(tls::Part::Handshake),
            Measurement::TlsIdle => Some(tls::Part::Idle),
            _ => None,
        }
    }

    /// What one round runs, in order: which measurement against which server. Only lariat can
    /// restart; the delivery measurement runs the throughput and idle measurements against lariat
    /// with and without `--delivery`. The probe starts its servers itself (see [`probe`]).
    pub fn plan(self) -> Vec<(Measurement, Kind)> {
        match self {
            Measurement::Restart => vec![(Measurement::Restart, Kind::Lariat)],
            Measurement::Probe
            | Measurement::Scale
            | Measurement::Metrics
            | Measurement::Http
            | Measurement::Zoo
            | Measurement::Handover
            | Measurement::IdleHttp
            | Measurement::TlsHandshake
            | Measurement::TlsIdle => Vec::new(),
            Measurement::Delivery => {
                let throughput = [
                    Kind::Lariat,
                    Kind::LariatDelivery(Delivery::Pull),
                    Kind::LariatDelivery(Delivery::Once),
                    Kind::LariatDelivery(Delivery::Count(DELIVERY_COUNT)),
                    Kind::LariatDelivery(Delivery::Push),
                ];
                let idle = [
                    Kind::LariatDelivery(Delivery::Pull),
                    Kind::LariatDelivery(Delivery::Push),
                ];
                throughput
                    .map(|kind| (Measurement::Throughput, kind))
                    .into_iter()
                    .chain(idle.map(|kind| (Measurement::Idle, kind)))
                    .collect()
            }
            _ => Kind::ALL.map(|kind| (self, kind)).to_vec(),
        }
    }

    /// Rounds of it: one for restart, which reports lariat's own values rather than a ratio, one
    /// for delivery, whose ratios are between servers of the same round, and one for the probe's
    /// verdicts. Scale runs this many pinned rounds, then one unpinned round; metrics this many
    /// rounds of each part against each server.
    pub fn rounds(self, config: &Config) -> usize {
        match self {
            Measurement::Restart
            | Measurement::Delivery
            | Measurement::Probe
            | Measurement::Zoo
            | Measurement::Handover => 1,
            Measurement::Http if !config.quick => http::ROUNDS,
            _ => config.rounds,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub quick: bool,
    pub measurements: Vec<Measurement>,
    pub rounds: usize,
    pub churn_seconds: f64,
    pub churn_concurrency: usize,
    pub idle_connections: u64,
    pub idle_concurrency: usize,
    pub throughput_seconds: f64,
    pub restart_seconds: f64,
    pub restarts: usize,
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// Where the scale measurement's unpinned round lets servers and client run.
    pub unpinned_cpus: String,
    /// Which CPUs the scale measurement across cores gives the servers and the client threads.
    pub scale_layout: Layout,
    pub source_addresses: String,
}

impl Config {
    pub fn new(args: &Args) -> Self {
        let quick = args.quick;
        Config {
            quick,
            measurements: match args.only {
                Some(only) => vec![only],
                None => Measurement::ALL.to_vec(),
            },
            rounds: if quick { 1 } else { 3 },
            churn_seconds: if quick { 2.0 } else { 5.0 },
            churn_concurrency: 32,
            idle_connections: if quick { 2_000 } else { 10_000 },
            idle_concurrency: 256,
            throughput_seconds: if quick { 2.0 } else { 5.0 },
            restart_seconds: if quick { 4.0 } else { 10.0 },
            restarts: if quick { 3 } else { 10 },
            server_cpu: server::SERVER_CPU,
            client_cpu: CLIENT_CPU,
            unpinned_cpus: host::online_cpus(),
            // Read before the bench pins itself to the client CPU.
            scale_layout: Layout::new(&host::allowed_cpus()),
            source_addresses: format!(
                "{}..={}",
                client::source_ip(0),
                client::source_ip(u64::from(client::SOURCE_ADDRESSES) - 1)
            ),
        }
    }

    /// How many rounds each measurement runs, for the headers.
    pub fn rounds_line(&self) -> String {
        let mut parts = Vec::new();
        if self.measurements.iter().any(|&m| {
            !matches!(
                m,
                Measurement::Restart
                    | Measurement::Delivery
                    | Measurement::Probe
                    | Measurement::Scale
                    | Measurement::Metrics
                    | Measurement::Http
                    | Measurement::Handover
            )
        }) {
            parts.push(format!("median of {} round(s)", self.rounds));
        }
        if self.measurements.contains(&Measurement::Restart) {
            parts.push(format!(
                "restart: lariat only, {} SIGHUPs in {:.0} s of churn, one round",
                self.restarts, self.restart_seconds
            ));
        }
        if self.measurements.contains(&Measurement::Delivery) {
            parts.push(
                "delivery: lariat only, --delivery modes against plain echo (throughput) and \
                 --delivery pull (idle memory), one round"
                    .to_string(),
            );
        }
        if self.measurements.contains(&Measurement::Metrics) {
            parts.push(format!(
                "metrics: lariat only, --metrics scraped every {} ms against without, {} idle \
                 connections and {:.0} s of churn each, median of {} round(s)",
                metrics::SCRAPE_PERIOD.as_millis(),
                self.idle_connections,
                self.churn_seconds,
                self.rounds
            ));
        }
        if self.measurements.contains(&Measurement::Http) {
            parts.push(format!(
                "http: lariat http-hello against hyper-hello and nginx, wrk and h2load on the client \
                 CPU, {} round(s) (lariat and hyper-hello back to back), then restarts under wrk",
                Measurement::Http.rounds(self)
            ));
        }
        if self.measurements.contains(&Measurement::Handover) {
            parts.push(format!(
                "handover: lariat only, one SIGHUP with {} idle echo connections; {} sessions and \
                 churn through {} SIGHUPs, with hand-over and with --hand-over-window 0; one round",
                handover::IDLE_CONNECTIONS
                    .map(|n| n.to_string())
                    .join(" and "),
                handover::SESSIONS,
                handover::SESSION_RESTARTS
            ));
        }
        if self.measurements.contains(&Measurement::Probe) {
            parts.push(
                "probe: `lariat probe --short` against each server, which it starts itself \
                 (unpinned), one round"
                    .to_string(),
            );
        }
        if self.measurements.contains(&Measurement::Scale) {
            parts.push(format!(
                "scale: lariat only, {:.0} s of churn per configuration, pinned median of {} \
                 round(s), then across {} server core(s) (steps {}) with {} client thread(s), \
                 median of {} round(s), then one unpinned round",
                self.churn_seconds,
                self.rounds,
                self.scale_layout.server.len(),
                host::cpu_list(&self.scale_layout.steps()),
                self.scale_layout.client.len(),
                self.rounds
            ));
        }
        parts.join("; ")
    }

    /// What the HTTP measurement loads each server with.
    pub fn http_load(&self) -> http::Load {
        http::Load {
            seconds: if self.quick { 2 } else { 4 },
            h1_connections: 32,
            h2_connections: 8,
            h2_streams: 10,
            restarts: if self.quick { 3 } else { 5 },
            restart_interval_ms: 1500,
            restart_connections: 50,
            cpu: self.client_cpu,
        }
    }

    /// What the TLS measurements load each server with.
    pub fn tls_load(&self) -> tls::Load {
        tls::Load {
            seconds: if self.quick { 2 } else { 5 },
            concurrency: 32,
            idle_connections: if self.quick { 1_000 } else { 3_000 },
        }
    }

    /// What the metrics measurement loads each server with: the same as idle and churn.
    pub fn metrics_load(&self) -> metrics::Load {
        metrics::Load {
            idle_connections: self.idle_connections,
            idle_concurrency: self.idle_concurrency,
            churn: Duration::from_secs_f64(self.churn_seconds),
            churn_concurrency: self.churn_concurrency,
        }
    }
}
