//! Plain data shared by the media workers and the control plane.

use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Rid};

/// Index of a media worker thread (and of its UDP socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u16);

impl WorkerId {
    /// The worker's index as a `usize`, for indexing per-worker tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// A link to another router (index assigned by the cascade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u16);

/// A published track, as every worker and the control plane see it.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    /// Router-assigned id.
    pub id: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Room the track belongs to.
    pub room: RoomId,
    /// Publishing session.
    pub session: SessionId,
    /// Publishing participant.
    pub participant: ParticipantId,
    /// The worker the publisher lives on.
    pub worker: WorkerId,
    /// The media line in the publisher's SDP.
    pub mid: Mid,
    /// Simulcast layer ids, in the order the publisher offered them (lowest first for Chrome).
    pub rids: Vec<Rid>,
    /// For a track relayed from other routers: the routers it crossed, its
    /// origin first. Empty for a local track.
    pub path: Vec<String>,
}

/// One received RTP packet, decrypted once by the publisher's worker and
/// shared (never copied) by every subscriber on every worker.
#[derive(Debug)]
pub struct MediaPacket {
    /// The track it belongs to.
    pub track: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Simulcast layer index (position of the rid in [`TrackInfo::rids`]; 0
    /// without simulcast). Raw, as the cascade builds it; see [`MediaPacket::layer`].
    pub layer: u8,
    /// The publisher's codec parameters for the packet's payload type.
    pub params: PayloadParams,
    /// Extended (64-bit) sequence number in the publisher's stream.
    pub seq: u64,
    /// RTP timestamp in the publisher's stream.
    pub rtp_time: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// Packets of this track and layer before this one are lost for good (a cascade link on
    /// the way broke, or a gap could not be repaired): subscribers forwarded this layer resume
    /// at a keyframe, and the flag is relayed onward. Always false for local tracks.
    pub resync: bool,
    /// Audio level header extension value, if present.
    pub audio_level: Option<i8>,
    /// Voice activity flag from the audio level extension, if present.
    pub voice_activity: Option<bool>,
    /// When the router received it.
    pub arrival: Instant,
    /// VP8 descriptor facts and str0m's parsed descriptor (for patches).
    pub vp8: Option<(super::vp8::Vp8Info, str0m::rtp::Vp8Descriptor)>,
    /// The RTP payload (header stripped, SRTP removed).
    pub payload: Arc<[u8]>,
}

impl MediaPacket {
    /// Its simulcast layer.
    pub fn layer(&self) -> super::layer::Layer {
        super::layer::Layer::new(self.layer)
    }
}
