//! Commands from the control plane to a media worker, their replies, and
//! the events a worker reports back.

use super::types::{TrackInfo, WorkerId};
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use std::sync::Arc;
use str0m::media::Mid;
use tokio::sync::oneshot;

/// Why a worker refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The SDP could not be parsed or negotiated (str0m's reason).
    #[error("invalid SDP: {0}")]
    BadSdp(String),
    /// The session is not on this worker (closed meanwhile).
    #[error("unknown session")]
    UnknownSession,
    /// Offer/answer out of order: what was expected instead.
    #[error("{0}")]
    OutOfOrder(&'static str),
    /// The session hit an internal str0m failure and was closed.
    #[error("internal media error; the session was closed")]
    Internal,
}

/// Reply channel of a command. Sending never blocks.
pub type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

/// A track the browser's offer publishes.
#[derive(Debug, Clone)]
pub struct NewTrack {
    /// Router-assigned id.
    pub id: TrackId,
    /// Audio or video.
    pub kind: str0m::media::MediaKind,
    /// Its media line.
    pub mid: Mid,
    /// Simulcast rids, as offered.
    pub rids: Vec<str0m::media::Rid>,
}

/// Result of accepting a browser offer.
#[derive(Debug, Clone)]
pub struct AnswerOk {
    /// The SDP answer.
    pub answer: String,
    /// Tracks added by this offer.
    pub added: Vec<NewTrack>,
    /// Tracks this offer stopped publishing.
    pub removed: Vec<TrackId>,
    /// Tracks sent on the offer's receive-only lines, by the answer itself
    /// (WHEP): where each sits in the session's SDP.
    pub attached: Vec<(TrackId, Mid)>,
}

/// Result of a router-made offer.
#[derive(Debug, Clone)]
pub struct OfferOk {
    /// The SDP offer.
    pub offer: String,
    /// Where each newly subscribed track sits in the subscriber's SDP.
    pub mids: Vec<(TrackId, Mid)>,
}

/// A command to one worker.
#[derive(Debug)]
pub enum Command {
    /// Create a session from a browser offer.
    CreateSession {
        /// Id the control plane assigned.
        session: SessionId,
        /// Room of the session.
        room: RoomId,
        /// Participant of the session.
        participant: ParticipantId,
        /// The browser's offer.
        offer: String,
        /// Tracks to send on the offer's receive-only lines, subscribed by
        /// the answer (WHEP); empty for an ordinary session.
        attach: Vec<Arc<TrackInfo>>,
        /// Answer and published tracks.
        reply: Reply<AnswerOk>,
    },
    /// A new browser offer on an existing session.
    Renegotiate {
        /// The session.
        session: SessionId,
        /// The browser's offer.
        offer: String,
        /// Answer and track changes.
        reply: Reply<AnswerOk>,
    },
    /// Add outgoing streams for tracks; replies with the router's offer.
    Subscribe {
        /// The subscriber.
        session: SessionId,
        /// The tracks to add.
        tracks: Vec<Arc<TrackInfo>>,
        /// The router's offer.
        reply: Reply<OfferOk>,
    },
    /// Stop outgoing streams; replies with the router's offer.
    Unsubscribe {
        /// The subscriber.
        session: SessionId,
        /// The tracks to stop.
        tracks: Vec<TrackId>,
        /// The router's offer.
        reply: Reply<OfferOk>,
    },
    /// The browser's answer to the router's pending offer.
    SetAnswer {
        /// The session.
        session: SessionId,
        /// The browser's answer.
        answer: String,
        /// Done.
        reply: Reply<()>,
    },
    /// Change a subscriber's preferences for one track.
    UpdateSubscription {
        /// The subscriber.
        session: SessionId,
        /// The track.
        track: TrackId,
        /// What changes.
        update: SubscriptionUpdate,
        /// The subscription's state afterwards.
        reply: Reply<SubscriptionView>,
    },
    /// Close a session.
    CloseSession {
        /// The session.
        session: SessionId,
        /// Done.
        reply: Reply<()>,
    },
    /// A subscriber of `track` now lives on `worker`: send it the track's packets.
    AddDestination {
        /// The published track (on this worker).
        track: TrackId,
        /// Where a subscriber is.
        worker: WorkerId,
    },
    /// One subscriber of `track` on `worker` went away.
    RemoveDestination {
        /// The published track (on this worker).
        track: TrackId,
        /// Where the subscriber was.
        worker: WorkerId,
    },
    /// Publish a track that arrives over a link, with this worker as its home.
    AddRemoteTrack {
        /// Local id of the remote track.
        track: TrackId,
        /// Audio or video.
        kind: str0m::media::MediaKind,
        /// Its simulcast rids.
        rids: Vec<str0m::media::Rid>,
    },
    /// A remote track is withdrawn.
    RemoveRemoteTrack {
        /// Local id of the remote track.
        track: TrackId,
    },
    /// Relay a local track's layers in `mask` to a link (replaces the mask).
    SetLinkDemand {
        /// The track (published on this worker).
        track: TrackId,
        /// The link.
        link: super::types::LinkId,
        /// Bit per layer; 0 stops the relay.
        mask: u32,
    },
    /// A far router asks for a keyframe of a local track.
    RequestKeyframe {
        /// The track (published on this worker).
        track: TrackId,
        /// The layer.
        layer: u8,
    },
    /// The track is no longer published: drop its outgoing streams here.
    TrackGone {
        /// The track.
        track: TrackId,
    },
    /// Stop the worker.
    Shutdown,
}

