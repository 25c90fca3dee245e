//! What the control plane knows: rooms, sessions, tracks and who
//! subscribes to what. Plain data behind one mutex of the control plane
//! (never on the packet path, never held across an await).

use crate::media::placement::{self, Policy, WorkerView};
use crate::media::{TrackInfo, WorkerId};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use str0m::media::{MediaKind, Mid};
use tokio::sync::broadcast;

/// Events buffered per watched room for slow watchers. The buffer exists
/// only while someone watches the room (an idle room holds none): with
/// events of at most a few hundred bytes (ids are bounded), a watched room
/// holds at most about 100 kB of events, and `limits.max_watchers` bounds
/// the number of watched rooms.
pub const ROOM_EVENT_BUFFER: usize = 256;

/// Routers one room records as reached ([`RoomState::reached`]): far more
/// than a cluster has, few enough that peers' announcements cannot grow a
/// room without bound.
pub const MAX_REACHED: usize = 256;

/// One room.
#[derive(Debug)]
pub struct RoomState {
    /// Session limit of the room.
    pub max_sessions: u32,
    /// Residency: regions or region prefixes (ending in '-'); empty: anywhere.
    pub allowed_regions: Vec<String>,
    /// Routers (node id → region) the room's media reached, this one included.
    pub reached: BTreeMap<String, String>,
    /// Routers the room is linked to now.
    pub linked: BTreeMap<String, String>,
    /// Tracks relayed from other routers.
    pub remote_tracks: Vec<TrackId>,
    /// Participants and their sessions.
    pub participants: BTreeMap<ParticipantId, SessionId>,
    /// The room's event stream, while someone watches it.
    pub events: Option<broadcast::Sender<pb::Event>>,
    /// `DeleteRoom` is closing its sessions: no new session may join.
    pub deleting: bool,
}

/// A subscription of a session to a track.
#[derive(Debug, Clone)]
pub struct SubState {
    /// The subscriber's media line.
    pub mid: Mid,
    /// The publisher's worker.
    pub publisher_worker: WorkerId,
    /// The publisher stopped publishing it.
    pub gone: bool,
}

