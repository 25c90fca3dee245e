//! Rooms on links: linking (by `LinkRoom` or by itself), residency on both sides, unlinking.
//!
//! # Residency
//!
//! A room's policy (allowed regions) is checked before any link carries anything of it:
//!
//! - the router that asks checks the peer's region, read from the peer's certificate, against
//!   its own policy for the room;
//! - the router that is asked checks the asking router's region against the policy in the
//!   request and its own policy, and its own region against both;
//! - every refusal is an audit event ([`Output::LinkRefused`]) on the side that refused
//!   (`local`) and, through the reply, on the side that asked (`peer`).
//!
//! # Rooms that link themselves (`cascade.auto_link`)
//!
//! Routers tell each linked peer which room ids they host (`HostedRooms`), but only the rooms
//! whose policy allows that peer's region: a room's existence never crosses a link its policy
//! forbids. When both routers of a link host a room and each told the other, the one with the
//! smaller node id links it (the same `LinkRoom` exchange as the API's, with the same checks);
//! both sides having told each other means both policies allow the other's region. A router
//! with auto-linking off neither tells nor listens, so it links only what `LinkRoom` asks.
//!
//! With more than two routers hosting a room, every link whose two routers host it carries it:
//! in a full mesh each pair is linked, in a line each neighbour pair is, and media takes the
//! shortest path through them (see [`super::tracks`]).

use super::output::{ConnId, Decider, NodeId, Output, RequestId, RouterRef};
use super::{LinkControl, MAX_HOSTED_ROOMS, MAX_PATH};
use crate::control::registry::region_allowed;
use crate::control::ApiError;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::RoomId;
use std::time::Instant;

/// Room ids per `HostedRooms` frame (at most 128 bytes each: well under the frame limit).
const HOSTED_PER_FRAME: usize = 2048;

impl LinkControl {
    /// A room was created here with this policy.
    pub fn room_created(&mut self, room: RoomId, policy: Vec<String>) {
        self.rooms.insert(room.clone(), policy);
        self.advertise(&room);
    }

