//! Simulcast layer selection: a pure policy with explicit time.
//!
//! For one subscriber and one video track the target is the highest layer
//! that is at or below the subscriber's preference, is being sent by the
//! publisher, and fits the subscriber's share of its bandwidth estimate.
//! Down at once when the share falls below the current layer's rate; up only
//! after the share has held above the next layer's rate (with headroom) for
//! a while.

use super::layer::Layer;
use std::time::{Duration, Instant};

/// How long the share must stay above the next layer's rate before moving up.
pub const UPGRADE_HOLD: Duration = Duration::from_millis(1500);
/// Headroom over a layer's measured rate before it counts as fitting when moving up.
pub const UPGRADE_HEADROOM: f64 = 1.15;
/// After moving up, the new layer's measured rate still holds the keyframe
/// that started it: for this long only a clearly short share moves down.
pub const UP_GRACE: Duration = Duration::from_millis(2000);
/// During [`UP_GRACE`], the share must fall below this part of the rate.
pub const UP_GRACE_FACTOR: f64 = 0.75;
/// After video of a track was shed on the bus, how long the subscriber
/// stays at least one layer below where it was.
pub const OVERLOAD_HOLD: Duration = Duration::from_secs(4);
/// Default priority of a subscription.
pub const DEFAULT_PRIORITY: u32 = 10;

/// What the publisher sends on one layer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerState {
    /// Packets arrived recently.
    pub active: bool,
    /// Measured rate, bits per second.
    pub bitrate: u64,
    /// Resolution, once a keyframe told it.
    pub width: u16,
    /// Resolution, once a keyframe told it.
    pub height: u16,
}

/// A subscriber's wishes for one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preference {
    /// Highest spatial layer by rank (0 = lowest).
    pub max_layer: u8,
    /// Highest resolution, instead of `max_layer`.
    pub max_size: Option<(u32, u32)>,
    /// Highest temporal layer.
    pub max_temporal: u8,
    /// Nothing wanted.
    pub paused: bool,
    /// Weight of this track in the subscriber's bandwidth split.
    pub priority: u32,
}

impl Default for Preference {
    fn default() -> Self {
        Self {
            max_layer: u8::MAX,
            max_size: None,
            max_temporal: u8::MAX,
            paused: false,
            priority: DEFAULT_PRIORITY,
        }
    }
}

/// Why the target layer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The subscriber's preference.
    Preference,
    /// The bandwidth estimate.
    Bandwidth,
    /// The publisher stopped sending the layer.
    LayerGone,
    /// Paused by the subscriber.
    Paused,
    /// The subscriber's worker fell behind and video was shed on the bus.
    Overload,
}

impl Reason {
    /// As reported in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Preference => "preference",
            Reason::Bandwidth => "bandwidth",
            Reason::LayerGone => "layer_gone",
            Reason::Paused => "paused",
            Reason::Overload => "overload",
        }
    }
}

/// Layers (indices into the publisher's layer list) ordered lowest first:
/// by resolution where known, else by measured rate, else as offered.
pub fn rank(layers: &[LayerState]) -> Vec<Layer> {
    let mut idx: Vec<Layer> = Layer::all(layers.len()).collect();
    let all_sized = layers.iter().all(|l| l.width > 0);
    idx.sort_by_key(|i| {
        let l = &layers[i.index()];
        if all_sized {
            (u64::from(l.width) * u64::from(l.height), i.get())
        } else {
            (0, i.get())
        }
    });
    idx
}

/// Typical rates of simulcast layers, lowest first (Chrome at 720p).
const NOMINAL_RATES: [u64; 3] = [150_000, 500_000, 1_500_000];

/// A layer's measured rate, or a typical one for its rank while nothing
/// has been measured yet (the first selection happens before any packet).
pub fn rate_of(layers: &[LayerState], ranked: &[Layer], r: usize) -> u64 {
    let measured = layers[ranked[r].index()].bitrate;
    if measured > 0 {
        return measured;
    }
    let from_top = ranked.len() - 1 - r;
    NOMINAL_RATES[NOMINAL_RATES.len() - 1 - from_top.min(NOMINAL_RATES.len() - 1)]
}

