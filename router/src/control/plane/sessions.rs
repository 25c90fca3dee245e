//! Sessions: `CreateSession`, `Renegotiate`, `CloseSession`, `GetSession`,
//! and the registry bookkeeping when a session goes away.

use super::admit::check_sdp;
use super::Control;
use crate::control::error::{parse_id, ApiError};
use crate::control::limits::{refuse, Limit, MAX_METADATA_BYTES};
use crate::control::registry::{Registry, SessionState, SubState};
use crate::media::{CloseReason, Command, WorkerId};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use pb::event::Kind;
use tokio::sync::oneshot;

impl Control {
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
            if r.deleting {
                return Err(ApiError::NotFound(format!("room {room} is being deleted")));
            }
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

    /// A session ready for API calls (created, not still being created) and
    /// its worker.
    pub(super) fn session_of(
        reg: &Registry,
        session_id: &str,
    ) -> Result<(SessionId, WorkerId), ApiError> {
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

    /// `CloseSession`
    pub async fn close_session(&self, session_id: &str) -> Result<(), ApiError> {
        let sid = parse_id("session_id", session_id, SessionId::parse)?;
        self.close_session_id(sid).await
    }

    pub(super) async fn close_session_id(&self, sid: SessionId) -> Result<(), ApiError> {
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

    /// Removes a session that never got going.
    pub(super) fn forget_session(&self, reg: &mut Registry, sid: SessionId) {
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
    pub(super) fn cleanup_session(&self, reg: &mut Registry, sid: SessionId, reason: CloseReason) {
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
}
