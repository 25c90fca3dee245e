//! Prometheus metrics: one registry created at start-up and passed down.
//! No per-participant (room, session, track) labels, ever.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    /// Subscriber streams resynchronised at a keyframe because relayed
    /// video of their layer was lost for good on a cascade link.
    pub relay_resyncs: IntCounter,
    /// API requests refused by a limit, by limit.
    pub limit_refusals: IntCounterVec,
    /// HTTP requests (demo app, kaskade.js, demo signalling), by route and status.
    pub http_requests: IntCounterVec,
    /// WHIP/WHEP/demo signalling requests refused, by endpoint and reason.
    pub whip_refusals: IntCounterVec,
    /// Webhook delivery attempts, by outcome (delivered, retried, failed).
    pub webhook_deliveries: IntCounterVec,
    /// Webhook events dropped: a receiver's queue was full (down or slow).
    pub webhook_dropped: IntCounter,
    /// Process, build, drain, auth and control-listener metrics.
    pub ops: crate::ops_metrics::OpsMetrics,
    /// Datagrams in and out of each media worker.
    pub worker_packets: IntCounterVec,
    /// Bytes in and out of each media worker.
    pub worker_bytes: IntCounterVec,
    /// How late each worker served a due timer.
    pub worker_loop_lag: HistogramVec,
    /// Batches waiting in each worker's fan-out inbox.
    pub bus_queue_depth: IntGaugeVec,
    /// Sessions that never connected, by how far they got.
    pub join_failures: IntCounterVec,
    /// Workers a room's sessions are on, at each placement.
    pub room_workers: Histogram,
    /// ICE-TCP and single-port metrics.
    pub transport: crate::media::tcp::metrics::TransportMetrics,
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
        let relay_resyncs = counter(
            "kaskade_relay_resyncs_total",
            "Subscriber streams that resumed at a keyframe because relayed video of their layer was lost for good on a cascade link (a break, or a gap not repaired).",
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
        let whip_refusals = counter_vec(
            &registry,
            "kaskade_whip_refusals_total",
            "WHIP, WHEP and demo signalling requests refused, by endpoint (whip, whep, demo) and reason (no_token, bad_token, expired, wrong_room, not_granted, host, content_type, too_large, timeout, bad_sdp, bad_request, not_found, conflict, draining, limit, unavailable, ice_restart, precondition, forbidden, not_owner, wrong_participant, internal).",
            &["endpoint", "reason"],
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
        let ops = crate::ops_metrics::OpsMetrics::new(&registry);
        let worker_packets = counter_vec(
            &registry,
            "kaskade_worker_packets_total",
            "Datagrams a media worker received (direction=in) and sent (out).",
            &["worker", "direction"],
        );
        let worker_bytes = counter_vec(
            &registry,
            "kaskade_worker_bytes_total",
            "Bytes of the datagrams a media worker received (direction=in) and sent (out).",
            &["worker", "direction"],
        );
        let worker_loop_lag = HistogramVec::new(
            HistogramOpts::new(
                "kaskade_worker_loop_lag_seconds",
                "How late a media worker served a timer that was due (a busy worker serves them late).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["worker"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        registry
            .register(Box::new(worker_loop_lag.clone()))
            .unwrap_or_else(|e| unreachable!("metric registered once: {e}"));
        let bus_queue_depth = IntGaugeVec::new(
            Opts::new(
                "kaskade_bus_queue_depth",
                "Batches waiting in a media worker's fan-out inbox (of media.bus_queue).",
            ),
            &["worker"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        registry
            .register(Box::new(bus_queue_depth.clone()))
            .unwrap_or_else(|e| unreachable!("metric registered once: {e}"));
        let join_failures = counter_vec(
            &registry,
            "kaskade_join_failures_total",
            "Sessions closed before they connected, by how far they got: timeout (no datagram from the peer), ice (ICE never connected), dtls (ICE connected, DTLS did not complete or failed).",
            &["step"],
        );
        let room_workers = Histogram::with_opts(
            HistogramOpts::new(
                "kaskade_room_workers",
                "Media workers a room's sessions are on, observed at each session placement.",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0]),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        registry
            .register(Box::new(room_workers.clone()))
            .unwrap_or_else(|e| unreachable!("metric registered once: {e}"));
        let transport = crate::media::tcp::metrics::TransportMetrics::new(&registry);
        Self {
            transport,
            ops,
            http_requests,
            whip_refusals,
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
            relay_resyncs,
            limit_refusals,
            worker_packets,
            worker_bytes,
            worker_loop_lag,
            bus_queue_depth,
            join_failures,
            room_workers,
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
    /// Handed-over datagrams dropped on the bus (single-port mode).
    pub bus_drop_datagram: IntCounter,
    /// Packets for a cascade link dropped because its relay queue was full
    /// or closed (`kind="link"`, as the control plane's link drops).
    pub bus_drop_link: IntCounter,
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
    /// Subscriber streams resynchronised because relayed video was lost
    /// for good on a cascade link.
    pub relay_resync: IntCounter,
    /// Sessions that never connected: no datagram from the peer.
    pub join_timeout: IntCounter,
    /// Sessions that never connected: ICE did not.
    pub join_ice: IntCounter,
    /// Sessions that never connected: DTLS did not.
    pub join_dtls: IntCounter,
    /// ICE-TCP and single-port metrics.
    pub transport: crate::media::tcp::metrics::TransportMetrics,
    worker_packets: IntCounterVec,
    worker_bytes: IntCounterVec,
    worker_loop_lag: HistogramVec,
    bus_queue_depth: IntGaugeVec,
}

/// The metrics of one worker's input and output, labelled with its index.
#[derive(Clone)]
pub struct WorkerIoMetrics {
    /// Datagrams received.
    pub packets_in: IntCounter,
    /// Datagrams sent.
    pub packets_out: IntCounter,
    /// Bytes received.
    pub bytes_in: IntCounter,
    /// Bytes sent.
    pub bytes_out: IntCounter,
    /// Lateness of due timers.
    pub loop_lag: Histogram,
    /// Batches waiting in the inbox.
    pub bus_queue_depth: IntGauge,
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
            bus_drop_datagram: m.bus_dropped.with_label_values(&["datagram"]),
            bus_drop_link: m.bus_dropped.with_label_values(&["link"]),
            session_failures: m.session_failures.clone(),
            kf_join: m.keyframe_requests.with_label_values(&["join"]),
            kf_subscriber: m.keyframe_requests.with_label_values(&["subscriber"]),
            kf_throttled: m.keyframe_requests.with_label_values(&["throttled"]),
            kf_coalesced: m.keyframe_requests.with_label_values(&["coalesced"]),
            kf_sent: m.keyframe_requests.with_label_values(&["sent"]),
            overload_resync: m.overload_resyncs.clone(),
            relay_resync: m.relay_resyncs.clone(),
            join_timeout: m.join_failures.with_label_values(&["timeout"]),
            join_ice: m.join_failures.with_label_values(&["ice"]),
            join_dtls: m.join_failures.with_label_values(&["dtls"]),
            transport: m.transport.clone(),
            worker_packets: m.worker_packets.clone(),
            worker_bytes: m.worker_bytes.clone(),
            worker_loop_lag: m.worker_loop_lag.clone(),
            bus_queue_depth: m.bus_queue_depth.clone(),
        }
    }

    /// The input and output metrics of worker `index`.
    pub fn io(&self, index: u16) -> WorkerIoMetrics {
        let w = index.to_string();
        WorkerIoMetrics {
            packets_in: self.worker_packets.with_label_values(&[&w, "in"]),
            packets_out: self.worker_packets.with_label_values(&[&w, "out"]),
            bytes_in: self.worker_bytes.with_label_values(&[&w, "in"]),
            bytes_out: self.worker_bytes.with_label_values(&[&w, "out"]),
            loop_lag: self.worker_loop_lag.with_label_values(&[&w]),
            bus_queue_depth: self.bus_queue_depth.with_label_values(&[&w]),
        }
    }
}
