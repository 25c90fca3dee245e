//! The layer and demand exchange between workers. A publisher's worker
//! measures what each layer carries and shares it with the workers that
//! have subscribers (`LayerInfo`); those tell it which layers their
//! subscribers need (`Demand`), and it reports layers that became wanted
//! or unwanted to the control plane (or, for a remote track, to the link).

use super::fanout::FanOut;
use super::Outputs;
use crate::media::bus::BusMsg;
use crate::media::command::WorkerEvent;
use crate::media::layer::{Layer, LayerMask};
use crate::media::layers::LayerMeters;
use crate::media::select::LayerState;
use crate::media::types::WorkerId;
use kaskade_protocol::TrackId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::media::MediaKind;

/// Layer info is re-sent to subscriber workers at least this often.
const LAYER_INFO_REFRESH: Duration = Duration::from_millis(500);

/// What is measured and reported of a track published here.
#[derive(Debug)]
struct Measured {
    kind: MediaKind,
    /// A remote track: its layers are what the origin router reports.
    remote: bool,
    meters: LayerMeters,
    /// Layers some subscriber wants, as last reported.
    wanted: LayerMask,
    /// When layer info last went to the other workers.
    info_sent: Option<Instant>,
    /// The last layer info sent.
    info: Arc<[LayerState]>,
}

/// Both sides of the exchange on one worker.
#[derive(Debug, Default)]
pub(super) struct LayerExchange {
    /// Tracks published here.
    measured: HashMap<TrackId, Measured>,
    /// Layer state of the tracks subscribed here.
    layer_info: HashMap<TrackId, Arc<[LayerState]>>,
    /// Demand last sent to each subscribed track's publisher worker.
    demand_sent: HashMap<TrackId, LayerMask>,
}

impl LayerExchange {
    /// Nothing published or subscribed.
    pub(super) fn new() -> Self {
        Self::default()
    }

    // ----- publisher side --------------------------------------------------

    /// A track with `layers` layers is published here; `wanted` is what the
    /// publisher sends at first.
    pub(super) fn publish(&mut self, track: TrackId, kind: MediaKind, layers: usize, remote: bool) {
        // A browser sends every layer at first; a remote track sends none
        // until asked.
        let wanted = if remote || layers == 0 {
            LayerMask::NONE
        } else {
            LayerMask::first(layers)
        };
        self.measured.insert(
            track,
            Measured {
                kind,
                remote,
                meters: LayerMeters::new(layers),
                wanted,
                info_sent: None,
                info: Arc::from(Vec::new()),
            },
        );
    }

    /// The track is no longer published here.
    pub(super) fn unpublish(&mut self, track: TrackId) {
        self.measured.remove(&track);
    }

    /// A packet of a published track arrived.
    pub(super) fn on_packet(
        &mut self,
        now: Instant,
        track: TrackId,
        layer: Layer,
        bytes: usize,
        resolution: Option<(u16, u16)>,
    ) {
        if let Some(m) = self.measured.get_mut(&track) {
            m.meters.on_packet(now, layer.get(), bytes, resolution);
        }
    }

    /// The origin router's view of a remote track's layers (shared with
    /// the subscriber workers at the next tick).
    pub(super) fn set_remote_layers(&mut self, track: TrackId, layers: Arc<[LayerState]>) {
        if let Some(m) = self.measured.get_mut(&track) {
            m.info = layers;
            m.info_sent = None;
        }
    }

    /// A link started relaying the track: it needs the layer state at once.
    pub(super) fn resend_info(&mut self, track: TrackId) {
        if let Some(m) = self.measured.get_mut(&track) {
            m.info_sent = None;
        }
    }

    /// The layer state to give a new destination of a video track now (a
    /// remote track's once its origin has said).
    pub(super) fn info_for_new_dest(
        &mut self,
        now: Instant,
        track: TrackId,
    ) -> Option<Arc<[LayerState]>> {
        let m = self.measured.get_mut(&track)?;
        if m.kind != MediaKind::Video || (m.remote && m.info.is_empty()) {
            return None;
        }
        if !m.remote {
            m.info = Arc::from(m.meters.snapshot(now));
        }
        Some(m.info.clone())
    }

