//! Active speakers per room: which of a room's audio tracks are speaking,
//! loudest first, decided from the levels the workers report
//! (`media::speaker`). A pure machine: levels and `now` in, at most one
//! `active_speakers_changed` per room per [`MIN_INTERVAL`] out.
//!
//! Hysteresis on the order: a speaker overtakes the one ahead of it only
//! when louder by [`OVERTAKE`], so two people talking at about the same
//! level do not swap places on every report.

use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, TrackId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Shortest time between two `active_speakers_changed` of one room.
pub const MIN_INTERVAL: Duration = Duration::from_millis(300);
/// How much louder (0..127 loudness, about dB) a speaker must be to move
/// ahead of the one before it.
pub const OVERTAKE: u8 = 8;
/// Most speakers listed in one event.
pub const MAX_LISTED: usize = 10;

/// One speaking track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaking {
    /// The publishing session.
    pub session_id: String,
    /// Its participant.
    pub participant_id: String,
    /// Smoothed loudness, 0..=127.
    pub level: u8,
}

#[derive(Debug, Default)]
struct RoomSpeakers {
    speaking: BTreeMap<TrackId, Speaking>,
    /// The order last announced.
    announced: Vec<TrackId>,
    last: Option<Instant>,
}

impl RoomSpeakers {
    /// The order now: each place goes to the speaker that held it (in the
    /// announced order, newcomers after, loudest first), unless the loudest
    /// of those left is louder by the margin.
    fn order(&self) -> Vec<TrackId> {
        let mut left: Vec<TrackId> = self
            .announced
            .iter()
            .filter(|t| self.speaking.contains_key(t))
            .copied()
            .collect();
        let mut new: Vec<TrackId> = self
            .speaking
            .keys()
            .filter(|t| !left.contains(t))
            .copied()
            .collect();
        new.sort_by_key(|t| std::cmp::Reverse(self.level(*t)));
        left.extend(new);
        let mut order = Vec::with_capacity(left.len().min(MAX_LISTED));
        while !left.is_empty() && order.len() < MAX_LISTED {
            // The first loudest (max_by_key would take the last of equals).
            let loudest = (0..left.len())
                .rev()
                .max_by_key(|i| self.level(left[*i]))
                .unwrap_or(0);
            let take = if self.level(left[loudest]) >= self.level(left[0]).saturating_add(OVERTAKE)
            {
                loudest
            } else {
                0
            };
            order.push(left.remove(take));
        }
        order
    }

    fn level(&self, t: TrackId) -> u8 {
        self.speaking.get(&t).map_or(0, |s| s.level)
    }
}

/// The active speakers of every room.
#[derive(Debug, Default)]
pub struct Speakers {
    rooms: BTreeMap<RoomId, RoomSpeakers>,
    /// Rooms whose order may have changed but whose last event is too recent.
    pending: BTreeSet<RoomId>,
}

impl Speakers {
    /// A worker's report: `track` (of `room`) speaks at `level`, or (`None`)
    /// is silent. Returns the event to send now, if any.
    pub fn on_level(
        &mut self,
        now: Instant,
        room: &RoomId,
        track: TrackId,
        who: Option<Speaking>,
    ) -> Option<pb::ActiveSpeakersChanged> {
        let r = self.rooms.entry(room.clone()).or_default();
        match who {
            Some(s) => {
                r.speaking.insert(track, s);
            }
            None => {
                r.speaking.remove(&track);
            }
        }
        self.decide(now, room)
    }