/// The layer a subscriber may have at most by preference (a layer index).
fn preferred_cap(pref: &Preference, layers: &[LayerState], ranked: &[Layer]) -> Option<usize> {
    if ranked.is_empty() {
        return None;
    }
    match pref.max_size {
        Some((w, h)) => {
            // Largest layer that fits; sizes unknown → assume each layer
            // doubles the one below, the top one 1280x720.
            let n = ranked.len();
            let mut best = 0;
            for (r, i) in ranked.iter().enumerate() {
                let l = &layers[i.index()];
                let (lw, lh) = if l.width > 0 {
                    (u32::from(l.width), u32::from(l.height))
                } else {
                    let shift = (n - 1 - r) as u32;
                    (1280 >> shift, 720 >> shift)
                };
                if lw <= w && lh <= h {
                    best = r;
                }
            }
            Some(best)
        }
        None => Some(usize::from(pref.max_layer).min(ranked.len() - 1)),
    }
}

/// The per-subscription selection state (hysteresis).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// The chosen layer.
    pub target: Option<Layer>,
    /// Since when the share has fitted the next layer up.
    up_since: Option<Instant>,
    /// The preference cap (a rank) at the last update.
    last_cap: Option<usize>,
    /// When the target last moved up.
    up_at: Option<Instant>,
    /// A cap (a rank) after video was shed for this subscriber, and until when.
    overload: Option<(usize, Instant)>,
}

impl Selector {
    /// Re-evaluates the target. `share` is this track's part of the
    /// subscriber's estimate (`None`: no estimate, unlimited). Returns the
    /// new target and why, when it changed.
    pub fn update(
        &mut self,
        now: Instant,
        pref: &Preference,
        layers: &[LayerState],
        share: Option<u64>,
    ) -> Option<(Option<Layer>, Reason)> {
        let ranked = rank(layers);
        let new = self.choose(now, pref, layers, &ranked, share);
        if new.0 == self.target {
            return None;
        }
        let pos = |t: Option<Layer>| t.and_then(|t| ranked.iter().position(|i| *i == t));
        if pos(new.0) > pos(self.target) {
            self.up_at = Some(now);
        }
        self.target = new.0;
        self.up_since = None;
        Some(new)
    }

    /// Video was shed on the way to this subscriber: stay at least one
    /// layer below the current target for [`OVERLOAD_HOLD`] (repeated
    /// overloads step down further). The next [`Selector::update`] applies it.
    pub fn overload(&mut self, now: Instant, layers: &[LayerState]) {
        let ranked = rank(layers);
        let Some(cur) = self
            .target
            .and_then(|t| ranked.iter().position(|i| *i == t))
        else {
            return;
        };
        self.overload = Some((cur.saturating_sub(1), now + OVERLOAD_HOLD));
    }

    fn choose(
        &mut self,
        now: Instant,
        pref: &Preference,
        layers: &[LayerState],
        ranked: &[Layer],
        share: Option<u64>,
    ) -> (Option<Layer>, Reason) {
        if pref.paused {
            self.last_cap = None;
            return (None, Reason::Paused);
        }
        let Some(pref_cap) = preferred_cap(pref, layers, ranked) else {
            return (None, Reason::LayerGone);
        };
        let cap_changed = self.last_cap.is_some_and(|c| c != pref_cap);
        self.last_cap = Some(pref_cap);
        if self.overload.is_some_and(|(_, until)| now >= until) {
            self.overload = None;
        }
        let cap = self.overload.map_or(pref_cap, |(o, _)| o.min(pref_cap));
        let active = |r: usize| layers[ranked[r].index()].active;
        let fits = |r: usize, headroom: f64| match share {
            None => true,
            Some(s) => (rate_of(layers, ranked, r) as f64) * headroom <= s as f64,
        };
        // The highest active layer within the preference that fits the share;
        // if none fits, the lowest active one (a low picture beats a frozen one).
        let Some(fitting) = (0..=cap)
            .rev()
            .find(|r| active(*r) && fits(*r, 1.0))
            .or_else(|| (0..=cap).find(|r| active(*r)))
        else {
            return (None, Reason::LayerGone);
        };
        let current = self
            .target
            .and_then(|t| ranked.iter().position(|i| *i == t));
        let Some(cur) = current else {
            self.up_since = None;
            return (Some(ranked[fitting]), Reason::Preference);
        };
        if !active(cur) {
            self.up_since = None;
            return (Some(ranked[fitting]), Reason::LayerGone);
        }
        let in_grace = self
            .up_at
            .is_some_and(|t| now.saturating_duration_since(t) < UP_GRACE);
        if fitting < cur && cur <= cap && in_grace && !cap_changed && fits(cur, UP_GRACE_FACTOR) {
            // Just moved up: the keyframe burst inflates the layer's rate.
            self.up_since = None;
            return (Some(ranked[cur]), Reason::Bandwidth);
        }
        if fitting <= cur || cur > cap {
            // Down (or stay) at once.
            self.up_since = None;
            let reason = if cur > cap && cur <= pref_cap {
                Reason::Overload
            } else if cap_changed || cur > cap {
                Reason::Preference
            } else {
                Reason::Bandwidth
            };
            return (Some(ranked[fitting]), reason);
        }
        // Up. A raised preference with room to spare moves at once to what
        // fits with headroom; a bandwidth-driven climb goes one layer at a
        // time after the headroom has held for a while.
        if cap_changed || share.is_none() {
            let up = (cur..=fitting)
                .rev()
                .find(|r| active(*r) && fits(*r, UPGRADE_HEADROOM))
                .unwrap_or(cur);
            self.up_since = None;
            return (Some(ranked[up]), Reason::Preference);
        }
        let next = (cur + 1..=fitting).find(|r| active(*r)).unwrap_or(cur);
        if next == cur || !fits(next, UPGRADE_HEADROOM) {
            self.up_since = None;
            return (Some(ranked[cur]), Reason::Bandwidth);
        }
        let since = *self.up_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= UPGRADE_HOLD {
            (Some(ranked[next]), Reason::Bandwidth)
        } else {
            (Some(ranked[cur]), Reason::Bandwidth)
        }
    }
}

