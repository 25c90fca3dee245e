//! The control plane's operations: validates API requests against the
//! registry, sends commands to the media workers and keeps the registry and
//! the room event streams up to date.

use super::error::{parse_id, ApiError};
use super::hooks::CascadeHooks;
use super::registry::{region_allowed, Registry, SessionState, SubState};
use super::watch::{Watch, Watchers};
use crate::media::command::{AnswerOk, Reply, SubscriptionUpdate};
use crate::media::worker::WorkerHandle;
use crate::media::{CloseReason, Command, TrackInfo, WorkerEvent, WorkerId};
use crate::metrics::Metrics;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use pb::event::Kind;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::oneshot;

mod drain;
mod remote;
mod speakers;
mod viewer;
pub use remote::RemoteTrack;
pub use viewer::ViewerTracks;

pub use super::limits::Limits;
use super::limits::{
    echo, refuse, sdp_shape, Limit, DEFAULT_PAGE_SIZE, MAX_ALLOWED_REGIONS, MAX_METADATA_BYTES,
    MAX_PAGE_BYTES, MAX_PAGE_SIZE, MAX_SDP_BYTES, MAX_TRACKS_PER_CALL,
};

/// This router's identity (for residency and the cascade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Node id.
    pub node_id: String,
    /// Region (empty: none).
    pub region: String,
}

