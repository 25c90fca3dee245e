//! The worker core's simulcast duties for its subscribers: choosing each
//! one's layer (the policy is [`crate::media::select`]), probing the
//! downlink towards the next layer, stepping down after an overload,
//! telling publishers' workers which layers are needed, and the
//! `UpdateSubscription` API.

use super::sessions::SessionKey;
use super::{guarded, WorkerCore};
use crate::media::bus::BusMsg;
use crate::media::command::{MediaError, SubscriptionUpdate, SubscriptionView, WorkerEvent};
use crate::media::layer::{Layer, LayerMask};
use crate::media::outstream::Switch;
use crate::media::select::{rank, rate_of, split, LayerState};
use kaskade_protocol::{SessionId, TrackId};
use std::sync::Arc;
use std::time::Instant;
use str0m::bwe::Bitrate;
use str0m::media::MediaKind;

/// How far past the next layer's rate the downlink is probed.
const PROBE_OVERSHOOT: f64 = 1.3;

/// A layer's rank (0 = lowest) given the layer state.
fn to_rank(layers: &[LayerState], layer: Option<Layer>) -> Option<u8> {
    let l = layer?;
    rank(layers)
        .iter()
        .position(|x| *x == l)
        .map(|r| r as u8)
        .or(Some(l.get()))
}

