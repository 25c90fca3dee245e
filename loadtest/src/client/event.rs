//! What a client reports: [`ClientError`] and buffered [`ClientEvent`]s.

use str0m::bwe::Bitrate;
use str0m::channel::ChannelId;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::RtcError;
use str0m::{Event, IceConnectionState};

/// Errors of the client API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The SDP did not parse.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// str0m refused the operation.
    #[error("rtc: {0}")]
    Rtc(#[from] RtcError),
    /// `accept_answer` without an offer pending.
    #[error("no offer pending")]
    NoPendingOffer,
    /// The local address is not usable as an ICE host candidate.
    #[error("bad local candidate: {0}")]
    Candidate(String),
}

/// Buffered events (RTP packets are not buffered: they are recorded, see
/// [`Client::received`](super::Client::received)).
#[derive(Debug)]
pub enum ClientEvent {
    /// ICE and DTLS are up: media flows.
    Connected,
    /// ICE connection state change.
    IceState(IceConnectionState),
    /// A media line was negotiated.
    MediaAdded {
        /// Its mid.
        mid: Mid,
        /// Audio or video.
        kind: MediaKind,
        /// Direction from this client's side.
        direction: Direction,
        /// Simulcast rids (receive layers for a receiving mid, send layers otherwise).
        rids: Vec<Rid>,
    },
    /// A data channel opened.
    ChannelOpen {
        /// Channel id.
        id: ChannelId,
        /// Its label.
        label: String,
    },
    /// Data channel message.
    ChannelData {
        /// Channel id.
        id: ChannelId,
        /// Binary or text.
        binary: bool,
        /// Message.
        data: Vec<u8>,
    },
    /// A data channel closed.
    ChannelClose(ChannelId),
    /// The remote asked for a keyframe on a sending layer (already acted upon).
    KeyframeRequest {
        /// The mid.
        mid: Mid,
        /// The layer.
        rid: Option<Rid>,
        /// PLI or FIR.
        kind: KeyframeRequestKind,
    },
    /// New egress bandwidth estimate.
    EgressBitrate(Bitrate),
    /// The `Rtc` closed.
    Closed,
    /// Any other str0m event (stats, stream paused, ...).
    Other(Box<Event>),
}
