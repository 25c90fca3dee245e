//! A deterministic multi-router harness for the cascade's machines: several routers' link
//! control and relay machines joined by a simulated network (delay, jitter, loss, breaks), on
//! a virtual clock that jumps to the next event. One thread, no sockets, no sleeps; a seed
//! fixes every random choice.
//!
//! Each router's control plane and media workers are reduced to a [`Host`]: a registry of
//! rooms and tracks, the layer demand of local subscribers and of links, keyframe requests
//! reaching publishers, and the packets reaching each remote track's home worker. What the
//! machines decide is real; what the host does is the least a router does around them (the
//! real worker's keyframe throttle and overload policy are not here: the media tests cover
//! them).
//!
//! `testkit::cluster` (feature `testkit`) runs whole routers, workers and control plane
//! included, with these machines and this network in between (docs/cascade.md).

mod net;
mod node;

pub use net::{Carried, Impairment, Net, DIAL_TIMEOUT, MAX_DATAGRAM};
pub use node::{packet, Host, HostEvent, HostTrack, Node};

use super::link::{Admission, LinkConfig, LinkControl, LinkView, NodeId, RequestId};
use super::relay::RxStats;
use super::NodeIdentity;
use crate::control::registry::region_allowed;
use crate::media::{TrackInfo, WorkerId};
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
pub(crate) use net::Delivery;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use str0m::media::{MediaKind, Mid, Rid};

/// A publisher's track: packets on every layer at a steady rate.
#[derive(Debug)]
struct Publisher {
    node: usize,
    track: TrackId,
    kind: MediaKind,
    layers: u8,
    interval: Duration,
    next: Instant,
    seq: u64,
    len: usize,
}

/// Several routers and the network between them. See the [module docs](self).
#[derive(Debug)]
pub struct Cluster {
    /// When the simulation started.
    pub start: Instant,
    /// The virtual clock.
    pub now: Instant,
    /// The routers, in the order given.
    pub nodes: Vec<Node>,
    /// The network.
    pub net: Net,
    rng: StdRng,
    ids: BTreeMap<NodeId, usize>,
    cfg: LinkConfig,
    dialable: Vec<Vec<NodeId>>,
    publishers: Vec<Publisher>,
    next_req: u64,
    next_track: u64,
}

