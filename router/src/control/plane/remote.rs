//! What the cascade asks of the control plane: rooms and their residency,
//! remote tracks published here with a home worker, relays of local tracks,
//! keyframe requests, and the media ingest into the home worker.

use super::Control;
use crate::control::error::ApiError;
use crate::control::registry::{region_allowed, Registry, MAX_REACHED};
use crate::media::bus::{BusBatch, Outbox};
use crate::media::types::LinkId;
use crate::media::{Command, TrackInfo, WorkerId};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use pb::event::Kind;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use str0m::media::{MediaKind, Mid, Rid};

/// A remote track as announced over a link.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteTrack {
    /// The room.
    pub room: RoomId,
    /// Routers the track crossed, origin first (the announcing peer last).
    pub path: Vec<String>,
    /// Its id on the origin router.
    pub origin_track_id: String,
    /// The publishing participant (as the origin knows it).
    pub participant: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Simulcast rids.
    pub rids: Vec<Rid>,
}

fn stable_u64(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

impl RemoteTrack {
    /// The track's id on this router. The same origin track keeps it whatever path or
    /// connection announced it (after a reconnect, or from two routers of a triangle).
    pub fn local_id(&self) -> TrackId {
        let origin = self.path.first().map_or("", String::as_str);
        TrackId(stable_u64(&[origin, &self.origin_track_id, self.room.as_str()]) | 1 << 63)
    }
}

impl Control {
    /// The residency policy of a room, if the room exists here.
    pub fn room_policy(&self, room: &RoomId) -> Option<Vec<String>> {
        self.reg()
            .rooms
            .get(room)
            .map(|r| r.allowed_regions.clone())
    }

    /// Makes sure `room` exists for a link, with `allowed` as its policy
    /// when it has to be created. Refused when this router's own region is
    /// outside either policy.
    pub fn ensure_room_for_link(&self, room: &RoomId, allowed: &[String]) -> Result<(), ApiError> {
        let mut reg = self.reg();
        let own = &self.identity.region;
        if let Some(r) = reg.rooms.get(room) {
            if !region_allowed(&r.allowed_regions, own) || !region_allowed(allowed, own) {
                return Err(ApiError::PermissionDenied(format!(
                    "region {own:?} is outside the room's allowed regions"
                )));
            }
            return Ok(());
        }
        if !region_allowed(allowed, own) {
            return Err(ApiError::PermissionDenied(format!(
                "region {own:?} is outside the room's allowed regions"
            )));
        }
        if reg.rooms.len() >= self.limits.max_rooms {
            return Err(ApiError::ResourceExhausted("room limit reached".into()));
        }
        let mut state =
            Registry::new_room(self.limits.max_sessions_per_room as u32, allowed.to_vec());
        state
            .reached
            .insert(self.identity.node_id.clone(), own.clone());
        reg.rooms.insert(room.clone(), state);
        self.metrics.rooms.set(reg.rooms.len() as i64);
        Ok(())
    }

    /// Tracks of `room` this router can relay to `peer`: local ones, and
    /// remote ones that did not come through `peer` (no loops).
    pub fn tracks_for_link(&self, room: &RoomId, peer: &str) -> Vec<Arc<TrackInfo>> {
        let reg = self.reg();
        reg.tracks
            .values()
            .filter(|t| t.room == *room && !t.path.iter().any(|n| n == peer))
            .cloned()
            .collect()
    }

    /// A published track by id.
    pub fn track_info(&self, track: TrackId) -> Option<Arc<TrackInfo>> {
        self.reg().tracks.get(&track).cloned()
    }

    /// Publishes a track arriving over a link, with a home worker that fans
    /// it out. The same origin track announced again (after a reconnect)
    /// keeps its local id.
    pub fn add_remote_track(&self, t: RemoteTrack) -> Option<Arc<TrackInfo>> {
        let origin = t.path.first()?.clone();
        let mut reg = self.reg();
        if !reg.rooms.contains_key(&t.room) {
            return None;
        }
        let id = t.local_id();
        if let Some(existing) = reg.tracks.get(&id) {
            return Some(existing.clone());
        }
        let participant = ParticipantId::parse(&t.participant)
            .or_else(|_| ParticipantId::parse("remote"))
            .expect("\"remote\" is a valid participant id");
        // Tracks of one remote participant share a stream id (lip sync).
        let session = SessionId(stable_u64(&[&origin, participant.as_str()]));
        let worker = reg.pick_worker();
        let info = Arc::new(TrackInfo {
            id,
            kind: t.kind,
            room: t.room.clone(),
            session,
            participant,
            worker,
            mid: Mid::from("remote"),
            rids: t.rids.clone(),
            path: t.path.clone(),
        });
        self.send(
            worker,
            Command::AddRemoteTrack {
                track: id,
                kind: t.kind,
                rids: t.rids,
            },
        );
        reg.tracks.insert(id, info.clone());
        if let Some(r) = reg.rooms.get_mut(&t.room) {
            r.remote_tracks.push(id);
        }
        let tpb = reg.track_pb(&info);
        reg.emit(
            &t.room,
            Kind::TrackPublished(pb::TrackPublished { track: Some(tpb) }),
        );
        drop(reg);
        if let Some(h) = self.hooks() {
            h.track_published(&t.room, &info);
        }
        Some(info)
    }

    /// Withdraws a remote track (its subscribers are told to renegotiate).
    pub fn remove_remote_track(&self, track: TrackId) {
        let mut reg = self.reg();
        self.unpublish(&mut reg, &[track]);
    }

    /// Relays the layers in `mask` of a track to a link (0 stops).
    pub fn set_link_demand(&self, track: TrackId, link: LinkId, mask: u32) {
        let Some(worker) = self.reg().tracks.get(&track).map(|t| t.worker) else {
            return;
        };
        self.send(worker, Command::SetLinkDemand { track, link, mask });
    }

    /// A far router asks for a keyframe of a track relayed from here.
    pub fn request_keyframe(&self, track: TrackId, layer: u8) {
        let Some(worker) = self.reg().tracks.get(&track).map(|t| t.worker) else {
            return;
        };
        self.send(worker, Command::RequestKeyframe { track, layer });
    }

    /// The number of media workers (per-worker tables of the cascade's tasks).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Hands relayed media to a remote track's home worker the way one worker hands media to
    /// another: one batch and one wake-up, under the bus's overload policy
    /// ([`Outbox::hand_over`]). A full inbox sheds the batch's video (counted in
    /// `kaskade_bus_dropped_total{kind="link"}`, with an overload note so the worker's
    /// subscribers resume at a keyframe) and keeps audio and layer reports in `outbox` to be
    /// offered first next time. `batch` is left empty. Never blocks.
    pub fn ingest_batch(
        &self,
        outbox: &mut Outbox,
        worker: WorkerId,
        batch: &mut BusBatch,
    ) -> bool {
        let Some(h) = self.workers.get(worker.index()) else {
            batch.clear();
            return false;
        };
        let (sent, shed) = outbox.hand_over(worker.index(), batch, &h.bus);
        if sent {
            let _ = h.waker.wake();
        }
        let dropped = shed.video + shed.other + shed.datagrams;
        if dropped > 0 {
            self.metrics
                .bus_dropped
                .with_label_values(&["link"])
                .inc_by(dropped);
        }
        sent
    }

    /// A link of `room` to `peer` came up or went down.
    pub fn link_changed(&self, room: &RoomId, peer: &str, region: &str, up: bool) {
        let mut reg = self.reg();
        let Some(r) = reg.rooms.get_mut(room) else {
            return;
        };
        if up {
            r.linked.insert(peer.to_string(), region.to_string());
            r.reached.insert(peer.to_string(), region.to_string());
        } else {
            r.linked.remove(peer);
        }
        reg.emit(
            room,
            Kind::LinkChanged(pb::LinkChanged {
                peer: Some(pb::RouterRef {
                    node_id: peer.to_string(),
                    region: region.to_string(),
                }),
                up,
            }),
        );
    }

    /// Records that the room's media reached routers beyond a link (chains).
    /// A node known already keeps its region (a direct peer's is known; a
    /// path names none), and a room records at most [`MAX_REACHED`] nodes
    /// whatever peers announce.
    pub fn reached(&self, room: &RoomId, node: &str, region: &str) {
        if let Some(r) = self.reg().rooms.get_mut(room) {
            if !r.reached.contains_key(node) && r.reached.len() < MAX_REACHED {
                r.reached.insert(node.to_string(), region.to_string());
            }
        }
    }

    /// Audit: a link of `room` was refused.
    pub fn link_refused(
        &self,
        room: &RoomId,
        peer: &str,
        region: &str,
        reason: &str,
        decided_by: &str,
    ) {
        tracing::warn!(room = %room, peer, region, reason, decided_by, "link refused");
        self.reg().emit(
            room,
            Kind::LinkRefused(pb::LinkRefused {
                peer: Some(pb::RouterRef {
                    node_id: peer.to_string(),
                    region: region.to_string(),
                }),
                reason: reason.to_string(),
                decided_by: decided_by.to_string(),
            }),
        );
    }

    /// The remote tracks of `room` that came through `peer`.
    pub fn remote_tracks_via(&self, room: &RoomId, peer: &str) -> Vec<TrackId> {
        let reg = self.reg();
        reg.rooms
            .get(room)
            .map(|r| {
                r.remote_tracks
                    .iter()
                    .filter(|t| {
                        reg.tracks
                            .get(t)
                            .is_some_and(|i| i.path.last().is_some_and(|n| n == peer))
                    })
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}
