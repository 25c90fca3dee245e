//! What a worker reports on its own (connected, closed, layer changes,
//! demand, audio levels), applied to the registry and the event streams.

use super::{speakers, Control};
use crate::media::WorkerEvent;
use kaskade_protocol::v1 as pb;
use pb::event::Kind;

impl Control {
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
}
