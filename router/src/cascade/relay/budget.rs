//! The link budget: how fast a cascade link may send, decided from a configured link rate
//! (`cascade.link_rate_mbps`) instead of from loss. Sans-IO: `now` and datagram sizes in,
//! admit-or-drop and window sizes out.
//!
//! Why: relayed media is real-time and arrives at the rate its publishers send; loss on a
//! long-distance link is mostly random, not congestion. A loss-driven controller (NewReno,
//! Cubic) halves its window on every loss, so at 2 % random loss and tens of milliseconds of
//! round trip it allows less than a video layer: datagrams then queue for seconds and NACK
//! repair resends into the same window (issue 14). Instead:
//!
//! - [`LinkRate::window`] is the QUIC congestion window: a few round trips' worth of the link
//!   rate, whatever is lost (quinn's pacer spreads it over the round trip);
//! - [`Budget`] is a token bucket at the link rate with a short depth ([`BURST`]): a datagram
//!   beyond it is dropped (and counted) at once, never queued behind the link's rate, so what
//!   is sent is never late by more than the burst.

use std::time::{Duration, Instant};

/// Bytes a relayed datagram costs on the wire beyond its payload: IP and UDP headers, the QUIC
/// short header, the DATAGRAM frame header and the AEAD tag (a slight overestimate).
pub const WIRE_OVERHEAD: usize = 60;
/// Depth of the budget: the link may send this much of its rate at once (a keyframe), and a
/// datagram is never held back longer than this.
pub const BURST: Duration = Duration::from_millis(100);
/// The congestion window is this many round trips of the link rate: room for the pacer's
/// bursts and for packets in flight that are lost but not yet declared lost.
pub const WINDOW_RTTS: u64 = 2;
/// The round trip assumed below this (loopback links): the window stays a useful size.
pub const MIN_RTT: Duration = Duration::from_millis(10);
/// The round trip assumed above this (an estimate inflated by a stall).
pub const MAX_RTT: Duration = Duration::from_secs(1);
/// The smallest congestion window (the control stream needs room even on a slow link).
pub const MIN_WINDOW: u64 = 64 * 1024;
/// quinn's datagram send buffer holds at most this long of the link rate...
pub const SEND_BUFFER_TIME: Duration = Duration::from_millis(50);
/// ...and at least this many bytes (a few full-size datagrams).
pub const MIN_SEND_BUFFER: usize = 16 * 1024;

/// A link rate in bits per second (at least 1 Mbit/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkRate(u64);

impl LinkRate {
    /// `mbps` megabits per second (0 counts as 1).
    pub const fn from_mbps(mbps: u64) -> Self {
        let mbps = if mbps == 0 { 1 } else { mbps };
        Self(mbps.saturating_mul(1_000_000))
    }

    /// Bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.0
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }

    /// Bytes the link carries in `d` at this rate.
    pub fn bytes_in(self, d: Duration) -> u64 {
        let b = u128::from(self.bytes_per_sec()) * d.as_nanos() / 1_000_000_000;
        u64::try_from(b).unwrap_or(u64::MAX)
    }

    /// The QUIC congestion window for a smoothed round trip of `rtt`: [`WINDOW_RTTS`] round
    /// trips (clamped to [`MIN_RTT`]..=[`MAX_RTT`]) of the rate, at least [`MIN_WINDOW`]. Loss
    /// does not enter.
    pub fn window(self, rtt: Duration) -> u64 {
        let rtt = rtt.clamp(MIN_RTT, MAX_RTT);
        self.bytes_in(rtt)
            .saturating_mul(WINDOW_RTTS)
            .max(MIN_WINDOW)
    }

    /// The size of quinn's datagram send buffer: [`SEND_BUFFER_TIME`] of the rate, at least
    /// [`MIN_SEND_BUFFER`]. quinn drops the oldest datagram beyond it.
    pub fn send_buffer(self) -> usize {
        usize::try_from(self.bytes_in(SEND_BUFFER_TIME))
            .unwrap_or(usize::MAX)
            .max(MIN_SEND_BUFFER)
    }
}

/// What the budget counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// Datagrams admitted.
    pub admitted: u64,
    /// Datagrams dropped: the budget was spent.
    pub dropped: u64,
    /// Bytes of those.
    pub dropped_bytes: u64,
}

/// Tokens scaled by 10^9 (byte-nanoseconds per second): refills are exact integers.
const SCALE: u128 = 1_000_000_000;

/// A token bucket at the link rate, [`BURST`] deep. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Budget {
    rate: LinkRate,
    /// Tokens in bytes × [`SCALE`].
    tokens: u128,
    depth: u128,
    last: Option<Instant>,
    stats: BudgetStats,
}

impl Budget {
    /// A full budget at `rate`, [`BURST`] deep.
    pub fn new(rate: LinkRate) -> Self {
        Self::with_depth(rate, BURST)
    }