/// Changes to a subscription's preferences; `None` keeps a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionUpdate {
    /// Highest spatial layer by rank.
    pub max_spatial_layer: Option<u8>,
    /// Highest resolution (clears `max_spatial_layer`).
    pub max_size: Option<(u32, u32)>,
    /// Highest temporal layer.
    pub max_temporal_layer: Option<u8>,
    /// Paused.
    pub paused: Option<bool>,
    /// Priority, 1..=100.
    pub priority: Option<u32>,
}

/// A subscription as the API reports it (layers by rank, lowest 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    /// The subscriber's media line.
    pub mid: Mid,
    /// Layer forwarded now.
    pub current: Option<u8>,
    /// Layer wanted.
    pub target: Option<u8>,
    /// The preferences.
    pub pref: super::select::Preference,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `CloseSession` or room deletion.
    Api,
    /// ICE never connected, or stopped answering.
    IceTimeout,
    /// str0m failed internally (a panic or fatal error) for this session only.
    Internal,
    /// The peer's DTLS failed: its certificate does not match the
    /// fingerprint of its SDP, or the handshake broke off (kaskade takes
    /// ECDSA client certificates only, as browsers send).
    DtlsFailed,
    /// The router shuts down.
    Shutdown,
    /// The router drained and its grace period ran out.
    Drained,
}

impl CloseReason {
    /// The reason as reported to integrators.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Api => "closed by api",
            CloseReason::IceTimeout => "ice timeout",
            CloseReason::Internal => "internal error",
            CloseReason::DtlsFailed => "dtls failed",
            CloseReason::Shutdown => "router shutdown",
            CloseReason::Drained => "router drained: grace period over",
        }
    }
}

/// Something a worker tells the control plane on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// ICE and DTLS are up.
    Connected {
        /// The session.
        session: SessionId,
    },
    /// The layer forwarded to a subscriber changed (layers by rank).
    LayerChanged {
        /// The subscriber.
        session: SessionId,
        /// The track.
        track: TrackId,
        /// Before.
        old: Option<u8>,
        /// After.
        new: Option<u8>,
        /// Why.
        reason: super::select::Reason,
    },
    /// Whether any subscriber wants a layer of a published track.
    LayerDemand {
        /// The track.
        track: TrackId,
        /// The layer (as offered).
        layer: u8,
        /// Its rid.
        rid: Option<str0m::media::Rid>,
        /// Wanted by at least one subscriber.
        wanted: bool,
    },
    /// Subscribers here need these layers of a remote track (bit per layer).
    RemoteDemand {
        /// Local id of the remote track.
        track: TrackId,
        /// Layers needed.
        mask: u32,
    },
    /// The layers of a local track that is relayed over links (sent
    /// periodically to the far routers).
    LinkLayers {
        /// The track.
        track: TrackId,
        /// Per layer, as offered.
        layers: Arc<[super::select::LayerState]>,
    },
    /// A keyframe of a remote track is needed (to ask the origin router).
    RemoteKeyframe {
        /// Local id of the remote track.
        track: TrackId,
        /// The layer.
        layer: u8,
    },
    /// A published audio track started or stopped speaking, or its level
    /// moved (see `media::speaker`).
    AudioLevel {
        /// The track.
        track: TrackId,
        /// Smoothed loudness 0..=127 while speaking; `None`: silent.
        level: Option<u8>,
        /// When the worker decided it.
        at: std::time::Instant,
    },
    /// The worker closed a session by itself (not through `CloseSession`).
    Closed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: CloseReason,
    },
}
