//! What the link-control machine takes and gives: ids, its outputs, its view of a link.

use crate::control::{ApiError, RemoteTrack};
use crate::media::select::LayerState;
use crate::media::types::LinkId;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::{RoomId, TrackId};
use std::fmt;
use std::sync::Arc;
use str0m::media::MediaKind;

/// A router's node id (the one in its certificate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Wraps a node id (validated where it enters: configuration or a certificate).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// One connection of a link (a link is re-established with a new one after a break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A `LinkRoom` call waiting for its answer ([`Output::Reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Who refused a link of a room (the `decided_by` of the audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    /// This router.
    Local,
    /// The peer.
    Peer,
}

impl Decider {
    /// As the audit event says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decider::Local => "local",
            Decider::Peer => "peer",
        }
    }
}

/// What the machine decided about a new connection ([`super::LinkControl::handle_connected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Keep it, as this connection of the link.
    Accept(ConnId),
    /// Close it with this code (a duplicate, or a router that reached itself).
    Refuse(CloseCode),
}

/// A router on the other end of a link, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRef {
    /// Its node id.
    pub node_id: NodeId,
    /// Its region (from its certificate).
    pub region: String,
}

/// Everything the machine asks of its driver, in the order it must happen.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Dial this peer; answer with `handle_connected` or `handle_dial_failed`.
    Dial(NodeId),
    /// Send a control frame on a connection.
    Frame {
        /// The peer.
        peer: NodeId,
        /// The connection (drop the frame if it is gone).
        conn: ConnId,
        /// The frame.
        msg: cpb::frame::Msg,
    },
    /// Close a connection.
    Close {
        /// The peer.
        peer: NodeId,
        /// The connection.
        conn: ConnId,
        /// Why.
        code: CloseCode,
    },
    /// A link is up on this connection: relay state of the link starts afresh.
    LinkUp {
        /// The peer.
        peer: NodeId,
        /// The link (stable across connections).
        link: LinkId,
        /// The connection.
        conn: ConnId,
        /// The link came back after a break (not its first connection, not a duplicate).
        reconnect: bool,
    },
    /// The link's connection is gone.
    LinkDown {
        /// The peer.
        peer: NodeId,
        /// The link.
        link: LinkId,
        /// The connection that ended.
        conn: ConnId,
    },
    /// Relay send: a track's packets go on `link` numbered `num` (None: no longer).
    TxMap {
        /// The link.
        link: LinkId,
        /// The track (local, or remote relayed onward).
        track: TrackId,
        /// Its link-local number.
        num: Option<u32>,
    },
    /// Relay send: the far side misses these packets.
    TxNack {
        /// The link.
        link: LinkId,
        /// Link-local track number.
        num: u32,
        /// Layer.
        layer: u8,
        /// Sequence numbers (low 32 bits).
        seqs: Vec<u32>,
    },
    /// Relay receive: packets numbered `num` on the link's connection `conn` belong to this
    /// remote track (None: forget the number).
    RxRoute {
        /// The link.
        link: LinkId,
        /// The connection the number belongs to.
        conn: ConnId,
        /// Link-local track number.
        num: u32,
        /// The remote track and its kind.
        route: Option<(TrackId, MediaKind)>,
    },
    /// Relay receive: the codec of `num`.
    RxCodec {
        /// The link.
        link: LinkId,
        /// The connection.
        conn: ConnId,
        /// Link-local track number.
        num: u32,
        /// The parameters as the peer sent them.
        params: cpb::CodecParams,
    },
    /// Make sure the room exists here (a peer links it); answer with `room_ready`.
    EnsureRoom {
        /// The asking peer.
        peer: NodeId,
        /// The room.
        room: RoomId,
        /// The policy the peer sent (used if the room must be created).
        policy: Vec<String>,
    },
    /// Publish a track announced over a link (its id is `RemoteTrack::local_id`).
    AddRemoteTrack(RemoteTrack),
    /// Withdraw a remote track.
    RemoveRemoteTrack(TrackId),
    /// Relay these layers of a track to a link (0 stops).
    SetLinkDemand {
        /// The track.
        track: TrackId,
        /// The link.
        link: LinkId,
        /// Layer bit mask.
        mask: u32,
    },
    /// A far router asks for a keyframe of a track relayed from here.
    RequestKeyframe {
        /// The track.
        track: TrackId,
        /// Its layer.
        layer: u8,
    },
    /// The origin's layer state of a remote track.
    RemoteLayers {
        /// The remote track.
        track: TrackId,
        /// Per layer.
        layers: Arc<[LayerState]>,
    },
    /// A room's link to a peer came up or went down (event and `linked`).
    LinkChanged {
        /// The room.
        room: RoomId,
        /// The peer.
        peer: NodeId,
        /// Its region.
        region: String,
        /// Up or down.
        up: bool,
    },
    /// Audit: a link of a room was refused.
    LinkRefused {
        /// The room.
        room: RoomId,
        /// The peer.
        peer: NodeId,
        /// Its region.
        region: String,
        /// Why.
        reason: String,
        /// Which side refused.
        decided_by: Decider,
    },
    /// The room's media reached a router beyond a link (chains).
    Reached {
        /// The room.
        room: RoomId,
        /// The router.
        node: NodeId,
    },
    /// The answer to a `link_room` call.
    Reply {
        /// The call.
        req: RequestId,
        /// The peer linked, or why not.
        result: Result<RouterRef, ApiError>,
    },
}

/// One link as the machine sees it (for `ListLinks`; the driver adds traffic figures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// The peer.
    pub peer: NodeId,
    /// Its region ("" before the first connection).
    pub region: String,
    /// Its link id.
    pub link: LinkId,
    /// The current connection, if up.
    pub conn: Option<ConnId>,
    /// Rooms linked (kept across breaks).
    pub rooms: Vec<RoomId>,
    /// Rooms the peer says it hosts (rooms that link themselves).
    pub hosted: usize,
    /// Tracks announced to the peer on this connection.
    pub tracks_sent: u32,
    /// Tracks the peer announced on this connection.
    pub tracks_received: u32,
    /// Times the link came back after a break.
    pub reconnects: u32,
    /// Frames from the peer that were ignored (unknown numbers, bad ids, over a bound).
    pub ignored: u64,
}

/// The kind of a track on the wire (`TrackAnnounce.kind`: 1 audio, 2 video).
pub fn kind_num(k: MediaKind) -> u32 {
    match k {
        MediaKind::Audio => 1,
        MediaKind::Video => 2,
    }
}

/// The kind announced on the wire.
pub(super) fn kind_of(n: u32) -> Option<MediaKind> {
    match n {
        1 => Some(MediaKind::Audio),
        2 => Some(MediaKind::Video),
        _ => None,
    }
}
