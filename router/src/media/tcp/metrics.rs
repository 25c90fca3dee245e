//! The metrics of ICE-TCP and of the single UDP port, registered with the
//! router's registry. No per-connection labels.

use super::CloseReason;
use prometheus::local::LocalIntCounter;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// ICE-TCP and single-port metrics.
#[derive(Clone)]
pub struct TransportMetrics {
    /// Connections the listener accepted.
    pub tcp_accepted: IntCounter,
    /// Connections closed, by reason ([`CloseReason::label`]).
    pub tcp_closed: IntCounterVec,
    /// Open connections: waiting for their first packet (`pending`), or
    /// on a worker (`active`).
    pub tcp_connections: IntGaugeVec,
    /// Packets dropped because a connection's queue was full, by kind
    /// (`video`, `other`).
    pub tcp_dropped: IntCounterVec,
    /// Datagrams the kernel gave to a worker that does not host their
    /// session, handed to the one that does (single-port mode).
    pub handovers: IntCounter,
}

fn bad<T>(e: prometheus::Error) -> T {
    unreachable!("static metric definition: {e}")
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("transport metrics are registered once: {e}"));
    c
}

impl TransportMetrics {
    /// Creates the metrics in `r`.
    pub fn new(r: &Registry) -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let tcp_closed = register(
            r,
            IntCounterVec::new(
                opts(
                    "kaskade_tcp_connections_closed_total",
                    "ICE-TCP connections closed, by reason.",
                ),
                &["reason"],
            )
            .unwrap_or_else(bad),
        );
        for reason in CloseReason::ALL {
            tcp_closed.with_label_values(&[reason.label()]);
        }
        let tcp_dropped = register(
            r,
            IntCounterVec::new(
                opts(
                    "kaskade_tcp_packets_dropped_total",
                    "Packets to ICE-TCP peers dropped because the connection's queue was full (a slow reader), by kind.",
                ),
                &["kind"],
            )
            .unwrap_or_else(bad),
        );
        for kind in ["video", "other"] {
            tcp_dropped.with_label_values(&[kind]);
        }
        Self {
            tcp_accepted: register(
                r,
                IntCounter::new(
                    "kaskade_tcp_connections_accepted_total",
                    "ICE-TCP connections accepted.",
                )
                .unwrap_or_else(bad),
            ),
            tcp_closed,
            tcp_connections: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "kaskade_tcp_connections",
                        "Open ICE-TCP connections: pending (no STUN binding request yet) or active (on a worker).",
                    ),
                    &["state"],
                )
                .unwrap_or_else(bad),
            ),
            tcp_dropped,
            handovers: register(
                r,
                IntCounter::new(
                    "kaskade_single_port_handovers_total",
                    "Datagrams on the single UDP port handed from the worker that read them to the worker that hosts their session.",
                )
                .unwrap_or_else(bad),
            ),
        }
    }

    /// Counts a closed connection.
    pub fn closed(&self, reason: CloseReason) {
        self.tcp_closed.with_label_values(&[reason.label()]).inc();
    }

    /// The gauge of connections in `state` (`pending`, `active`).
    pub fn open(&self, state: &str) -> IntGauge {
        self.tcp_connections.with_label_values(&[state])
    }
}

/// A worker's thread-local counts of packets dropped at full connection
/// queues, folded into the shared metrics about once a second.
pub struct DropCounters {
    /// Video dropped.
    pub video: LocalIntCounter,
    /// Everything else dropped.
    pub other: LocalIntCounter,
}

impl DropCounters {
    /// Local counters of `m`.
    pub fn new(m: &TransportMetrics) -> Self {
        Self {
            video: m.tcp_dropped.with_label_values(&["video"]).local(),
            other: m.tcp_dropped.with_label_values(&["other"]).local(),
        }
    }

    /// Adds the counts to the shared metrics.
    pub fn fold(&self) {
        self.video.flush();
        self.other.flush();
    }
}
