//! Voice activity of the audio tracks published on one worker, from the
//! audio-level header extension (RFC 6464) of each packet.
//!
//! Per packet: a map lookup and three additions (no allocation after a
//! track's first packet). Per tick (every [`crate::media::core::TICK`]):
//! each track's window is judged speaking when enough of its packets were
//! loud, with hysteresis (speaking after [`START_WINDOWS`] speaking windows,
//! silent after [`HANGOVER_WINDOWS`] quiet ones, so the pauses between words
//! do not flap), and the control plane hears of a track only when that
//! state or its level changes noticeably ([`WorkerEvent::AudioLevel`]).
//! Which speakers of a room come first is decided there
//! (`control::speakers`), since a room's publishers may live on several
//! workers.

use super::command::WorkerEvent;
use kaskade_protocol::TrackId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A packet at least this loud (0 = silence, 127 = 0 dBov) counts as
/// voice: -45 dBov, above the noise floor of a quiet room.
pub const LOUD: u8 = 127 - 45;
/// Share of loud packets (percent) that makes a window a speaking one.
pub const SPEAKING_SHARE: u32 = 40;
/// Speaking windows in a row before a track counts as speaking.
pub const START_WINDOWS: u8 = 2;
/// Quiet windows in a row before a speaking track counts as silent.
pub const HANGOVER_WINDOWS: u8 = 5;
/// A speaking track's level is reported again when it moved this much...
pub const LEVEL_STEP: u8 = 6;
/// ...and at most this often.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// A track that sent no audio level this long is forgotten (silent).
pub const STALE: Duration = Duration::from_secs(1);

/// The voice activity of one audio track.
#[derive(Debug, Clone)]
struct Meter {
    /// This window: packets, loud packets, and the loud packets' loudness.
    packets: u32,
    loud: u32,
    loud_sum: u32,
    /// Smoothed loudness of the speaking windows.
    level: u8,
    speaking: bool,
    /// Windows in a row on the other side of `speaking`.
    streak: u8,
    /// What the control plane was told, and when.
    reported: Option<u8>,
    reported_at: Option<Instant>,
    last_packet: Instant,
}

/// The meters of every audio track of one worker that carries levels.
#[derive(Debug, Default)]
pub struct SpeakerMeters {
    tracks: HashMap<TrackId, Meter>,
}

/// The audio-level extension's value (-dBov, 0 loudest) as loudness, 0
/// (silence) to 127 (0 dBov).
pub fn loudness(level: i8) -> u8 {
    // -128 is out of the extension's range: silence.
    (127 + i16::from(level).clamp(-127, 0)) as u8
}

impl SpeakerMeters {
    /// An audio packet of `track` with its audio-level extension.
    pub fn on_packet(&mut self, now: Instant, track: TrackId, level: i8) {
        let m = self.tracks.entry(track).or_insert_with(|| Meter {
            packets: 0,
            loud: 0,
            loud_sum: 0,
            level: 0,
            speaking: false,
            streak: 0,
            reported: None,
            reported_at: None,
            last_packet: now,
        });
        let l = loudness(level);
        m.packets += 1;
        if l >= LOUD {
            m.loud += 1;
            m.loud_sum += u32::from(l);
        }
        m.last_packet = now;
    }

    /// Number of tracks metered.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether no track is metered.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Closes the current window of every track (call once per tick);
    /// changes go to `events`.
    pub fn tick(&mut self, now: Instant, events: &mut Vec<WorkerEvent>) {
        self.tracks.retain(|track, m| {
            if now.saturating_duration_since(m.last_packet) >= STALE {
                if m.reported.is_some() {
                    events.push(WorkerEvent::AudioLevel {
                        track: *track,
                        level: None,
                        at: now,
                    });
                }
                return false;
            }
            if let Some(level) = m.close_window(now) {
                events.push(WorkerEvent::AudioLevel {
                    track: *track,
                    level,
                    at: now,
                });
            }
            true
        });
    }
}

