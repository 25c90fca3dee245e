//! Tracks on links: announce and withdraw, where each remote track is pulled from, demand and
//! keyframe requests.
//!
//! # Paths, and how chains are chosen
//!
//! Every track carries its path: the routers it crossed, its origin first. A router announces
//! each track it has (its own, and remote ones it pulls) on every link of the track's room,
//! except to routers already on the track's path, with itself appended. So a track never comes
//! back to a router it crossed: no loops.
//!
//! A router may hear of one track from several peers (in a triangle of routers that all host
//! a room: from the origin directly, and through the third router). It keeps every such route
//! and pulls the track from one: the route that is up with the shortest path, ties broken by
//! the smaller node id. Demand (`Subscribe`) and keyframe requests go to that route only, so
//! each track crosses each link at most once and only where it is wanted. When that route's
//! link breaks, the track moves to the next route at once (subscribers see no change: the
//! track keeps its local id); with no other route it stays, paused, until the link comes back
//! or [`super::LinkConfig::down_grace`] passes. When the route a router pulls from changes, it
//! announces the new path onward (and withdraws the track from a router now on the path).

use super::output::{kind_num, ConnId, NodeId, Output};
use super::{LinkControl, MAX_PATH, MAX_RIDS, MAX_TRACKS_PER_LINK};
use crate::control::RemoteTrack;
use crate::media::select::LayerState;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::{RoomId, TrackId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use str0m::media::{MediaKind, Rid};

/// A track published by a local session.
#[derive(Debug, Clone)]
pub(super) struct LocalTrack {
    pub(super) room: RoomId,
    pub(super) kind: MediaKind,
    pub(super) rids: Vec<String>,
    pub(super) participant: String,
}

/// One way a remote track reaches this router.
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// The peer's number for it on the connection it was announced on.
    pub(super) num: u32,
    /// Its path as announced (origin first, the peer last).
    pub(super) path: Vec<String>,
    /// The link is up (a route of a broken link waits for the grace period).
    pub(super) up: bool,
    /// The layer mask last asked on this route.
    pub(super) sent: u32,
}

/// A track learned over links.
#[derive(Debug, Clone)]
pub(super) struct Remote {
    pub(super) room: RoomId,
    pub(super) kind: MediaKind,
    pub(super) rids: Vec<String>,
    pub(super) participant: String,
    /// Its id on the origin router.
    pub(super) origin_track_id: String,
    pub(super) routes: BTreeMap<NodeId, Route>,
    /// The route it is pulled from.
    pub(super) best: Option<NodeId>,
    /// Layers local subscribers (and onward links) need.
    pub(super) demand: u32,
}

impl Remote {
    /// The preferred route: up, shortest path, smaller node id; if none is up, the current
    /// one (paused) or else the shortest.
    fn choose(&self) -> Option<NodeId> {
        let rank = |(id, r): (&NodeId, &Route)| (r.path.len(), id.clone());
        if let Some(up) = self
            .routes
            .iter()
            .filter(|(_, r)| r.up)
            .min_by_key(|x| rank(*x))
        {
            return Some(up.0.clone());
        }
        match &self.best {
            Some(b) if self.routes.contains_key(b) => Some(b.clone()),
            _ => self
                .routes
                .iter()
                .min_by_key(|x| rank(*x))
                .map(|x| x.0.clone()),
        }
    }

    fn best_path(&self) -> Option<&[String]> {
        self.best
            .as_ref()
            .and_then(|b| self.routes.get(b))
            .map(|r| r.path.as_slice())
    }
}

/// What an announcement of a track says.
struct Announced {
    room: RoomId,
    kind: MediaKind,
    rids: Vec<String>,
    participant: String,
    origin_track_id: String,
    /// The path before this router.
    path: Vec<String>,
}

impl LinkControl {
    /// Local and remote tracks of a room.
    pub(super) fn tracks_of(&self, room: &RoomId) -> Vec<TrackId> {
        self.local
            .iter()
            .filter(|(_, t)| &t.room == room)
            .map(|(id, _)| *id)
            .chain(
                self.remote
                    .iter()
                    .filter(|(_, r)| &r.room == room)
                    .map(|(id, _)| *id),
            )
            .collect()
    }

