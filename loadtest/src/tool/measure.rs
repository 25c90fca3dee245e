//! The measurement maths: freezes, layer switches, percentiles, rates and CPU per
//! packet, medians over repeated runs. Pure functions and small state machines.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A gap between two video frames longer than this is a freeze.
pub(crate) const FREEZE_GAP: Duration = Duration::from_millis(500);

/// Largest latency the histograms hold, in microseconds (larger values saturate).
const LATENCY_MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant figures.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5), so construction cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds")
}

/// Counts freezes: gaps between consecutive frames longer than [`FREEZE_GAP`].
#[derive(Debug, Clone, Default)]
pub(crate) struct FreezeTracker {
    last: Option<Instant>,
    /// Frames seen.
    pub frames: u64,
    /// Freezes.
    pub freezes: u64,
    /// Time spent frozen (the part of each gap beyond nothing: the whole gap).
    pub frozen: Duration,
    /// Longest gap between frames.
    pub longest_gap: Duration,
}

impl FreezeTracker {
    /// A frame was complete at `at`.
    pub(crate) fn on_frame(&mut self, at: Instant) {
        if let Some(last) = self.last {
            self.gap(at.saturating_duration_since(last));
        }
        self.last = Some(at.max(self.last.unwrap_or(at)));
        self.frames += 1;
    }

    fn gap(&mut self, gap: Duration) {
        self.longest_gap = self.longest_gap.max(gap);
        if gap > FREEZE_GAP {
            self.freezes += 1;
            self.frozen += gap;
        }
    }

    /// The run ended at `end`: a stream stalled since its last frame counts as frozen.
    /// Call once.
    pub(crate) fn finish(&mut self, end: Instant) {
        if let Some(last) = self.last {
            let gap = end.saturating_duration_since(last);
            if gap > FREEZE_GAP {
                self.gap(gap);
            }
        }
    }
}

/// Counts changes of the layer a subscriber receives on one track.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LayerTracker {
    /// Layer of the latest packet.
    pub current: Option<u8>,
    /// Changes after the first packet.
    pub switches: u64,
}

impl LayerTracker {
    /// A packet of `layer` arrived.
    pub(crate) fn on_packet(&mut self, layer: u8) {
        if let Some(c) = self.current {
            if c != layer {
                self.switches += 1;
            }
        }
        self.current = Some(layer);
    }
}

/// Loss as a receiver sees it: gaps in the RTP sequence numbers the SFU writes
/// (extended, RTX already unwrapped and deduplicated by str0m). An SFU renumbers
/// what it forwards, so layer switches and dropped temporal layers leave no gaps:
/// what remains is loss after NACK repair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeqLoss {
    first: Option<u64>,
    highest: u64,
    /// Packets received.
    pub received: u64,
}

impl SeqLoss {
    /// A packet with extended sequence number `seq` arrived.
    pub(crate) fn on_packet(&mut self, seq: u64) {
        match self.first {
            None => {
                self.first = Some(seq);
                self.highest = seq;
            }
            Some(f) => {
                self.first = Some(f.min(seq));
                self.highest = self.highest.max(seq);
            }
        }
        self.received += 1;
    }

    /// Packets expected: first to highest sequence number.
    pub(crate) fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }

    /// Packets missing (never negative: duplicates are not expected).
    pub(crate) fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// Drops counted by the kernel for UDP sockets bound to `ports` (the `drops` column
/// of `/proc/net/udp` text): datagrams that arrived while a socket buffer was full.
pub(crate) fn udp_socket_drops(proc_net_udp: &str, ports: &std::collections::HashSet<u16>) -> u64 {
    proc_net_udp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            if !ports.contains(&port) {
                return None;
            }
            cols.last()?.parse::<u64>().ok()
        })
        .sum()
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of a microsecond histogram.
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Percentiles of a list of durations (join times and the like; small lists).
pub(crate) fn percentiles_of(values: &[Duration]) -> Percentiles {
    let mut h = latency_histogram();
    for v in values {
        h.saturating_record(u64::try_from(v.as_micros()).unwrap_or(u64::MAX).max(1));
    }
    Percentiles::of(&h)
}

