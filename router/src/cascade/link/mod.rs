//! Link control: the router-to-router link protocol as a sans-IO state machine.
//!
//! [`LinkControl`] holds every link of one router: who is connected, which rooms are linked
//! with whom, which tracks are announced on which link and under which number, where each
//! remote track is pulled from, and what is waiting for an answer. It reads no clock, opens no
//! socket and spawns nothing. Like quinn-proto's `Connection`, its methods fall in four groups:
//!
//! - **input** (`handle_*`, and the control plane's and the API's calls): a connection was
//!   established or lost, a control frame arrived, a dial failed, a room or track appeared,
//!   demand changed, `now` passed a timeout;
//! - **output**: [`LinkControl::poll_output`] gives, in order, what the driver must do (send a
//!   frame, dial, close, tell a relay machine a track number, publish a remote track, answer an
//!   API call, ...), until it returns `None`;
//! - **timer**: [`LinkControl::poll_timeout`] is the next instant [`LinkControl::handle_timeout`]
//!   must be called (dial backoff, the grace before a broken link's tracks are withdrawn,
//!   `LinkRoom` calls that wait for a connection);
//! - **getters**: [`LinkControl::links`] for `ListLinks`.
//!
//! After every input, drain `poll_output` and re-read `poll_timeout`.
//!
//! # The protocol, as the machine runs it
//!
//! - **Connections.** One per pair of routers. The smaller node id dials at once, the larger
//!   waits [`LinkConfig::larger_id_wait`] for it first. If both dialled, both keep the
//!   connection dialled by the smaller node id ([`Admission`]). A broken link is re-dialled with
//!   backoff. Each side sends `Hello` first; a version or node id that does not match closes the
//!   link.
//! - **Rooms.** A room is linked on a link by `LinkRoom` (the API's, or automatic: see
//!   [`rooms`]). Both sides check the room's residency policy against the other's region (from
//!   its certificate); every refusal is an audit event on both sides.
//! - **Tracks.** Each side announces the tracks of a linked room, numbered per connection, with
//!   their path from the origin router; a track is never announced to a router on its path.
//!   When a router hears of one track from several peers it pulls it from the shortest path
//!   ([`tracks`]). Demand (`Subscribe`) and keyframe requests go to that peer only.
//! - **Breaks.** While a link is down its remote tracks stay (paused), or switch to another
//!   path; after [`LinkConfig::down_grace`] they are withdrawn. On reconnect rooms are re-linked,
//!   tracks re-announced and demand restored.

mod output;
mod peer;
pub mod rooms;
pub mod tracks;

pub use output::{
    kind_num, Admission, ConnId, Decider, LinkView, NodeId, Output, RequestId, RouterRef,
};

use crate::cascade::NodeIdentity;
use crate::media::types::LinkId;
use crate::media::TrackInfo;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::{RoomId, TrackId};
use peer::Peer;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tracks::{LocalTrack, Remote};

/// The timing and bounds of link control.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Link rooms that both routers of a link host, without `LinkRoom` (`cascade.auto_link`).
    pub auto_link: bool,
    /// How long remote tracks stay (paused) after their link went down.
    pub down_grace: Duration,
    /// How long a `LinkRoom` call waits for a connection to the peer.
    pub link_timeout: Duration,
    /// How long the router with the larger node id waits for the smaller one to dial.
    pub larger_id_wait: Duration,
    /// Wait before re-dialling a link that broke.
    pub redial_after: Duration,
    /// First wait after a failed dial; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between two dial attempts.
    pub max_backoff: Duration,
    /// Keyframe requests from one peer for one track layer pass on at most this often (the
    /// publisher's worker throttles them again; this only bounds what a peer can make us do).
    pub keyframe_guard: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            auto_link: true,
            down_grace: Duration::from_secs(30),
            link_timeout: Duration::from_secs(8),
            larger_id_wait: Duration::from_secs(2),
            redial_after: Duration::from_millis(200),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            keyframe_guard: Duration::from_millis(100),
        }
    }
}