    fn announced(&self, track: TrackId) -> Option<Announced> {
        if let Some(t) = self.local.get(&track) {
            return Some(Announced {
                room: t.room.clone(),
                kind: t.kind,
                rids: t.rids.clone(),
                participant: t.participant.clone(),
                origin_track_id: track.to_string(),
                path: Vec::new(),
            });
        }
        let r = self.remote.get(&track)?;
        Some(Announced {
            room: r.room.clone(),
            kind: r.kind,
            rids: r.rids.clone(),
            participant: r.participant.clone(),
            origin_track_id: r.origin_track_id.clone(),
            path: r.best_path()?.to_vec(),
        })
    }

    /// Announces a track to a peer if the room is linked there and the peer is not on the
    /// track's path; announces again (same number, new path) if it already was.
    pub(super) fn announce(&mut self, peer: &NodeId, track: TrackId) {
        let Some(a) = self.announced(track) else {
            return;
        };
        let on_path = a.path.iter().any(|n| n == peer.as_str());
        let me = self.me.node_id.clone();
        let p = self.peer(peer);
        let Some(conn) = p.conn else {
            return;
        };
        if !p.rooms.contains(&a.room) {
            return;
        }
        if on_path {
            if p.out.contains_key(&track) {
                self.withdraw(peer, track);
            }
            return;
        }
        let num = match p.out.get(&track) {
            Some(n) => *n,
            None => {
                let n = p.next_out;
                p.next_out += 1;
                p.out.insert(track, n);
                p.out_rev.insert(n, track);
                let link = p.link;
                self.out.push_back(Output::TxMap {
                    link,
                    track,
                    num: Some(n),
                });
                n
            }
        };
        let mut path = a.path;
        path.push(me);
        self.send(
            peer,
            conn,
            cpb::frame::Msg::TrackAnnounce(cpb::TrackAnnounce {
                room_id: a.room.to_string(),
                link_track: num,
                kind: kind_num(a.kind),
                rids: a.rids,
                path,
                participant_id: a.participant,
                origin_track_id: a.origin_track_id,
            }),
        );
    }

