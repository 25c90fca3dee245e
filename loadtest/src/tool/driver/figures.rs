//! What the driver measures: per-track receive state, interval and window figures,
//! final per-client results, and the per-packet accounting that fills them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kaskade_loadtest::media::split_source_tag;
use kaskade_loadtest::{Client, RecvPacket};
use str0m::media::{MediaKind, Mid};

use super::super::measure::{latency_histogram, FreezeTracker, LayerTracker, SeqLoss};
use super::{ClientId, MAX_GROUPS, MAX_LAYERS};

/// Per received track state kept by the driver.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrackRx {
    /// Audio or video.
    pub kind: Option<MediaKind>,
    /// Frame gaps (video).
    pub freeze: FreezeTracker,
    /// Layer changes (video).
    pub layer: LayerTracker,
    /// Packets per simulcast layer of the source (from the probe).
    pub layer_packets: [u64; MAX_LAYERS],
    /// Loss from the RTP sequence numbers.
    pub seq: SeqLoss,
}

/// What the driver threads measured since the previous interval.
#[derive(Debug, Clone)]
pub(crate) struct Interval {
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
    pub(crate) fn merge(&mut self, o: &Interval) {
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
pub(crate) struct Window {
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
    pub(crate) fn empty() -> Self {
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
    pub(crate) fn merge(&mut self, o: &Window) {
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
pub(crate) struct TrackResult {
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
pub(crate) struct ClientResult {
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

/// Counters of every layer the client sends (its local tracks).
fn sent_layers(c: &Client) -> impl Iterator<Item = kaskade_loadtest::LayerStats> + '_ {
    (0..8)
        .filter_map(|i| c.track_stats(kaskade_loadtest::TrackId(i)))
        .flat_map(|t| t.layers)
}

pub(super) fn keyframe_requests(c: &Client) -> (u64, u64) {
    sent_layers(c).fold((0, 0), |(r, i), l| {
        (r + l.keyframe_requests, i + l.keyframe_requests_ignored)
    })
}

pub(super) fn sent_packets(c: &Client) -> u64 {
    sent_layers(c).map(|l| l.packets_sent).sum()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn on_packet(
    epoch: Instant,
    measuring: bool,
    interval: &mut Interval,
    window: &mut Window,
    tracks: &mut HashMap<Mid, TrackRx>,
    group: usize,
    mid: Mid,
    kind: Option<MediaKind>,
    p: &RecvPacket,
) {
    let t = tracks.entry(mid).or_default();
    if t.kind.is_none() {
        t.kind = kind;
    }
    let video = kind == Some(MediaKind::Video);
    let layer = p
        .probe
        .map_or(0, |pr| split_source_tag(pr.source_tag).2)
        .min(MAX_LAYERS as u8 - 1);
    let latency = p.probe.map(|pr| {
        let sent = epoch + Duration::from_micros(pr.sent_micros);
        u64::try_from(p.at.saturating_duration_since(sent).as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    });
    let len = p.payload_len as u64;
    t.seq.on_packet(p.seq);
    interval.packets += 1;
    if video {
        t.layer.on_packet(layer);
        t.layer_packets[usize::from(layer)] += 1;
        if p.marker {
            t.freeze.on_frame(p.at);
        }
        interval.video_bytes[usize::from(layer)] += len;
    } else {
        interval.audio_bytes += len;
    }
    if let Some(l) = latency {
        interval.latency.saturating_record(l);
    }
    if measuring {
        window.packets += 1;
        if video {
            window.video_bytes[usize::from(layer)] += len;
        } else {
            window.audio_bytes += len;
        }
        if let Some(l) = latency {
            if video {
                window.latency_video.saturating_record(l);
                window.latency_video_by_group[group].saturating_record(l);
            } else {
                window.latency_audio.saturating_record(l);
            }
        }
    }
}
