//! A worker core's counters: plain thread-local counts on the packet path,
//! folded into the shared Prometheus metrics by [`CoreStats::fold`] (the
//! driver does it about once a second), so no packet touches a shared
//! atomic.

use crate::metrics::WorkerMetrics;
use prometheus::local::LocalIntCounter;

/// The counters of one worker core (see [`WorkerMetrics`] for what each counts).
pub(super) struct CoreStats {
    pub rtp_received: LocalIntCounter,
    pub fwd_audio: LocalIntCounter,
    pub fwd_video: LocalIntCounter,
    pub drop_unknown_source: LocalIntCounter,
    pub drop_malformed: LocalIntCounter,
    pub drop_rejected: LocalIntCounter,
    pub session_failures: LocalIntCounter,
    pub kf_join: LocalIntCounter,
    pub kf_subscriber: LocalIntCounter,
    pub kf_throttled: LocalIntCounter,
    pub kf_coalesced: LocalIntCounter,
    pub kf_sent: LocalIntCounter,
    pub overload_resync: LocalIntCounter,
    pub relay_resync: LocalIntCounter,
    pub join_timeout: LocalIntCounter,
    pub join_ice: LocalIntCounter,
    pub join_dtls: LocalIntCounter,
}

impl CoreStats {
    /// Local counters for the shared metrics `m`.
    pub(super) fn new(m: &WorkerMetrics) -> Self {
        Self {
            rtp_received: m.rtp_received.local(),
            fwd_audio: m.fwd_audio.local(),
            fwd_video: m.fwd_video.local(),
            drop_unknown_source: m.drop_unknown_source.local(),
            drop_malformed: m.drop_malformed.local(),
            drop_rejected: m.drop_rejected.local(),
            session_failures: m.session_failures.local(),
            kf_join: m.kf_join.local(),
            kf_subscriber: m.kf_subscriber.local(),
            kf_throttled: m.kf_throttled.local(),
            kf_coalesced: m.kf_coalesced.local(),
            kf_sent: m.kf_sent.local(),
            overload_resync: m.overload_resync.local(),
            relay_resync: m.relay_resync.local(),
            join_timeout: m.join_timeout.local(),
            join_ice: m.join_ice.local(),
            join_dtls: m.join_dtls.local(),
        }
    }

    /// Adds what was counted since the last fold to the shared metrics.
    pub(super) fn fold(&self) {
        for c in [
            &self.rtp_received,
            &self.fwd_audio,
            &self.fwd_video,
            &self.drop_unknown_source,
            &self.drop_malformed,
            &self.drop_rejected,
            &self.session_failures,
            &self.kf_join,
            &self.kf_subscriber,
            &self.kf_throttled,
            &self.kf_coalesced,
            &self.kf_sent,
            &self.overload_resync,
            &self.relay_resync,
            &self.join_timeout,
            &self.join_ice,
            &self.join_dtls,
        ] {
            c.flush();
        }
    }
}