impl WorkerCore {
    /// Periodic work (every [`super::TICK`]).
    pub(super) fn tick(&mut self, now: Instant) {
        self.exchange
            .share_info(now, self.id, &self.fanout, &mut self.out);
        let keys: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.receives_video())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.select_layers(now, key);
        }
        self.send_demand();
        self.exchange.report_demand(&self.fanout, &mut self.out);
    }

    /// Re-evaluates the layer of each video track a session receives, and
    /// probes its downlink towards the next layer up.
    pub(super) fn select_layers(&mut self, now: Instant, key: SessionKey) {
        let Some(sess) = self.sessions.get_mut(key) else {
            return;
        };
        let sid = sess.id();
        let estimate = sess.estimate();
        let mut video: Vec<(TrackId, u32, bool)> = sess
            .outs_mut()
            .filter(|(_, o)| o.kind == MediaKind::Video && o.active && !o.gone)
            .map(|(t, o)| (t, o.pref.priority, o.pref.paused))
            .collect();
        video.sort_unstable_by_key(|(t, _, _)| *t);
        let weights: Vec<(u32, bool)> = video.iter().map(|(_, p, paused)| (*p, *paused)).collect();
        let shares = estimate.map(|e| split(e, &weights));
        let mut requests = Vec::new();
        let mut switches = Vec::new();
        let (mut min_rate, mut desired_rate) = (0u64, 0u64);
        for (i, (track, _, _)) in video.iter().enumerate() {
            let Some(o) = sess.out_mut(*track) else {
                continue;
            };
            // Until the publisher's worker has reported, assume every layer
            // is sent: the next report corrects it.
            let layers = self
                .exchange
                .layer_info(*track)
                .cloned()
                .unwrap_or_else(|| {
                    Arc::from(vec![
                        LayerState {
                            active: true,
                            ..Default::default()
                        };
                        o.layers
                    ])
                });
            let share = shares.as_ref().map(|s| s[i]);
            if let Some((target, reason)) = o.selector.update(now, &o.pref, &layers, share) {
                o.retarget(reason);
                if let Some(t) = target {
                    if o.current != Some(t) {
                        o.last_keyframe_request = Some(now);
                        requests.push((o.publisher_worker, *track, t));
                    }
                }
            }
            if !o.switches.is_empty() {
                switches.push((*track, std::mem::take(&mut o.switches)));
            }
            // Probe towards the next active layer above the target, within
            // the preference.
            let ranked = rank(&layers);
            let rate = |l: Layer| {
                ranked
                    .iter()
                    .position(|x| *x == l)
                    .map_or(0, |r| rate_of(&layers, &ranked, r))
            };
            if let Some(t) = o.target() {
                min_rate += rate(t);
                let pos = ranked.iter().position(|x| *x == t).unwrap_or(0);
                let cap = usize::from(o.pref.max_layer);
                let next = ranked[pos + 1..]
                    .iter()
                    .enumerate()
                    .find(|(i, l)| pos + 1 + i <= cap && layers[l.index()].active)
                    .map(|(_, l)| *l)
                    .unwrap_or(t);
                // Past the next layer's rate by the headroom the selector
                // wants before it moves up.
                desired_rate += if next == t {
                    rate(t)
                } else {
                    (rate(next) as f64 * PROBE_OVERSHOOT) as u64
                };
            }
        }
        if estimate.is_some() && desired_rate > 0 {
            let min = Bitrate::bps(min_rate.max(1));
            let desired = Bitrate::bps(desired_rate.max(min_rate));
            let _ = guarded(|| sess.set_bwe_bounds(min, desired));
        }
        for (track, list) in switches {
            self.report_switches(sid, track, list);
        }
        for (w, track, layer) in requests {
            self.stats.kf_join.inc();
            self.route_keyframe_request(now, w, track, layer);
        }
        self.drain_session(now, key);
    }

    /// Video of `track` on `layers` was shed on its way here: subscribers
    /// forwarded one of those layers resume at a keyframe, and their
    /// selectors step down for a while (a lower layer is fewer packets for a
    /// worker that could not keep up).
    pub(super) fn on_overload(&mut self, now: Instant, track: TrackId, layers: LayerMask) {
        let subs = self.fanout.subscribers(track).to_vec();
        let info = self.exchange.layer_info(track).cloned();
        for key in subs {
            let Some(o) = self.sessions.get_mut(key).and_then(|s| s.out_mut(track)) else {
                continue;
            };
            if !o.current.is_some_and(|c| layers.contains(c)) {
                continue;
            }
            o.resync();
            if let Some(info) = &info {
                o.selector.overload(now, info);
            }
            self.stats.overload_resync.inc();
            self.select_layers(now, key);
        }
    }

    /// Tells each publisher's worker which layers this worker's subscribers
    /// need (only what changed).
    pub(super) fn send_demand(&mut self) {
        let mut changed: Vec<(TrackId, crate::media::types::WorkerId, LayerMask)> = Vec::new();
        for (track, subs, publisher) in self.fanout.subscribed_tracks() {
            let mut mask = LayerMask::NONE;
            for key in subs {
                if let Some(o) = self.sessions.get(*key).and_then(|s| s.out(track)) {
                    mask |= o.demand_mask();
                }
            }
            changed.push((track, publisher, mask));
        }
        for (track, w, mask) in changed {
            if !self.exchange.demand_changed(track, mask) {
                continue;
            }
            if w == self.id {
                self.fanout.set_demand(track, self.id, mask);
            } else if let Some(b) = self.out.bus.get_mut(w.index()) {
                b.push(BusMsg::Demand {
                    track,
                    worker: self.id,
                    mask,
                });
            }
        }
        self.exchange.prune(&self.fanout);
    }

    /// Turns recorded switches into events (layers by rank).
    pub(super) fn report_switches(&mut self, sid: SessionId, track: TrackId, list: Vec<Switch>) {
        let layers = self
            .exchange
            .layer_info(track)
            .cloned()
            .unwrap_or_else(|| Arc::from(vec![]));
        for sw in list {
            self.out.events.push(WorkerEvent::LayerChanged {
                session: sid,
                track,
                old: to_rank(&layers, sw.old),
                new: to_rank(&layers, sw.new),
                reason: sw.reason,
            });
        }
    }

    /// `UpdateSubscription` on this worker.
    pub(super) fn update_subscription(
        &mut self,
        now: Instant,
        key: SessionKey,
        track: TrackId,
        u: &SubscriptionUpdate,
    ) -> Result<SubscriptionView, MediaError> {
        let sess = self
            .sessions
            .get_mut(key)
            .ok_or(MediaError::UnknownSession)?;
        let o = sess
            .out_mut(track)
            .ok_or(MediaError::OutOfOrder("not subscribed to that track"))?;
        if let Some(l) = u.max_spatial_layer {
            o.pref.max_layer = l;
            o.pref.max_size = None;
        }
        if let Some(size) = u.max_size {
            o.pref.max_size = Some(size);
            o.pref.max_layer = u8::MAX;
        }
        if let Some(t) = u.max_temporal_layer {
            o.pref.max_temporal = t;
        }
        if let Some(p) = u.paused {
            o.pref.paused = p;
        }
        if let Some(p) = u.priority {
            o.pref.priority = p.clamp(1, 100);
        }
        self.select_layers(now, key);
        self.send_demand();
        self.subscription_view(key, track)
    }

    /// The API view of one subscription.
    fn subscription_view(
        &self,
        key: SessionKey,
        track: TrackId,
    ) -> Result<SubscriptionView, MediaError> {
        let o = self
            .sessions
            .get(key)
            .and_then(|s| s.out(track))
            .ok_or(MediaError::UnknownSession)?;
        let layers = self
            .exchange
            .layer_info(track)
            .cloned()
            .unwrap_or_else(|| Arc::from(vec![]));
        Ok(SubscriptionView {
            mid: o.mid,
            current: to_rank(&layers, o.current),
            target: to_rank(&layers, o.target()),
            pref: o.pref,
        })
    }
}
