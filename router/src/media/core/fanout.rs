//! Where a worker's packets go: for each track published here, the workers
//! (and links to other routers) with subscribers and the layers they need;
//! for each track subscribed here, the local subscribers and the worker its
//! publisher is on.

use super::sessions::SessionKey;
use crate::media::bus::{BusBatch, BusMsg};
use crate::media::layer::{Layer, LayerMask};
use crate::media::types::{LinkId, MediaPacket, WorkerId};
use kaskade_protocol::TrackId;
use std::collections::HashMap;
use std::sync::Arc;
use str0m::media::{MediaKind, Mid, Rid};

/// A worker with subscribers of a published track.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dest {
    /// The worker.
    pub worker: WorkerId,
    /// Subscribers there.
    count: u32,
    /// Layers they need.
    pub mask: LayerMask,
}

/// A track published on this worker: by a local session, or (`session`
/// `None`) relayed from another router with this worker as its home.
#[derive(Debug)]
pub(super) struct Published {
    /// The publishing session (None: a remote track).
    pub session: Option<SessionKey>,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher's media line.
    pub mid: Mid,
    /// Simulcast rids as offered.
    pub rids: Vec<Rid>,
    dests: Vec<Dest>,
    links: Vec<(LinkId, LayerMask)>,
}

impl Published {
    /// A track with no subscriber yet.
    pub(super) fn new(
        session: Option<SessionKey>,
        kind: MediaKind,
        mid: Mid,
        rids: Vec<Rid>,
    ) -> Self {
        Self {
            session,
            kind,
            mid,
            rids,
            dests: Vec::new(),
            links: Vec::new(),
        }
    }

    /// The workers with subscribers.
    pub(super) fn dests(&self) -> &[Dest] {
        &self.dests
    }

    /// Whether the track is relayed to other routers.
    pub(super) fn relayed(&self) -> bool {
        !self.links.is_empty()
    }

    /// Layers the track has.
    pub(super) fn all_layers(&self) -> LayerMask {
        LayerMask::first(self.rids.len())
    }

    /// Layers some worker or link needs.
    pub(super) fn wanted(&self) -> LayerMask {
        let mut m = LayerMask::NONE;
        for d in &self.dests {
            m |= d.mask;
        }
        for (_, l) in &self.links {
            m |= *l;
        }
        m & self.all_layers()
    }
}

/// A track some session here subscribes to.
#[derive(Debug)]
struct Subscribed {
    subs: Vec<SessionKey>,
    /// The worker of its publisher (where keyframe requests and demand go).
    publisher: WorkerId,
}

/// The fan-out tables of one worker.
#[derive(Debug)]
pub(super) struct FanOut {
    id: WorkerId,
    published: HashMap<TrackId, Published>,
    subscribed: HashMap<TrackId, Subscribed>,
}

impl FanOut {
    /// Empty tables of worker `id`.
    pub(super) fn new(id: WorkerId) -> Self {
        Self {
            id,
            published: HashMap::new(),
            subscribed: HashMap::new(),
        }
    }

    // ----- published here ----------------------------------------------------

    /// A track is published on this worker.
    pub(super) fn publish(&mut self, track: TrackId, p: Published) {
        self.published.insert(track, p);
    }

    /// The track is no longer published here.
    pub(super) fn unpublish(&mut self, track: TrackId) -> Option<Published> {
        self.published.remove(&track)
    }

    /// A track published here.
    pub(super) fn published(&self, track: TrackId) -> Option<&Published> {
        self.published.get(&track)
    }

    /// Whether anything is published here.
    pub(super) fn publishes_anything(&self) -> bool {
        !self.published.is_empty()
    }

    /// A subscriber of `track` now lives on `worker`. Until that worker says
    /// which layers it needs it gets every one, so a new subscriber sees
    /// keyframes at once. Returns whether the worker is a new destination.
    pub(super) fn add_dest(&mut self, track: TrackId, worker: WorkerId) -> bool {
        let Some(p) = self.published.get_mut(&track) else {
            return false;
        };
        match p.dests.iter_mut().find(|d| d.worker == worker) {
            Some(d) => {
                d.count += 1;
                false
            }
            None => {
                p.dests.push(Dest {
                    worker,
                    count: 1,
                    mask: LayerMask::ALL,
                });
                true
            }
        }
    }

