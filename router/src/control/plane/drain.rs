//! Draining, as the control plane sees it: no new rooms or sessions,
//! watchers told, and at the end of the grace period the remaining sessions
//! closed. The timing is decided by `crate::drain`.

use super::{ApiError, Control};
use crate::media::{CloseReason, Command, WorkerId};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, SessionId};
use pb::event::Kind;
use std::sync::atomic::Ordering;

impl Control {
    /// Starts draining (once): later `CreateRoom`/`CreateSession` calls are
    /// refused, and every room's watchers get a `draining` event.
    pub fn start_draining(&self, deadline_unix_ms: u64) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut reg = self.reg();
        let rooms: Vec<RoomId> = reg.rooms.keys().cloned().collect();
        for room in &rooms {
            reg.emit(room, Kind::Draining(pb::Draining { deadline_unix_ms }));
        }
    }

    /// Whether the router drains.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(super) fn refuse_if_draining(&self, what: &str) -> Result<(), ApiError> {
        if self.is_draining() {
            return Err(ApiError::Unavailable(format!(
                "this router is draining; create the {what} on another router"
            )));
        }
        Ok(())
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.reg().sessions.len()
    }

    /// Closes every session, telling watchers `reason`.
    pub async fn close_all_sessions(&self, reason: CloseReason) {
        let sessions: Vec<(SessionId, WorkerId)> = self
            .reg()
            .sessions
            .iter()
            .map(|(sid, s)| (*sid, s.worker))
            .collect();
        for (sid, worker) in sessions {
            // Whatever the worker answers, the session is gone afterwards.
            let _ = self
                .call(worker, |reply| Command::CloseSession {
                    session: sid,
                    reply,
                })
                .await;
            let mut reg = self.reg();
            self.cleanup_session(&mut reg, sid, reason);
        }
    }

    /// Forgets every room, which ends every `WatchEvents` stream once its
    /// last events are sent (the last step before the process exits).
    pub fn close_rooms(&self) {
        let mut reg = self.reg();
        reg.rooms.clear();
        self.metrics.rooms.set(0);
    }
}
