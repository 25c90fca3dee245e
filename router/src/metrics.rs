//! Prometheus metrics: one registry created at start-up and passed down.
//! No per-participant (room, session, track) labels, ever.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every metric the router exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the metrics are in.
    pub registry: Registry,
    /// Live sessions.
    pub sessions: IntGauge,
    /// Live rooms.
    pub rooms: IntGauge,
    /// RTP packets received from publishers (after SRTP).
    pub rtp_received: IntCounter,
    /// RTP packets written to subscribers, by kind.
    pub forwarded: IntCounterVec,
    /// Datagrams dropped on receipt, by reason.
    pub datagrams_dropped: IntCounterVec,
    /// Bus messages dropped because a worker's inbox was full, by kind.
    pub bus_dropped: IntCounterVec,
    /// Sessions closed because str0m panicked or failed for them.
    pub session_failures: IntCounter,
    /// API calls that returned an error, by method and gRPC code.
    pub api_errors: IntCounterVec,
    /// Keyframe requests sent to publishers, by origin.
    pub keyframe_requests: IntCounterVec,
    /// Subscriber streams resynchronised at a keyframe, and stepped down a
    /// layer, because their worker's inbox was full and video was shed.
    pub overload_resyncs: IntCounter,
    /// API requests refused by a limit, by limit.
    pub limit_refusals: IntCounterVec,
    /// HTTP requests (demo app, kaskade.js, demo signalling), by route and status.
    pub http_requests: IntCounterVec,
    /// Webhook delivery attempts, by outcome (delivered, retried, failed).
    pub webhook_deliveries: IntCounterVec,
    /// Webhook events dropped: a receiver's queue was full (down or slow).
    pub webhook_dropped: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} registered once: {e}"));
    c
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name} registered once: {e}"));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)
                .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name} registered once: {e}"));
            c
        };
        let sessions = gauge("kaskade_sessions", "Live sessions.");
        let rooms = gauge("kaskade_rooms", "Live rooms.");
        let rtp_received = counter(
            "kaskade_rtp_packets_received_total",
            "RTP packets received from publishers.",
        );
        let session_failures = counter(
            "kaskade_session_failures_total",
            "Sessions closed because the WebRTC stack failed for them (other sessions unaffected).",
        );
        let overload_resyncs = counter(
            "kaskade_overload_resyncs_total",
            "Subscriber streams that resumed at a keyframe (and stepped down a layer) after video was shed on the fan-out bus.",
        );
        let forwarded = counter_vec(
            &registry,
            "kaskade_rtp_packets_forwarded_total",
            "RTP packets written to subscribers.",
            &["kind"],
        );
        let datagrams_dropped = counter_vec(
            &registry,
            "kaskade_datagrams_dropped_total",
            "UDP datagrams dropped: on receipt (malformed, unknown_source, rejected) or refused by the kernel on send (send_failed).",
            &["reason"],
        );
        let bus_dropped = counter_vec(
            &registry,
            "kaskade_bus_dropped_total",
            "Fan-out bus messages dropped because a worker's inbox was full.",
            &["kind"],
        );
        let api_errors = counter_vec(
            &registry,
            "kaskade_api_errors_total",
            "Control API calls that returned an error.",
            &["method", "code"],
        );
        let keyframe_requests = counter_vec(
            &registry,
            "kaskade_keyframe_requests_total",
            "Keyframe requests: why asked (join, subscriber) and what became of them (sent, coalesced, throttled).",
            &["origin"],
        );
        let limit_refusals = counter_vec(
            &registry,
            "kaskade_limit_refusals_total",
            "API requests refused because a limit was reached or a field was too large, by limit.",
            &["limit"],
        );
        for l in crate::control::limits::Limit::ALL {
            limit_refusals.with_label_values(&[l.as_str()]);
        }
        let http_requests = counter_vec(
            &registry,
            "kaskade_http_requests_total",
            "HTTP requests on http.listen, by route and status code.",
            &["route", "code"],
        );
        let webhook_deliveries = counter_vec(
            &registry,
            "kaskade_webhook_deliveries_total",
            "Webhook delivery attempts: delivered, retried (failed, tried again later) or failed (given up).",
            &["outcome"],
        );
        let webhook_dropped = counter(
            "kaskade_webhook_dropped_total",
            "Webhook events dropped because a receiver's queue was full (it is down or slow).",
        );
        Self {
            http_requests,
            webhook_deliveries,
            webhook_dropped,
            registry,
            sessions,
            rooms,
            rtp_received,
            forwarded,
            datagrams_dropped,
            bus_dropped,
            session_failures,
            api_errors,
            keyframe_requests,
            overload_resyncs,
            limit_refusals,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker's pre-resolved handles (label lookups done once, not per packet).
#[derive(Clone)]
pub struct WorkerMetrics {
    /// See [`Metrics::rtp_received`].
    pub rtp_received: IntCounter,
    /// Audio packets forwarded.
    pub fwd_audio: IntCounter,
    /// Video packets forwarded.
    pub fwd_video: IntCounter,
    /// Datagram from an address no session knows, not a STUN binding for one.
    pub drop_unknown_source: IntCounter,
    /// Datagram that is neither STUN, DTLS nor (S)RTP(C).
    pub drop_malformed: IntCounter,
    /// Datagram that a session's stack refused.
    pub drop_rejected: IntCounter,
    /// Datagram the kernel refused to send (full send buffer, refused destination).
    pub drop_send: IntCounter,
    /// Video dropped on the bus.
    pub bus_drop_video: IntCounter,
    /// Audio/control dropped on the bus.
    pub bus_drop_other: IntCounter,
    /// See [`Metrics::session_failures`].
    pub session_failures: IntCounter,
    /// Keyframe asked for a new subscriber.
    pub kf_join: IntCounter,
    /// Keyframe asked because a subscriber sent PLI/FIR.
    pub kf_subscriber: IntCounter,
    /// Keyframe requests held until the throttle interval is over.
    pub kf_throttled: IntCounter,
    /// Keyframe requests absorbed by one still being answered.
    pub kf_coalesced: IntCounter,
    /// Keyframe requests sent to a publisher (or an origin router).
    pub kf_sent: IntCounter,
    /// Subscriber streams resynchronised (and stepped down) after video
    /// was shed on the bus.
    pub overload_resync: IntCounter,
}

impl WorkerMetrics {
    /// Resolves the labelled children once.
    pub fn new(m: &Metrics) -> Self {
        Self {
            rtp_received: m.rtp_received.clone(),
            fwd_audio: m.forwarded.with_label_values(&["audio"]),
            fwd_video: m.forwarded.with_label_values(&["video"]),
            drop_unknown_source: m.datagrams_dropped.with_label_values(&["unknown_source"]),
            drop_malformed: m.datagrams_dropped.with_label_values(&["malformed"]),
            drop_rejected: m.datagrams_dropped.with_label_values(&["rejected"]),
            drop_send: m.datagrams_dropped.with_label_values(&["send_failed"]),
            bus_drop_video: m.bus_dropped.with_label_values(&["video"]),
            bus_drop_other: m.bus_dropped.with_label_values(&["other"]),
            session_failures: m.session_failures.clone(),
            kf_join: m.keyframe_requests.with_label_values(&["join"]),
            kf_subscriber: m.keyframe_requests.with_label_values(&["subscriber"]),
            kf_throttled: m.keyframe_requests.with_label_values(&["throttled"]),
            kf_coalesced: m.keyframe_requests.with_label_values(&["coalesced"]),
            kf_sent: m.keyframe_requests.with_label_values(&["sent"]),
            overload_resync: m.overload_resyncs.clone(),
        }
    }
}
