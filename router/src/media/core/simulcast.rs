//! The worker core's simulcast duties: measuring what publishers send per
//! layer, choosing each subscriber's layer, telling publishers' workers
//! which layers are needed, and probing the downlink towards the next layer.

use super::WorkerCore;
use crate::media::bus::BusMsg;
use crate::media::command::{MediaError, SubscriptionUpdate, SubscriptionView, WorkerEvent};
use crate::media::outstream::Switch;
use crate::media::select::{rank, rate_of, split, LayerState};
use crate::media::types::WorkerId;
use kaskade_protocol::{SessionId, TrackId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::bwe::Bitrate;
use str0m::media::MediaKind;

/// How far past the next layer's rate the downlink is probed.
const PROBE_OVERSHOOT: f64 = 1.3;

/// Layer info is re-sent to subscriber workers at least this often.
const LAYER_INFO_REFRESH: Duration = Duration::from_millis(500);

/// Converts a layer index to its rank (0 = lowest) given the layer state.
fn to_rank(layers: &[LayerState], layer: Option<u8>) -> Option<u8> {
    let l = layer?;
    let ranked = rank(layers);
    ranked
        .iter()
        .position(|x| *x == l)
        .map(|r| r as u8)
        .or(Some(l))
}

impl WorkerCore {
    /// Periodic work (every [`super::TICK`]).
    pub(super) fn tick(&mut self, now: Instant) {
        self.publish_layer_info(now);
        let ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.outs.values().any(|o| o.kind == MediaKind::Video))
            .map(|s| s.id)
            .collect();
        for sid in ids {
            self.select_layers(now, sid);
        }
        self.send_demand(now);
        self.report_demand();
    }

    /// Measures the layers of every published video track and shares the
    /// result with the workers that have subscribers.
    fn publish_layer_info(&mut self, now: Instant) {
        for (track, p) in self.published.iter_mut() {
            if p.kind != MediaKind::Video {
                continue;
            }
            // A remote track's layers are what its origin router reports
            // (until it has, subscribers assume every layer is sent).
            if p.session.is_none() && p.info.is_empty() {
                continue;
            }
            let snap = if p.session.is_none() {
                p.info.to_vec()
            } else {
                p.meters.snapshot(now)
            };
            let changed = snap.len() != p.info.len()
                || snap
                    .iter()
                    .zip(p.info.iter())
                    .any(|(a, b)| a.active != b.active || a.width != b.width);
            let stale = p
                .info_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= LAYER_INFO_REFRESH);
            if !changed && !stale {
                continue;
            }
            let info: Arc<[LayerState]> = Arc::from(snap);
            p.info = info.clone();
            p.info_sent = Some(now);
            if !p.links.is_empty() {
                self.out.events.push(WorkerEvent::LinkLayers {
                    track: *track,
                    layers: info.clone(),
                });
            }
            for d in &p.dests {
                if d.worker == self.id {
                    self.layer_info.insert(*track, info.clone());
                } else {
                    self.out.bus[d.worker.index()].push(BusMsg::LayerInfo {
                        track: *track,
                        layers: info.clone(),
                    });
                }
            }
        }
    }

    /// Re-evaluates the layer of each video track a session receives, and
    /// probes its downlink towards the next layer up.
    pub(super) fn select_layers(&mut self, now: Instant, sid: SessionId) {
        let Some(sess) = self.sessions.get_mut(&sid) else {
            return;
        };
        let estimate = sess.estimate;
        let mut video: Vec<TrackId> = sess
            .outs
            .iter()
            .filter(|(_, o)| o.kind == MediaKind::Video && o.active && !o.gone)
            .map(|(t, _)| *t)
            .collect();
        video.sort();
        let weights: Vec<(u32, bool)> = video
            .iter()
            .map(|t| {
                let o = &sess.outs[t];
                (o.pref.priority, o.pref.paused)
            })
            .collect();
        let shares = estimate.map(|e| split(e, &weights));
        let mut requests = Vec::new();
        let mut switches = Vec::new();
        let (mut min_rate, mut desired_rate) = (0u64, 0u64);
        for (i, track) in video.iter().enumerate() {
            let Some(o) = sess.outs.get_mut(track) else {
                continue;
            };
            // Until the publisher's worker has reported, assume every layer
            // is sent: the next report corrects it.
            let layers = self.layer_info.get(track).cloned().unwrap_or_else(|| {
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
            let rate = |l: u8| {
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
                    .find(|(i, l)| pos + 1 + i <= cap && layers[usize::from(**l)].active)
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
            let _ = crate::media::core::guarded(|| sess.rtc.bwe().set_bitrate(min, desired));
        }
        for (track, list) in switches {
            self.report_switches(sid, track, list);
        }
        for (w, track, layer) in requests {
            self.metrics.kf_join.inc();
            self.route_keyframe_request(now, w, track, layer);
        }
        self.drain_session(now, sid);
    }

    /// Video of `track` on `layers` was shed on its way here: subscribers
    /// forwarded one of those layers resume at a keyframe, and their
    /// selectors step down for a while (a lower layer is fewer packets for a
    /// worker that could not keep up).
    pub(super) fn on_overload(&mut self, now: Instant, track: TrackId, layers: u32) {
        let Some(subs) = self.local_subs.get(&track).cloned() else {
            return;
        };
        let info = self.layer_info.get(&track).cloned();
        for sid in subs {
            let Some(o) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.outs.get_mut(&track))
            else {
                continue;
            };
            let hit = o.current.is_some_and(|c| layers & (1u32 << c.min(31)) != 0);
            if !hit {
                continue;
            }
            o.resync();
            if let Some(info) = &info {
                o.selector.overload(now, info);
            }
            self.metrics.overload_resync.inc();
            self.select_layers(now, sid);
        }
    }

    /// Tells each publisher worker which layers this worker's subscribers need.
    pub(super) fn send_demand(&mut self, _now: Instant) {
        let mut masks: Vec<(TrackId, WorkerId, u32)> = Vec::new();
        for (track, subs) in &self.local_subs {
            let mut mask = 0;
            let mut worker = None;
            for sid in subs {
                if let Some(o) = self.sessions.get(sid).and_then(|s| s.outs.get(track)) {
                    mask |= o.demand_mask();
                    worker = Some(o.publisher_worker);
                }
            }
            if let Some(w) = worker {
                masks.push((*track, w, mask));
            }
        }
        for (track, w, mask) in masks {
            if self.demand_sent.get(&track) == Some(&mask) {
                continue;
            }
            self.demand_sent.insert(track, mask);
            if w == self.id {
                self.set_demand(track, self.id, mask);
            } else {
                self.out.bus[w.index()].push(BusMsg::Demand {
                    track,
                    worker: self.id,
                    mask,
                });
            }
        }
        self.demand_sent
            .retain(|t, _| self.local_subs.get(t).is_some_and(|v| !v.is_empty()));
        self.layer_info.retain(|t, _| {
            self.local_subs.get(t).is_some_and(|v| !v.is_empty()) || self.published.contains_key(t)
        });
    }

    /// A worker's subscribers of `track` need the layers in `mask`.
    pub(super) fn set_demand(&mut self, track: TrackId, worker: WorkerId, mask: u32) {
        if let Some(p) = self.published.get_mut(&track) {
            if let Some(d) = p.dests.iter_mut().find(|d| d.worker == worker) {
                d.mask = mask;
            }
        }
    }

    /// Reports layers that became wanted or unwanted by every subscriber
    /// (and every link); for a remote track, asks its link for them.
    fn report_demand(&mut self) {
        for (track, p) in self.published.iter_mut() {
            let all = if p.rids.is_empty() {
                1
            } else {
                (1u32 << p.rids.len()) - 1
            };
            let wanted = (p.dests.iter().fold(0, |m, d| m | d.mask)
                | p.links.iter().fold(0, |m, (_, mask)| m | mask))
                & all;
            if wanted == p.wanted {
                continue;
            }
            if p.session.is_none() {
                self.out.events.push(WorkerEvent::RemoteDemand {
                    track: *track,
                    mask: wanted,
                });
            } else if p.kind == MediaKind::Video && !p.rids.is_empty() {
                for (i, rid) in p.rids.iter().enumerate() {
                    let bit = 1 << i;
                    if wanted & bit != p.wanted & bit {
                        self.out.events.push(WorkerEvent::LayerDemand {
                            track: *track,
                            layer: i as u8,
                            rid: Some(*rid),
                            wanted: wanted & bit != 0,
                        });
                    }
                }
            }
            p.wanted = wanted;
        }
    }

    /// Turns recorded switches into events (layers by rank).
    pub(super) fn report_switches(&mut self, sid: SessionId, track: TrackId, list: Vec<Switch>) {
        let layers = self
            .layer_info
            .get(&track)
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
        sid: SessionId,
        track: TrackId,
        u: &SubscriptionUpdate,
    ) -> Result<SubscriptionView, MediaError> {
        let sess = self
            .sessions
            .get_mut(&sid)
            .ok_or(MediaError::UnknownSession)?;
        let o = sess
            .outs
            .get_mut(&track)
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
        self.select_layers(now, sid);
        self.send_demand(now);
        self.subscription_view(sid, track)
    }

    /// The API view of one subscription.
    pub(super) fn subscription_view(
        &self,
        sid: SessionId,
        track: TrackId,
    ) -> Result<SubscriptionView, MediaError> {
        let o = self
            .sessions
            .get(&sid)
            .and_then(|s| s.outs.get(&track))
            .ok_or(MediaError::UnknownSession)?;
        let layers = self
            .layer_info
            .get(&track)
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