/// The control plane.
pub struct Control {
    registry: Mutex<Registry>,
    workers: Vec<WorkerHandle>,
    metrics: Metrics,
    limits: Limits,
    identity: Identity,
    cascade: OnceLock<Arc<dyn CascadeHooks>>,
    watchers: Watchers,
    /// Set once the router drains: no new rooms or sessions (see `drain.rs`).
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

fn check_sdp(m: &Metrics, field: &str, sdp: &str) -> Result<(), ApiError> {
    if sdp.is_empty() {
        return Err(ApiError::InvalidArgument(format!("{field} is empty")));
    }
    if sdp.len() > MAX_SDP_BYTES {
        return Err(refuse(
            m,
            Limit::FieldSize,
            ApiError::InvalidArgument(format!("{field} is larger than {MAX_SDP_BYTES} bytes")),
        ));
    }
    Ok(())
}

fn parse_tracks(m: &Metrics, ids: &[String]) -> Result<Vec<TrackId>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::InvalidArgument("track_ids is empty".into()));
    }
    if ids.len() > MAX_TRACKS_PER_CALL {
        return Err(refuse(
            m,
            Limit::FieldSize,
            ApiError::InvalidArgument(format!("more than {MAX_TRACKS_PER_CALL} track_ids")),
        ));
    }
    let mut out = Vec::with_capacity(ids.len());
    for s in ids {
        let t = parse_id("track_id", s, TrackId::parse)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

impl Control {
    /// A control plane over the given workers.
    pub fn new(
        workers: Vec<WorkerHandle>,
        metrics: Metrics,
        limits: Limits,
        identity: Identity,
    ) -> Self {
        Self {
            registry: Mutex::new(Registry::new(workers.len())),
            workers,
            metrics,
            limits,
            identity,
            cascade: OnceLock::new(),
            watchers: Watchers::default(),
            draining: Default::default(),
        }
    }

    /// How sessions are placed on workers (`media.room_share`).
    pub fn set_placement(&self, policy: crate::media::placement::Policy) {
        self.reg().placement = policy;
    }

    /// This router's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Connects the cascade (once, at start-up).
    pub fn set_cascade(&self, hooks: Arc<dyn CascadeHooks>) {
        let _ = self.cascade.set(hooks);
    }

    pub(crate) fn hooks(&self) -> Option<&Arc<dyn CascadeHooks>> {
        self.cascade.get()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn reg(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock would be a bug in this module; the
        // registry stays structurally valid, so keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn send(&self, w: WorkerId, cmd: Command) {
        if let Some(h) = self.workers.get(w.index()) {
            let _ = h.send(cmd);
        }
    }

    async fn call<T>(
        &self,
        w: WorkerId,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let h = self
            .workers
            .get(w.index())
            .ok_or_else(|| ApiError::Unavailable("media worker missing".into()))?;
        h.send(make(tx))
            .map_err(|_| ApiError::Unavailable("media worker stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("media worker stopped".into()))?
            .map_err(ApiError::from)
    }

    /// Checks an offer's shape against the per-offer limits; returns how
    /// many tracks it may publish.
    fn check_offer(&self, sdp: &str) -> Result<usize, ApiError> {
        let shape = sdp_shape(sdp);
        let max = self.limits.max_media_lines;
        if shape.media_lines > max {
            return Err(refuse(
                &self.metrics,
                Limit::MediaLines,
                ApiError::ResourceExhausted(format!(
                    "the offer has {} media sections; at most {max} (limits.max_media_lines)",
                    shape.media_lines
                )),
            ));
        }
        let max = self.limits.max_tracks_per_session;
        if shape.sending > max {
            return Err(refuse(
                &self.metrics,
                Limit::TracksPerSession,
                ApiError::ResourceExhausted(format!(
                    "the offer sends {} audio/video tracks; at most {max} per session (limits.max_tracks_per_session)",
                    shape.sending
                )),
            ));
        }
        Ok(shape.sending)
    }

    /// Checks that the router can take a new session (or `new_tracks` more
    /// tracks) within its total limits.
    fn check_router_capacity(&self, reg: &Registry, new_tracks: usize) -> Result<(), ApiError> {
        let l = &self.limits;
        if new_tracks > 0 && reg.tracks.len() + new_tracks > l.max_tracks {
            return Err(refuse(
                &self.metrics,
                Limit::Tracks,
                ApiError::ResourceExhausted(format!(
                    "this router holds its limit of {} tracks (limits.max_tracks)",
                    l.max_tracks
                )),
            ));
        }
        Ok(())
    }

    /// Checks the limits on sessions before one is added.
    fn check_session_capacity(&self, reg: &Registry) -> Result<(), ApiError> {
        let l = &self.limits;
        if reg.sessions.len() >= l.max_sessions {
            return Err(refuse(
                &self.metrics,
                Limit::Sessions,
                ApiError::ResourceExhausted(format!(
                    "this router holds its limit of {} sessions (limits.max_sessions)",
                    l.max_sessions
                )),
            ));
        }
        if reg.pending >= l.max_pending_sessions {
            return Err(refuse(
                &self.metrics,
                Limit::PendingSessions,
                ApiError::ResourceExhausted(format!(
                    "{} sessions are waiting to connect, this router's limit (limits.max_pending_sessions)",
                    l.max_pending_sessions
                )),
            ));
        }
        Ok(())
    }

    // ----- rooms ------------------------------------------------------------

    /// `CreateRoom`
    pub fn create_room(
        &self,
        room_id: &str,
        max_sessions: u32,
        allowed_regions: &[String],
    ) -> Result<pb::Room, ApiError> {
        self.refuse_if_draining("room")?;
        let room = parse_id("room_id", room_id, RoomId::parse)?;
        if allowed_regions.len() > MAX_ALLOWED_REGIONS {
            return Err(refuse(
                &self.metrics,
                Limit::FieldSize,
                ApiError::InvalidArgument(format!(
                    "allowed_regions has {} entries; at most {MAX_ALLOWED_REGIONS}",
                    allowed_regions.len()
                )),
            ));
        }
        for r in allowed_regions {
            let name = r.strip_suffix('-').unwrap_or(r);
            if !crate::config::valid_name(name) {
                return Err(ApiError::InvalidArgument(format!(
                    "allowed_regions entry {} is not a region name or a prefix ending in '-'",
                    echo(r)
                )));
            }
        }
        if !region_allowed(allowed_regions, &self.identity.region) {
            return Err(ApiError::PermissionDenied(format!(
                "this router's region {:?} is outside the room's allowed regions",
                self.identity.region
            )));
        }
        let limit = self.limits.max_sessions_per_room;
        let max = if max_sessions == 0 {
            limit as u32
        } else if max_sessions as usize > limit {
            return Err(ApiError::InvalidArgument(format!(
                "max_sessions {max_sessions} is above this router's limit of {limit}"
            )));
        } else {
            max_sessions
        };
        let mut reg = self.reg();
        if reg.rooms.contains_key(&room) {
            return Err(ApiError::AlreadyExists(format!("room {room} exists")));
        }
        if reg.rooms.len() >= self.limits.max_rooms {
            return Err(refuse(
                &self.metrics,
                Limit::Rooms,
                ApiError::ResourceExhausted(format!(
                    "this router holds its limit of {} rooms (limits.max_rooms)",
                    self.limits.max_rooms
                )),
            ));
        }
        let mut state = Registry::new_room(max, allowed_regions.to_vec());
        state
            .reached
            .insert(self.identity.node_id.clone(), self.identity.region.clone());
        reg.rooms.insert(room.clone(), state);
        self.metrics.rooms.set(reg.rooms.len() as i64);
        if let Some(h) = self.hooks() {
            h.room_created(&room, allowed_regions);
        }
        reg.room_pb(&room)
            .ok_or_else(|| ApiError::Internal("room vanished".into()))
    }

    /// `GetRoom`
    pub fn get_room(&self, room_id: &str) -> Result<pb::Room, ApiError> {
        let room = parse_id("room_id", room_id, RoomId::parse)?;
        self.reg()
            .room_pb(&room)
            .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))
    }

    /// `ListRooms`
    pub fn list_rooms(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListRoomsResponse, ApiError> {
        use prost::Message;
        let size = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(parse_id("page_token", page_token, RoomId::parse)?)
        };
        let reg = self.reg();
        let range = match &after {
            Some(a) => reg
                .rooms
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => reg.rooms.range::<RoomId, _>(..),
        };
        let mut rooms = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for id in range.map(|(id, _)| id) {
            if rooms.len() == size {
                more = true;
                break;
            }
            let Some(room) = reg.room_pb(id) else {
                continue;
            };
            // Field tag, length prefix and the message.
            let len = room.encoded_len() + 8;
            if !rooms.is_empty() && bytes + len > MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += len;
            rooms.push(room);
        }
        let next_page_token = match rooms.last() {
            Some(last) if more => last.room_id.clone(),
            _ => String::new(),
        };
        Ok(pb::ListRoomsResponse {
            rooms,
            next_page_token,
        })
    }

    /// `DeleteRoom`: closes every session, then removes the room.
    pub async fn delete_room(&self, room_id: &str) -> Result<(), ApiError> {
        let room = parse_id("room_id", room_id, RoomId::parse)?;
        let sessions: Vec<SessionId> = {
            let reg = self.reg();
            let r = reg
                .rooms
                .get(&room)
                .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))?;
            r.participants.values().copied().collect()
        };
        for sid in sessions {
            let _ = self.close_session_id(sid).await;
        }
        if let Some(h) = self.hooks() {
            h.room_deleted(&room);
        }
        let mut reg = self.reg();
        let remote = reg
            .rooms
            .get(&room)
            .map(|r| r.remote_tracks.clone())
            .unwrap_or_default();
        self.unpublish(&mut reg, &remote);
        reg.speakers.forget_room(&room);
        reg.rooms.remove(&room);
        self.metrics.rooms.set(reg.rooms.len() as i64);
        Ok(())
    }

    /// `WatchEvents`: a receiver of the room's events, or (empty
    /// `room_id`) of every room's, holding one of `limits.max_watchers`
    /// slots while it lives.
    pub fn watch(&self, room_id: &str) -> Result<Watch, ApiError> {
        let room = if room_id.is_empty() {
            None
        } else {
            Some(parse_id("room_id", room_id, RoomId::parse)?)
        };
        let slot = self
            .watchers
            .enter(self.limits.max_watchers)
            .ok_or_else(|| {
                refuse(
                    &self.metrics,
                    Limit::Watchers,
                    ApiError::ResourceExhausted(format!(
                        "{} event streams are open, this router's limit (limits.max_watchers)",
                        self.limits.max_watchers
                    )),
                )
            })?;
        let events = match room {
            None => self.reg().router_events.subscribe(),
            Some(room) => self
                .reg()
                .watch(&room)
                .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))?,
        };
        Ok(Watch { events, slot })
    }

    // ----- sessions ---------------------------------------------------------

    /// `CreateSession`
    pub async fn create_session(
        &self,
        req: pb::CreateSessionRequest,
    ) -> Result<pb::CreateSessionResponse, ApiError> {
        self.create_session_with(req, &[]).await.map(|(r, _)| r)
    }

    /// `CreateSession`, also subscribing the session to `attach` on its
    /// offer's receive-only lines, in the answer (WHEP). Returns the
    /// subscriptions made.
    pub async fn create_session_with(
        &self,
        req: pb::CreateSessionRequest,
        attach: &[TrackId],
    ) -> Result<(pb::CreateSessionResponse, Vec<pb::Subscription>), ApiError> {
        self.refuse_if_draining("session")?;
        let room = parse_id("room_id", &req.room_id, RoomId::parse)?;
        let participant = parse_id("participant_id", &req.participant_id, ParticipantId::parse)?;
        check_sdp(&self.metrics, "sdp_offer", &req.sdp_offer)?;
        if req.metadata.len() > MAX_METADATA_BYTES {
            return Err(refuse(
                &self.metrics,
                Limit::FieldSize,
                ApiError::InvalidArgument(format!(
                    "metadata is larger than {MAX_METADATA_BYTES} bytes"
                )),
            ));
        }
        let sending = self.check_offer(&req.sdp_offer)?;
        let (sid, worker, infos) = {
            let mut reg = self.reg();
            let r = reg
                .rooms
                .get(&room)
                .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))?;
            if r.participants.contains_key(&participant) {
                return Err(ApiError::AlreadyExists(format!(
                    "participant {participant} already has a session in room {room}"
                )));
            }
            if r.participants.len() >= r.max_sessions as usize {
                return Err(refuse(
                    &self.metrics,
                    Limit::RoomSessions,
                    ApiError::ResourceExhausted(format!(
                        "room {room} holds its limit of {} sessions",
                        r.max_sessions
                    )),
                ));
            }
            self.check_session_capacity(&reg)?;
            self.check_router_capacity(&reg, sending)?;
            if attach.len() > self.limits.max_subscriptions_per_session {
                return Err(refuse(
                    &self.metrics,
                    Limit::SubscriptionsPerSession,
                    ApiError::ResourceExhausted(format!(
                        "the session would receive more than {} tracks (limits.max_subscriptions_per_session)",
                        self.limits.max_subscriptions_per_session
                    )),
                ));
            }
            let infos = attach
                .iter()
                .map(|t| {
                    reg.tracks
                        .get(t)
                        .filter(|i| i.room == room)
                        .cloned()
                        .ok_or_else(|| {
                            ApiError::NotFound(format!("track {t} not found in room {room}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut sid = SessionId(rand::random());
            while reg.sessions.contains_key(&sid) {
                sid = SessionId(rand::random());
            }
            let overloaded: Vec<bool> = self.workers.iter().map(|w| w.load.overloaded()).collect();
            let worker = reg.place_session(&room, &overloaded).ok_or_else(|| {
                refuse(
                    &self.metrics,
                    Limit::Overloaded,
                    ApiError::ResourceExhausted(
                        "every media worker is overloaded; try another router".into(),
                    ),
                )
            })?;
            reg.load[worker.index()] += 1;
            if let Some(r) = reg.rooms.get_mut(&room) {
                r.participants.insert(participant.clone(), sid);
            }
            reg.sessions.insert(
                sid,
                SessionState {
                    room: room.clone(),
                    participant: participant.clone(),
                    worker,
                    metadata: req.metadata.clone(),
                    connected: false,
                    creating: true,
                    published: Vec::new(),
                    subs: Default::default(),
                },
            );
            reg.pending += 1;
            self.metrics.sessions.inc();
            self.metrics
                .room_workers
                .observe(reg.room_workers(&room).len() as f64);
            (sid, worker, infos)
        };
        let res = self
            .call(worker, |reply| Command::CreateSession {
                session: sid,
                room: room.clone(),
                participant: participant.clone(),
                offer: req.sdp_offer,
                attach: infos.clone(),
                reply,
            })
            .await;
        let ok = match res {
            Ok(ok) => ok,
            Err(e) => {
                let mut reg = self.reg();
                self.forget_session(&mut reg, sid);
                return Err(e);
            }
        };
        let mut reg = self.reg();
        if !reg.sessions.contains_key(&sid) {
            // Closed (room deleted) while the worker was answering.
            drop(reg);
            self.send(
                worker,
                Command::CloseSession {
                    session: sid,
                    reply: oneshot::channel().0,
                },
            );
            return Err(ApiError::NotFound(format!("room {room} was deleted")));
        }
        if let Some(s) = reg.sessions.get_mut(&sid) {
            s.creating = false;
        }
        let tracks = self.publish_tracks(&mut reg, sid, &ok);
        let subs = self.record_subscriptions(&mut reg, sid, worker, &infos, &ok.attached);
        Ok((
            pb::CreateSessionResponse {
                session_id: sid.to_string(),
                sdp_answer: ok.answer,
                tracks,
            },
            subs,
        ))
    }

    /// Records the subscriptions a worker made for session `sid` (on
    /// `worker`) and has the publishers' workers send it their packets.
    fn record_subscriptions(
        &self,
        reg: &mut Registry,
        sid: SessionId,
        worker: WorkerId,
        infos: &[Arc<TrackInfo>],
        mids: &[(TrackId, str0m::media::Mid)],
    ) -> Vec<pb::Subscription> {
        let mut subs = Vec::new();
        for (t, mid) in mids {
            let Some(info) = infos.iter().find(|i| i.id == *t) else {
                continue;
            };
            let gone = !reg.tracks.contains_key(t);
            if let Some(s) = reg.sessions.get_mut(&sid) {
                s.subs.insert(
                    *t,
                    SubState {
                        mid: *mid,
                        publisher_worker: info.worker,
                        gone,
                    },
                );
            }
            if !gone {
                self.send(info.worker, Command::AddDestination { track: *t, worker });
            }
            subs.push(pb::Subscription {
                track_id: t.to_string(),
                mid: mid.to_string(),
            });
        }
        subs
    }

    /// Registers tracks an offer added, unpublishes those it removed.
    fn publish_tracks(&self, reg: &mut Registry, sid: SessionId, ok: &AnswerOk) -> Vec<pb::Track> {
        let Some(s) = reg.sessions.get(&sid) else {
            return Vec::new();
        };
        let (room, participant, worker) = (s.room.clone(), s.participant.clone(), s.worker);
        let mut out = Vec::new();
        for t in &ok.added {
            let info = Arc::new(TrackInfo {
                id: t.id,
                kind: t.kind,
                room: room.clone(),
                session: sid,
                participant: participant.clone(),
                worker,
                mid: t.mid,
                rids: t.rids.clone(),
                path: Vec::new(),
            });
            let tpb = reg.track_pb(&info);
            reg.tracks.insert(t.id, info.clone());
            if let Some(h) = self.hooks() {
                h.track_published(&room, &info);
            }
            if let Some(s) = reg.sessions.get_mut(&sid) {
                s.published.push(t.id);
            }
            reg.emit(
                &room,
                Kind::TrackPublished(pb::TrackPublished {
                    track: Some(tpb.clone()),
                }),
            );
            out.push(tpb);
        }
        if !ok.removed.is_empty() {
            self.unpublish(reg, &ok.removed);
        }
        out
    }

    /// Tracks stop being published: every worker drops their streams,
    /// subscribers are told to renegotiate.
    pub(crate) fn unpublish(&self, reg: &mut Registry, tracks: &[TrackId]) {
        for &t in tracks {
            let Some(info) = reg.tracks.remove(&t) else {
                continue;
            };
            if let Some(s) = reg.sessions.get_mut(&info.session) {
                s.published.retain(|x| *x != t);
            }
            if !info.path.is_empty() {
                if let Some(r) = reg.rooms.get_mut(&info.room) {
                    r.remote_tracks.retain(|x| *x != t);
                }
                self.send(info.worker, Command::RemoveRemoteTrack { track: t });
            }
            if let Some(h) = self.hooks() {
                h.track_unpublished(&info.room, t);
            }
            for w in &self.workers {
                let _ = w.send(Command::TrackGone { track: t });
            }
            reg.speakers.forget(&info.room, t);
            reg.emit(
                &info.room,
                Kind::TrackUnpublished(pb::TrackUnpublished {
                    track_id: t.to_string(),
                    session_id: info.session.to_string(),
                }),
            );
            for sub in reg.subscribers_of(&info.room, t) {
                if let Some(s) = reg.sessions.get_mut(&sub) {
                    if let Some(st) = s.subs.get_mut(&t) {
                        st.gone = true;
                    }
                }
                let gone: BTreeSet<TrackId> = [t].into();
                reg.emit(
                    &info.room,
                    Kind::RenegotiationNeeded(pb::RenegotiationNeeded {
                        session_id: sub.to_string(),
                        reason: "subscribed tracks were unpublished".into(),
                        track_ids: Registry::ids(&gone),
                    }),
                );
            }
        }
    }

    fn session_of(reg: &Registry, session_id: &str) -> Result<(SessionId, WorkerId), ApiError> {
        let sid = parse_id("session_id", session_id, SessionId::parse)?;
        let s = reg
            .sessions
            .get(&sid)
            .ok_or_else(|| ApiError::NotFound(format!("session {sid} not found")))?;
        if s.creating {
            return Err(ApiError::FailedPrecondition(format!(
                "session {sid} is still being created"
            )));
        }
        Ok((sid, s.worker))
    }

    /// `Renegotiate`
    pub async fn renegotiate(
        &self,
        req: pb::RenegotiateRequest,
    ) -> Result<pb::RenegotiateResponse, ApiError> {
        check_sdp(&self.metrics, "sdp_offer", &req.sdp_offer)?;
        let sending = self.check_offer(&req.sdp_offer)?;
        let (sid, worker) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            // Tracks the offer may add on top of those already published.
            let published = reg.sessions[&sid].published.len();
            self.check_router_capacity(&reg, sending.saturating_sub(published))?;
            (sid, worker)
        };
        let ok = self
            .call(worker, |reply| Command::Renegotiate {
                session: sid,
                offer: req.sdp_offer,
                reply,
            })
            .await?;
        let mut reg = self.reg();
        let added = self.publish_tracks(&mut reg, sid, &ok);
        Ok(pb::RenegotiateResponse {
            sdp_answer: ok.answer,
            added_tracks: added,
            removed_track_ids: ok.removed.iter().map(|t| t.to_string()).collect(),
        })
    }

    /// `Subscribe`
    pub async fn subscribe(
        &self,
        req: pb::SubscribeRequest,
    ) -> Result<pb::SubscribeResponse, ApiError> {
        let ids = parse_tracks(&self.metrics, &req.track_ids)?;
        let (sid, worker, infos) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            let s = &reg.sessions[&sid];
            let max = self.limits.max_subscriptions_per_session;
            if s.subs.len() + ids.len() > max {
                return Err(refuse(
                    &self.metrics,
                    Limit::SubscriptionsPerSession,
                    ApiError::ResourceExhausted(format!(
                        "session {sid} would receive more than {max} tracks (limits.max_subscriptions_per_session)"
                    )),
                ));
            }
            let mut infos = Vec::with_capacity(ids.len());
            for t in &ids {
                let info = reg
                    .tracks
                    .get(t)
                    .filter(|i| i.room == s.room)
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("track {t} not found in room {}", s.room))
                    })?;
                if info.session == sid {
                    return Err(ApiError::InvalidArgument(format!(
                        "track {t} is published by this session itself"
                    )));
                }
                if s.subs.contains_key(t) {
                    return Err(ApiError::AlreadyExists(format!(
                        "session {sid} is already subscribed to track {t}"
                    )));
                }
                infos.push(info.clone());
            }
            (sid, worker, infos)
        };
        let ok = self
            .call(worker, |reply| Command::Subscribe {
                session: sid,
                tracks: infos.clone(),
                reply,
            })
            .await?;
        let mut reg = self.reg();
        let subs = self.record_subscriptions(&mut reg, sid, worker, &infos, &ok.mids);
        Ok(pb::SubscribeResponse {
            sdp_offer: ok.offer,
            subscriptions: subs,
        })
    }

    /// `Unsubscribe`
    pub async fn unsubscribe(
        &self,
        req: pb::UnsubscribeRequest,
    ) -> Result<pb::UnsubscribeResponse, ApiError> {
        let ids = parse_tracks(&self.metrics, &req.track_ids)?;
        let (sid, worker) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            let s = &reg.sessions[&sid];
            if let Some(t) = ids.iter().find(|t| !s.subs.contains_key(t)) {
                return Err(ApiError::NotFound(format!(
                    "session {sid} is not subscribed to track {t}"
                )));
            }
            (sid, worker)
        };
        let ok = self
            .call(worker, |reply| Command::Unsubscribe {
                session: sid,
                tracks: ids.clone(),
                reply,
            })
            .await?;
        let mut reg = self.reg();
        if let Some(s) = reg.sessions.get_mut(&sid) {
            for t in &ids {
                if let Some(st) = s.subs.remove(t) {
                    if !st.gone {
                        self.send(
                            st.publisher_worker,
                            Command::RemoveDestination { track: *t, worker },
                        );
                    }
                }
            }
        }
        Ok(pb::UnsubscribeResponse {
            sdp_offer: ok.offer,
        })
    }

    /// `SetAnswer`
    pub async fn set_answer(&self, req: pb::SetAnswerRequest) -> Result<(), ApiError> {
        check_sdp(&self.metrics, "sdp_answer", &req.sdp_answer)?;
        let (sid, worker) = Self::session_of(&self.reg(), &req.session_id)?;
        self.call(worker, |reply| Command::SetAnswer {
            session: sid,
            answer: req.sdp_answer,
            reply,
        })
        .await
    }

    /// `UpdateSubscription`
    pub async fn update_subscription(
        &self,
        req: pb::UpdateSubscriptionRequest,
    ) -> Result<pb::UpdateSubscriptionResponse, ApiError> {
        let track = parse_id("track_id", &req.track_id, TrackId::parse)?;
        let small = |field: &str, v: Option<u32>, max: u32| -> Result<Option<u8>, ApiError> {
            match v {
                Some(v) if v > max => Err(ApiError::InvalidArgument(format!(
                    "{field} {v} is above {max}"
                ))),
                Some(v) => Ok(Some(v as u8)),
                None => Ok(None),
            }
        };
        let max_size = match (req.max_width, req.max_height) {
            (None, None) => None,
            (w, h) => {
                let (w, h) = (w.unwrap_or(u32::MAX), h.unwrap_or(u32::MAX));
                if w == 0 || h == 0 {
                    return Err(ApiError::InvalidArgument(
                        "max_width and max_height must be positive; use paused to stop".into(),
                    ));
                }
                Some((w, h))
            }
        };
        if req.max_spatial_layer.is_some() && max_size.is_some() {
            return Err(ApiError::InvalidArgument(
                "set max_spatial_layer or max_width/max_height, not both".into(),
            ));
        }
        if let Some(p) = req.priority {
            if !(1..=100).contains(&p) {
                return Err(ApiError::InvalidArgument(format!(
                    "priority {p} is outside 1..=100"
                )));
            }
        }
        let update = SubscriptionUpdate {
            max_spatial_layer: small("max_spatial_layer", req.max_spatial_layer, 31)?,
            max_size,
            max_temporal_layer: small("max_temporal_layer", req.max_temporal_layer, 7)?,
            paused: req.paused,
            priority: req.priority,
        };
        let (sid, worker) = {
            let reg = self.reg();
            let (sid, worker) = Self::session_of(&reg, &req.session_id)?;
            let s = &reg.sessions[&sid];
            match s.subs.get(&track) {
                None => {
                    return Err(ApiError::NotFound(format!(
                        "session {sid} is not subscribed to track {track}"
                    )))
                }
                Some(st) if st.gone => {
                    return Err(ApiError::NotFound(format!("track {track} was unpublished")))
                }
                Some(_) => {}
            }
            (sid, worker)
        };
        let view = self
            .call(worker, |reply| Command::UpdateSubscription {
                session: sid,
                track,
                update,
                reply,
            })
            .await?;
        let layer = |l: Option<u8>| l.map_or(-1, i32::from);
        Ok(pb::UpdateSubscriptionResponse {
            subscription: Some(pb::SubscriptionState {
                track_id: track.to_string(),
                mid: view.mid.to_string(),
                current_spatial_layer: layer(view.current),
                target_spatial_layer: layer(view.target),
                max_spatial_layer: u32::from(view.pref.max_layer),
                max_temporal_layer: u32::from(view.pref.max_temporal),
                paused: view.pref.paused,
                priority: view.pref.priority,
            }),
        })
    }

    /// `CloseSession`
    pub async fn close_session(&self, session_id: &str) -> Result<(), ApiError> {
        let sid = parse_id("session_id", session_id, SessionId::parse)?;
        self.close_session_id(sid).await
    }

    async fn close_session_id(&self, sid: SessionId) -> Result<(), ApiError> {
        let worker = self
            .reg()
            .sessions
            .get(&sid)
            .map(|s| s.worker)
            .ok_or_else(|| ApiError::NotFound(format!("session {sid} not found")))?;
        let r = self
            .call(worker, |reply| Command::CloseSession {
                session: sid,
                reply,
            })
            .await;
        // Whatever the worker said (it may have closed it on its own just
        // now), the session is gone from the registry.
        let mut reg = self.reg();
        self.cleanup_session(&mut reg, sid, CloseReason::Api);
        match r {
            Ok(()) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GetSession`
    pub fn get_session(&self, session_id: &str) -> Result<pb::GetSessionResponse, ApiError> {
        let sid = parse_id("session_id", session_id, SessionId::parse)?;
        let reg = self.reg();
        let s = reg
            .sessions
            .get(&sid)
            .ok_or_else(|| ApiError::NotFound(format!("session {sid} not found")))?;
        Ok(pb::GetSessionResponse {
            session: Some(reg.session_pb(sid, s)),
            room_id: s.room.to_string(),
            published: s
                .published
                .iter()
                .filter_map(|t| reg.tracks.get(t))
                .map(|t| reg.track_pb(t))
                .collect(),
            subscriptions: s
                .subs
                .iter()
                .map(|(t, st)| pb::Subscription {
                    track_id: t.to_string(),
                    mid: st.mid.to_string(),
                })
                .collect(),
        })
    }

    // ----- bookkeeping --------------------------------------------------

    /// Removes a session that never got going.
    fn forget_session(&self, reg: &mut Registry, sid: SessionId) {
        if let Some(s) = reg.sessions.remove(&sid) {
            reg.load[s.worker.index()] = reg.load[s.worker.index()].saturating_sub(1);
            if !s.connected {
                reg.pending = reg.pending.saturating_sub(1);
            }
            if let Some(r) = reg.rooms.get_mut(&s.room) {
                r.participants.remove(&s.participant);
            }
            self.metrics.sessions.dec();
        }
    }

    /// Removes a closed session: its tracks are unpublished, its
    /// subscriptions released, watchers told.
    fn cleanup_session(&self, reg: &mut Registry, sid: SessionId, reason: CloseReason) {
        let Some(s) = reg.sessions.get(&sid) else {
            return;
        };
        let room = s.room.clone();
        let published = s.published.clone();
        let worker = s.worker;
        let (participant_id, metadata) = (s.participant.to_string(), s.metadata.clone());
        let subs: Vec<(TrackId, SubState)> =
            s.subs.iter().map(|(t, st)| (*t, st.clone())).collect();
        self.unpublish(reg, &published);
        for (t, st) in subs {
            if !st.gone {
                self.send(
                    st.publisher_worker,
                    Command::RemoveDestination { track: t, worker },
                );
            }
        }
        self.forget_session(reg, sid);
        reg.emit(
            &room,
            Kind::SessionClosed(pb::SessionClosed {
                session_id: sid.to_string(),
                reason: reason.as_str().into(),
                participant_id,
                metadata,
            }),
        );
    }

    /// Applies something a worker reported on its own.
    pub fn on_worker_event(&self, ev: WorkerEvent) {
        let mut reg = self.reg();
        match ev {
            WorkerEvent::Connected { session } => {
                let Some(s) = reg.sessions.get_mut(&session) else {
                    return;
                };
                let was_pending = !s.connected;
                s.connected = true;
                let room = s.room.clone();
                let ev = pb::SessionConnected {
                    session_id: session.to_string(),
                    participant_id: s.participant.to_string(),
                    metadata: s.metadata.clone(),
                };
                if was_pending {
                    reg.pending = reg.pending.saturating_sub(1);
                }
                reg.emit(&room, Kind::SessionConnected(ev));
            }
            WorkerEvent::LayerChanged {
                session,
                track,
                old,
                new,
                reason,
            } => {
                let Some(room) = reg.sessions.get(&session).map(|s| s.room.clone()) else {
                    return;
                };
                let layer = |l: Option<u8>| l.map_or(-1, i32::from);
                reg.emit(
                    &room,
                    Kind::LayerChanged(pb::LayerChanged {
                        session_id: session.to_string(),
                        track_id: track.to_string(),
                        old_layer: layer(old),
                        new_layer: layer(new),
                        reason: reason.as_str().into(),
                    }),
                );
            }
            WorkerEvent::LayerDemand {
                track,
                layer,
                rid,
                wanted,
            } => {
                let Some(room) = reg.tracks.get(&track).map(|t| t.room.clone()) else {
                    return;
                };
                reg.emit(
                    &room,
                    Kind::LayerDemand(pb::LayerDemand {
                        track_id: track.to_string(),
                        rid: rid.map(|r| r.to_string()).unwrap_or_default(),
                        layer: u32::from(layer),
                        wanted,
                    }),
                );
            }
            WorkerEvent::RemoteDemand { track, mask } => {
                drop(reg);
                if let Some(h) = self.hooks() {
                    h.remote_demand(track, mask);
                }
            }
            WorkerEvent::RemoteKeyframe { track, layer } => {
                drop(reg);
                if let Some(h) = self.hooks() {
                    h.remote_keyframe(track, layer);
                }
            }
            WorkerEvent::LinkLayers { track, layers } => {
                drop(reg);
                if let Some(h) = self.hooks() {
                    h.link_layers(track, layers);
                }
            }
            WorkerEvent::AudioLevel { track, level, at } => {
                speakers::on_audio_level(&mut reg, track, level, at)
            }
            WorkerEvent::Closed { session, reason } => {
                tracing::info!(session = %session, reason = reason.as_str(), "session closed by the media plane");
                self.cleanup_session(&mut reg, session, reason);
            }
        }
    }

    /// Stops every worker (their sessions close).
    pub fn shutdown_workers(&self) {
        for w in &self.workers {
            let _ = w.send(Command::Shutdown);
        }
    }
}