    /// A full budget at `rate`, `depth` deep.
    pub fn with_depth(rate: LinkRate, depth: Duration) -> Self {
        let depth = u128::from(rate.bytes_per_sec()) * depth.as_nanos();
        Self {
            rate,
            tokens: depth,
            depth,
            last: None,
            stats: BudgetStats::default(),
        }
    }

    /// The rate.
    pub fn rate(&self) -> LinkRate {
        self.rate
    }

    /// Whether a datagram of `len` payload bytes may go now (it then spends its bytes on the
    /// wire, [`WIRE_OVERHEAD`] included); if not, it is counted dropped.
    pub fn admit(&mut self, now: Instant, len: usize) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let refill = elapsed.saturating_mul(u128::from(self.rate.bytes_per_sec()));
            self.tokens = self.tokens.saturating_add(refill).min(self.depth);
        }
        // Time never runs backwards for the bucket.
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
        let wire = len.saturating_add(WIRE_OVERHEAD) as u128;
        let cost = wire * SCALE;
        if self.tokens >= cost {
            self.tokens -= cost;
            self.stats.admitted += 1;
            true
        } else {
            self.stats.dropped += 1;
            self.stats.dropped_bytes += len as u64;
            false
        }
    }

    /// Counters.
    pub fn stats(&self) -> BudgetStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_window_follows_the_rate_and_the_round_trip_never_the_loss() {
        let r = LinkRate::from_mbps(100);
        assert_eq!(r.bytes_per_sec(), 12_500_000);
        // 2 × 12.5 MB/s × 60 ms.
        assert_eq!(r.window(60 * MS), 1_500_000);
        assert_eq!(r.window(120 * MS), 3_000_000);
        // Clamped round trips.
        assert_eq!(r.window(Duration::ZERO), r.window(MIN_RTT));
        assert_eq!(r.window(Duration::from_secs(30)), r.window(MAX_RTT));
        // A slow link keeps room for the control stream.
        assert_eq!(LinkRate::from_mbps(1).window(MIN_RTT), MIN_WINDOW);
        assert_eq!(LinkRate::from_mbps(0), LinkRate::from_mbps(1));
    }

    #[test]
    fn the_send_buffer_is_a_short_time_of_the_rate() {
        assert_eq!(LinkRate::from_mbps(100).send_buffer(), 625_000);
        assert_eq!(LinkRate::from_mbps(1).send_buffer(), MIN_SEND_BUFFER);
    }

    #[test]
    fn a_steady_stream_below_the_rate_is_never_dropped() {
        // 10 Mbit/s; 1.5 Mbit/s of 1,140-byte datagrams (~160/s) for 10 s.
        let mut b = Budget::new(LinkRate::from_mbps(10));
        let t0 = Instant::now();
        for i in 0..1600u64 {
            assert!(b.admit(t0 + Duration::from_micros(i * 6_250), 1140));
        }
        assert_eq!(b.stats().admitted, 1600);
        assert_eq!(b.stats().dropped, 0);
    }

    #[test]
    fn a_burst_within_the_depth_passes_and_beyond_it_is_dropped() {
        // 8 Mbit/s = 1 MB/s; 100 ms deep = 100,000 bytes = 83 datagrams of 1,140 + 60.
        let mut b = Budget::new(LinkRate::from_mbps(8));
        let t0 = Instant::now();
        let passed = (0..200).filter(|_| b.admit(t0, 1140)).count();
        assert_eq!(passed, 83);
        assert_eq!(b.stats().dropped, 117);
        assert_eq!(b.stats().dropped_bytes, 117 * 1140);
        // 12 ms later: 12,000 bytes back, 10 datagrams.
        let passed = (0..200).filter(|_| b.admit(t0 + 12 * MS, 1140)).count();
        assert_eq!(passed, 10);
        // After a long pause the bucket is full again, no fuller.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..200).filter(|_| b.admit(later, 1140)).count(), 83);
    }

    #[test]
    fn over_time_the_admitted_rate_is_the_link_rate() {
        // Offer 3 MB/s to a 1 MB/s budget for 5 s, one datagram per 400 µs.
        let mut b = Budget::with_depth(LinkRate::from_mbps(8), 20 * MS);
        let t0 = Instant::now();
        let mut bytes = 0u64;
        for i in 0..12_500u64 {
            if b.admit(t0 + Duration::from_micros(i * 400), 1140) {
                bytes += 1200;
            }
        }
        // ~5 s × 1 MB/s plus the initial depth (20 kB), to one datagram.
        assert!((5_018_000..=5_020_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let mut b = Budget::with_depth(LinkRate::from_mbps(8), MS);
        let t0 = Instant::now() + Duration::from_secs(1);
        // 1,000 bytes deep: empty it.
        assert!(b.admit(t0, 900));
        assert!(!b.admit(t0, 900));
        assert!(!b.admit(t0 - 5 * MS, 900));
        assert!(!b.admit(t0, 900), "no refill from the step back");
        assert!(b.admit(t0 + MS, 900));
    }
}
