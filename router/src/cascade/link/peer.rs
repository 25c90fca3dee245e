//! One peer router: its connection, its dial schedule, and what a break and a reconnect do.

use super::output::{Admission, ConnId, LinkView, NodeId, Output, RequestId};
use super::LinkControl;
use crate::cascade::NodeIdentity;
use crate::control::ApiError;
use crate::media::types::LinkId;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::{RoomId, TrackId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Two connections to one peer that come up within this of each other are
/// a dial race (both sides dialled); a later one replaces a connection the
/// peer has abandoned (it restarted).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2);

/// When the machine dials a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dial {
    /// Not dialling (connected, or not dialable).
    Idle,
    /// Dial at this instant; after a failure wait `backoff`.
    Due { at: Instant, backoff: Duration },
    /// A dial is under way; after a failure wait `backoff`.
    InFlight { backoff: Duration },
}

/// What the machine keeps of one peer.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) id: NodeId,
    pub(super) link: LinkId,
    /// From its certificate ("" before the first connection).
    pub(super) region: String,
    /// It has an address in `cascade.peers`.
    pub(super) dialable: bool,
    pub(super) dial: Dial,
    pub(super) conn: Option<ConnId>,
    /// Since when `conn` is the link's connection.
    pub(super) up_since: Option<Instant>,
    pub(super) ever_up: bool,
    /// When its tracks are withdrawn if it stays down.
    pub(super) grace_until: Option<Instant>,
    pub(super) reconnects: u32,
    /// Rooms linked with it (kept across breaks).
    pub(super) rooms: BTreeSet<RoomId>,
    /// Rooms it says it hosts (this connection).
    pub(super) hosts: BTreeSet<RoomId>,
    /// Rooms we told it we host (this connection).
    pub(super) advertised: BTreeSet<RoomId>,
    /// Tracks announced to it on this connection: track → number, and back.
    pub(super) out: BTreeMap<TrackId, u32>,
    pub(super) out_rev: BTreeMap<u32, TrackId>,
    pub(super) next_out: u32,
    /// Its numbers (this connection) → our remote tracks.
    pub(super) inbound: BTreeMap<u32, TrackId>,
    /// `LinkRoom` sent, waiting for its reply: the API calls to answer, each with the
    /// instant it is answered `UNAVAILABLE` if no reply came (none for automatic links).
    pub(super) pending: BTreeMap<RoomId, Vec<(RequestId, Instant)>>,
    /// Rooms linked on this connection (their `LinkChanged` up was said).
    pub(super) up_rooms: BTreeSet<RoomId>,
    /// `LinkRoom` calls waiting for a connection, with their deadline.
    pub(super) waiting: Vec<(RoomId, RequestId, Instant)>,
    /// Its `LinkRoom` requests waiting for the control plane to make the room.
    pub(super) ensuring: BTreeSet<RoomId>,
    /// Last keyframe request passed on per (number, layer).
    pub(super) kf_guard: HashMap<(u32, u8), Instant>,
    pub(super) ignored: u64,
}

impl Peer {
    pub(super) fn new(id: NodeId, link: LinkId) -> Self {
        Self {
            id,
            link,
            region: String::new(),
            dialable: false,
            dial: Dial::Idle,
            conn: None,
            up_since: None,
            ever_up: false,
            grace_until: None,
            reconnects: 0,
            rooms: BTreeSet::new(),
            hosts: BTreeSet::new(),
            advertised: BTreeSet::new(),
            out: BTreeMap::new(),
            out_rev: BTreeMap::new(),
            next_out: 1,
            inbound: BTreeMap::new(),
            pending: BTreeMap::new(),
            up_rooms: BTreeSet::new(),
            waiting: Vec::new(),
            ensuring: BTreeSet::new(),
            kf_guard: HashMap::new(),
            ignored: 0,
        }
    }

    pub(super) fn view(&self) -> LinkView {
        LinkView {
            peer: self.id.clone(),
            region: self.region.clone(),
            link: self.link,
            conn: self.conn,
            rooms: self.rooms.iter().cloned().collect(),
            hosted: self.hosts.len(),
            tracks_sent: self.out.len() as u32,
            tracks_received: self.inbound.len() as u32,
            reconnects: self.reconnects,
            ignored: self.ignored,
        }
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let dial = match self.dial {
            Dial::Due { at, .. } if self.conn.is_none() => Some(at),
            _ => None,
        };
        let waiting = self.waiting.iter().map(|(_, _, at)| *at).min();
        let asked = self.pending.values().flatten().map(|(_, at)| *at).min();
        [dial, self.grace_until, waiting, asked]
            .into_iter()
            .flatten()
            .min()
    }

