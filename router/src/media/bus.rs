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