    /// (Re-)announces a track on every link of its room.
    pub(super) fn announce_everywhere(&mut self, track: TrackId) {
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            self.announce(&id, track);
        }
    }

    /// Withdraws a track from a peer: it is told, and the relay stops.
    fn withdraw(&mut self, peer: &NodeId, track: TrackId) {
        let Some(num) = self.forget_announcement(peer, track) else {
            return;
        };
        self.send_up(
            peer,
            cpb::frame::Msg::TrackWithdraw(cpb::TrackWithdraw { link_track: num }),
        );
    }

    /// Forgets that a track was announced to a peer (no frame); returns its number.
    pub(super) fn forget_announcement(&mut self, peer: &NodeId, track: TrackId) -> Option<u32> {
        let p = self.peers.get_mut(peer)?;
        let num = p.out.remove(&track)?;
        p.out_rev.remove(&num);
        p.kf_guard.retain(|(n, _), _| *n != num);
        let link = p.link;
        self.out.push_back(Output::TxMap {
            link,
            track,
            num: None,
        });
        self.out.push_back(Output::SetLinkDemand {
            track,
            link,
            mask: 0,
        });
        Some(num)
    }

    pub(super) fn withdraw_everywhere(&mut self, track: TrackId) {
        let ids: Vec<NodeId> = self.peers.keys().cloned().collect();
        for id in ids {
            self.withdraw(&id, track);
        }
    }

    /// A peer announces (or announces again) a track.
    pub(super) fn on_announce(&mut self, peer: &NodeId, conn: ConnId, a: cpb::TrackAnnounce) {
        let Some((room, kind)) = self.check_announce(peer, &a) else {
            self.peer(peer).ignored += 1;
            return;
        };
        let me = self.me.node_id.clone();
        if a.path.contains(&me) {
            return; // it crossed this router already
        }
        let desc = RemoteTrack {
            room: room.clone(),
            path: a.path.clone(),
            origin_track_id: a.origin_track_id.clone(),
            participant: a.participant_id.clone(),
            kind,
            rids: a.rids.iter().map(|r| Rid::from(r.as_str())).collect(),
        };
        let id = desc.local_id();
        let link = self.peer(peer).link;
        // The number may have meant another track before (a peer's re-use): forget that.
        if let Some(old) = self.peer(peer).inbound.insert(a.link_track, id) {
            if old != id {
                self.drop_route(old, peer);
            }
        }
        if let std::collections::btree_map::Entry::Vacant(e) = self.remote.entry(id) {
            e.insert(Remote {
                room: room.clone(),
                kind,
                rids: a.rids.clone(),
                participant: a.participant_id.clone(),
                origin_track_id: a.origin_track_id.clone(),
                routes: BTreeMap::new(),
                best: None,
                demand: 0,
            });
            self.out.push_back(Output::AddRemoteTrack(desc));
        }
        for n in &a.path {
            if n != peer.as_str() {
                self.out.push_back(Output::Reached {
                    room: room.clone(),
                    node: NodeId::new(n.clone()),
                });
            }
        }
        if let Some(r) = self.remote.get_mut(&id) {
            let sent = r
                .routes
                .get(peer)
                .filter(|old| old.up && old.num == a.link_track)
                .map_or(0, |old| old.sent);
            r.routes.insert(
                peer.clone(),
                Route {
                    num: a.link_track,
                    path: a.path,
                    up: true,
                    sent,
                },
            );
        }
        self.out.push_back(Output::RxRoute {
            link,
            conn,
            num: a.link_track,
            route: Some((id, kind)),
        });
        self.reselect(id);
    }

    /// The room and kind of a well-formed announcement on a linked room, within bounds.
    fn check_announce(
        &mut self,
        peer: &NodeId,
        a: &cpb::TrackAnnounce,
    ) -> Option<(RoomId, MediaKind)> {
        let room = RoomId::parse(&a.room_id).ok()?;
        let kind = super::output::kind_of(a.kind)?;
        let p = self.peers.get(peer)?;
        let fits = p.rooms.contains(&room)
            && (p.inbound.contains_key(&a.link_track) || p.inbound.len() < MAX_TRACKS_PER_LINK)
            && !a.path.is_empty()
            && a.path.len() <= MAX_PATH
            && a.path.last().is_some_and(|n| n == peer.as_str())
            && a.path.iter().all(|n| crate::config::valid_name(n))
            && a.rids.len() <= MAX_RIDS
            && a.rids.iter().all(|r| !r.is_empty() && r.len() <= 16)
            && !a.origin_track_id.is_empty()
            && a.origin_track_id.len() <= 64
            && a.participant_id.len() <= kaskade_protocol::ids::MAX_ID_LEN;
        fits.then_some((room, kind))
    }

    /// A peer withdraws a track.
    pub(super) fn on_withdraw(&mut self, peer: &NodeId, conn: ConnId, num: u32) {
        let p = self.peer(peer);
        let Some(track) = p.inbound.remove(&num) else {
            p.ignored += 1;
            return;
        };
        let link = p.link;
        self.out.push_back(Output::RxRoute {
            link,
            conn,
            num,
            route: None,
        });
        self.drop_route(track, peer);
    }

    /// A route of a remote track is gone; without routes the track goes.
    pub(super) fn drop_route(&mut self, track: TrackId, peer: &NodeId) {
        let Some(route) = self
            .remote
            .get_mut(&track)
            .and_then(|r| r.routes.remove(peer))
        else {
            return;
        };
        self.release(track, peer, &route);
        if self.remote.get(&track).is_some_and(|r| r.routes.is_empty()) {
            self.forget_remote(track, true);
        } else {
            self.reselect(track);
        }
    }

    /// A route no longer used on a link that is up: the peer stops relaying on it, and its
    /// number goes nowhere (the link may stay linked for other tracks).
    fn release(&mut self, track: TrackId, peer: &NodeId, route: &Route) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let (Some(conn), true) = (p.conn, route.up) else {
            return;
        };
        if p.inbound.get(&route.num) == Some(&track) {
            p.inbound.remove(&route.num);
            let link = p.link;
            self.out.push_back(Output::RxRoute {
                link,
                conn,
                num: route.num,
                route: None,
            });
        }
        if route.sent != 0 {
            self.send(
                peer,
                conn,
                cpb::frame::Msg::Subscribe(cpb::Subscribe {
                    link_track: route.num,
                    layer_mask: 0,
                }),
            );
        }
    }

    /// A remote track goes: withdrawn onward, its routes released; `publish`: the control
    /// plane is told (not when it told us).
    pub(super) fn forget_remote(&mut self, track: TrackId, publish: bool) {
        let Some(r) = self.remote.remove(&track) else {
            return;
        };
        for (peer, route) in &r.routes {
            self.release(track, peer, route);
        }
        self.withdraw_everywhere(track);
        if publish {
            self.out.push_back(Output::RemoveRemoteTrack(track));
        }
    }

    /// Chooses the route a remote track is pulled from; moves demand and tells onward links
    /// of a new path.
    pub(super) fn reselect(&mut self, track: TrackId) {
        let Some(r) = self.remote.get_mut(&track) else {
            return;
        };
        let old_path = r.best_path().map(<[String]>::to_vec);
        r.best = r.choose();
        let new_path = r.best_path().map(<[String]>::to_vec);
        self.sync_demand(track);
        if old_path != new_path {
            self.announce_everywhere(track);
        }
    }

    /// Asks each route of a remote track for what it should relay: the demand on the chosen
    /// route, nothing elsewhere.
    pub(super) fn sync_demand(&mut self, track: TrackId) {
        let Some(r) = self.remote.get(&track) else {
            return;
        };
        let mut asks = Vec::new();
        for (peer, route) in &r.routes {
            let want = if r.best.as_ref() == Some(peer) {
                r.demand
            } else {
                0
            };
            if route.up && route.sent != want {
                asks.push((peer.clone(), route.num, want));
            }
        }
        for (peer, num, mask) in asks {
            let Some(conn) = self.peers.get(&peer).and_then(|p| p.conn) else {
                continue;
            };
            if let Some(route) = self
                .remote
                .get_mut(&track)
                .and_then(|r| r.routes.get_mut(&peer))
            {
                route.sent = mask;
            }
            self.send(
                &peer,
                conn,
                cpb::frame::Msg::Subscribe(cpb::Subscribe {
                    link_track: num,
                    layer_mask: mask,
                }),
            );
        }
    }

    /// The chosen route of a remote track, if it is up: (peer, connection, number).
    pub(super) fn best_route(&self, track: TrackId) -> Option<(NodeId, ConnId, u32)> {
        let r = self.remote.get(&track)?;
        let best = r.best.as_ref()?;
        let route = r.routes.get(best).filter(|x| x.up)?;
        let conn = self.peers.get(best)?.conn?;
        Some((best.clone(), conn, route.num))
    }

    /// A peer wants these layers of a track we announced to it.
    pub(super) fn on_subscribe(&mut self, peer: &NodeId, s: cpb::Subscribe) {
        let p = self.peer(peer);
        let Some(track) = p.out_rev.get(&s.link_track).copied() else {
            p.ignored += 1;
            return;
        };
        let link = p.link;
        tracing::debug!(%peer, num = s.link_track, mask = s.layer_mask, "peer subscribes");
        self.out.push_back(Output::SetLinkDemand {
            track,
            link,
            mask: s.layer_mask,
        });
    }

    /// A peer asks for a keyframe of a track we announced to it.
    pub(super) fn on_keyframe_request(
        &mut self,
        now: Instant,
        peer: &NodeId,
        k: cpb::KeyframeRequest,
    ) {
        let guard = self.cfg.keyframe_guard;
        let p = self.peer(peer);
        let Some(track) = p.out_rev.get(&k.link_track).copied() else {
            p.ignored += 1;
            return;
        };
        let layer = k.layer.min(31) as u8;
        let last = p.kf_guard.get(&(k.link_track, layer)).copied();
        if last.is_some_and(|t| now.saturating_duration_since(t) < guard) {
            p.ignored += 1;
            return;
        }
        p.kf_guard.insert((k.link_track, layer), now);
        self.out.push_back(Output::RequestKeyframe { track, layer });
    }

    /// The origin's layer state of a track we pull from this peer.
    pub(super) fn on_layer_info(&mut self, peer: &NodeId, l: cpb::LayerInfo) {
        let p = self.peer(peer);
        let Some(track) = p.inbound.get(&l.link_track).copied() else {
            p.ignored += 1;
            return;
        };
        if self.remote.get(&track).and_then(|r| r.best.as_ref()) != Some(peer)
            || l.layers.len() > MAX_RIDS
        {
            return;
        }
        let layers: Arc<[LayerState]> = l
            .layers
            .iter()
            .map(|x| LayerState {
                active: x.active,
                bitrate: x.bitrate,
                width: x.width.min(u32::from(u16::MAX)) as u16,
                height: x.height.min(u32::from(u16::MAX)) as u16,
            })
            .collect();
        self.out.push_back(Output::RemoteLayers { track, layers });
    }
}
