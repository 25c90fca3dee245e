//! Messages between media workers. A batch of them is one channel message
//! and one wake-up of the destination worker.

use super::select::LayerState;
use super::types::{MediaPacket, WorkerId};
use kaskade_protocol::TrackId;
use std::sync::Arc;

/// One message on the fan-out bus.
#[derive(Debug, Clone)]
pub enum BusMsg {
    /// A packet of a track some subscriber on the destination worker receives.
    Media(Arc<MediaPacket>),
    /// A packet of a remote track arriving over a link, to be fanned out
    /// by the track's home worker as if its publisher were local.
    Ingest(Arc<MediaPacket>),
    /// The origin router's view of a remote track's layers.
    RemoteLayers {
        /// The (local id of the) remote track.
        track: TrackId,
        /// Per layer, as offered.
        layers: Arc<[LayerState]>,
    },
    /// What the publisher of a track sends on each layer (to workers with subscribers).
    LayerInfo {
        /// The track.
        track: TrackId,
        /// Per layer, as offered.
        layers: Arc<[LayerState]>,
    },
    /// The layers of a track the sending worker's subscribers need (to the publisher's worker).
    Demand {
        /// The track.
        track: TrackId,
        /// The worker whose subscribers these are.
        worker: WorkerId,
        /// Bit per layer.
        mask: u32,
    },
    /// A subscriber on another worker needs a keyframe of this track and layer.
    KeyframeRequest {
        /// The track (published on the destination worker).
        track: TrackId,
        /// The simulcast layer index.
        layer: u8,
    },
}

/// What crosses a bus channel: all messages one worker produced for another
/// in one loop iteration.
pub type BusBatch = Vec<BusMsg>;

impl BusMsg {
    /// Whether dropping this message under overload is acceptable first
    /// (video), as opposed to audio and control.
    pub fn is_droppable(&self) -> bool {
        match self {
            BusMsg::Media(p) | BusMsg::Ingest(p) => p.kind == str0m::media::MediaKind::Video,
            BusMsg::KeyframeRequest { .. }
            | BusMsg::LayerInfo { .. }
            | BusMsg::RemoteLayers { .. }
            | BusMsg::Demand { .. } => false,
        }
    }
}

/// Messages kept for a worker whose inbox was full, at most this many.
pub const OVERFLOW_LIMIT: usize = 512;

/// The overload policy for a batch a full inbox refused: video is dropped
/// (a subscriber recovers with a keyframe; the layer selector sees the
/// loss through its downlink estimate), audio and control messages are kept
/// to be offered again with the next batch, up to [`OVERFLOW_LIMIT`]. The
/// sender never blocks. Returns (video dropped, others dropped).
pub fn shed(refused: BusBatch, kept: &mut BusBatch) -> (u64, u64) {
    let (mut video, mut other) = (0, 0);
    for m in refused {
        if m.is_droppable() {
            video += 1;
        } else if kept.len() < OVERFLOW_LIMIT {
            kept.push(m);
        } else {
            other += 1;
        }
    }
    (video, other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::types::MediaPacket;
    use std::time::Instant;
    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::{Frequency, MediaKind};

    fn pkt(kind: MediaKind) -> BusMsg {
        let spec = CodecSpec {
            codec: if kind == MediaKind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            },
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        };
        BusMsg::Media(Arc::new(MediaPacket {
            track: TrackId(1),
            kind,
            layer: 0,
            params: PayloadParams::new(96.into(), None, spec),
            seq: 1,
            rtp_time: 0,
            marker: false,
            keyframe: false,
            audio_level: None,
            voice_activity: None,
            arrival: Instant::now(),
            vp8: None,
            payload: Arc::from(vec![0u8; 10]),
        }))
    }

    #[test]
    fn full_inbox_drops_video_keeps_audio_and_control() {
        let batch = vec![
            pkt(MediaKind::Video),
            pkt(MediaKind::Audio),
            BusMsg::KeyframeRequest {
                track: TrackId(1),
                layer: 0,
            },
            pkt(MediaKind::Video),
        ];
        let mut kept = Vec::new();
        assert_eq!(shed(batch, &mut kept), (2, 0));
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|m| !m.is_droppable()));
    }

    #[test]
    fn audio_is_dropped_only_beyond_the_overflow_limit() {
        let mut kept = Vec::new();
        let batch: BusBatch = (0..OVERFLOW_LIMIT + 10)
            .map(|_| pkt(MediaKind::Audio))
            .collect();
        assert_eq!(shed(batch, &mut kept), (0, 10));
        assert_eq!(kept.len(), OVERFLOW_LIMIT);
    }
}
