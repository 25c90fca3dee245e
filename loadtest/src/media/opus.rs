//! Synthetic Opus: 20 ms packets of 80–160 bytes on a 48 kHz clock.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{micros_since, push_filler, MediaPacket, MediaSource, Probe, SourceStats, MAX_LAG};

/// Packet interval.
pub const OPUS_PTIME: Duration = Duration::from_millis(20);
/// RTP ticks per packet at 48 kHz.
pub const OPUS_TICKS: u32 = 960;

/// Synthetic Opus source. The probe sits at payload offset 0.
#[derive(Debug)]
pub struct OpusSource {
    tag: u32,
    epoch: Instant,
    start: Instant,
    packet_no: u64,
    rtp_base: u32,
    index: u64,
    level: i8,
    rng: SmallRng,
    stats: SourceStats,
}

impl OpusSource {
    /// A source whose first packet is due at `start`. `tag` goes into every probe,
    /// `epoch` is the zero of the probe's `sent_micros`.
    pub fn new(tag: u32, seed: u64, epoch: Instant, start: Instant) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let rtp_base = rng.random();
        OpusSource {
            tag,
            epoch,
            start,
            packet_no: 0,
            rtp_base,
            index: 0,
            level: -40,
            rng,
            stats: SourceStats::default(),
        }
    }

    fn due_of(&self, packet_no: u64) -> Instant {
        let ms = packet_no.saturating_mul(20);
        self.start + Duration::from_millis(ms)
    }
}

impl MediaSource for OpusSource {
    fn next_due(&self) -> Instant {
        self.due_of(self.packet_no)
    }

    fn poll(&mut self, now: Instant) -> Option<MediaPacket> {
        let mut due = self.next_due();
        if due > now {
            return None;
        }
        while now.saturating_duration_since(due) > MAX_LAG {
            self.packet_no += 1;
            self.stats.skipped_frames += 1;
            due = self.next_due();
        }
        let size = self.rng.random_range(80..=160usize);
        let probe = Probe {
            source_tag: self.tag,
            packet_index: self.index,
            sent_micros: micros_since(self.epoch, now),
        };
        let mut payload = vec![0u8; super::PROBE_LEN];
        probe.write(&mut payload);
        push_filler(&mut payload, size - super::PROBE_LEN);

        // A slow random walk of the speech level, in -dBov.
        let step: i8 = self.rng.random_range(-3..=3);
        self.level = (self.level.saturating_add(step)).clamp(-70, -20);

        let rtp_time = self
            .rtp_base
            .wrapping_add((self.packet_no as u32).wrapping_mul(OPUS_TICKS));
        let marker = self.index == 0;
        self.packet_no += 1;
        self.index += 1;
        self.stats.packets += 1;
        self.stats.frames += 1;
        self.stats.bytes += payload.len() as u64;
        Some(MediaPacket {
            due,
            rtp_time,
            marker,
            keyframe: false,
            frame_start: true,
            audio_level: Some(self.level),
            probe,
            payload,
        })
    }

    fn request_keyframe(&mut self) {}

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_size_clock() {
        let t0 = Instant::now();
        let mut s = OpusSource::new(7, 1, t0, t0);
        let mut now = t0;
        let mut pkts = vec![];
        for _ in 0..100 {
            while let Some(p) = s.poll(now) {
                pkts.push(p);
            }
            now = s.next_due();
        }
        assert_eq!(pkts.len(), 100);
        for w in pkts.windows(2) {
            assert_eq!(w[1].rtp_time.wrapping_sub(w[0].rtp_time), OPUS_TICKS);
            assert_eq!(w[1].due - w[0].due, OPUS_PTIME);
            assert_eq!(w[1].probe.packet_index, w[0].probe.packet_index + 1);
        }
        for p in &pkts {
            assert!((80..=160).contains(&p.payload.len()));
            assert_eq!(Probe::find_opus(&p.payload), Some(p.probe));
            assert!(p.audio_level.is_some());
        }
        // Deterministic given the seed.
        let mut s2 = OpusSource::new(7, 1, t0, t0);
        let p2 = s2.poll(t0).unwrap();
        assert_eq!(p2.payload, pkts[0].payload);
    }
}
