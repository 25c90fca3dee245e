//! Sequence-number and timestamp rewriting for one outgoing stream.
//!
//! A subscriber's stream is one continuous RTP stream even when its source
//! changes (a join mid-stream, later a simulcast layer switch): sequence
//! numbers continue without gaps except for real loss, and RTP timestamps
//! advance by the real elapsed time, never backwards.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Offsets of earlier stretches of the current source kept for late packets.
const EARLIER: usize = 16;

/// Rewrites extended sequence numbers of the current source into the
/// outgoing stream's space.
///
/// Each packet dropped on purpose ([`drop_packet`](Self::drop_packet)) at the
/// head of the stream shifts the later packets down by one, so the current
/// source is numbered in stretches, each with its own offset. A packet that
/// arrives late (reordered) is numbered with the offset of its own stretch,
/// so it takes the slot it left, never one already given to another packet;
/// one older than the last 16 stretches (`EARLIER`) is not forwarded.
#[derive(Debug, Clone)]
pub struct SeqRewriter {
    /// `out = in + offset` from `since` on; `None` before the first packet.
    offset: Option<i64>,
    /// First source number the current offset applies to.
    since: u64,
    /// Earlier stretches of the current source, oldest first: (first source
    /// number, offset); each ends just before the next one's start (or
    /// `since`) with the dropped packet that ended it.
    earlier: VecDeque<(u64, i64)>,
    /// First source sequence number of the current source (older packets are dropped).
    source_start: u64,
    /// Highest outgoing sequence number written.
    highest: Option<u64>,
    /// Outgoing number of the very first packet.
    start: u64,
}

impl SeqRewriter {
    /// A rewriter whose first outgoing number is `start` (must be < 65536 so
    /// that str0m starts the SRTP rollover counter at 0).
    pub fn new(start: u16) -> Self {
        Self {
            offset: None,
            since: 0,
            earlier: VecDeque::with_capacity(EARLIER),
            source_start: 0,
            highest: None,
            start: u64::from(start),
        }
    }

    /// Whether a source has been set.
    pub fn started(&self) -> bool {
        self.offset.is_some()
    }

    /// Makes `first` (a packet of a new source, e.g. a keyframe) follow the
    /// highest number written so far.
    pub fn switch_to(&mut self, first: u64) {
        let next = self.highest.map_or(self.start, |h| h + 1);
        self.offset = Some(next as i64 - first as i64);
        self.source_start = first;
        self.since = first;
        self.earlier.clear();
    }

    /// The offset for source number `seq`: the current one, or that of the
    /// earlier stretch it belongs to; `None` for the packet that ended a
    /// stretch (dropped on purpose) and for what is older than the kept ones.
    fn offset_of(&self, seq: u64) -> Option<i64> {
        let offset = self.offset?;
        if seq < self.source_start {
            return None;
        }
        if seq >= self.since {
            return Some(offset);
        }
        let mut end = self.since;
        for &(from, off) in self.earlier.iter().rev() {
            if seq >= from {
                // `end - 1` is the dropped packet that closed this stretch.
                return (seq + 1 != end).then_some(off);
            }
            end = from;
        }
        None
    }

    /// A packet of the current source is deliberately not forwarded (a
    /// filtered temporal layer): later packets close the gap. A late one
    /// (older than a packet already written) leaves its slot empty.
    pub fn drop_packet(&mut self, seq: u64) {
        let Some(off) = self.offset else {
            return;
        };
        if seq < self.since {
            return;
        }
        let out = (seq as i64 + off) as u64;
        if self.highest.is_none_or(|h| out > h) {
            if self.earlier.len() == EARLIER {
                self.earlier.pop_front();
            }
            self.earlier.push_back((self.since, off));
            self.since = seq + 1;
            self.offset = Some(off - 1);
        }
    }

    /// The outgoing number for a packet of the current source, or `None`
    /// when it predates the switch (it belongs to the previous source), or
    /// it has no slot left (see the type's doc).
    pub fn rewrite(&mut self, seq: u64) -> Option<u64> {
        let offset = self.offset_of(seq)?;
        let out = (seq as i64 + offset) as u64;
        self.highest = Some(self.highest.map_or(out, |h| h.max(out)));
        Some(out)
    }
}

/// Rewrites RTP timestamps of the current source into the outgoing
/// stream's timeline.
#[derive(Debug, Clone)]
pub struct TsRewriter {
    clock_rate: u32,
    offset: Option<u32>,
    /// Last outgoing timestamp and when its packet arrived.
    last: Option<(u32, Instant)>,
    start: u32,
}

impl TsRewriter {
    /// A rewriter for a media clock of `clock_rate` Hz starting at `start`.
    pub fn new(clock_rate: u32, start: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            offset: None,
            last: None,
            start,
        }
    }

    /// Makes the new source's timestamp `first`, arriving at `arrival`,
    /// continue the outgoing timeline by the real time elapsed since the
    /// last packet written (at least one tick, never backwards).
    pub fn switch_to(&mut self, first: u32, arrival: Instant) {
        let target = match self.last {
            None => self.start,
            Some((ts, at)) => {
                let elapsed = arrival.saturating_duration_since(at);
                ts.wrapping_add(ticks(elapsed, self.clock_rate).max(1))
            }
        };
        self.offset = Some(target.wrapping_sub(first));
    }

    /// The outgoing timestamp of a packet of the current source.
    pub fn rewrite(&mut self, ts: u32, arrival: Instant) -> Option<u32> {
        let out = ts.wrapping_add(self.offset?);
        match self.last {
            // Only move the reference forward (in wrapping order).
            Some((last, _)) if (out.wrapping_sub(last) as i32) < 0 => {}
            _ => self.last = Some((out, arrival)),
        }
        Some(out)
    }
}

