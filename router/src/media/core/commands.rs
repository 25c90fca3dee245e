//! The control plane's commands to a worker: sessions and their
//! negotiation, subscriptions, destinations, remote tracks and links.

use super::fanout::Published;
use super::sessions::SessionKey;
use super::{guarded, WorkerCore};
use crate::media::bus::BusMsg;
use crate::media::command::{AnswerOk, CloseReason, Command, MediaError, NewTrack, OfferOk};
use crate::media::layer::{Layer, LayerMask};
use crate::media::session::{PubTrack, Session};
use crate::media::types::TrackInfo;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;
use str0m::media::Mid;

impl WorkerCore {
    /// A command from the control plane.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.now = now;
        match cmd {
            Command::CreateSession {
                session,
                room,
                participant,
                offer,
                attach,
                reply,
            } => {
                let r = self.create_session(now, session, room, participant, &offer, &attach);
                let _ = reply.send(r);
            }
            Command::Renegotiate {
                session,
                offer,
                reply,
            } => {
                let r = self.renegotiate(session, &offer);
                let _ = reply.send(r);
            }
            Command::Subscribe {
                session,
                tracks,
                reply,
            } => {
                let r = self.subscribe(session, &tracks);
                let _ = reply.send(r);
            }
            Command::Unsubscribe {
                session,
                tracks,
                reply,
            } => {
                let r = self.unsubscribe(session, &tracks);
                let _ = reply.send(r);
            }
            Command::SetAnswer {
                session,
                answer,
                reply,
            } => {
                let r = self.set_answer(now, session, &answer);
                let _ = reply.send(r);
            }
            Command::CloseSession { session, reply } => {
                let r = match self.sessions.key(session) {
                    Some(key) => {
                        self.close_session(key, CloseReason::Api, false);
                        Ok(())
                    }
                    None => Err(MediaError::UnknownSession),
                };
                let _ = reply.send(r);
            }
            Command::AddDestination { track, worker } => {
                self.fanout.add_dest(track, worker);
                // Tell the new destination what the layers look like, now
                // (a remote track: once its origin has said).
                if let Some(info) = self.exchange.info_for_new_dest(now, track) {
                    if worker == self.id {
                        self.exchange.set_layer_info(track, info);
                    } else if let Some(b) = self.out.bus.get_mut(worker.index()) {
                        b.push(BusMsg::LayerInfo {
                            track,
                            layers: info,
                        });
                    }
                }
            }
            Command::RemoveDestination { track, worker } => {
                self.fanout.remove_dest(track, worker);
            }
            Command::AddRemoteTrack { track, kind, rids } => {
                let n = rids.len();
                self.fanout
                    .publish(track, Published::new(None, kind, Mid::from("remote"), rids));
                self.keyframes.add(track, n);
                self.exchange.publish(track, kind, n, true);
            }
            Command::RemoveRemoteTrack { track } => {
                if self
                    .fanout
                    .published(track)
                    .is_some_and(|p| p.session.is_none())
                {
                    self.unpublish(track);
                }
            }
            Command::SetLinkDemand { track, link, mask } => {
                if self
                    .fanout
                    .set_link(track, link, LayerMask::from_bits(mask))
                {
                    // The far side needs the layer state at once.
                    self.exchange.resend_info(track);
                }
            }
            Command::RequestKeyframe { track, layer } => {
                self.request_publisher_keyframe(now, track, Layer::new(layer));
            }
            Command::UpdateSubscription {
                session,
                track,
                update,
                reply,
            } => {
                let r = match self.sessions.key(session) {
                    Some(key) => self.update_subscription(now, key, track, &update),
                    None => Err(MediaError::UnknownSession),
                };
                let _ = reply.send(r);
            }
            Command::TrackGone { track } => {
                for key in self.fanout.drop_subscribers(track) {
                    if let Some(o) = self.sessions.get_mut(key).and_then(|s| s.out_mut(track)) {
                        o.gone = true;
                    }
                }
            }
            Command::Shutdown => {
                for key in self.sessions.keys() {
                    self.close_session(key, CloseReason::Shutdown, false);
                }
            }
        }
        self.process_queue(now);
    }

    fn create_session(
        &mut self,
        now: Instant,
        id: SessionId,
        room: RoomId,
        participant: ParticipantId,
        offer: &str,
        attach: &[Arc<TrackInfo>],
    ) -> Result<AnswerOk, MediaError> {
        if self.sessions.key(id).is_some() {
            return Err(MediaError::OutOfOrder("session exists"));
        }
        let ufrag = crate::media::ufrag::make(self.id, id, self.rng.random());
        let rtc = self
            .factory
            .build(now, &ufrag, &mut self.rng, self.local_addr, self.tcp_addr)
            .map_err(|_| MediaError::Internal)?;
        let mut sess = Session::new(id, room, participant, rtc, ufrag, now);
        let (answer, mids) = match guarded(|| sess.accept_offer(offer)) {
            Some(r) => r?,
            None => {
                self.stats.session_failures.inc();
                return Err(MediaError::Internal);
            }
        };
        let key = self.sessions.insert(sess);
        let (added, removed) = self.drain_negotiation(now, key, &mids)?;
        let attached = self.attach_in_answer(key, &mids, attach);
        Ok(AnswerOk {
            answer,
            added,
            removed,
            attached,
        })
    }

    /// Subscribes a new session to `tracks` on its offer's receive-only
    /// lines (WHEP); a layer is chosen and its keyframe asked for once the
    /// session connects.
    fn attach_in_answer(
        &mut self,
        key: SessionKey,
        offered: &[Mid],
        tracks: &[Arc<TrackInfo>],
    ) -> Vec<(TrackId, Mid)> {
        if tracks.is_empty() {
            return Vec::new();
        }
        let starts: Vec<(u16, u32)> = (0..tracks.len())
            .map(|_| (self.rng.random_range(0..16384u16), self.rng.random::<u32>()))
            .collect();
        let mut starts = starts.into_iter();
        let attached = match self.sessions.get_mut(key) {
            Some(s) => s.attach_in_answer(offered, tracks, || starts.next().unwrap_or((0, 0))),
            None => return Vec::new(),
        };
        for (t, _) in &attached {
            if let Some(info) = tracks.iter().find(|i| i.id == *t) {
                self.fanout.subscribe(*t, key, info.worker);
            }
        }
        attached
    }

    fn renegotiate(&mut self, id: SessionId, offer: &str) -> Result<AnswerOk, MediaError> {
        let key = self.sessions.key(id).ok_or(MediaError::UnknownSession)?;
        let (answer, mids) = self.with_key(key, |s| s.accept_offer(offer))??;
        let (added, removed) = self.drain_negotiation(self.now, key, &mids)?;
        Ok(AnswerOk {
            answer,
            added,
            removed,
            attached: Vec::new(),
        })
    }

    /// Drains a session after an offer was accepted and turns the media
    /// lines into published / unpublished tracks.
    fn drain_negotiation(
        &mut self,
        now: Instant,
        key: SessionKey,
        mids: &[Mid],
    ) -> Result<(Vec<NewTrack>, Vec<TrackId>), MediaError> {
        self.drain_session(now, key);
        let Some(sess) = self.sessions.get(key) else {
            return Err(MediaError::Internal);
        };
        let (new_lines, stopped) = sess.publication_changes(mids);
        let mut added = Vec::new();
        for (mid, kind, rids) in new_lines {
            let track = self.new_track_id();
            let n = rids.len();
            self.fanout
                .publish(track, Published::new(Some(key), kind, mid, rids.clone()));
            self.keyframes.add(track, n);
            self.exchange.publish(track, kind, n, false);
            if let Some(sess) = self.sessions.get_mut(key) {
                sess.add_published(
                    mid,
                    PubTrack {
                        id: track,
                        kind,
                        rids: rids.clone(),
                    },
                );
            }
            added.push(NewTrack {
                id: track,
                kind,
                mid,
                rids,
            });
        }
        let mut removed = Vec::new();
        for mid in stopped {
            if let Some(t) = self
                .sessions
                .get_mut(key)
                .and_then(|s| s.remove_published(mid))
            {
                self.unpublish(t);
                removed.push(t);
            }
        }
        Ok((added, removed))
    }

    /// A new track id: random, so it says nothing (not even the worker it
    /// is on) and is not guessable. The top bit is clear; remote tracks
    /// (`control::plane::remote`) set it, so the two never meet.
    fn new_track_id(&mut self) -> TrackId {
        loop {
            let id = self.rng.random::<u64>() >> 1;
            if id != 0 && self.fanout.published(TrackId(id)).is_none() {
                return TrackId(id);
            }
        }
    }

    fn subscribe(
        &mut self,
        id: SessionId,
        tracks: &[Arc<TrackInfo>],
    ) -> Result<OfferOk, MediaError> {
        let key = self.sessions.key(id).ok_or(MediaError::UnknownSession)?;
        // Random starting points per outgoing stream, drawn up front so the
        // session closure does not borrow the core.
        let starts: Vec<(u16, u32)> = (0..tracks.len())
            .map(|_| (self.rng.random_range(0..16384u16), self.rng.random::<u32>()))
            .collect();
        let mut starts = starts.into_iter();
        let (offer, mids) = self.with_key(key, |s| {
            s.offer_subscriptions(tracks, || starts.next().unwrap_or((0, 0)))
        })??;
        for (t, _) in &mids {
            if let Some(info) = tracks.iter().find(|i| i.id == *t) {
                self.fanout.subscribe(*t, key, info.worker);
            }
        }
        self.drain_session(self.now, key);
        Ok(OfferOk { offer, mids })
    }

    fn unsubscribe(&mut self, id: SessionId, tracks: &[TrackId]) -> Result<OfferOk, MediaError> {
        let key = self.sessions.key(id).ok_or(MediaError::UnknownSession)?;
        let offer = self.with_key(key, |s| s.offer_unsubscribe(tracks))??;
        for t in tracks {
            self.fanout.unsubscribe(*t, key);
        }
        self.drain_session(self.now, key);
        Ok(OfferOk {
            offer,
            mids: Vec::new(),
        })
    }

    fn set_answer(&mut self, now: Instant, id: SessionId, answer: &str) -> Result<(), MediaError> {
        let key = self.sessions.key(id).ok_or(MediaError::UnknownSession)?;
        let activated = self.with_key(key, |s| s.accept_answer(answer))??;
        self.drain_session(now, key);
        // New subscribers get a layer chosen and its keyframe asked for at once.
        if !activated.is_empty() {
            self.select_layers(now, key);
            self.send_demand();
        }
        Ok(())
    }
}