    /// Forgets the state of a connection (numbers are per connection).
    fn clear_connection(&mut self) {
        self.conn = None;
        self.up_since = None;
        self.out.clear();
        self.out_rev.clear();
        self.next_out = 1;
        self.inbound.clear();
        self.hosts.clear();
        self.advertised.clear();
        self.up_rooms.clear();
        self.kf_guard.clear();
    }
}

impl LinkControl {
    /// Schedules a dial of a dialable peer `after` from `now` (the larger node id waits for
    /// the smaller one to dial first).
    pub(super) fn schedule_dial(&mut self, id: &NodeId, now: Instant, after: Duration) {
        let wait = if self.me.node_id.as_str() < id.as_str() {
            after
        } else {
            after + self.cfg.larger_id_wait
        };
        let min = self.cfg.min_backoff;
        let p = self.peer(id);
        if p.dialable && p.conn.is_none() && !matches!(p.dial, Dial::InFlight { .. }) {
            p.dial = Dial::Due {
                at: now + wait,
                backoff: min,
            };
        }
    }

    /// Dials a peer now unless a dial is under way (a `LinkRoom` call waits for it).
    pub(super) fn dial_now(&mut self, id: &NodeId, now: Instant) {
        let p = self.peer(id);
        if p.dialable && p.conn.is_none() {
            if let Dial::Due { backoff, .. } = p.dial {
                p.dial = Dial::Due { at: now, backoff };
            } else if p.dial == Dial::Idle {
                p.dial = Dial::Due {
                    at: now,
                    backoff: Duration::ZERO,
                };
            }
        }
    }

    /// A dial failed (unreachable, handshake refused): try again after the backoff.
    pub fn handle_dial_failed(&mut self, now: Instant, peer: &NodeId) {
        let (min, max) = (self.cfg.min_backoff, self.cfg.max_backoff);
        let p = self.peer(peer);
        if let Dial::InFlight { backoff } = p.dial {
            if p.conn.is_none() {
                let backoff = backoff.max(min);
                p.dial = Dial::Due {
                    at: now + backoff,
                    backoff: (backoff * 2).min(max),
                };
            } else {
                p.dial = Dial::Idle;
            }
        }
    }