    /// One subscriber of `track` on `worker` went away.
    pub(super) fn remove_dest(&mut self, track: TrackId, worker: WorkerId) {
        let Some(p) = self.published.get_mut(&track) else {
            return;
        };
        if let Some(i) = p.dests.iter().position(|d| d.worker == worker) {
            p.dests[i].count -= 1;
            if p.dests[i].count == 0 {
                p.dests.swap_remove(i);
            }
        }
    }

    /// `worker`'s subscribers of `track` need `mask`.
    pub(super) fn set_demand(&mut self, track: TrackId, worker: WorkerId, mask: LayerMask) {
        if let Some(d) = self
            .published
            .get_mut(&track)
            .and_then(|p| p.dests.iter_mut().find(|d| d.worker == worker))
        {
            d.mask = mask;
        }
    }

    /// Relays the layers in `mask` of `track` to `link` (none: stops).
    /// Returns whether the link is new for the track.
    pub(super) fn set_link(&mut self, track: TrackId, link: LinkId, mask: LayerMask) -> bool {
        let Some(p) = self.published.get_mut(&track) else {
            return false;
        };
        let new_link = !p.links.iter().any(|(l, _)| *l == link);
        p.links.retain(|(l, _)| *l != link);
        if !mask.is_empty() {
            p.links.push((link, mask));
        }
        new_link && !mask.is_empty()
    }

    /// Sends a packet of a track published here to every other worker and
    /// link that needs its layer (the payload is shared, never copied).
    /// Returns whether this worker's own subscribers need it too.
    pub(super) fn dispatch(
        &self,
        pkt: &Arc<MediaPacket>,
        layer: Layer,
        bus: &mut [BusBatch],
        links: &mut Vec<(LinkId, Arc<MediaPacket>)>,
    ) -> bool {
        let Some(p) = self.published.get(&pkt.track) else {
            return false;
        };
        let mut local = false;
        for d in &p.dests {
            if !d.mask.contains(layer) {
                continue;
            }
            if d.worker == self.id {
                local = true;
            } else if let Some(b) = bus.get_mut(d.worker.index()) {
                b.push(BusMsg::Media(pkt.clone()));
            }
        }
        for (link, mask) in &p.links {
            if mask.contains(layer) {
                links.push((*link, pkt.clone()));
            }
        }
        local
    }

    // ----- subscribed here -----------------------------------------------------

    /// Session `key` subscribes to `track`, published on `publisher`.
    pub(super) fn subscribe(&mut self, track: TrackId, key: SessionKey, publisher: WorkerId) {
        let s = self.subscribed.entry(track).or_insert(Subscribed {
            subs: Vec::new(),
            publisher,
        });
        s.publisher = publisher;
        if !s.subs.contains(&key) {
            s.subs.push(key);
        }
    }

    /// Session `key` no longer subscribes to `track`.
    pub(super) fn unsubscribe(&mut self, track: TrackId, key: SessionKey) {
        if let Some(s) = self.subscribed.get_mut(&track) {
            s.subs.retain(|k| *k != key);
            if s.subs.is_empty() {
                self.subscribed.remove(&track);
            }
        }
    }

    /// The track is gone: its local subscribers, who no longer get it.
    pub(super) fn drop_subscribers(&mut self, track: TrackId) -> Vec<SessionKey> {
        self.subscribed
            .remove(&track)
            .map(|s| s.subs)
            .unwrap_or_default()
    }

    /// The local subscribers of `track`.
    pub(super) fn subscribers(&self, track: TrackId) -> &[SessionKey] {
        self.subscribed.get(&track).map_or(&[], |s| &s.subs)
    }

    /// Whether some session here subscribes to `track`.
    pub(super) fn is_subscribed(&self, track: TrackId) -> bool {
        self.subscribed.contains_key(&track)
    }

    /// The tracks subscribed here, with their subscribers and publisher's worker.
    pub(super) fn subscribed_tracks(
        &self,
    ) -> impl Iterator<Item = (TrackId, &[SessionKey], WorkerId)> {
        self.subscribed
            .iter()
            .map(|(t, s)| (*t, s.subs.as_slice(), s.publisher))
    }

    /// The worker `track`'s publisher is on, as far as this worker knows:
    /// itself for a track published here (a remote track's home worker is
    /// its publisher), else what the subscription said. Track ids carry no
    /// worker.
    pub(super) fn publisher_of(&self, track: TrackId) -> Option<WorkerId> {
        if self.published.contains_key(&track) {
            return Some(self.id);
        }
        self.subscribed.get(&track).map(|s| s.publisher)
    }
}
