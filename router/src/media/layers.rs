//! What a publisher sends on each simulcast layer: rate, resolution and
//! whether it is sending at all, measured at the publisher's worker.

use super::select::LayerState;
use std::time::{Duration, Instant};

/// A layer with no packet for this long is not being sent.
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(600);
/// Rate measurement window.
const WINDOW: Duration = Duration::from_millis(1000);
const BUCKETS: usize = 10;

#[derive(Debug, Clone)]
struct Meter {
    buckets: [u64; BUCKETS],
    bucket_start: Option<Instant>,
    current: usize,
    first_packet: Option<Instant>,
    last_packet: Option<Instant>,
    width: u16,
    height: u16,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            bucket_start: None,
            current: 0,
            first_packet: None,
            last_packet: None,
            width: 0,
            height: 0,
        }
    }
}

impl Meter {
    fn advance(&mut self, now: Instant) {
        let step = WINDOW / BUCKETS as u32;
        let Some(mut start) = self.bucket_start else {
            self.bucket_start = Some(now);
            return;
        };
        let mut n = 0;
        while now.saturating_duration_since(start) >= step && n <= BUCKETS {
            start += step;
            self.current = (self.current + 1) % BUCKETS;
            self.buckets[self.current] = 0;
            n += 1;
        }
        if n > BUCKETS {
            start = now;
        }
        self.bucket_start = Some(start);
    }

    /// Bits per second over the window; 0 (unknown) until a fifth of it has passed.
    fn rate(&self, now: Instant) -> u64 {
        let Some(first) = self.first_packet else {
            return 0;
        };
        let span = now.saturating_duration_since(first).min(WINDOW);
        if span < WINDOW / 5 {
            return 0;
        }
        self.buckets.iter().sum::<u64>() * 8 * 1000 / span.as_millis().max(1) as u64
    }
}

/// Per-layer meters of one published video track.
#[derive(Debug, Clone)]
pub struct LayerMeters {
    meters: Vec<Meter>,
}

impl LayerMeters {
    /// Meters for `n` layers (1 without simulcast).
    pub fn new(n: usize) -> Self {
        Self {
            meters: vec![Meter::default(); n.max(1)],
        }
    }

    /// Accounts one received packet.
    pub fn on_packet(
        &mut self,
        now: Instant,
        layer: u8,
        bytes: usize,
        resolution: Option<(u16, u16)>,
    ) {
        let Some(m) = self.meters.get_mut(usize::from(layer)) else {
            return;
        };
        m.advance(now);
        m.buckets[m.current] += bytes as u64;
        m.last_packet = Some(now);
        m.first_packet.get_or_insert(now);
        if let Some((w, h)) = resolution {
            m.width = w;
            m.height = h;
        }
    }

    /// The layers' state now.
    pub fn snapshot(&mut self, now: Instant) -> Vec<LayerState> {
        self.meters
            .iter_mut()
            .map(|m| {
                m.advance(now);
                LayerState {
                    active: m
                        .last_packet
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_TIMEOUT),
                    bitrate: m.rate(now),
                    width: m.width,
                    height: m.height,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_rate_activity_and_size() {
        let t0 = Instant::now();
        let mut m = LayerMeters::new(2);
        // 1000-byte packets every 10 ms on layer 1: 800 kbps.
        for i in 0..300 {
            let res = (i == 0).then_some((640, 360));
            m.on_packet(t0 + Duration::from_millis(10 * i), 1, 1000, res);
        }
        let s = m.snapshot(t0 + Duration::from_millis(3000));
        assert!(!s[0].active);
        assert!(s[1].active);
        assert!(
            (700_000..=900_000).contains(&s[1].bitrate),
            "{}",
            s[1].bitrate
        );
        assert_eq!((s[1].width, s[1].height), (640, 360));
        let later = m.snapshot(t0 + Duration::from_millis(5000));
        assert!(!later[1].active, "stopped layer times out");
        assert_eq!(later[1].bitrate, 0);
    }
}