/// Bits per second of `bytes` over `secs` (0 for an empty interval).
pub(crate) fn bps(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs
    }
}

/// `part / whole` as a fraction (0 when `whole` is 0).
pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// CPU microseconds per packet, `None` without packets.
pub(crate) fn cpu_us_per_packet(cpu: Duration, packets: u64) -> Option<f64> {
    (packets > 0).then(|| cpu.as_secs_f64() * 1e6 / packets as f64)
}

/// Median and spread (min, max) of some figures; `None` if empty or all missing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Figures.
    pub n: usize,
}

/// The median and spread of the finite values.
pub(crate) fn spread(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezes_are_gaps_over_500ms() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut f = FreezeTracker::default();
        for m in (0..1000).step_by(33) {
            f.on_frame(ms(m));
        }
        assert_eq!(f.freezes, 0);
        f.on_frame(ms(990 + 500)); // exactly 500 ms after 990: not a freeze
        assert_eq!(f.freezes, 0);
        f.on_frame(ms(1490 + 800));
        assert_eq!(f.freezes, 1);
        assert_eq!(f.frozen, Duration::from_millis(800));
        assert_eq!(f.longest_gap, Duration::from_millis(800));
        // Stalled at the end.
        f.finish(ms(2290 + 2000));
        assert_eq!(f.freezes, 2);
        assert_eq!(f.frozen, Duration::from_millis(2800));
        // Out-of-order timestamps do not count as negative gaps.
        let mut g = FreezeTracker::default();
        g.on_frame(ms(100));
        g.on_frame(ms(50));
        assert_eq!(g.freezes, 0);
        assert_eq!(g.frames, 2);
    }

    #[test]
    fn seq_loss_tolerates_reordering() {
        let mut l = SeqLoss::default();
        assert_eq!((l.expected(), l.lost()), (0, 0));
        for s in [100, 101, 103, 104, 102, 107] {
            l.on_packet(s);
        }
        // 100..=107 expected, 105 and 106 missing.
        assert_eq!((l.expected(), l.received, l.lost()), (8, 6, 2));
        l.on_packet(99); // a late retransmission below the first
        assert_eq!((l.expected(), l.lost()), (9, 2));
    }

    #[test]
    fn socket_drops_by_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
                    1: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0000000000000000 5
                    2: 0100007F:1F91 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0000000000000000 7
                    3: 0100007F:0050 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0000000000000000 100
";
        let ports = [0x1f90u16, 0x1f91].into_iter().collect();
        assert_eq!(udp_socket_drops(text, &ports), 12);
    }

    #[test]
    fn layer_switches() {
        let mut l = LayerTracker::default();
        for layer in [0, 0, 2, 2, 2, 1, 1, 2] {
            l.on_packet(layer);
        }
        assert_eq!(l.switches, 3);
        assert_eq!(l.current, Some(2));
    }

    #[test]
    fn percentiles_of_known_values() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1..=1000 ms
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert!((p.mean_ms - 500.5).abs() < 1.0, "{p:?}");
        assert_eq!(
            Percentiles::of(&latency_histogram()),
            Percentiles::default()
        );
        let j = percentiles_of(&[Duration::from_millis(10), Duration::from_millis(30)]);
        assert_eq!(j.count, 2);
        assert!((j.max_ms - 30.0).abs() < 0.1);
    }

    #[test]
    fn rates_and_cpu() {
        assert_eq!(bps(1000, 2.0), 4000.0);
        assert_eq!(bps(1000, 0.0), 0.0);
        assert_eq!(ratio(1, 4), 0.25);
        assert_eq!(ratio(1, 0), 0.0);
        assert_eq!(cpu_us_per_packet(Duration::from_millis(3), 1000), Some(3.0));
        assert_eq!(cpu_us_per_packet(Duration::from_millis(3), 0), None);
    }

    #[test]
    fn medians_and_spread() {
        let s = spread([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = spread([4.0, 1.0, f64::NAN, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(s.n, 4);
        assert!(spread([]).is_none());
    }
}
