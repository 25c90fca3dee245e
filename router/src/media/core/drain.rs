//! What a session's `Rtc` hands out after an input: its transmits go to the
//! outputs, its events are queued and then handled here (media, connection
//! state, bandwidth estimates, keyframe requests from subscribers).

use super::sessions::SessionKey;
use super::{guarded, WorkerCore};
use crate::media::command::{CloseReason, WorkerEvent};
use std::time::Instant;
use str0m::{Event, RtcError};

impl WorkerCore {
    pub(super) fn drain_session(&mut self, now: Instant, key: SessionKey) {
        self.drain_session_with(now, key, false);
    }

    /// Drains a session (after a timeout round if `timeout`), queues its
    /// events and moves its deadline.
    pub(super) fn drain_session_with(&mut self, now: Instant, key: SessionKey, timeout: bool) {
        let Some(sess) = self.sessions.get_mut(key) else {
            return;
        };
        let mut events = std::mem::take(&mut self.scratch_events);
        let tx = &mut self.out.transmits;
        let r = guarded(|| {
            if timeout {
                sess.drain_after_timeout(now, tx, &mut events)
            } else {
                sess.drain(now, tx, &mut events)
            }
        });
        self.queue.extend(events.drain(..).map(|e| (key, e)));
        self.scratch_events = events;
        match r {
            Some(Ok(())) => self.sessions.reschedule(key),
            // The peer's doing, not the router's: a certificate that is
            // not the one its SDP names (str0m says `RemoteSdp` from its
            // output only for that), a handshake it broke off.
            Some(Err(e @ (RtcError::Dtls(_) | RtcError::RemoteSdp(_)))) => {
                tracing::debug!(error = %e, "DTLS failed");
                // Not connected yet: a join that failed at DTLS (ICE got
                // through, or there would be no DTLS to fail; its event may
                // still wait in the queue).
                if self
                    .sessions
                    .get(key)
                    .is_some_and(|s| s.join_step().is_some())
                {
                    self.stats.join_dtls.inc();
                }
                self.close_session(key, CloseReason::DtlsFailed, true);
            }
            Some(Err(_)) | None => self.fail_session(key),
        }
    }

    pub(super) fn process_queue(&mut self, now: Instant) {
        while let Some((key, ev)) = self.queue.pop_front() {
            if self.sessions.get(key).is_none() {
                continue;
            }
            self.handle_event(now, key, ev);
        }
    }

    fn handle_event(&mut self, now: Instant, key: SessionKey, ev: Event) {
        match ev {
            Event::RtpPacket(p) => self.on_rtp(now, key, p),
            Event::Connected => {
                let Some(s) = self.sessions.get_mut(key) else {
                    return;
                };
                if s.on_connected() {
                    let session = s.id();
                    self.out.events.push(WorkerEvent::Connected { session });
                }
                let attached = s.activate_awaiting();
                self.sessions.reschedule(key);
                if attached {
                    // WHEP: a layer and its keyframe, now that it can be sent.
                    self.select_layers(now, key);
                    self.send_demand();
                }
            }
            Event::IceConnectionStateChange(state) => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.on_ice_state(now, state);
                    self.sessions.reschedule(key);
                }
            }
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate, .. }) => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.set_estimate(estimate.as_u64());
                }
            }
            Event::KeyframeRequest(r) => {
                let Some(s) = self.sessions.get(key) else {
                    return;
                };
                let Some(track) = s.track_of_mid(r.mid) else {
                    return;
                };
                let Some(o) = s.out(track) else {
                    return;
                };
                let Some(layer) = o.current.or(o.target()) else {
                    return;
                };
                let w = o.publisher_worker;
                self.stats.kf_subscriber.inc();
                self.route_keyframe_request(now, w, track, layer);
            }
            _ => {}
        }
    }
}