fn ticks(d: Duration, clock_rate: u32) -> u32 {
    let t = d.as_micros() * u128::from(clock_rate) / 1_000_000;
    t.min(u128::from(u32::MAX / 2)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_packet_maps_to_start_and_gaps_stay_gaps() {
        let mut s = SeqRewriter::new(1000);
        assert_eq!(s.rewrite(5), None, "nothing before a source is set");
        s.switch_to(70_000);
        assert_eq!(s.rewrite(70_000), Some(1000));
        assert_eq!(s.rewrite(70_001), Some(1001));
        assert_eq!(s.rewrite(70_003), Some(1003), "real loss stays a gap");
        assert_eq!(
            s.rewrite(70_002),
            Some(1002),
            "reordered packet keeps its slot"
        );
        assert_eq!(s.rewrite(69_999), None, "older than the switch point");
    }

    #[test]
    fn switching_source_continues_without_gap() {
        let mut s = SeqRewriter::new(65_530);
        s.switch_to(10);
        for i in 10..20 {
            s.rewrite(i);
        }
        // New source with an unrelated sequence space, across 16-bit wrap.
        s.switch_to(40_000);
        assert_eq!(s.rewrite(40_000), Some(65_540));
        assert_eq!(s.rewrite(40_001), Some(65_541));
        assert_eq!((65_541u64 as u16), 5, "wraps in the 16-bit header");
        s.switch_to(3);
        assert_eq!(s.rewrite(3), Some(65_542));
    }

    #[test]
    fn dropped_packets_leave_no_gap() {
        let mut s = SeqRewriter::new(100);
        s.switch_to(1);
        assert_eq!(s.rewrite(1), Some(100));
        s.drop_packet(2);
        s.drop_packet(3);
        assert_eq!(s.rewrite(4), Some(101));
        assert_eq!(s.rewrite(6), Some(103), "real loss (5) stays a gap");
    }

    /// Found by the `media_payload` fuzz target: a packet that arrives late, after a later one
    /// of a filtered temporal layer closed the gap, was given the number of a packet already
    /// sent (and, at a stream starting at 0, a number below 0: 2^64 - 1).
    #[test]
    fn late_packet_after_a_drop_never_reuses_a_number() {
        let mut s = SeqRewriter::new(100);
        s.switch_to(1);
        assert_eq!(s.rewrite(1), Some(100));
        // 2 is late (reordered); 3 is filtered; 4 closes the gap.
        s.drop_packet(3);
        assert_eq!(s.rewrite(4), Some(102));
        assert_eq!(
            s.rewrite(2),
            Some(101),
            "a late packet takes the slot it left"
        );
        assert_eq!(s.rewrite(3), None, "the dropped packet has no slot");
        assert_eq!(s.rewrite(5), Some(103));

        let mut s = SeqRewriter::new(0);
        s.switch_to(10);
        s.drop_packet(11);
        assert_eq!(s.rewrite(12), Some(1));
        assert_eq!(s.rewrite(10), Some(0), "not 2^64 - 1");
        assert_eq!(s.rewrite(11), None);

        // Older than the stretches kept: not forwarded rather than numbered twice.
        let mut s = SeqRewriter::new(0);
        s.switch_to(0);
        for k in 0..=EARLIER as u64 {
            s.drop_packet(2 * k + 1);
            s.rewrite(2 * k + 2);
        }
        assert_eq!(s.rewrite(0), None);
    }

    #[test]
    fn timestamps_advance_by_real_time_across_switch() {
        let t0 = Instant::now();
        let mut t = TsRewriter::new(90_000, 4_294_960_000);
        t.switch_to(123, t0);
        assert_eq!(t.rewrite(123, t0), Some(4_294_960_000));
        assert_eq!(
            t.rewrite(3123, t0 + Duration::from_millis(33)),
            Some(4_294_963_000)
        );
        // Switch 100 ms later to a source with a far-away timeline.
        let at = t0 + Duration::from_millis(133);
        t.switch_to(9_000_000, at);
        let out = t.rewrite(9_000_000, at).unwrap();
        assert_eq!(
            out,
            4_294_963_000u32.wrapping_add(9_000),
            "100 ms = 9000 ticks, wrapped"
        );
        let next = t
            .rewrite(9_003_000, at + Duration::from_millis(33))
            .unwrap();
        assert_eq!(next.wrapping_sub(out), 3000);
    }

    #[test]
    fn timestamps_never_go_backwards_on_immediate_switch() {
        let t0 = Instant::now();
        let mut t = TsRewriter::new(48_000, 0);
        t.switch_to(500, t0);
        let a = t.rewrite(500, t0).unwrap();
        t.switch_to(1, t0);
        let b = t.rewrite(1, t0).unwrap();
        assert!(b.wrapping_sub(a) as i32 > 0);
    }
}