impl Cluster {
    /// Routers `(node_id, region)` and the pairs that list each other in `cascade.peers`.
    pub fn new(
        nodes: &[(&str, &str)],
        links: &[(&str, &str, Impairment)],
        cfg: LinkConfig,
        seed: u64,
    ) -> Self {
        let start = Instant::now();
        let mut net = Net::new();
        let ids: BTreeMap<NodeId, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (NodeId::from(*id), i))
            .collect();
        let mut dialable = vec![Vec::new(); nodes.len()];
        for (a, b, imp) in links {
            let (ia, ib) = (ids[&NodeId::from(*a)], ids[&NodeId::from(*b)]);
            net.add_pair(ia, ib, *imp);
            dialable[ia].push(NodeId::from(*b));
            dialable[ib].push(NodeId::from(*a));
        }
        let mut c = Self {
            start,
            now: start,
            nodes: Vec::new(),
            net,
            rng: StdRng::seed_from_u64(seed),
            ids,
            cfg,
            dialable,
            publishers: Vec::new(),
            next_req: 1,
            next_track: 1,
        };
        for (i, (id, region)) in nodes.iter().enumerate() {
            let identity = NodeIdentity {
                node_id: id.to_string(),
                region: region.to_string(),
            };
            c.net.names.push(id.to_string());
            c.net.running.push(true);
            let machine = LinkControl::new(
                identity.clone(),
                c.dialable[i].clone(),
                c.cfg.clone(),
                start,
            );
            c.nodes.push(Node::new(identity, machine));
        }
        c
    }

    /// A router's index.
    pub fn idx(&self, id: &str) -> usize {
        self.ids[&NodeId::from(id)]
    }

    /// A router.
    pub fn node(&self, id: &str) -> &Node {
        &self.nodes[self.idx(id)]
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    // ----- what the API and sessions do -------------------------------------

    /// `CreateRoom` on a router.
    pub fn create_room(&mut self, node: &str, room: &str, policy: &[&str]) -> Result<(), String> {
        let i = self.idx(node);
        let room = RoomId::parse(room).map_err(|e| e.to_string())?;
        let policy: Vec<String> = policy.iter().map(|s| s.to_string()).collect();
        let n = &mut self.nodes[i];
        if !region_allowed(&policy, &n.identity.region) {
            return Err("permission denied: this router's region is outside the policy".into());
        }
        if n.host.rooms.insert(room.clone(), policy.clone()).is_some() {
            return Err("room exists".into());
        }
        n.machine.room_created(room, policy);
        self.settle();
        Ok(())
    }

    /// `DeleteRoom`: local tracks go, the room's links end, remote tracks go.
    pub fn delete_room(&mut self, node: &str, room: &str) {
        let i = self.idx(node);
        let Ok(room) = RoomId::parse(room) else {
            return;
        };
        let n = &mut self.nodes[i];
        let tracks: Vec<(TrackId, bool)> = n
            .host
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room)
            .map(|(id, t)| (*id, t.path.is_empty()))
            .collect();
        for (t, local) in &tracks {
            if *local {
                n.host.tracks.remove(t);
                n.machine.track_unpublished(*t);
            }
        }
        self.publishers
            .retain(|p| !tracks.iter().any(|(t, _)| *t == p.track));
        n.machine.room_deleted(&room);
        for (t, local) in tracks {
            if !local && n.host.tracks.remove(&t).is_some() {
                n.machine.track_unpublished(t);
            }
        }
        n.host.rooms.remove(&room);
        self.settle();
    }

    /// `LinkRoom` on `node`; the answer comes in [`Self::reply`].
    pub fn link_room(&mut self, node: &str, room: &str, peer: &str) -> RequestId {
        let i = self.idx(node);
        let req = RequestId(self.next_req);
        self.next_req += 1;
        let room = RoomId::parse(room).unwrap_or_else(|_| unreachable!("tests use valid ids"));
        let now = self.now;
        self.nodes[i]
            .machine
            .link_room(now, room, NodeId::from(peer), req);
        self.settle();
        req
    }

    /// The answer to a `LinkRoom` call, once there is one.
    pub fn reply(
        &self,
        node: &str,
        req: RequestId,
    ) -> Option<&Result<super::link::RouterRef, crate::control::ApiError>> {
        self.node(node).host.replies.get(&req)
    }

    /// A session on `node` publishes a track with `layers` simulcast layers, each sending
    /// `pps` packets per second of `len` bytes.
    pub fn publish(
        &mut self,
        node: &str,
        room: &str,
        kind: MediaKind,
        layers: u8,
        pps: u32,
        len: usize,
    ) -> TrackId {
        let i = self.idx(node);
        let track = TrackId(((i as u64 + 1) << 40) | self.next_track);
        self.next_track += 1;
        let room = RoomId::parse(room).unwrap_or_else(|_| unreachable!("tests use valid ids"));
        let rids: Vec<Rid> = if layers > 1 {
            ["l", "m", "h", "x"][..usize::from(layers).min(4)]
                .iter()
                .map(|r| Rid::from(*r))
                .collect()
        } else {
            Vec::new()
        };
        let info = TrackInfo {
            id: track,
            kind,
            room: room.clone(),
            session: SessionId(track.0),
            participant: ParticipantId::parse("alice").unwrap_or_else(|_| unreachable!("valid")),
            worker: WorkerId(0),
            mid: Mid::from("0"),
            rids,
            path: Vec::new(),
        };
        let n = &mut self.nodes[i];
        n.host.tracks.insert(
            track,
            HostTrack {
                room,
                kind,
                path: Vec::new(),
                origin_track_id: track.to_string(),
            },
        );
        n.machine.track_published(&info);
        self.publishers.push(Publisher {
            node: i,
            track,
            kind,
            layers: layers.max(1),
            interval: Duration::from_secs(1) / pps.max(1),
            next: self.now,
            seq: 1,
            len,
        });
        self.settle();
        track
    }

    /// The publisher of `track` stops (its packets stop; the track stays published).
    pub fn pause(&mut self, track: TrackId) {
        self.publishers.retain(|p| p.track != track);
    }

    /// Packets each layer of a publisher's track has sent so far.
    pub fn sent(&self, track: TrackId) -> u64 {
        self.publishers
            .iter()
            .find(|p| p.track == track)
            .map_or(0, |p| p.seq - 1)
    }

    /// Local subscribers on `node` want these layers of `track` (a local or remote id there).
    pub fn subscribe(&mut self, node: &str, track: TrackId, mask: u32) {
        let i = self.idx(node);
        self.nodes[i].set_subs(track, mask);
        self.settle();
    }

    /// A subscriber on `node` asks for a keyframe of a remote track.
    pub fn request_keyframe(&mut self, node: &str, track: TrackId, layer: u8) {
        let i = self.idx(node);
        self.nodes[i].machine.remote_keyframe(track, layer);
        self.settle();
    }

    // ----- what the network and operators do --------------------------------

    /// The path between two routers breaks: their connection ends (noticed at once) and
    /// dials fail until [`Self::heal`].
    pub fn break_link(&mut self, a: &str, b: &str) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        if let Some(p) = self.net.pair_mut(ia, ib) {
            p.up = false;
        }
        let now = self.now;
        for ends in self.net.conns_between(ia, ib) {
            self.net.mark_closed(ends);
            for (k, (node, conn)) in ends.iter().enumerate() {
                let other = self.nodes[ends[1 - k].0].id();
                self.nodes[*node]
                    .machine
                    .handle_disconnected(now, &other, *conn);
            }
        }
        self.settle();
    }

    /// The path between two routers works again.
    pub fn heal(&mut self, a: &str, b: &str) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        if let Some(p) = self.net.pair_mut(ia, ib) {
            p.up = true;
        }
    }

    /// Changes what a path does to datagrams.
    pub fn impair(&mut self, a: &str, b: &str, imp: Impairment) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        if let Some(p) = self.net.pair_mut(ia, ib) {
            p.imp = imp;
        }
    }

    /// A router stops (its process ends): its peers notice after a one-way delay.
    pub fn stop(&mut self, node: &str) {
        let i = self.idx(node);
        let now = self.now;
        self.net.running[i] = false;
        let me = self.nodes[i].id();
        for ends in self.net.conns_of(i) {
            let k = usize::from(ends[0].0 != i);
            self.net.close(
                now,
                i,
                ends[k].1,
                &me,
                kaskade_protocol::cascade::close::CloseCode::Done,
            );
        }
    }

    /// A stopped router starts again with nothing (rooms are created anew by the caller).
    pub fn restart(&mut self, node: &str) {
        let i = self.idx(node);
        let identity = self.nodes[i].identity.clone();
        let machine = LinkControl::new(
            identity.clone(),
            self.dialable[i].clone(),
            self.cfg.clone(),
            self.now,
        );
        self.nodes[i] = Node::new(identity, machine);
        self.net.running[i] = true;
        self.publishers.retain(|p| p.node != i);
        self.settle();
    }

    /// The links of a router, as its machine sees them.
    pub fn links(&self, node: &str) -> Vec<LinkView> {
        self.node(node).machine.links()
    }

    /// The link of `node` to `peer`.
    pub fn link(&self, node: &str, peer: &str) -> LinkView {
        self.links(node)
            .into_iter()
            .find(|l| l.peer.as_str() == peer)
            .unwrap_or_else(|| panic!("{node} has no link to {peer}"))
    }

    /// What `from` sent to `to`.
    pub fn carried(&self, from: &str, to: &str) -> Carried {
        self.net.carried(self.idx(from), self.idx(to))
    }

    /// A router's receive counters over all its connections, past and present.
    pub fn rx_stats(&self, node: &str) -> RxStats {
        let n = self.node(node);
        let mut s = n.rx_done;
        for rx in n.rx.values() {
            s += rx.stats();
        }
        s
    }

    // ----- the clock --------------------------------------------------------

    /// Runs the routers and the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Runs until `end`.
    pub fn run_until(&mut self, end: Instant) {
        let mut spins = 0u32;
        loop {
            self.settle();
            match self.next_event() {
                Some(t) if t <= end => {
                    if t > self.now {
                        self.now = t;
                        spins = 0;
                    } else {
                        spins += 1;
                        assert!(spins < 100_000, "no progress at {:?}", self.elapsed());
                    }
                    self.step();
                }
                _ => {
                    self.now = self.now.max(end);
                    self.settle();
                    return;
                }
            }
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let mut next = self.net.next_time();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if !self.net.alive(i) {
                continue;
            }
            consider(n.machine.poll_timeout());
            for rx in n.rx.values() {
                consider(rx.poll_timeout());
            }
        }
        for p in &self.publishers {
            consider(Some(p.next));
        }
        next
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(d) = self.net.pop_due(now) {
            self.deliver(d);
            self.settle();
        }
        for i in 0..self.nodes.len() {
            if !self.net.alive(i) {
                continue;
            }
            let n = &mut self.nodes[i];
            if n.machine.poll_timeout().is_some_and(|t| t <= now) {
                n.machine.handle_timeout(now);
            }
            let due: Vec<_> =
                n.rx.iter()
                    .filter(|(_, rx)| rx.poll_timeout().is_some_and(|t| t <= now))
                    .map(|(c, _)| *c)
                    .collect();
            for conn in due {
                if let Some(rx) = n.rx.get_mut(&conn) {
                    rx.handle_timeout(now);
                }
                n.flush_rx(now, &mut self.net, &mut self.rng, conn);
            }
        }
        self.settle();
        for k in 0..self.publishers.len() {
            while self.publishers[k].next <= now {
                let p = &mut self.publishers[k];
                let (node, track, kind, layers, seq, len) =
                    (p.node, p.track, p.kind, p.layers, p.seq, p.len);
                p.seq += 1;
                p.next += p.interval;
                if !self.net.alive(node) {
                    continue;
                }
                for layer in 0..layers {
                    let pkt = packet(now, track, kind, layer, seq, len);
                    self.nodes[node].relay(now, &mut self.net, &mut self.rng, &pkt);
                }
            }
        }
    }

    fn settle(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            if self.net.alive(i) {
                self.nodes[i].drive(now, &mut self.net, &mut self.rng, &self.ids);
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::Established { dialer, acceptor } => {
                let dialer_id = self.nodes[dialer].identity.clone();
                let acceptor_id = self.nodes[acceptor].identity.clone();
                if !self.net.alive(dialer) {
                    return;
                }
                if !self.net.alive(acceptor) {
                    let peer = NodeId::new(acceptor_id.node_id);
                    self.nodes[dialer].machine.handle_dial_failed(now, &peer);
                    return;
                }
                let a = self.nodes[acceptor]
                    .machine
                    .handle_connected(now, &dialer_id, false);
                let d = self.nodes[dialer]
                    .machine
                    .handle_connected(now, &acceptor_id, true);
                let delay = self
                    .net
                    .pairs
                    .get(&(dialer.min(acceptor), dialer.max(acceptor)))
                    .map_or(Duration::ZERO, |p| p.imp.delay);
                match (a, d) {
                    (Admission::Accept(ca), Admission::Accept(cd)) => {
                        self.net.open(now, (acceptor, ca), (dialer, cd));
                    }
                    (Admission::Accept(conn), Admission::Refuse(_)) => self.net.at(
                        now + delay,
                        Delivery::Closed {
                            to: acceptor,
                            conn,
                            from: NodeId::new(dialer_id.node_id),
                        },
                    ),
                    (Admission::Refuse(_), Admission::Accept(conn)) => self.net.at(
                        now + delay,
                        Delivery::Closed {
                            to: dialer,
                            conn,
                            from: NodeId::new(acceptor_id.node_id),
                        },
                    ),
                    (Admission::Refuse(_), Admission::Refuse(_)) => {}
                }
            }
            Delivery::DialFailed { node, peer } => {
                if self.net.alive(node) {
                    self.nodes[node].machine.handle_dial_failed(now, &peer);
                }
            }
            Delivery::Frame {
                to,
                conn,
                from,
                msg,
            } => {
                if self.net.alive(to) {
                    self.nodes[to].machine.handle_frame(now, &from, conn, msg);
                }
            }
            Delivery::Datagram { to, conn, data } => {
                if !self.net.alive(to) {
                    return;
                }
                if let Some(rx) = self.nodes[to].rx.get_mut(&conn) {
                    rx.handle_datagram(now, data);
                }
                self.nodes[to].flush_rx(now, &mut self.net, &mut self.rng, conn);
            }
            Delivery::Closed { to, conn, from } => {
                if self.net.alive(to) {
                    self.nodes[to].machine.handle_disconnected(now, &from, conn);
                }
            }
        }
    }
}