/// One session.
#[derive(Debug)]
pub struct SessionState {
    /// Its room.
    pub room: RoomId,
    /// Its participant.
    pub participant: ParticipantId,
    /// Its worker.
    pub worker: WorkerId,
    /// Opaque integrator metadata (never logged).
    pub metadata: String,
    /// ICE + DTLS up.
    pub connected: bool,
    /// Still being created on its worker.
    pub creating: bool,
    /// Published tracks.
    pub published: Vec<TrackId>,
    /// Subscriptions.
    pub subs: BTreeMap<TrackId, SubState>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    /// Rooms by id.
    pub rooms: BTreeMap<RoomId, RoomState>,
    /// Sessions by id.
    pub sessions: HashMap<SessionId, SessionState>,
    /// Published tracks by id.
    pub tracks: HashMap<TrackId, Arc<TrackInfo>>,
    /// Sessions per worker.
    pub load: Vec<usize>,
    /// Sessions not yet connected (created, or still being created).
    pub pending: usize,
    /// Every room's events, for router-wide watchers.
    pub router_events: super::events::RouterEvents,
    /// Active speakers per room.
    pub speakers: super::speakers::Speakers,
    /// How sessions are placed on workers.
    pub placement: Policy,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    /// An empty registry for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            load: vec![0; workers],
            ..Default::default()
        }
    }

    /// A new room.
    pub fn new_room(max_sessions: u32, allowed_regions: Vec<String>) -> RoomState {
        RoomState {
            max_sessions,
            allowed_regions,
            reached: BTreeMap::new(),
            linked: BTreeMap::new(),
            remote_tracks: Vec::new(),
            participants: BTreeMap::new(),
            events: None,
            deleting: false,
        }
    }

    /// A receiver of the room's events, creating its buffer on first use.
    pub fn watch(&mut self, room: &RoomId) -> Option<broadcast::Receiver<pb::Event>> {
        let r = self.rooms.get_mut(room)?;
        Some(
            r.events
                .get_or_insert_with(|| broadcast::channel(ROOM_EVENT_BUFFER).0)
                .subscribe(),
        )
    }

    /// The worker for a new session of `room` (`media::placement`), or
    /// `None` when every worker is overloaded.
    pub fn place_session(&self, room: &RoomId, overloaded: &[bool]) -> Option<WorkerId> {
        let mut views: Vec<WorkerView> = self
            .load
            .iter()
            .enumerate()
            .map(|(i, n)| WorkerView {
                sessions: *n as u32,
                room_sessions: 0,
                overloaded: overloaded.get(i).copied().unwrap_or(false),
            })
            .collect();
        let mut sources = 0;
        if let Some(r) = self.rooms.get(room) {
            for s in r
                .participants
                .values()
                .filter_map(|sid| self.sessions.get(sid))
            {
                if let Some(v) = views.get_mut(s.worker.index()) {
                    v.room_sessions += 1;
                }
                sources += u32::from(!s.published.is_empty());
            }
            let mut remote: Vec<SessionId> = r
                .remote_tracks
                .iter()
                .filter_map(|t| self.tracks.get(t).map(|i| i.session))
                .collect();
            remote.sort_unstable();
            remote.dedup();
            sources += remote.len() as u32;
        }
        placement::place(self.placement, &views, sources)
    }

    /// The workers a room's sessions are on, lowest first.
    pub fn room_workers(&self, room: &RoomId) -> Vec<u32> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut w: Vec<u32> = r
            .participants
            .values()
            .filter_map(|sid| self.sessions.get(sid))
            .map(|s| u32::from(s.worker.0))
            .collect();
        w.sort_unstable();
        w.dedup();
        w
    }

    /// The least loaded worker (lowest index on ties).
    pub fn pick_worker(&self) -> WorkerId {
        let i = self
            .load
            .iter()
            .enumerate()
            .min_by_key(|(i, n)| (**n, *i))
            .map(|(i, _)| i)
            .unwrap_or(0);
        WorkerId(i as u16)
    }

    /// Sends an event to the room's watchers.
    pub fn emit(&mut self, room: &RoomId, kind: pb::event::Kind) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let ev = pb::Event {
            room_id: room.to_string(),
            at_unix_ms: unix_ms(),
            kind: Some(kind),
        };
        self.router_events.send(&ev);
        let Some(tx) = &r.events else {
            return;
        };
        if tx.receiver_count() == 0 {
            // The last watcher left: free the buffer.
            r.events = None;
            return;
        }
        let _ = tx.send(ev);
    }

    /// The API view of a track.
    pub fn track_pb(&self, t: &TrackInfo) -> pb::Track {
        pb::Track {
            track_id: t.id.to_string(),
            kind: match t.kind {
                MediaKind::Audio => pb::TrackKind::Audio as i32,
                MediaKind::Video => pb::TrackKind::Video as i32,
            },
            session_id: t.session.to_string(),
            participant_id: t.participant.to_string(),
            mid: t.mid.to_string(),
            rids: t.rids.iter().map(|r| r.to_string()).collect(),
            origin_node_id: t.path.first().cloned().unwrap_or_default(),
        }
    }

    /// The API view of a session.
    pub fn session_pb(&self, id: SessionId, s: &SessionState) -> pb::SessionInfo {
        pb::SessionInfo {
            session_id: id.to_string(),
            participant_id: s.participant.to_string(),
            worker: u32::from(s.worker.0),
            connected: s.connected,
            metadata: s.metadata.clone(),
        }
    }

    /// The API view of a room.
    pub fn room_pb(&self, id: &RoomId) -> Option<pb::Room> {
        let r = self.rooms.get(id)?;
        let mut sessions = Vec::new();
        let mut tracks = Vec::new();
        for sid in r.participants.values() {
            let Some(s) = self.sessions.get(sid) else {
                continue;
            };
            sessions.push(self.session_pb(*sid, s));
            for t in &s.published {
                if let Some(info) = self.tracks.get(t) {
                    tracks.push(self.track_pb(info));
                }
            }
        }
        for t in &r.remote_tracks {
            if let Some(info) = self.tracks.get(t) {
                tracks.push(self.track_pb(info));
            }
        }
        let refs = |m: &BTreeMap<String, String>| -> Vec<pb::RouterRef> {
            m.iter()
                .map(|(n, r)| pb::RouterRef {
                    node_id: n.clone(),
                    region: r.clone(),
                })
                .collect()
        };
        Some(pb::Room {
            room_id: id.to_string(),
            max_sessions: r.max_sessions,
            sessions,
            tracks,
            allowed_regions: r.allowed_regions.clone(),
            reached: refs(&r.reached),
            linked: refs(&r.linked),
            workers: self.room_workers(id),
        })
    }

    /// Sessions in `room` subscribed to `track`.
    pub fn subscribers_of(&self, room: &RoomId, track: TrackId) -> Vec<SessionId> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.participants
            .values()
            .filter(|sid| {
                self.sessions
                    .get(sid)
                    .is_some_and(|s| s.subs.contains_key(&track))
            })
            .copied()
            .collect()
    }

    /// Ids of the published tracks of a set, for events.
    pub fn ids(tracks: &BTreeSet<TrackId>) -> Vec<String> {
        tracks.iter().map(|t| t.to_string()).collect()
    }
}

/// Whether `region` satisfies a residency policy: empty allows anywhere;
/// an entry ending in '-' is a prefix, any other entry a full region name.
pub fn region_allowed(allowed: &[String], region: &str) -> bool {
    allowed.is_empty()
        || (!region.is_empty()
            && allowed.iter().any(|a| {
                if a.ends_with('-') {
                    region.starts_with(a.as_str())
                } else {
                    region == a
                }
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_holds_an_event_buffer_only_while_watched() {
        let mut reg = Registry::new(1);
        let room = RoomId::parse("r").unwrap();
        reg.rooms
            .insert(room.clone(), Registry::new_room(10, Vec::new()));
        let ev = || pb::event::Kind::Watching(pb::Watching {});
        reg.emit(&room, ev());
        assert!(reg.rooms[&room].events.is_none(), "idle: no buffer");
        let mut rx = reg.watch(&room).unwrap();
        reg.emit(&room, ev());
        assert!(rx.try_recv().is_ok(), "the watcher got it");
        drop(rx);
        reg.emit(&room, ev());
        assert!(
            reg.rooms[&room].events.is_none(),
            "freed after the last watcher"
        );
    }

    #[test]
    fn residency_matches_names_and_prefixes() {
        let de = vec!["eu-de-".to_string()];
        assert!(region_allowed(&de, "eu-de-fra"));
        assert!(!region_allowed(&de, "eu-nl-ams"));
        assert!(!region_allowed(&de, "eu-de"), "prefix needs the dash");
        assert!(!region_allowed(&de, ""), "no region, no match");
        let exact = vec!["eu-fr-par".to_string(), "eu-de-".to_string()];
        assert!(region_allowed(&exact, "eu-fr-par"));
        assert!(!region_allowed(&exact, "eu-fr-parx"));
        assert!(region_allowed(&[], "anything"));
        assert!(region_allowed(&[], ""));
    }
}