impl Meter {
    /// Judges the window that ends now; `Some` when the control plane must
    /// hear of the track's new state (`Some(None)`: silent).
    fn close_window(&mut self, now: Instant) -> Option<Option<u8>> {
        let speaking_window = self.packets > 0 && self.loud * 100 >= self.packets * SPEAKING_SHARE;
        if speaking_window {
            let avg = (self.loud_sum / self.loud.max(1)) as u8;
            // Quick to rise, smoothed over about four windows.
            self.level = if self.level == 0 {
                avg
            } else {
                ((u16::from(self.level) * 3 + u16::from(avg)) / 4) as u8
            };
        }
        self.packets = 0;
        self.loud = 0;
        self.loud_sum = 0;
        if speaking_window != self.speaking {
            self.streak = self.streak.saturating_add(1);
            let needed = if self.speaking {
                HANGOVER_WINDOWS
            } else {
                START_WINDOWS
            };
            if self.streak >= needed {
                self.speaking = speaking_window;
                self.streak = 0;
                if !self.speaking {
                    self.level = 0;
                }
            }
        } else {
            self.streak = 0;
        }
        let now_state = self.speaking.then_some(self.level);
        let report = match (self.reported, now_state) {
            (None, None) => false,
            (Some(_), None) | (None, Some(_)) => true,
            (Some(a), Some(b)) => {
                a.abs_diff(b) >= LEVEL_STEP
                    && self
                        .reported_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_INTERVAL)
            }
        };
        if !report {
            return None;
        }
        self.reported = now_state;
        self.reported_at = Some(now);
        Some(now_state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    /// Feeds `windows` ticks of 5 packets (20 ms apart) at `level` dBov;
    /// returns the events.
    fn feed(
        m: &mut SpeakerMeters,
        now: &mut Instant,
        track: TrackId,
        level: i8,
        windows: usize,
    ) -> Vec<WorkerEvent> {
        let mut out = Vec::new();
        for _ in 0..windows {
            for _ in 0..5 {
                *now += Duration::from_millis(20);
                m.on_packet(*now, track, level);
            }
            m.tick(*now, &mut out);
        }
        out
    }

    fn levels(evs: &[WorkerEvent]) -> Vec<Option<u8>> {
        evs.iter()
            .map(|e| match e {
                WorkerEvent::AudioLevel { level, .. } => *level,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn loudness_maps_dbov() {
        assert_eq!(loudness(0), 127);
        assert_eq!(loudness(-127), 0);
        assert_eq!(loudness(-128), 0);
        assert_eq!(loudness(-30), 97);
        assert_eq!(loudness(5), 127, "out of range counts as loudest");
    }

    #[test]
    fn speech_starts_after_two_windows_and_ends_after_the_hangover() {
        let t = TrackId(1);
        let mut m = SpeakerMeters::default();
        let mut now = Instant::now();
        assert!(feed(&mut m, &mut now, t, -90, 5).is_empty(), "silence");
        let first = feed(&mut m, &mut now, t, -20, 1);
        assert!(first.is_empty(), "one loud window is a click, not speech");
        let start = feed(&mut m, &mut now, t, -20, 1);
        assert_eq!(levels(&start), vec![Some(107)]);
        // Pauses between words shorter than the hangover change nothing.
        assert!(feed(&mut m, &mut now, t, -90, 4).is_empty());
        assert!(feed(&mut m, &mut now, t, -20, 3).is_empty());
        let end = feed(&mut m, &mut now, t, -90, 5);
        assert_eq!(levels(&end), vec![None]);
    }

    #[test]
    fn level_changes_are_reported_at_most_twice_a_second() {
        let t = TrackId(1);
        let mut m = SpeakerMeters::default();
        let mut now = Instant::now();
        assert_eq!(levels(&feed(&mut m, &mut now, t, -40, 2)), vec![Some(87)]);
        // Louder by 20 dB: the smoothed level climbs; reported once 500 ms
        // have passed (not at every step), then not again for the last
        // few steps, which move it less than LEVEL_STEP.
        let mut got = Vec::new();
        for w in 1..=10u32 {
            for l in levels(&feed(&mut m, &mut now, t, -20, 1)) {
                got.push((w, l));
            }
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].0 >= 5, "not before 500 ms: {got:?}");
        assert!(got[0].1.unwrap() > 87 + LEVEL_STEP, "{got:?}");
    }

    #[test]
    fn a_track_that_stops_sending_levels_goes_silent_and_is_forgotten() {
        let t = TrackId(1);
        let mut m = SpeakerMeters::default();
        let mut now = Instant::now();
        feed(&mut m, &mut now, t, -20, 3);
        let mut out = Vec::new();
        now += STALE;
        m.tick(now, &mut out);
        assert_eq!(levels(&out), vec![None]);
        assert!(m.is_empty());
    }

    #[test]
    fn sparse_loud_packets_are_not_speech() {
        let t = TrackId(1);
        let mut m = SpeakerMeters::default();
        let mut now = Instant::now();
        let mut out = Vec::new();
        for i in 0..50 {
            now += Duration::from_millis(20);
            // One loud packet in five: 20 % < 40 %.
            m.on_packet(now, t, if i % 5 == 0 { -10 } else { -100 });
            if i % 5 == 4 {
                m.tick(now, &mut out);
            }
        }
        assert!(out.is_empty(), "{out:?}");
        let _ = TICK;
    }
}
