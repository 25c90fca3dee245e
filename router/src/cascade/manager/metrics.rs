//! The cascade's metrics (labelled by the peer's node id, never by room or track) and the
//! throttle that keeps refusal warnings from flooding the log.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why a cascade connection was refused (`kaskade_cascade_handshakes_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// This router's TLS refused the peer: a certificate not from the cluster CA, none at all,
    /// or one for another node name.
    Tls,
    /// The peer refused this router (its TLS, or its checks after the handshake).
    Peer,
    /// The certificate chains to the CA but carries no node identity, or not the one dialled.
    Identity,
    /// A router reached itself.
    SelfLink,
    /// The peer's `Hello` named another node id or link protocol version.
    Version,
    /// The peer did not open its control stream in time.
    NoControlStream,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 6] = [
        Refusal::Tls,
        Refusal::Peer,
        Refusal::Identity,
        Refusal::SelfLink,
        Refusal::Version,
        Refusal::NoControlStream,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::Peer => "peer",
            Refusal::Identity => "identity",
            Refusal::SelfLink => "self",
            Refusal::Version => "version",
            Refusal::NoControlStream => "no_control_stream",
        }
    }
}

/// The cascade's metrics, registered once in the router's registry.
#[derive(Clone)]
pub struct CascadeMetrics {
    /// `kaskade_cascade_link_up{peer}`: 1 while the link's connection is up.
    pub link_up: IntGaugeVec,
    /// `kaskade_cascade_link_rtt_seconds{peer}`: QUIC's smoothed round-trip time.
    pub rtt: GaugeVec,
    /// `kaskade_cascade_link_lost_packets_total{peer}`: relayed packets never received, even
    /// after NACKs (the residual loss).
    pub lost: IntCounterVec,
    /// `kaskade_cascade_link_bytes_total{peer,direction}`: UDP bytes of the link's connections.
    pub bytes: IntCounterVec,
    /// `kaskade_cascade_link_budget_dropped_total{peer}`: relayed datagrams dropped because
    /// the link's budget (`cascade.link_rate_mbps`) was spent.
    pub budget_dropped: IntCounterVec,
    /// `kaskade_cascade_link_congestion_window_bytes{peer}`: the QUIC congestion window.
    pub cwnd: IntGaugeVec,
    /// `kaskade_cascade_link_reconnects_total{peer}`: times the link came back after a break.
    pub reconnects: IntCounterVec,
    /// `kaskade_cascade_handshakes_refused_total{reason}`.
    pub refused: IntCounterVec,
}

impl std::fmt::Debug for CascadeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CascadeMetrics")
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: prometheus::Result<T>,
    name: &str,
) -> T {
    let c = c.unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} registered once per registry: {e}"));
    c
}

impl CascadeMetrics {
    /// Creates the metrics in `registry` (once per registry: the cascade starts once).
    pub fn new(registry: &Registry) -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let name = "kaskade_cascade_link_up";
        let link_up = IntGaugeVec::new(
            opts(name, "1 while the cascade link to a peer router is up."),
            &["peer"],
        );
        let name = "kaskade_cascade_link_rtt_seconds";
        let rtt = GaugeVec::new(
            opts(
                name,
                "Round-trip time of the cascade link to a peer router (QUIC's estimate).",
            ),
            &["peer"],
        );
        let name = "kaskade_cascade_link_lost_packets_total";
        let lost = IntCounterVec::new(
            opts(
                name,
                "Relayed packets from a peer router never received, even after NACKs.",
            ),
            &["peer"],
        );
        let name = "kaskade_cascade_link_bytes_total";
        let bytes = IntCounterVec::new(
            opts(
                name,
                "UDP bytes of the cascade link to a peer router, by direction (sent, received).",
            ),
            &["peer", "direction"],
        );
        let name = "kaskade_cascade_link_budget_dropped_total";
        let budget_dropped = IntCounterVec::new(
            opts(
                name,
                "Relayed datagrams to a peer router dropped because the link's budget (cascade.link_rate_mbps) was spent.",
            ),
            &["peer"],
        );
        let name = "kaskade_cascade_link_congestion_window_bytes";
        let cwnd = IntGaugeVec::new(
            opts(
                name,
                "QUIC congestion window of the cascade link to a peer router (follows cascade.link_rate_mbps and the round trip).",
            ),
            &["peer"],
        );
        let name = "kaskade_cascade_link_reconnects_total";
        let reconnects = IntCounterVec::new(
            opts(
                name,
                "Times the cascade link to a peer router came back after a break.",
            ),
            &["peer"],
        );
        let name = "kaskade_cascade_handshakes_refused_total";
        let refused = IntCounterVec::new(
            opts(name, "Cascade connections refused, by reason (tls, peer, identity, self, version, no_control_stream)."),
            &["reason"],
        )
        ;
        let m = Self {
            link_up: register(registry, link_up, "kaskade_cascade_link_up"),
            rtt: register(registry, rtt, "kaskade_cascade_link_rtt_seconds"),
            lost: register(registry, lost, "kaskade_cascade_link_lost_packets_total"),
            bytes: register(registry, bytes, "kaskade_cascade_link_bytes_total"),
            budget_dropped: register(
                registry,
                budget_dropped,
                "kaskade_cascade_link_budget_dropped_total",
            ),
            cwnd: register(
                registry,
                cwnd,
                "kaskade_cascade_link_congestion_window_bytes",
            ),
            reconnects: register(
                registry,
                reconnects,
                "kaskade_cascade_link_reconnects_total",
            ),
            refused: register(
                registry,
                refused,
                "kaskade_cascade_handshakes_refused_total",
            ),
        };
        // Every reason shows from the start (at 0), so alerts can use rate() at once.
        for r in Refusal::ALL {
            m.refused.with_label_values(&[r.as_str()]);
        }
        m
    }

    /// The budget-drop counter of one peer (resolved once per link change).
    pub fn budget_dropped_for(&self, peer: &str) -> IntCounter {
        self.budget_dropped.with_label_values(&[peer])
    }

    /// The lost-packets counter of one peer (resolved once per connection).
    pub fn lost_for(&self, peer: &str) -> IntCounter {
        self.lost.with_label_values(&[peer])
    }
}

/// At most one warning per key and period; the warnings held back are counted and reported
/// with the next one. Sans-IO: time is an input.
#[derive(Debug)]
pub struct LogThrottle {
    period: Duration,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl LogThrottle {
    /// One warning per key per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: HashMap::new(),
        }
    }

    /// Whether to log now for `key`; if so, how many were held back since the last one.
    pub fn allow(&mut self, now: Instant, key: &'static str) -> Option<u64> {
        match self.last.get_mut(key) {
            Some((at, held)) if now.saturating_duration_since(*at) < self.period => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_warning_reports_what_it_held_back() {
        let t0 = Instant::now();
        let mut t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.allow(t0, "tls"), Some(0));
        for s in 1..10 {
            assert_eq!(t.allow(t0 + Duration::from_secs(s), "tls"), None);
        }
        assert_eq!(t.allow(t0, "peer"), Some(0), "per key");
        assert_eq!(t.allow(t0 + Duration::from_secs(10), "tls"), Some(9));
        assert_eq!(t.allow(t0 + Duration::from_secs(11), "tls"), None);
    }

    #[test]
    fn every_refusal_reason_is_exported_from_the_start() {
        let r = Registry::new();
        CascadeMetrics::new(&r);
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        for reason in Refusal::ALL {
            let line = format!(
                "kaskade_cascade_handshakes_refused_total{{reason=\"{}\"}} 0",
                reason.as_str()
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
    }
}
