//! One simulated router: its link-control machine, its relay machines, and a host that stands
//! in for the control plane and the media workers (rooms, the track registry, layer demand,
//! keyframe requests, packets reaching a remote track's home worker).

use super::net::{Net, MAX_DATAGRAM};
use crate::cascade::link::{ConnId, LinkControl, NodeId, Output, RequestId, RouterRef};
use crate::cascade::relay::{RelayRx, RelayTx, RxRoute, RxStats, TxOutput};
use crate::cascade::NodeIdentity;
use crate::control::registry::region_allowed;
use crate::control::ApiError;
use crate::media::types::{LinkId, MediaPacket};
use crate::media::WorkerId;
use kaskade_protocol::{RoomId, TrackId};
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use str0m::media::MediaKind;

/// A track in a host's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTrack {
    /// Its room.
    pub room: RoomId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Routers it crossed (empty: published here).
    pub path: Vec<String>,
    /// Its id on the origin router.
    pub origin_track_id: String,
}

/// What a host saw happen (the control plane's events and audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A room's link came up or went down.
    LinkChanged {
        /// Room.
        room: RoomId,
        /// Peer.
        peer: NodeId,
        /// Up?
        up: bool,
    },
    /// A link of a room was refused.
    LinkRefused {
        /// Room.
        room: RoomId,
        /// Peer.
        peer: NodeId,
        /// Who decided: "local" or "peer".
        decided_by: &'static str,
    },
    /// A remote track appeared.
    TrackAdded(TrackId),
    /// A remote track went.
    TrackRemoved(TrackId),
}

/// The control plane and the workers of a simulated router, reduced to what the cascade sees.
#[derive(Debug, Default)]
pub struct Host {
    /// Rooms and their policies.
    pub rooms: BTreeMap<RoomId, Vec<String>>,
    /// The track registry.
    pub tracks: BTreeMap<TrackId, HostTrack>,
    /// Layers local subscribers want, per track.
    pub subs: BTreeMap<TrackId, u32>,
    /// Layers each link wants, per track.
    pub link_demand: BTreeMap<(TrackId, LinkId), u32>,
    /// What was last reported as a remote track's demand.
    demanded: BTreeMap<TrackId, u32>,
    /// Sequence numbers that reached a remote track's home worker, per layer.
    pub received: BTreeMap<(TrackId, u8), BTreeSet<u64>>,
    /// Packets that reached a home worker twice.
    pub duplicates: u64,
    /// Keyframe requests that reached a local publisher: (track, layer, when).
    pub keyframe_requests: Vec<(TrackId, u8, Instant)>,
    /// Events in order.
    pub events: Vec<HostEvent>,
    /// Answers to `LinkRoom` calls.
    pub replies: BTreeMap<RequestId, Result<RouterRef, ApiError>>,
}

/// One simulated router.
#[derive(Debug)]
pub struct Node {
    /// Who it is.
    pub identity: NodeIdentity,
    /// Running (a stopped router answers nothing).
    pub alive: bool,
    /// The link-control machine.
    pub machine: LinkControl,
    /// Relay send, per link.
    pub tx: BTreeMap<LinkId, RelayTx>,
    /// Relay receive, per connection.
    pub rx: BTreeMap<ConnId, RelayRx>,
    /// The current connection of each link.
    link_conn: BTreeMap<LinkId, ConnId>,
    /// Receive counters of connections that ended.
    pub rx_done: RxStats,
    /// Stand-in for the control plane and workers.
    pub host: Host,
}

impl Node {
    pub(super) fn new(identity: NodeIdentity, machine: LinkControl) -> Self {
        Self {
            identity,
            alive: true,
            machine,
            tx: BTreeMap::new(),
            rx: BTreeMap::new(),
            link_conn: BTreeMap::new(),
            rx_done: RxStats::default(),
            host: Host::default(),
        }
    }

    /// This router's node id.
    pub fn id(&self) -> NodeId {
        NodeId::new(self.identity.node_id.clone())
    }

    /// The remote track here that came from `origin_track` (its id on the origin router).
    pub fn remote_track(&self, origin_track: TrackId) -> Option<TrackId> {
        let origin = origin_track.to_string();
        self.host
            .tracks
            .iter()
            .find(|(_, t)| !t.path.is_empty() && t.origin_track_id == origin)
            .map(|(id, _)| *id)
    }

    /// Sets what local subscribers want of a track and reports the track's demand.
    pub(super) fn set_subs(&mut self, track: TrackId, mask: u32) {
        self.host.subs.insert(track, mask);
        self.update_demand(track);
    }

