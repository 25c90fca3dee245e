//! Active speakers, between the workers' level reports and the rooms'
//! event streams (the decision itself is `control::speakers`).

use super::Control;
use crate::control::registry::Registry;
use crate::control::speakers::Speaking;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::TrackId;
use pb::event::Kind;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// A worker's level report for `track`: the room's speakers decide, and
/// an `active_speakers_changed` goes out when their order changed.
pub(super) fn on_audio_level(reg: &mut Registry, track: TrackId, level: Option<u8>, at: Instant) {
    let Some(info) = reg.tracks.get(&track) else {
        return;
    };
    let room = info.room.clone();
    let who = level.map(|level| Speaking {
        session_id: info.session.to_string(),
        participant_id: info.participant.to_string(),
        level,
    });
    if let Some(ev) = reg.speakers.on_level(at, &room, track, who) {
        reg.emit(&room, Kind::ActiveSpeakersChanged(ev));
    }
}

impl Control {
    /// Sends the `active_speakers_changed` events held back by the rate
    /// limit that are due by `now`; returns when to call again (`None`:
    /// when a worker reports next). The server calls it on a timer; tests
    /// on the virtual clock.
    pub fn poll_speakers(&self, now: Instant) -> Option<Instant> {
        let mut reg = self.reg();
        for (room, ev) in reg.speakers.poll(now) {
            reg.emit(&room, Kind::ActiveSpeakersChanged(ev));
        }
        reg.speakers.poll_timeout()
    }

    /// Polls the speakers every 50 ms until `stop` turns true.
    pub async fn drive_speakers(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(SPEAKER_POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    self.poll_speakers(Instant::now());
                }
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }
}

/// How often held-back speaker events are looked at (they are due at most
/// this much late).
pub(super) const SPEAKER_POLL: std::time::Duration = std::time::Duration::from_millis(50);