    /// `track` of `room` is gone (unpublished): it stops speaking, announced
    /// at the next [`Speakers::poll`].
    pub fn forget(&mut self, room: &RoomId, track: TrackId) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.speaking.remove(&track);
            // Only an announced track changes what watchers know (and an
            // announcement means `last` is set, so the room has a deadline).
            if r.announced.contains(&track) {
                self.pending.insert(room.clone());
            }
        }
    }

    /// The room was deleted.
    pub fn forget_room(&mut self, room: &RoomId) {
        self.rooms.remove(room);
        self.pending.remove(room);
    }

    /// When [`Speakers::poll`] has something to do, at the earliest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter_map(|room| self.rooms.get(room)?.last)
            .map(|t| t + MIN_INTERVAL)
            .min()
    }

    /// Events held back by the rate limit that are due by `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<(RoomId, pb::ActiveSpeakersChanged)> {
        let due: Vec<RoomId> = self
            .pending
            .iter()
            .filter(|room| {
                self.rooms
                    .get(*room)
                    .and_then(|r| r.last)
                    .is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL)
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for room in due {
            self.pending.remove(&room);
            if let Some(ev) = self.decide(now, &room) {
                out.push((room, ev));
            }
        }
        out
    }

    fn decide(&mut self, now: Instant, room: &RoomId) -> Option<pb::ActiveSpeakersChanged> {
        let r = self.rooms.get_mut(room)?;
        let order = r.order();
        if order == r.announced {
            self.pending.remove(room);
            let recent = r
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL);
            if r.speaking.is_empty() && r.announced.is_empty() && !recent {
                self.rooms.remove(room);
            }
            return None;
        }
        if r.last
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            self.pending.insert(room.clone());
            return None;
        }
        self.pending.remove(room);
        r.last = Some(now);
        let ev = pb::ActiveSpeakersChanged {
            speakers: order
                .iter()
                .filter_map(|t| {
                    let s = r.speaking.get(t)?;
                    Some(pb::Speaker {
                        session_id: s.session_id.clone(),
                        participant_id: s.participant_id.clone(),
                        track_id: t.to_string(),
                        level: u32::from(s.level),
                    })
                })
                .collect(),
        };
        r.announced = order;
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u64, level: u8) -> Option<Speaking> {
        Some(Speaking {
            session_id: format!("SE{n}"),
            participant_id: format!("p{n}"),
            level,
        })
    }

    fn names(ev: &pb::ActiveSpeakersChanged) -> Vec<&str> {
        ev.speakers
            .iter()
            .map(|s| s.participant_id.as_str())
            .collect()
    }

    #[test]
    fn order_changes_only_for_a_clear_margin_and_at_most_every_300_ms() {
        let room = RoomId::parse("r").unwrap();
        let mut s = Speakers::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let ev = s.on_level(ms(0), &room, TrackId(1), who(1, 90)).unwrap();
        assert_eq!(names(&ev), ["p1"]);
        // A second speaker, quieter: listed after, but not before 300 ms.
        assert!(s.on_level(ms(100), &room, TrackId(2), who(2, 85)).is_none());
        assert_eq!(s.poll_timeout(), Some(ms(300)));
        assert!(s.poll(ms(299)).is_empty());
        let due = s.poll(ms(300));
        assert_eq!(names(&due[0].1), ["p1", "p2"]);
        assert_eq!(s.poll_timeout(), None);
        // Slightly louder than p1 is not enough to overtake...
        assert!(s.on_level(ms(700), &room, TrackId(2), who(2, 95)).is_none());
        // ...clearly louder is.
        let ev = s.on_level(ms(800), &room, TrackId(2), who(2, 99)).unwrap();
        assert_eq!(names(&ev), ["p2", "p1"]);
        // Levels alone, same order: nothing.
        assert!(s
            .on_level(ms(1200), &room, TrackId(1), who(1, 70))
            .is_none());
        // p2 stops: p1 alone.
        let ev = s.on_level(ms(1300), &room, TrackId(2), None).unwrap();
        assert_eq!(names(&ev), ["p1"]);
    }

    #[test]
    fn an_unpublished_speaker_is_dropped_at_the_next_poll() {
        let room = RoomId::parse("r").unwrap();
        let mut s = Speakers::default();
        let t0 = Instant::now();
        s.on_level(t0, &room, TrackId(1), who(1, 90)).unwrap();
        s.forget(&room, TrackId(1));
        assert_eq!(s.poll_timeout(), Some(t0 + MIN_INTERVAL));
        let due = s.poll(t0 + MIN_INTERVAL);
        assert_eq!(due.len(), 1);
        assert!(due[0].1.speakers.is_empty());
        // Nothing left to hold once quiet for the interval.
        assert!(s
            .on_level(t0 + 3 * MIN_INTERVAL, &room, TrackId(1), None)
            .is_none());
        assert!(s.rooms.is_empty());
    }

    #[test]
    fn a_crowd_is_listed_loudest_first_up_to_the_cap() {
        let room = RoomId::parse("r").unwrap();
        let mut s = Speakers::default();
        let t0 = Instant::now();
        let mut last = None;
        for n in 0..20u64 {
            let now = t0 + MIN_INTERVAL * (n as u32 + 1);
            if let Some(ev) = s.on_level(now, &room, TrackId(n), who(n, 40 + 4 * n as u8)) {
                last = Some(ev);
            }
        }
        let ev = last.unwrap();
        assert_eq!(ev.speakers.len(), MAX_LISTED);
        let levels: Vec<u32> = ev.speakers.iter().map(|s| s.level).collect();
        assert!(
            levels.windows(2).all(|w| w[0] + u32::from(OVERTAKE) > w[1]),
            "{levels:?}"
        );
        // The ten loudest, the loudest within the margin of the first place.
        assert!(levels.iter().all(|l| *l >= 40 + 4 * 10), "{levels:?}");
        assert!(levels[0] + u32::from(OVERTAKE) > 40 + 4 * 19, "{levels:?}");
    }
}