    /// A remote track's demand is what local subscribers and onward links want (the worker's
    /// report).
    fn update_demand(&mut self, track: TrackId) {
        let Some(t) = self.host.tracks.get(&track) else {
            return;
        };
        if t.path.is_empty() {
            return;
        }
        let links = self
            .host
            .link_demand
            .range((track, LinkId(0))..=(track, LinkId(u16::MAX)))
            .fold(0, |m, (_, v)| m | v);
        let mask = self.host.subs.get(&track).copied().unwrap_or(0) | links;
        if self.host.demanded.get(&track).copied().unwrap_or(0) != mask {
            self.host.demanded.insert(track, mask);
            self.machine.remote_demand(track, mask);
        }
    }

    /// A packet of `track` leaves this router's worker for the links that want its layer.
    pub(super) fn relay(
        &mut self,
        now: Instant,
        net: &mut Net,
        rng: &mut StdRng,
        pkt: &MediaPacket,
    ) {
        let bit = 1u32 << pkt.layer.min(31);
        let links: Vec<LinkId> = self
            .host
            .link_demand
            .range((pkt.track, LinkId(0))..=(pkt.track, LinkId(u16::MAX)))
            .filter(|(_, m)| *m & bit != 0)
            .map(|((_, l), _)| *l)
            .collect();
        for link in links {
            let up = self.link_conn.get(&link).copied();
            let tx = self.tx.entry(link).or_default();
            tx.handle_packet(pkt, up.map(|_| MAX_DATAGRAM));
            self.flush_tx(now, net, rng, link);
        }
    }

    fn flush_tx(&mut self, now: Instant, net: &mut Net, rng: &mut StdRng, link: LinkId) {
        let me = self.id();
        let idx = self.index(net);
        let conn = self.link_conn.get(&link).copied();
        let Some(tx) = self.tx.get_mut(&link) else {
            return;
        };
        while let Some(o) = tx.poll_output() {
            let Some(conn) = conn else {
                continue;
            };
            match o {
                TxOutput::Datagram { data, repair } => {
                    net.send_datagram(now, rng, idx, conn, data, repair);
                }
                TxOutput::Frame(msg) => net.send_frame(now, (idx, &me), conn, msg),
            }
        }
    }

    /// Packets that reached home workers: recorded, and relayed onward.
    pub(super) fn flush_rx(&mut self, now: Instant, net: &mut Net, rng: &mut StdRng, conn: ConnId) {
        let mut pkts = Vec::new();
        let mut nacks = Vec::new();
        if let Some(rx) = self.rx.get_mut(&conn) {
            while let Some((_, batch)) = rx.poll_batch() {
                pkts.extend(batch);
            }
            while let Some(n) = rx.poll_nack() {
                nacks.push(n);
            }
        }
        let me = self.id();
        let idx = self.index(net);
        for n in nacks {
            net.send_frame(
                now,
                (idx, &me),
                conn,
                kaskade_protocol::cascade::frame::Msg::Nack(n),
            );
        }
        for p in pkts {
            if !self
                .host
                .received
                .entry((p.track, p.layer))
                .or_default()
                .insert(p.seq)
            {
                self.host.duplicates += 1;
            }
            self.relay(now, net, rng, &p);
        }
    }

    /// This node's index (nodes know theirs through the network's connections).
    fn index(&self, net: &Net) -> usize {
        net.index_of(&self.identity.node_id)
    }

