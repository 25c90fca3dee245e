//! Local (sending) tracks: the media sources attached to sendonly mids, and the RTP
//! state (sequence numbers, payload type, stream SSRC) the client needs to write them.

use std::time::Instant;

use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::Ssrc;

use crate::media::{
    H264Source, MediaPacket, MediaSource, OpusSource, SourceStats, VideoLayer, Vp8Source,
};

/// Handle of a track added with [`Client::add_audio`](crate::Client::add_audio) or
/// [`Client::add_video`](crate::Client::add_video). Its [`Mid`] is known once the offer is
/// created ([`Client::track_mid`](crate::Client::track_mid)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub usize);

/// Video codec of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoCodec {
    /// VP8 (default).
    #[default]
    Vp8,
    /// H.264 constrained baseline, packetization-mode 1.
    H264,
}

/// Negotiation state of a local track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackState {
    /// Added, not yet in an offer.
    Queued,
    /// In the pending offer.
    Offered,
    /// Accepted by the remote: media flows once connected.
    Active,
    /// Rejected by the remote, or the negotiation failed.
    Rejected,
}

/// A media source of any codec.
#[derive(Debug)]
pub(crate) enum Source {
    Opus(OpusSource),
    Vp8(Vp8Source),
    H264(H264Source),
}

impl MediaSource for Source {
    fn next_due(&self) -> Instant {
        match self {
            Source::Opus(s) => s.next_due(),
            Source::Vp8(s) => s.next_due(),
            Source::H264(s) => s.next_due(),
        }
    }

    fn poll(&mut self, now: Instant) -> Option<MediaPacket> {
        match self {
            Source::Opus(s) => s.poll(now),
            Source::Vp8(s) => s.poll(now),
            Source::H264(s) => s.poll(now),
        }
    }

    fn request_keyframe(&mut self) {
        match self {
            Source::Opus(s) => s.request_keyframe(),
            Source::Vp8(s) => s.request_keyframe(),
            Source::H264(s) => s.request_keyframe(),
        }
    }

    fn stats(&self) -> SourceStats {
        match self {
            Source::Opus(s) => s.stats(),
            Source::Vp8(s) => s.stats(),
            Source::H264(s) => s.stats(),
        }
    }
}

/// One sending layer (a simulcast encoding, or the only encoding).
#[derive(Debug)]
pub(crate) struct LayerSender {
    pub(crate) source: Source,
    /// Next extended sequence number (starts below 65536: ROC 0).
    pub(crate) seq: u64,
    /// The str0m stream, once looked up.
    pub(crate) ssrc: Option<Ssrc>,
    pub(crate) packets_sent: u64,
    /// When a keyframe request was last acted on.
    pub(crate) keyframe_honoured: Option<Instant>,
    /// Requests ignored as too soon after the last one honoured.
    pub(crate) keyframe_requests_ignored: u64,
    pub(crate) bytes_sent: u64,
    /// Packets dropped because str0m had no stream for the mid/rid.
    pub(crate) no_stream: u64,
    /// The layer is switched off (as Chrome drops a layer when its uplink is
    /// short): the source keeps time, its packets are not sent.
    pub(crate) paused: bool,
}

/// A local track and its layers.
#[derive(Debug)]
pub(crate) struct LocalTrack {
    pub(crate) kind: MediaKind,
    pub(crate) mid: Option<Mid>,
    /// Simulcast rids, lowest first; empty without simulcast.
    pub(crate) rids: Vec<Rid>,
    /// Layer settings (video), one per rid (or one without simulcast).
    pub(crate) layers: Vec<VideoLayer>,
    pub(crate) state: TrackState,
    pub(crate) pt: Option<Pt>,
    /// Created when the track is active and the client connected.
    pub(crate) senders: Vec<LayerSender>,
    /// Keyframe requests received, per layer.
    pub(crate) keyframe_requests: Vec<u64>,
    /// Audio: the level every packet carries instead of the source's own
    /// ([`crate::Client::set_audio_level`]).
    pub(crate) level_override: Option<i8>,
}

impl LocalTrack {
    pub(crate) fn new(kind: MediaKind, rids: Vec<Rid>, layers: Vec<VideoLayer>) -> Self {
        let n = layers.len().max(1);
        LocalTrack {
            kind,
            mid: None,
            rids,
            layers,
            state: TrackState::Queued,
            pt: None,
            senders: vec![],
            keyframe_requests: vec![0; n],
            level_override: None,
        }
    }

    /// Layer index of a rid (0 without simulcast or for an unknown rid).
    pub(crate) fn layer_of(&self, rid: Option<Rid>) -> usize {
        rid.and_then(|r| self.rids.iter().position(|x| *x == r))
            .unwrap_or(0)
    }

    pub(crate) fn rid_of(&self, layer: usize) -> Option<Rid> {
        self.rids.get(layer).copied()
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.senders.iter().map(|s| s.source.next_due()).min()
    }
}

/// Public view of a local track's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackStats {
    /// Audio or video.
    pub kind: MediaKind,
    /// Mid, once offered.
    pub mid: Option<Mid>,
    /// Negotiation state.
    pub state: TrackState,
    /// Per layer, lowest first.
    pub layers: Vec<LayerStats>,
}

/// Counters of one sending layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// The layer's rid, if simulcast.
    pub rid: Option<Rid>,
    /// SSRC of the str0m stream, once known.
    pub ssrc: Option<Ssrc>,
    /// RTP packets written to str0m.
    pub packets_sent: u64,
    /// Payload bytes written to str0m.
    pub bytes_sent: u64,
    /// Packets dropped because str0m had no stream for the mid/rid.
    pub no_stream: u64,
    /// Keyframe requests (PLI/FIR) received for this layer.
    pub keyframe_requests: u64,
    /// Of those, ignored as too soon after the last one honoured
    /// (`ClientConfig::keyframe_min_interval`).
    pub keyframe_requests_ignored: u64,
    /// What the source produced.
    pub source: SourceStats,
}