    /// A keyframe of `layer` of a remote track was asked for, which implies
    /// the layer is wanted: the new demand, if it grew (said before the
    /// request, or the origin answers with a keyframe it does not relay yet).
    pub(super) fn want_remote(&mut self, track: TrackId, layer: Layer) -> Option<LayerMask> {
        let m = self.measured.get_mut(&track).filter(|m| m.remote)?;
        if m.wanted.contains(layer) {
            return None;
        }
        m.wanted.insert(layer);
        Some(m.wanted)
    }

    /// Measures the layers of every published video track and shares the
    /// result with the workers (and links) that have subscribers, when it
    /// changed or went stale. Layer info for this worker itself is stored
    /// at once.
    pub(super) fn share_info(
        &mut self,
        now: Instant,
        id: WorkerId,
        fanout: &FanOut,
        out: &mut Outputs,
    ) {
        for (track, m) in self.measured.iter_mut() {
            if m.kind != MediaKind::Video {
                continue;
            }
            // Until a remote track's origin has reported, subscribers
            // assume every layer is sent.
            if m.remote && m.info.is_empty() {
                continue;
            }
            let Some(p) = fanout.published(*track) else {
                continue;
            };
            let snap = if m.remote {
                m.info.to_vec()
            } else {
                m.meters.snapshot(now)
            };
            let changed = snap.len() != m.info.len()
                || snap
                    .iter()
                    .zip(m.info.iter())
                    .any(|(a, b)| a.active != b.active || a.width != b.width);
            let stale = m
                .info_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= LAYER_INFO_REFRESH);
            if !changed && !stale {
                continue;
            }
            let info: Arc<[LayerState]> = Arc::from(snap);
            m.info = info.clone();
            m.info_sent = Some(now);
            if p.relayed() {
                out.events.push(WorkerEvent::LinkLayers {
                    track: *track,
                    layers: info.clone(),
                });
            }
            for d in p.dests() {
                if d.worker == id {
                    self.layer_info.insert(*track, info.clone());
                } else if let Some(b) = out.bus.get_mut(d.worker.index()) {
                    b.push(BusMsg::LayerInfo {
                        track: *track,
                        layers: info.clone(),
                    });
                }
            }
        }
    }

    /// Reports layers that became wanted or unwanted by every subscriber
    /// and link: to the control plane per layer, or for a remote track to
    /// its link as one mask.
    pub(super) fn report_demand(&mut self, fanout: &FanOut, out: &mut Outputs) {
        for (track, m) in self.measured.iter_mut() {
            let Some(p) = fanout.published(*track) else {
                continue;
            };
            let wanted = p.wanted();
            if wanted == m.wanted {
                continue;
            }
            if m.remote {
                out.events.push(WorkerEvent::RemoteDemand {
                    track: *track,
                    mask: wanted.bits(),
                });
            } else if m.kind == MediaKind::Video && !p.rids.is_empty() {
                for (i, rid) in p.rids.iter().enumerate() {
                    let l = Layer::new(i as u8);
                    if wanted.contains(l) != m.wanted.contains(l) {
                        out.events.push(WorkerEvent::LayerDemand {
                            track: *track,
                            layer: l.get(),
                            rid: Some(*rid),
                            wanted: wanted.contains(l),
                        });
                    }
                }
            }
            m.wanted = wanted;
        }
    }

    // ----- subscriber side ---------------------------------------------------

    /// Layer state of a track subscribed here, from its publisher's worker.
    pub(super) fn set_layer_info(&mut self, track: TrackId, layers: Arc<[LayerState]>) {
        self.layer_info.insert(track, layers);
    }

    /// The layer state of a track subscribed here, if its publisher's worker
    /// has said.
    pub(super) fn layer_info(&self, track: TrackId) -> Option<&Arc<[LayerState]>> {
        self.layer_info.get(&track)
    }

    /// Whether `mask` is news for `track`'s publisher worker (and remembers
    /// it as sent).
    pub(super) fn demand_changed(&mut self, track: TrackId, mask: LayerMask) -> bool {
        self.demand_sent.insert(track, mask) != Some(mask)
    }

    /// Forgets what concerns tracks neither subscribed nor published here.
    pub(super) fn prune(&mut self, fanout: &FanOut) {
        self.demand_sent.retain(|t, _| fanout.is_subscribed(*t));
        let measured = &self.measured;
        self.layer_info
            .retain(|t, _| fanout.is_subscribed(*t) || measured.contains_key(t));
    }
}
