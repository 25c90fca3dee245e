//! Published tracks: registering those an offer added, and unpublishing
//! (every worker drops their streams, subscribers are told to renegotiate).

use super::Control;
use crate::control::registry::Registry;
use crate::media::command::AnswerOk;
use crate::media::{Command, TrackInfo};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{SessionId, TrackId};
use pb::event::Kind;
use std::collections::BTreeSet;
use std::sync::Arc;

impl Control {
    /// Registers tracks an offer added, unpublishes those it removed.
    pub(super) fn publish_tracks(
        &self,
        reg: &mut Registry,
        sid: SessionId,
        ok: &AnswerOk,
    ) -> Vec<pb::Track> {
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
}