    /// A connection was established (dialled by us or accepted) with a router of the cluster,
    /// `identity` read from its certificate. The machine decides whether it becomes the link's
    /// connection.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        identity: &NodeIdentity,
        dialed: bool,
    ) -> Admission {
        if identity.node_id == self.me.node_id {
            return Admission::Refuse(CloseCode::SelfLink);
        }
        let id = NodeId::new(identity.node_id.clone());
        let me_smaller = self.me.node_id < identity.node_id;
        let mut replaced = false;
        // A connection that replaces one up for longer than a dial race
        // lasts is the peer coming back (it restarted before this side saw
        // the old connection die): a reconnect, not a duplicate.
        let old_up_long = self
            .peer(&id)
            .up_since
            .is_some_and(|t| now.saturating_duration_since(t) >= DUPLICATE_WINDOW);
        if let Some(old) = self.peer(&id).conn {
            // Both dialled: keep the connection dialled by the smaller node id, on both sides.
            // (Unless the old one is long established: then the peer has
            // only the new one, after a restart.)
            let keep_new = old_up_long || if dialed { me_smaller } else { !me_smaller };
            if !keep_new {
                return Admission::Refuse(CloseCode::Duplicate);
            }
            self.out.push_back(Output::Close {
                peer: id.clone(),
                conn: old,
                code: CloseCode::Duplicate,
            });
            self.connection_lost(now, &id, false);
            replaced = true;
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let p = self.peer(&id);
        let reconnect = p.ever_up && (!replaced || old_up_long);
        if reconnect {
            p.reconnects += 1;
        }
        p.ever_up = true;
        p.conn = Some(conn);
        p.up_since = Some(now);
        p.region = identity.region.clone();
        p.dial = Dial::Idle;
        p.grace_until = None;
        let link = p.link;
        let rooms: Vec<RoomId> = p.rooms.iter().cloned().collect();
        let waiting = std::mem::take(&mut p.waiting);
        self.out.push_back(Output::LinkUp {
            peer: id.clone(),
            link,
            conn,
            reconnect,
        });
        self.send(
            &id,
            conn,
            kaskade_protocol::cascade::frame::Msg::Hello(kaskade_protocol::cascade::Hello {
                version: kaskade_protocol::cascade::LINK_VERSION,
                node_id: self.me.node_id.clone(),
                region: self.me.region.clone(),
            }),
        );
        self.advertise_all(&id, conn);
        // Restore the rooms linked before the break, then the calls that waited.
        for room in rooms {
            self.request_link(&id, &room, None);
        }
        for (room, req, _) in waiting {
            self.link_room(now, room, id.clone(), req);
        }
        Admission::Accept(conn)
    }

    /// The connection `conn` of `peer` ended (closed by either side, timed out, or its control
    /// stream failed).
    pub fn handle_disconnected(&mut self, now: Instant, peer: &NodeId, conn: ConnId) {
        if self.peers.get(peer).and_then(|p| p.conn) != Some(conn) {
            return;
        }
        tracing::info!(%peer, "cascade link down");
        self.connection_lost(now, peer, true);
        let after = self.cfg.redial_after;
        self.schedule_dial(peer, now, after);
    }

    /// Everything that ends with a connection. `broken`: the link is down (not replaced by a
    /// duplicate), so its rooms are reported down and its tracks get the grace period.
    fn connection_lost(&mut self, now: Instant, id: &NodeId, broken: bool) {
        let grace = self.cfg.down_grace;
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        let Some(conn) = p.conn else {
            return;
        };
        let link = p.link;
        let relayed: Vec<TrackId> = p.out.keys().copied().collect();
        // Calls waiting for a reply wait for the next connection (a duplicate replaced is
        // routine), or give up at their deadline.
        let pending: Vec<(RoomId, Vec<(RequestId, Instant)>)> =
            std::mem::take(&mut p.pending).into_iter().collect();
        for (room, reqs) in pending {
            for (req, at) in reqs {
                p.waiting.push((room.clone(), req, at));
            }
        }
        p.ensuring.clear();
        let (rooms, region) = (std::mem::take(&mut p.up_rooms), p.region.clone());
        p.clear_connection();
        if broken {
            p.grace_until = Some(now + grace);
        }
        self.out.push_back(Output::LinkDown {
            peer: id.clone(),
            link,
            conn,
        });
        for track in relayed {
            self.out.push_back(Output::SetLinkDemand {
                track,
                link,
                mask: 0,
            });
        }
        // Remote tracks pulled through it: another path, or paused.
        let via: Vec<TrackId> = self
            .remote
            .iter()
            .filter(|(_, r)| r.routes.contains_key(id))
            .map(|(t, _)| *t)
            .collect();
        for t in via {
            if let Some(route) = self.remote.get_mut(&t).and_then(|r| r.routes.get_mut(id)) {
                route.up = false;
                route.sent = 0;
            }
            self.reselect(t);
        }
        if broken {
            for room in rooms {
                self.out.push_back(Output::LinkChanged {
                    room,
                    peer: id.clone(),
                    region: region.clone(),
                    up: false,
                });
            }
        }
    }

    /// Due dials, the end of a broken link's grace, `LinkRoom` calls that waited too long.
    pub(super) fn peer_timeouts(&mut self, id: &NodeId, now: Instant) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        if let Dial::Due { at, backoff } = p.dial {
            if at <= now && p.conn.is_none() {
                p.dial = Dial::InFlight { backoff };
                self.out.push_back(Output::Dial(id.clone()));
            }
        }
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        let mut expired = Vec::new();
        p.waiting.retain(|(_, req, at)| {
            let keep = *at > now;
            if !keep {
                expired.push(*req);
            }
            keep
        });
        // Calls whose `LinkRoom` got no reply in time are answered; the request stays, so a
        // late reply still links the room.
        for reqs in p.pending.values_mut() {
            reqs.retain(|(req, at)| {
                let keep = *at > now;
                if !keep {
                    expired.push(*req);
                }
                keep
            });
        }
        for req in expired {
            self.out.push_back(Output::Reply {
                req,
                result: Err(ApiError::Unavailable(format!("cannot reach peer {id}"))),
            });
        }
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        if p.grace_until.is_some_and(|t| t <= now) {
            p.grace_until = None;
            // Still down after the grace: the tracks pulled through it go, or move to
            // another path.
            let stale: Vec<TrackId> = self
                .remote
                .iter()
                .filter(|(_, r)| r.routes.get(id).is_some_and(|route| !route.up))
                .map(|(t, _)| *t)
                .collect();
            for t in stale {
                self.drop_route(t, id);
            }
        }
    }
}
