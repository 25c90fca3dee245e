//! The keyframe throttle of the tracks published on a worker: at most one
//! request per publisher layer per interval, the rest absorbed or held.
//!
//! - A request while an earlier one is still unanswered (no keyframe of
//!   that layer since) is absorbed: the keyframe on its way serves both.
//! - A request within the interval after a keyframe arrived is held and
//!   sent when the interval ends, so a subscriber joining just after
//!   another waits for that, not for its own retry.
//!
//! Pure: the core asks, this answers, and says when held requests are due.

use crate::media::layer::{Layer, LayerMask};
use kaskade_protocol::TrackId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What to do with a keyframe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Ask the publisher now.
    Send,
    /// An earlier request is still being answered: its keyframe serves this one.
    Coalesced,
    /// Too soon after the last keyframe: held until the interval ends.
    Held,
    /// Not a track or layer this worker publishes.
    Unknown,
}

#[derive(Debug)]
struct PerTrack {
    /// Last request sent per layer.
    last: Vec<Option<Instant>>,
    /// Layers whose keyframe arrived since their last request.
    answered: LayerMask,
    /// Layers with a held request.
    held: LayerMask,
}

/// The throttle state of every track published on one worker.
#[derive(Debug)]
pub(super) struct KeyframeThrottle {
    tracks: HashMap<TrackId, PerTrack>,
    interval: Duration,
    /// When the earliest held request is due.
    due: Option<Instant>,
}

impl KeyframeThrottle {
    /// A throttle with the minimum `interval` between two requests to one
    /// publisher layer.
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            tracks: HashMap::new(),
            interval,
            due: None,
        }
    }

    /// Sets the interval (`media.keyframe_interval_ms`).
    pub(super) fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// A track with `layers` layers is published here.
    pub(super) fn add(&mut self, track: TrackId, layers: usize) {
        self.tracks.insert(
            track,
            PerTrack {
                last: vec![None; layers.max(1)],
                answered: LayerMask::NONE,
                held: LayerMask::NONE,
            },
        );
    }

    /// The track is no longer published here.
    pub(super) fn remove(&mut self, track: TrackId) {
        self.tracks.remove(&track);
    }

    /// A keyframe of `layer` arrived from the publisher.
    pub(super) fn on_keyframe(&mut self, track: TrackId, layer: Layer) {
        if let Some(t) = self.tracks.get_mut(&track) {
            t.answered.insert(layer);
        }
    }

    /// Decides on a request for a keyframe of `layer`.
    pub(super) fn request(&mut self, now: Instant, track: TrackId, layer: Layer) -> Verdict {
        let Some(t) = self.tracks.get_mut(&track) else {
            return Verdict::Unknown;
        };
        let Some(last) = t.last.get_mut(layer.index()) else {
            return Verdict::Unknown;
        };
        if let Some(at) = last.filter(|at| now.saturating_duration_since(*at) < self.interval) {
            if !t.answered.contains(layer) {
                return Verdict::Coalesced;
            }
            t.held.insert(layer);
            let due = at + self.interval;
            self.due = Some(self.due.map_or(due, |d| d.min(due)));
            return Verdict::Held;
        }
        *last = Some(now);
        t.answered.remove(layer);
        t.held.remove(layer);
        Verdict::Send
    }

    /// When [`KeyframeThrottle::take_due`] has something.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Moves the held requests into `out` once they are due (ask again for
    /// each: one still inside its interval is held again).
    pub(super) fn take_due(&mut self, now: Instant, out: &mut Vec<(TrackId, Layer)>) {
        if self.due.is_none_or(|d| d > now) {
            return;
        }
        self.due = None;
        for (track, t) in &mut self.tracks {
            let held = std::mem::take(&mut t.held);
            out.extend(held.iter().map(|l| (*track, l)));
        }
        // Deterministic order whatever the map's.
        out.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_interval_the_rest_absorbed_or_held() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (t, l) = (TrackId(1), Layer::new(1));
        let mut k = KeyframeThrottle::new(Duration::from_millis(330));
        k.add(t, 3);
        assert_eq!(k.request(ms(0), t, l), Verdict::Send);
        // Unanswered: absorbed.
        assert_eq!(k.request(ms(50), t, l), Verdict::Coalesced);
        assert_eq!(k.poll_timeout(), None);
        // Answered, but within the interval: held until 330 ms.
        k.on_keyframe(t, l);
        assert_eq!(k.request(ms(100), t, l), Verdict::Held);
        assert_eq!(k.poll_timeout(), Some(ms(330)));
        let mut due = Vec::new();
        k.take_due(ms(329), &mut due);
        assert!(due.is_empty());
        k.take_due(ms(330), &mut due);
        assert_eq!(due, [(t, l)]);
        assert_eq!(k.request(ms(330), t, l), Verdict::Send);
        // Other layers and tracks are independent.
        assert_eq!(k.request(ms(331), t, Layer::BASE), Verdict::Send);
        assert_eq!(k.request(ms(331), TrackId(2), l), Verdict::Unknown);
        assert_eq!(k.request(ms(331), t, Layer::new(7)), Verdict::Unknown);
    }
}