/// Tracks one peer may announce on one connection.
pub const MAX_TRACKS_PER_LINK: usize = 4096;
/// Room ids one peer may say it hosts.
pub const MAX_HOSTED_ROOMS: usize = 65_536;
/// Longest path (routers a track crossed) accepted.
pub const MAX_PATH: usize = 16;
/// Most simulcast layers a relayed track may have.
pub const MAX_RIDS: usize = crate::media::layer::MAX_LAYERS;

/// The link-control machine of one router. See the [module docs](self).
#[derive(Debug)]
pub struct LinkControl {
    me: NodeIdentity,
    cfg: LinkConfig,
    peers: BTreeMap<NodeId, Peer>,
    next_link: u16,
    next_conn: u64,
    /// Rooms hosted here, with their residency policy.
    rooms: BTreeMap<RoomId, Vec<String>>,
    /// Tracks published by local sessions.
    local: BTreeMap<TrackId, LocalTrack>,
    /// Tracks learned over links.
    remote: BTreeMap<TrackId, Remote>,
    out: VecDeque<Output>,
}

impl LinkControl {
    /// A machine for the router `me`, dialling `dialable` peers (those with an address in
    /// `cascade.peers`) from `now` on.
    pub fn new(
        me: NodeIdentity,
        dialable: impl IntoIterator<Item = NodeId>,
        cfg: LinkConfig,
        now: Instant,
    ) -> Self {
        let mut m = Self {
            me,
            cfg,
            peers: BTreeMap::new(),
            next_link: 0,
            next_conn: 1,
            rooms: BTreeMap::new(),
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            out: VecDeque::new(),
        };
        for id in dialable {
            if id.as_str() == m.me.node_id {
                continue;
            }
            m.peer(&id).dialable = true;
            m.schedule_dial(&id, now, Duration::ZERO);
        }
        m
    }

    /// This router.
    pub fn identity(&self) -> &NodeIdentity {
        &self.me
    }