    /// Carries out everything the link machine asks, until it asks nothing more.
    pub(super) fn drive(
        &mut self,
        now: Instant,
        net: &mut Net,
        rng: &mut StdRng,
        ids: &BTreeMap<NodeId, usize>,
    ) {
        let me = self.id();
        let idx = self.index(net);
        while let Some(o) = self.machine.poll_output() {
            match o {
                Output::Dial(peer) => {
                    let to = ids.get(&peer).copied();
                    let alive = to.is_some_and(|t| net.alive(t));
                    net.dial(now, idx, to, peer, alive);
                }
                Output::Frame { conn, msg, .. } => net.send_frame(now, (idx, &me), conn, msg),
                Output::Close { conn, code, .. } => net.close(now, idx, conn, &me, code),
                Output::LinkUp { link, conn, .. } => {
                    self.tx.entry(link).or_default().reset();
                    self.link_conn.insert(link, conn);
                    self.rx.insert(conn, RelayRx::new());
                }
                Output::LinkDown { link, conn, .. } => {
                    if self.link_conn.get(&link) == Some(&conn) {
                        self.link_conn.remove(&link);
                    }
                    if let Some(rx) = self.rx.remove(&conn) {
                        self.rx_done += rx.stats();
                    }
                }
                Output::TxMap { link, track, num } => {
                    self.tx.entry(link).or_default().map(track, num)
                }
                Output::TxNack {
                    link,
                    num,
                    layer,
                    seqs,
                } => {
                    self.tx
                        .entry(link)
                        .or_default()
                        .handle_nack(num, layer, &seqs);
                    self.flush_tx(now, net, rng, link);
                }
                Output::RxRoute {
                    conn, num, route, ..
                } => {
                    if let Some(rx) = self.rx.get_mut(&conn) {
                        rx.set_route(
                            num,
                            route.map(|(track, kind)| RxRoute {
                                track,
                                worker: WorkerId(0),
                                kind,
                            }),
                        );
                    }
                }
                Output::RxCodec {
                    conn, num, params, ..
                } => {
                    if let Some(rx) = self.rx.get_mut(&conn) {
                        rx.set_codec(num, &params);
                    }
                    self.flush_rx(now, net, rng, conn);
                }
                Output::EnsureRoom { peer, room, policy } => {
                    let own = self.identity.region.clone();
                    let result = match self.host.rooms.get(&room) {
                        Some(p) => Ok(p.clone()),
                        None if region_allowed(&policy, &own) => {
                            self.host.rooms.insert(room.clone(), policy.clone());
                            Ok(policy)
                        }
                        None => Err(format!(
                            "region {own:?} is outside the room's allowed regions"
                        )),
                    };
                    self.machine.room_ready(&peer, room, result);
                }
                Output::AddRemoteTrack(t) => {
                    let id = t.local_id();
                    self.host.tracks.insert(
                        id,
                        HostTrack {
                            room: t.room,
                            kind: t.kind,
                            path: t.path,
                            origin_track_id: t.origin_track_id,
                        },
                    );
                    self.host.events.push(HostEvent::TrackAdded(id));
                }
                Output::RemoveRemoteTrack(t) => {
                    self.host.tracks.remove(&t);
                    self.host.demanded.remove(&t);
                    self.host.events.push(HostEvent::TrackRemoved(t));
                    self.machine.track_unpublished(t);
                }
                Output::SetLinkDemand { track, link, mask } => {
                    if mask == 0 {
                        self.host.link_demand.remove(&(track, link));
                    } else {
                        self.host.link_demand.insert((track, link), mask);
                    }
                    self.update_demand(track);
                }
                Output::RequestKeyframe { track, layer } => {
                    match self.host.tracks.get(&track) {
                        Some(t) if t.path.is_empty() => {
                            self.host.keyframe_requests.push((track, layer, now));
                        }
                        // The home worker of a remote track asks upstream (the real one
                        // throttles first: see the media tests).
                        Some(_) => self.machine.remote_keyframe(track, layer),
                        None => {}
                    }
                }
                Output::RemoteLayers { .. } | Output::Reached { .. } => {}
                Output::LinkChanged { room, peer, up, .. } => {
                    self.host
                        .events
                        .push(HostEvent::LinkChanged { room, peer, up });
                }
                Output::LinkRefused {
                    room,
                    peer,
                    decided_by,
                    ..
                } => self.host.events.push(HostEvent::LinkRefused {
                    room,
                    peer,
                    decided_by: decided_by.as_str(),
                }),
                Output::Reply { req, result } => {
                    self.host.replies.insert(req, result);
                }
            }
        }
    }
}

/// A packet as a publisher's worker would hand it to the cascade, received at `at`.
pub fn packet(
    at: Instant,
    track: TrackId,
    kind: MediaKind,
    layer: u8,
    seq: u64,
    len: usize,
) -> MediaPacket {
    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::Frequency;
    let (codec, clock_rate, channels) = match kind {
        MediaKind::Audio => (Codec::Opus, Frequency::FORTY_EIGHT_KHZ, Some(2)),
        MediaKind::Video => (Codec::Vp8, Frequency::NINETY_KHZ, None),
    };
    let spec = CodecSpec {
        codec,
        clock_rate,
        channels,
        format: FormatParams::default(),
    };
    MediaPacket {
        track,
        kind,
        layer,
        params: PayloadParams::new(
            if kind == MediaKind::Audio { 111 } else { 96 }.into(),
            None,
            spec,
        ),
        seq,
        rtp_time: (seq as u32).wrapping_mul(3000),
        marker: true,
        keyframe: seq % 100 == 1,
        resync: false,
        audio_level: None,
        voice_activity: None,
        arrival: at,
        vp8: None,
        payload: Arc::from(vec![0x10u8; len]),
    }
}