/// Splits a subscriber's estimate over its video tracks by priority.
/// Paused tracks get nothing.
pub fn split(estimate: u64, tracks: &[(u32, bool)]) -> Vec<u64> {
    let total: u64 = tracks
        .iter()
        .filter(|(_, paused)| !paused)
        .map(|(p, _)| u64::from((*p).max(1)))
        .sum();
    tracks
        .iter()
        .map(|(p, paused)| {
            if *paused || total == 0 {
                0
            } else {
                estimate * u64::from((*p).max(1)) / total
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(i: u8) -> Option<Layer> {
        Some(Layer::new(i))
    }

    fn three(active: [bool; 3]) -> Vec<LayerState> {
        let rates = [150_000, 500_000, 1_500_000];
        let sizes = [(320, 180), (640, 360), (1280, 720)];
        (0..3)
            .map(|i| LayerState {
                active: active[i],
                bitrate: rates[i],
                width: sizes[i].0,
                height: sizes[i].1,
            })
            .collect()
    }

    #[test]
    fn unlimited_takes_the_top_active_layer() {
        let t = Instant::now();
        let mut s = Selector::default();
        let r = s.update(t, &Preference::default(), &three([true; 3]), None);
        assert_eq!(r, Some((layer(2), Reason::Preference)));
        let r = s.update(t, &Preference::default(), &three([true, true, false]), None);
        assert_eq!(r, Some((layer(1), Reason::LayerGone)));
    }

    #[test]
    fn preference_caps_by_layer_or_size() {
        let t = Instant::now();
        let mut s = Selector::default();
        let p = Preference {
            max_layer: 0,
            ..Default::default()
        };
        assert_eq!(
            s.update(t, &p, &three([true; 3]), None).unwrap().0,
            layer(0)
        );
        let p = Preference {
            max_size: Some((700, 400)),
            ..Default::default()
        };
        assert_eq!(
            s.update(t, &p, &three([true; 3]), None).unwrap().0,
            layer(1)
        );
        let p = Preference {
            paused: true,
            ..Default::default()
        };
        assert_eq!(
            s.update(t, &p, &three([true; 3]), None),
            Some((None, Reason::Paused))
        );
    }

    #[test]
    fn down_at_once_up_only_after_holding_headroom() {
        let t0 = Instant::now();
        let p = Preference::default();
        let l = three([true; 3]);
        let mut s = Selector::default();
        s.update(t0, &p, &l, Some(3_000_000));
        assert_eq!(s.target, layer(2));
        // Estimate drops below the top layer: down at once.
        let r = s.update(t0 + Duration::from_millis(10), &p, &l, Some(1_000_000));
        assert_eq!(r, Some((layer(1), Reason::Bandwidth)));
        // Estimate recovers: not yet ...
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(s.update(t1, &p, &l, Some(2_000_000)), None);
        assert_eq!(
            s.update(t1 + Duration::from_millis(1000), &p, &l, Some(2_000_000)),
            None
        );
        // ... a dip resets the hold ...
        assert_eq!(
            s.update(t1 + Duration::from_millis(1200), &p, &l, Some(1_600_000)),
            None
        );
        assert_eq!(
            s.update(t1 + Duration::from_millis(1300), &p, &l, Some(2_000_000)),
            None
        );
        // ... and after holding long enough it moves up.
        let r = s.update(t1 + Duration::from_millis(2900), &p, &l, Some(2_000_000));
        assert_eq!(r.map(|r| r.0), Some(layer(2)));
    }

    #[test]
    fn no_flapping_right_after_moving_up() {
        let t0 = Instant::now();
        let p = Preference::default();
        let l = three([true; 3]);
        let mut s = Selector::default();
        s.update(t0, &p, &l, Some(1_000_000));
        assert_eq!(s.target, layer(1));
        s.update(t0 + Duration::from_millis(100), &p, &l, Some(2_000_000));
        s.update(t0 + Duration::from_millis(1700), &p, &l, Some(2_000_000));
        assert_eq!(s.target, layer(2), "moved up");
        // The keyframe that started the layer makes it look 1.7 Mbps.
        let mut spiky = l.clone();
        spiky[2].bitrate = 1_700_000;
        let t = t0 + Duration::from_millis(2000);
        assert_eq!(
            s.update(t, &p, &spiky, Some(1_600_000)),
            None,
            "kept in the grace period"
        );
        // A clearly short share still moves down at once.
        let r = s.update(t + Duration::from_millis(10), &p, &spiky, Some(1_000_000));
        assert_eq!(r, Some((layer(1), Reason::Bandwidth)));
    }

    #[test]
    fn climbs_one_layer_at_a_time() {
        let t0 = Instant::now();
        let p = Preference::default();
        let l = three([true; 3]);
        let mut s = Selector::default();
        s.update(t0, &p, &l, Some(100_000));
        assert_eq!(
            s.target,
            layer(0),
            "nothing fits: lowest rather than nothing"
        );
        s.update(t0 + Duration::from_millis(100), &p, &l, Some(5_000_000));
        let r = s.update(t0 + Duration::from_secs(2), &p, &l, Some(5_000_000));
        assert_eq!(r.unwrap().0, layer(1));
        s.update(t0 + Duration::from_millis(2100), &p, &l, Some(5_000_000));
        let r = s.update(t0 + Duration::from_secs(4), &p, &l, Some(5_000_000));
        assert_eq!(r.unwrap().0, layer(2));
    }

    #[test]
    fn overload_steps_down_holds_then_climbs_by_bandwidth() {
        let t0 = Instant::now();
        let p = Preference::default();
        let l = three([true; 3]);
        let mut s = Selector::default();
        s.update(t0, &p, &l, Some(5_000_000));
        assert_eq!(s.target, layer(2));
        s.overload(t0, &l);
        let r = s.update(t0, &p, &l, Some(5_000_000));
        assert_eq!(r, Some((layer(1), Reason::Overload)));
        // A second overload while held steps down again.
        s.overload(t0 + Duration::from_millis(500), &l);
        let r = s.update(t0 + Duration::from_millis(500), &p, &l, Some(5_000_000));
        assert_eq!(r, Some((layer(0), Reason::Overload)));
        // Held while the overload lasts, however much bandwidth there is.
        let t1 = t0 + Duration::from_millis(500) + OVERLOAD_HOLD;
        assert_eq!(
            s.update(t1 - Duration::from_millis(1), &p, &l, Some(5_000_000)),
            None
        );
        // Then one layer at a time, like any bandwidth-driven climb.
        assert_eq!(s.update(t1, &p, &l, Some(5_000_000)), None);
        let r = s.update(t1 + UPGRADE_HOLD, &p, &l, Some(5_000_000));
        assert_eq!(r, Some((layer(1), Reason::Bandwidth)));
        // The lowest layer has nowhere to go: an overload there changes nothing.
        let mut low = Selector::default();
        let pl = Preference {
            max_layer: 0,
            ..Default::default()
        };
        low.update(t0, &pl, &l, None);
        low.overload(t0, &l);
        assert_eq!(low.update(t0, &pl, &l, None), None);
    }

    #[test]
    fn ranks_by_resolution_whatever_the_offer_order() {
        let mut l = three([true; 3]);
        l.reverse();
        assert_eq!(rank(&l), [2, 1, 0].map(Layer::new));
        let no_size: Vec<LayerState> = l.iter().map(|x| LayerState { width: 0, ..*x }).collect();
        assert_eq!(rank(&no_size), [0, 1, 2].map(Layer::new));
    }

    #[test]
    fn split_by_priority() {
        assert_eq!(split(1000, &[(10, false), (30, false)]), vec![250, 750]);
        assert_eq!(split(1000, &[(10, true), (30, false)]), vec![0, 1000]);
    }
}