    /// A room was deleted here: its links end.
    pub fn room_deleted(&mut self, room: &RoomId) {
        self.rooms.remove(room);
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            let p = self.peer(&id);
            let told = p.advertised.remove(room);
            let linked = p.rooms.remove(room);
            if told {
                self.send_up(
                    &id,
                    cpb::frame::Msg::HostedRooms(cpb::HostedRooms {
                        reset: false,
                        added: Vec::new(),
                        removed: vec![room.to_string()],
                    }),
                );
            }
            if linked {
                self.send_up(
                    &id,
                    cpb::frame::Msg::UnlinkRoom(cpb::UnlinkRoom {
                        room_id: room.to_string(),
                    }),
                );
                self.drop_room(&id, room);
            }
        }
    }

    /// `LinkRoom` from the API: the answer comes as [`Output::Reply`] for `req`.
    pub fn link_room(&mut self, now: Instant, room: RoomId, peer: NodeId, req: RequestId) {
        let reply = |m: &mut Self, result| m.out.push_back(Output::Reply { req, result });
        let Some(policy) = self.rooms.get(&room).cloned() else {
            return reply(
                self,
                Err(ApiError::NotFound(format!("room {room} not found"))),
            );
        };
        if peer.as_str() == self.me.node_id {
            return reply(
                self,
                Err(ApiError::InvalidArgument("that is this router".into())),
            );
        }
        if !self.peers.contains_key(&peer) {
            return reply(
                self,
                Err(ApiError::NotFound(format!(
                    "peer {peer} is not in cascade.peers and has not connected"
                ))),
            );
        }
        let deadline = now + self.cfg.link_timeout;
        let p = self.peer(&peer);
        if p.conn.is_none() {
            // Answered once connected, or when the deadline passes.
            p.waiting.push((room, req, deadline));
            self.dial_now(&peer, now);
            return;
        }
        let region = p.region.clone();
        // The sending side checks the residency policy: it does not trust the receiver to.
        if !region_allowed(&policy, &region) {
            self.out.push_back(Output::LinkRefused {
                room: room.clone(),
                peer: peer.clone(),
                region: region.clone(),
                reason: "residency".into(),
                decided_by: Decider::Local,
            });
            return reply(
                self,
                Err(ApiError::PermissionDenied(format!(
                    "room {room} may not reach region {region:?} of {peer}"
                ))),
            );
        }
        let p = self.peer(&peer);
        if p.rooms.contains(&room) && !p.pending.contains_key(&room) {
            return reply(
                self,
                Ok(RouterRef {
                    node_id: peer,
                    region,
                }),
            );
        }
        self.request_link(&peer, &room, Some((req, deadline)));
    }

    /// `UnlinkRoom` from the API.
    pub fn unlink_room(&mut self, room: &RoomId, peer: &NodeId) -> Result<(), ApiError> {
        let Some(p) = self.peers.get_mut(peer) else {
            return Err(ApiError::NotFound(format!("no link to {peer}")));
        };
        if !p.rooms.remove(room) {
            return Err(ApiError::NotFound(format!(
                "room {room} is not linked to {peer}"
            )));
        }
        self.send_up(
            peer,
            cpb::frame::Msg::UnlinkRoom(cpb::UnlinkRoom {
                room_id: room.to_string(),
            }),
        );
        self.drop_room(peer, room);
        Ok(())
    }

    /// Sends `LinkRoom` for `room` (once per room until answered), recording who waits.
    pub(super) fn request_link(
        &mut self,
        peer: &NodeId,
        room: &RoomId,
        req: Option<(RequestId, Instant)>,
    ) {
        let policy = self.rooms.get(room).cloned().unwrap_or_default();
        let me = self.me.node_id.clone();
        let p = self.peer(peer);
        let first = !p.pending.contains_key(room);
        p.pending.entry(room.clone()).or_default().extend(req);
        if first {
            self.send_up(
                peer,
                cpb::frame::Msg::LinkRoom(cpb::LinkRoom {
                    room_id: room.to_string(),
                    allowed_regions: policy,
                    path: vec![me],
                }),
            );
        }
    }

    /// A peer asks to link a room.
    pub(super) fn on_link_request(&mut self, peer: &NodeId, conn: ConnId, l: cpb::LinkRoom) {
        let Ok(room) = RoomId::parse(&l.room_id) else {
            self.peer(peer).ignored += 1;
            return;
        };
        let region = self.peer(peer).region.clone();
        let own = self.me.region.clone();
        let local = self.rooms.get(&room).cloned();
        let refusal = if l.path.len() > MAX_PATH || l.path.iter().any(|n| n == &self.me.node_id) {
            Some("loop".to_string())
        } else if !region_allowed(&l.allowed_regions, &region)
            || !region_allowed(local.as_deref().unwrap_or_default(), &region)
        {
            Some(format!("residency: region {region:?} is not allowed"))
        } else if !region_allowed(&l.allowed_regions, &own)
            || !region_allowed(local.as_deref().unwrap_or_default(), &own)
        {
            Some(format!(
                "residency: region {own:?} is outside the room's allowed regions"
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.refuse_link(peer, conn, room, reason);
        }
        if local.is_some() {
            self.accept_link(peer, conn, room);
        } else {
            // The control plane makes the room (it may refuse: room limit).
            self.peer(peer).ensuring.insert(room.clone());
            self.out.push_back(Output::EnsureRoom {
                peer: peer.clone(),
                room,
                policy: l.allowed_regions,
            });
        }
    }

    /// The control plane's answer to [`Output::EnsureRoom`]: the room exists here with this
    /// policy, or why not.
    pub fn room_ready(&mut self, peer: &NodeId, room: RoomId, result: Result<Vec<String>, String>) {
        let conn = self.peers.get(peer).and_then(|p| p.conn);
        let asked = self.peer(peer).ensuring.remove(&room);
        match result {
            Ok(policy) => {
                let new = self.rooms.insert(room.clone(), policy).is_none();
                if let (true, Some(conn)) = (asked, conn) {
                    self.accept_link(peer, conn, room.clone());
                }
                if new {
                    self.advertise(&room);
                }
            }
            Err(reason) => {
                if let (true, Some(conn)) = (asked, conn) {
                    self.refuse_link(peer, conn, room, format!("residency: {reason}"));
                }
            }
        }
    }

    fn refuse_link(&mut self, peer: &NodeId, conn: ConnId, room: RoomId, reason: String) {
        let region = self.peer(peer).region.clone();
        self.out.push_back(Output::LinkRefused {
            room: room.clone(),
            peer: peer.clone(),
            region,
            reason: reason.clone(),
            decided_by: Decider::Local,
        });
        self.send(
            peer,
            conn,
            cpb::frame::Msg::LinkRoomReply(cpb::LinkRoomReply {
                room_id: room.to_string(),
                accepted: false,
                reason,
            }),
        );
    }

    fn accept_link(&mut self, peer: &NodeId, conn: ConnId, room: RoomId) {
        self.send(
            peer,
            conn,
            cpb::frame::Msg::LinkRoomReply(cpb::LinkRoomReply {
                room_id: room.to_string(),
                accepted: true,
                reason: String::new(),
            }),
        );
        self.room_linked(peer, &room);
    }

    /// The peer's answer to our `LinkRoom`.
    pub(super) fn on_link_reply(&mut self, peer: &NodeId, r: cpb::LinkRoomReply) {
        let Ok(room) = RoomId::parse(&r.room_id) else {
            self.peer(peer).ignored += 1;
            return;
        };
        let p = self.peer(peer);
        let Some(reqs) = p.pending.remove(&room) else {
            p.ignored += 1;
            return;
        };
        let region = p.region.clone();
        if r.accepted {
            if self.rooms.contains_key(&room) {
                self.room_linked(peer, &room);
            }
            for (req, _) in reqs {
                self.out.push_back(Output::Reply {
                    req,
                    result: Ok(RouterRef {
                        node_id: peer.clone(),
                        region: region.clone(),
                    }),
                });
            }
        } else {
            self.peer(peer).rooms.remove(&room);
            let reason: String = r.reason.chars().take(200).collect();
            self.out.push_back(Output::LinkRefused {
                room: room.clone(),
                peer: peer.clone(),
                region,
                reason: reason.clone(),
                decided_by: Decider::Peer,
            });
            for (req, _) in reqs {
                self.out.push_back(Output::Reply {
                    req,
                    result: Err(ApiError::PermissionDenied(format!(
                        "{peer} refused to link room {room}: {reason}"
                    ))),
                });
            }
        }
    }

    /// The peer unlinked a room.
    pub(super) fn on_unlink(&mut self, peer: &NodeId, room_id: &str) {
        let Ok(room) = RoomId::parse(room_id) else {
            self.peer(peer).ignored += 1;
            return;
        };
        if self.peer(peer).rooms.remove(&room) {
            self.drop_room(peer, &room);
        }
    }

    /// The room is linked with the peer: its tracks go there.
    fn room_linked(&mut self, peer: &NodeId, room: &RoomId) {
        let p = self.peer(peer);
        p.rooms.insert(room.clone());
        if !p.up_rooms.insert(room.clone()) {
            return; // both asked at once: linked already
        }
        let region = p.region.clone();
        self.out.push_back(Output::LinkChanged {
            room: room.clone(),
            peer: peer.clone(),
            region,
            up: true,
        });
        for t in self.tracks_of(room) {
            self.announce(peer, t);
        }
    }

    /// Forgets everything of `room` on the link to `peer` (after an unlink either way).
    fn drop_room(&mut self, peer: &NodeId, room: &RoomId) {
        // Remote tracks of the room pulled through the peer.
        let via: Vec<_> = self
            .remote
            .iter()
            .filter(|(_, r)| &r.room == room && r.routes.contains_key(peer))
            .map(|(t, _)| *t)
            .collect();
        for t in via {
            self.drop_route(t, peer);
        }
        // Our tracks of the room announced to it: the peer forgets them with the room.
        let ours: Vec<_> = self
            .tracks_of(room)
            .into_iter()
            .filter(|t| self.peers.get(peer).is_some_and(|p| p.out.contains_key(t)))
            .collect();
        for t in ours {
            self.forget_announcement(peer, t);
        }
        let p = self.peer(peer);
        if p.up_rooms.remove(room) {
            let region = p.region.clone();
            self.out.push_back(Output::LinkChanged {
                room: room.clone(),
                peer: peer.clone(),
                region,
                up: false,
            });
        }
    }

    // ----- rooms that link themselves ---------------------------------------

    /// The rooms hosted here whose policy allows a region.
    fn rooms_allowed_for(&self, region: &str) -> Vec<RoomId> {
        self.rooms
            .iter()
            .filter(|(_, policy)| region_allowed(policy, region))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// After `Hello`: every hosted room the peer may know of.
    pub(super) fn advertise_all(&mut self, peer: &NodeId, conn: ConnId) {
        if !self.cfg.auto_link {
            return;
        }
        let region = self.peer(peer).region.clone();
        let rooms = self.rooms_allowed_for(&region);
        self.peer(peer).advertised = rooms.iter().cloned().collect();
        // In frames of a bounded size (room ids are at most 128 bytes); the first resets.
        let mut chunks: Vec<&[RoomId]> = rooms.chunks(HOSTED_PER_FRAME).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.send(
                peer,
                conn,
                cpb::frame::Msg::HostedRooms(cpb::HostedRooms {
                    reset: i == 0,
                    added: chunk.iter().map(|r| r.to_string()).collect(),
                    removed: Vec::new(),
                }),
            );
        }
    }

    /// A room is hosted here now: every connected peer it may reach is told, and the room is
    /// linked where the peer hosts it too.
    fn advertise(&mut self, room: &RoomId) {
        if !self.cfg.auto_link {
            return;
        }
        let Some(policy) = self.rooms.get(room).cloned() else {
            return;
        };
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            let p = self.peer(&id);
            let Some(conn) = p.conn else {
                continue;
            };
            if !region_allowed(&policy, &p.region) || !p.advertised.insert(room.clone()) {
                continue;
            }
            self.send(
                &id,
                conn,
                cpb::frame::Msg::HostedRooms(cpb::HostedRooms {
                    reset: false,
                    added: vec![room.to_string()],
                    removed: Vec::new(),
                }),
            );
            self.maybe_auto_link(&id, room);
        }
    }

    /// The peer says which rooms it hosts.
    pub(super) fn on_hosted_rooms(&mut self, peer: &NodeId, _conn: ConnId, h: cpb::HostedRooms) {
        if !self.cfg.auto_link {
            return;
        }
        let p = self.peer(peer);
        if h.reset {
            p.hosts.clear();
        }
        for r in &h.removed {
            if let Ok(room) = RoomId::parse(r) {
                p.hosts.remove(&room);
            }
        }
        let mut added = Vec::new();
        for r in &h.added {
            match RoomId::parse(r) {
                Ok(room) if p.hosts.len() < MAX_HOSTED_ROOMS => {
                    if p.hosts.insert(room.clone()) {
                        added.push(room);
                    }
                }
                _ => p.ignored += 1,
            }
        }
        for room in added {
            self.maybe_auto_link(peer, &room);
        }
    }

    /// Links `room` with `peer` if both host it, both told each other, and this router has
    /// the smaller node id (so that only one side asks).
    fn maybe_auto_link(&mut self, peer: &NodeId, room: &RoomId) {
        if !self.cfg.auto_link || self.me.node_id.as_str() >= peer.as_str() {
            return;
        }
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let ready = p.conn.is_some()
            && p.hosts.contains(room)
            && p.advertised.contains(room)
            && !p.rooms.contains(room)
            && !p.pending.contains_key(room);
        if ready {
            self.request_link(peer, room, None);
        }
    }
}
