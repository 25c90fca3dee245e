//! What the driver threads measured: per interval, per measurement window,
//! and per client at the end.

use super::{ClientId, TrackRx, MAX_GROUPS, MAX_LAYERS};
use std::time::Instant;

use hdrhistogram::Histogram;
use str0m::media::MediaKind;

use crate::tool::measure::latency_histogram;

/// What the driver threads measured since the previous interval.
#[derive(Debug, Clone)]
pub struct Interval {
    /// RTP packets received.
    pub packets: u64,
    /// Audio payload bytes received.
    pub audio_bytes: u64,
    /// Video payload bytes received per source layer.
    pub video_bytes: [u64; MAX_LAYERS],
    /// End-to-end latency of probed packets (µs).
    pub latency: Histogram<u64>,
    /// Largest timer lag of the generator (µs).
    pub lag_max_us: u64,
    /// Packets lost so far (RTP sequence gaps over all subscriptions; cumulative).
    pub lost_total: u64,
    /// Packets expected so far (cumulative).
    pub expected_total: u64,
    /// Clients connected (cumulative).
    pub connected: u64,
    /// Datagrams the sockets would not take (cumulative).
    pub send_drops: u64,
}

impl Interval {
    pub(super) fn new() -> Self {
        Interval {
            packets: 0,
            audio_bytes: 0,
            video_bytes: [0; MAX_LAYERS],
            latency: latency_histogram(),
            lag_max_us: 0,
            lost_total: 0,
            expected_total: 0,
            connected: 0,
            send_drops: 0,
        }
    }

    /// Adds another thread's interval.
    pub fn merge(&mut self, o: &Interval) {
        self.packets += o.packets;
        self.audio_bytes += o.audio_bytes;
        for (a, b) in self.video_bytes.iter_mut().zip(o.video_bytes) {
            *a += b;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        self.lag_max_us = self.lag_max_us.max(o.lag_max_us);
        self.lost_total += o.lost_total;
        self.expected_total += o.expected_total;
        self.connected += o.connected;
        self.send_drops += o.send_drops;
    }
}

/// What the driver threads measured while measuring was on.
#[derive(Debug, Clone)]
pub struct Window {
    /// Audio latency (µs).
    pub latency_audio: Histogram<u64>,
    /// Video latency (µs).
    pub latency_video: Histogram<u64>,
    /// Generator timer lag (µs).
    pub lag: Histogram<u64>,
    /// RTP packets received.
    pub packets: u64,
    /// Audio payload bytes.
    pub audio_bytes: u64,
    /// Video payload bytes per source layer.
    pub video_bytes: [u64; MAX_LAYERS],
    /// Video latency per receiver group (µs).
    pub latency_video_by_group: Vec<Histogram<u64>>,
}

impl Window {
    /// An empty window.
    pub fn empty() -> Self {
        Window {
            latency_video_by_group: (0..MAX_GROUPS).map(|_| latency_histogram()).collect(),
            latency_audio: latency_histogram(),
            latency_video: latency_histogram(),
            lag: latency_histogram(),
            packets: 0,
            audio_bytes: 0,
            video_bytes: [0; MAX_LAYERS],
        }
    }

    /// Adds another thread's window.
    pub fn merge(&mut self, o: &Window) {
        let _ = self.latency_audio.add(&o.latency_audio);
        let _ = self.latency_video.add(&o.latency_video);
        let _ = self.lag.add(&o.lag);
        for (a, b) in self
            .latency_video_by_group
            .iter_mut()
            .zip(&o.latency_video_by_group)
        {
            let _ = a.add(b);
        }
        self.packets += o.packets;
        self.audio_bytes += o.audio_bytes;
        for (a, b) in self.video_bytes.iter_mut().zip(o.video_bytes) {
            *a += b;
        }
    }
}

/// Final figures of one received track.
#[derive(Debug, Clone)]
pub struct TrackResult {
    /// Audio or video.
    pub kind: Option<MediaKind>,
    /// RTP packets received.
    pub packets: u64,
    /// Probe gaps: loss, plus packets the SFU chose not to forward (layer switches,
    /// temporal layers).
    pub probe_gaps: u64,
    /// First complete keyframe.
    pub first_frame_at: Option<Instant>,
    /// Driver-side state (freezes, layers).
    pub rx: TrackRx,
}

/// Final figures of one client.
#[derive(Debug, Clone)]
pub struct ClientResult {
    /// Its id.
    pub id: ClientId,
    /// When it asked for media.
    pub media_requested_at: Option<Instant>,
    /// Connected at the end.
    pub connected_at_end: bool,
    /// str0m errors.
    pub errors: u64,
    /// Last str0m error.
    pub last_error: Option<String>,
    /// Received tracks.
    pub tracks: Vec<TrackResult>,
    /// RTP packets sent (publishers).
    pub sent_packets: u64,
    /// Keyframe requests received and, of those, ignored as too soon
    /// (publishers).
    pub keyframe_requests: (u64, u64),
}