    /// The next thing the driver must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.next_timeout()).min()
    }

    /// Time has reached `now`: dials that are due, links down for longer than the grace,
    /// `LinkRoom` calls that waited too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            self.peer_timeouts(&id, now);
        }
    }

    /// The links and what the machine knows of them, by node id.
    pub fn links(&self) -> Vec<LinkView> {
        self.peers.values().map(Peer::view).collect()
    }

    /// The link id of a peer, if it is known.
    pub fn link_of(&self, peer: &NodeId) -> Option<LinkId> {
        self.peers.get(peer).map(|p| p.link)
    }

    /// A peer is known: in `cascade.peers`, or it connected once.
    pub fn knows(&self, peer: &NodeId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Rooms hosted here, as the machine knows them.
    pub fn hosts(&self, room: &RoomId) -> bool {
        self.rooms.contains_key(room)
    }

    // ----- inputs from the control plane ------------------------------------

    /// A track was published here: a local one is announced on the links of its room. (A
    /// remote one is the machine's own doing and already handled.)
    pub fn track_published(&mut self, track: &TrackInfo) {
        if !track.path.is_empty() {
            return;
        }
        self.local.insert(
            track.id,
            LocalTrack {
                room: track.room.clone(),
                kind: track.kind,
                rids: track.rids.iter().map(|r| r.to_string()).collect(),
                participant: track.participant.to_string(),
            },
        );
        self.announce_everywhere(track.id);
    }

    /// A track is no longer published here.
    pub fn track_unpublished(&mut self, track: TrackId) {
        if self.local.remove(&track).is_some() {
            self.withdraw_everywhere(track);
        } else if self.remote.contains_key(&track) {
            self.forget_remote(track, false);
        }
    }

    /// Subscribers here need these layers of a remote track.
    pub fn remote_demand(&mut self, track: TrackId, mask: u32) {
        if let Some(r) = self.remote.get_mut(&track) {
            r.demand = mask;
            self.sync_demand(track);
        }
    }

    /// A keyframe of a remote track is needed: asked of the router it is pulled from.
    pub fn remote_keyframe(&mut self, track: TrackId, layer: u8) {
        let Some((peer, conn, num)) = self.best_route(track) else {
            return;
        };
        self.send(
            &peer,
            conn,
            cpb::frame::Msg::KeyframeRequest(cpb::KeyframeRequest {
                link_track: num,
                layer: u32::from(layer),
            }),
        );
    }

    /// The layer state of a track relayed to other routers.
    pub fn link_layers(&mut self, track: TrackId, layers: &[crate::media::select::LayerState]) {
        let layers: Vec<cpb::LayerState> = layers
            .iter()
            .map(|l| cpb::LayerState {
                active: l.active,
                bitrate: l.bitrate,
                width: u32::from(l.width),
                height: u32::from(l.height),
            })
            .collect();
        let to: Vec<(NodeId, ConnId, u32)> = self
            .peers
            .values()
            .filter_map(|p| Some((p.id.clone(), p.conn?, *p.out.get(&track)?)))
            .collect();
        for (peer, conn, num) in to {
            self.send(
                &peer,
                conn,
                cpb::frame::Msg::LayerInfo(cpb::LayerInfo {
                    link_track: num,
                    layers: layers.clone(),
                }),
            );
        }
    }

    // ----- inputs from connections ------------------------------------------

    /// A control frame arrived on `conn` from `peer`.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        peer: &NodeId,
        conn: ConnId,
        msg: cpb::frame::Msg,
    ) {
        use cpb::frame::Msg;
        if self.peers.get(peer).and_then(|p| p.conn) != Some(conn) {
            return; // a frame of a connection that is gone
        }
        match msg {
            Msg::Hello(h) => {
                if h.node_id != peer.as_str() || h.version != cpb::LINK_VERSION {
                    tracing::warn!(
                        %peer,
                        version = h.version,
                        "cascade: hello does not match (node id or link protocol version)"
                    );
                    self.out.push_back(Output::Close {
                        peer: peer.clone(),
                        conn,
                        code: CloseCode::Hello,
                    });
                    self.handle_disconnected(now, peer, conn);
                }
            }
            Msg::LinkRoom(l) => self.on_link_request(peer, conn, l),
            Msg::LinkRoomReply(r) => self.on_link_reply(peer, r),
            Msg::UnlinkRoom(u) => self.on_unlink(peer, &u.room_id),
            Msg::HostedRooms(h) => self.on_hosted_rooms(peer, conn, h),
            Msg::TrackAnnounce(a) => self.on_announce(peer, conn, a),
            Msg::TrackWithdraw(w) => self.on_withdraw(peer, conn, w.link_track),
            Msg::Subscribe(s) => self.on_subscribe(peer, s),
            Msg::KeyframeRequest(k) => self.on_keyframe_request(now, peer, k),
            Msg::Nack(n) => {
                let p = self.peer(peer);
                if p.out_rev.contains_key(&n.link_track) {
                    let link = p.link;
                    self.out.push_back(Output::TxNack {
                        link,
                        num: n.link_track,
                        layer: n.layer.min(31) as u8,
                        seqs: n.seqs,
                    });
                } else {
                    p.ignored += 1;
                }
            }
            Msg::LayerInfo(l) => self.on_layer_info(peer, l),
            Msg::Codec(c) => {
                let p = self.peer(peer);
                match (p.inbound.contains_key(&c.link_track), c.params) {
                    (true, Some(params)) => {
                        let link = p.link;
                        self.out.push_back(Output::RxCodec {
                            link,
                            conn,
                            num: c.link_track,
                            params,
                        });
                    }
                    _ => p.ignored += 1,
                }
            }
        }
    }

    // ----- helpers shared by the submodules ---------------------------------

    /// The peer's state, created on first use with the next link id.
    fn peer(&mut self, id: &NodeId) -> &mut Peer {
        if !self.peers.contains_key(id) {
            let link = LinkId(self.next_link);
            self.next_link = self.next_link.wrapping_add(1);
            self.peers.insert(id.clone(), Peer::new(id.clone(), link));
        }
        self.peers
            .get_mut(id)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    fn send(&mut self, peer: &NodeId, conn: ConnId, msg: cpb::frame::Msg) {
        self.out.push_back(Output::Frame {
            peer: peer.clone(),
            conn,
            msg,
        });
    }

    /// Sends on the peer's current connection, if it is up.
    fn send_up(&mut self, peer: &NodeId, msg: cpb::frame::Msg) {
        if let Some(conn) = self.peers.get(peer).and_then(|p| p.conn) {
            self.send(peer, conn, msg);
        }
    }
}

#[cfg(test)]
mod tests;
