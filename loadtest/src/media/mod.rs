//! Synthetic but realistic media sources.
//!
//! Every source is pure: no clock reads, no I/O, deterministic given its seed. A source
//! says when its next packet is due ([`MediaSource::next_due`]) and hands out every
//! packet due by `now` ([`MediaSource::poll`]). Each payload carries a [`Probe`] so a
//! receiver measures loss and latency exactly.
//!
//! * [`OpusSource`]: one packet every 20 ms, 80–160 bytes, 48 kHz clock, audio level.
//! * [`Vp8Source`]: one simulcast layer of VP8 with an RFC 7741 payload descriptor,
//!   temporal layers, periodic and requested keyframes.
//! * [`H264Source`]: one layer of H.264, packetization-mode 1 (STAP-A + FU-A).

use std::time::{Duration, Instant};

mod h264;
mod opus;
mod probe;
mod vp8;

pub use h264::{h264_keyframe_start, H264Source};
pub use opus::{OpusSource, OPUS_PTIME, OPUS_TICKS};
pub use probe::{source_tag, split_source_tag, vp8_descriptor_len, Probe, PROBE_LEN, PROBE_MAGIC};
pub use vp8::{parse_vp8_descriptor, Vp8DescriptorInfo, Vp8Source};

/// Largest RTP payload the video packetizers produce, in bytes.
pub const DEFAULT_MAX_PAYLOAD: usize = 1150;

/// A source that falls further behind than this skips ahead (as a stalled encoder
/// would) instead of bursting out the backlog.
pub const MAX_LAG: Duration = Duration::from_millis(500);

/// One RTP payload produced by a source, with what the RTP header needs.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// When the packet was due (frame capture time for video).
    pub due: Instant,
    /// RTP timestamp (48 kHz for Opus, 90 kHz for video).
    pub rtp_time: u32,
    /// RTP marker bit: last packet of a video frame, start of a talkspurt for audio.
    pub marker: bool,
    /// The packet belongs to a keyframe.
    pub keyframe: bool,
    /// First packet of a frame.
    pub frame_start: bool,
    /// Audio level in -dBov (Opus only), for the audio-level header extension.
    pub audio_level: Option<i8>,
    /// The probe written into the payload.
    pub probe: Probe,
    /// RTP payload (no RTP header).
    pub payload: Vec<u8>,
}

/// Counters a source keeps about what it produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Packets produced.
    pub packets: u64,
    /// Payload bytes produced.
    pub bytes: u64,
    /// Frames produced (packets for audio).
    pub frames: u64,
    /// Keyframes produced.
    pub keyframes: u64,
    /// Keyframes produced because of [`MediaSource::request_keyframe`].
    pub requested_keyframes: u64,
    /// Frames skipped because the source was polled too late (see [`MAX_LAG`]).
    pub skipped_frames: u64,
}

/// A pure packet source.
pub trait MediaSource {
    /// When the next packet is due. Packets due by `now` are returned by [`Self::poll`].
    fn next_due(&self) -> Instant;
    /// The next packet due by `now`, if any. Call repeatedly until `None`.
    fn poll(&mut self, now: Instant) -> Option<MediaPacket>;
    /// Make the next frame a keyframe (no-op for audio).
    fn request_keyframe(&mut self);
    /// Counters.
    fn stats(&self) -> SourceStats;
}

/// Settings of one video layer (one simulcast encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoLayer {
    /// Frame width in pixels.
    pub width: u16,
    /// Frame height in pixels.
    pub height: u16,
    /// Target bitrate in bits per second.
    pub bitrate_bps: u32,
    /// Frames per second.
    pub fps: u32,
    /// Temporal layers: 1, 2 (pattern 0,1) or 3 (pattern 0,2,1,2). H.264 uses 1.
    pub temporal_layers: u8,
    /// Time between periodic keyframes.
    pub keyframe_interval: Duration,
    /// Largest RTP payload in bytes.
    pub max_payload: usize,
}

impl VideoLayer {
    /// A layer with the given size and bitrate, 30 fps, 3 temporal layers, 3 s
    /// keyframe interval.
    pub const fn new(width: u16, height: u16, bitrate_bps: u32) -> Self {
        VideoLayer {
            width,
            height,
            bitrate_bps,
            fps: 30,
            temporal_layers: 3,
            keyframe_interval: Duration::from_secs(3),
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    /// 320x180 at 150 kbps.
    pub const LOW: VideoLayer = VideoLayer::new(320, 180, 150_000);
    /// 640x360 at 500 kbps.
    pub const MEDIUM: VideoLayer = VideoLayer::new(640, 360, 500_000);
    /// 1280x720 at 1.5 Mbps.
    pub const HIGH: VideoLayer = VideoLayer::new(1280, 720, 1_500_000);

    /// Default layers for `n` simulcast encodings, lowest first: the top `n` of
    /// [`Self::LOW`], [`Self::MEDIUM`], [`Self::HIGH`] (a single encoding is MEDIUM).
    pub fn defaults(n: usize) -> Vec<VideoLayer> {
        match n {
            0 | 1 => vec![Self::MEDIUM],
            2 => vec![Self::MEDIUM, Self::HIGH],
            _ => {
                let mut v = vec![Self::LOW, Self::MEDIUM, Self::HIGH];
                // More than three: repeat the top layer.
                while v.len() < n {
                    v.push(Self::HIGH);
                }
                v
            }
        }
    }
}

/// Frame timing shared by the video sources: exact frame times from the frame number,
/// so there is no drift.
#[derive(Debug, Clone)]
pub(crate) struct FrameClock {
    start: Instant,
    fps: u32,
    frame_no: u64,
}

impl FrameClock {
    pub(crate) fn new(start: Instant, fps: u32) -> Self {
        FrameClock {
            start,
            fps: fps.max(1),
            frame_no: 0,
        }
    }

    pub(crate) fn due(&self) -> Instant {
        self.start + self.offset(self.frame_no)
    }

    fn offset(&self, frame_no: u64) -> Duration {
        let nanos = u128::from(frame_no) * 1_000_000_000 / u128::from(self.fps);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// RTP ticks (90 kHz) since start for the current frame.
    pub(crate) fn rtp_ticks(&self) -> u32 {
        (u128::from(self.frame_no) * 90_000 / u128::from(self.fps)) as u32
    }

    pub(crate) fn advance(&mut self) {
        self.frame_no += 1;
    }

    /// Skips frames while the current frame is more than [`MAX_LAG`] behind `now`.
    /// Returns the number of frames skipped.
    pub(crate) fn skip_behind(&mut self, now: Instant) -> u64 {
        let mut skipped = 0;
        while now.saturating_duration_since(self.due()) > MAX_LAG {
            self.frame_no += 1;
            skipped += 1;
        }
        skipped
    }
}

/// Microseconds from `epoch` to `t` (0 if `t` is earlier).
pub(crate) fn micros_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

const fn make_filler() -> [u8; 1500] {
    let mut a = [0u8; 1500];
    let mut x: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < a.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        a[i] = x as u8;
        i += 1;
    }
    a
}

/// Incompressible-looking filler for payload bodies (static: no per-packet RNG cost).
pub(crate) static FILLER: [u8; 1500] = make_filler();

/// Appends `n` filler bytes to `buf`.
pub(crate) fn push_filler(buf: &mut Vec<u8>, mut n: usize) {
    while n > 0 {
        let take = n.min(FILLER.len());
        buf.extend_from_slice(&FILLER[..take]);
        n -= take;
    }
}

/// Splits `total` bytes into `n` chunks as evenly as possible (first chunks larger).
pub(crate) fn balanced_chunks(total: usize, max_chunk: usize) -> impl Iterator<Item = usize> {
    let max_chunk = max_chunk.max(1);
    let n = total.div_ceil(max_chunk).max(1);
    let base = total / n;
    let extra = total % n;
    (0..n).map(move |i| base + usize::from(i < extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_balanced_and_bounded() {
        let v: Vec<usize> = balanced_chunks(2500, 1144).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v.iter().sum::<usize>(), 2500);
        assert!(v.iter().all(|c| *c <= 1144));
        assert!(v.iter().max().unwrap() - v.iter().min().unwrap() <= 1);
        let v: Vec<usize> = balanced_chunks(10, 1144).collect();
        assert_eq!(v, vec![10]);
    }

    #[test]
    fn frame_clock_is_exact() {
        let t0 = Instant::now();
        let mut c = FrameClock::new(t0, 30);
        for _ in 0..30 {
            c.advance();
        }
        assert_eq!(c.due(), t0 + Duration::from_secs(1));
        assert_eq!(c.rtp_ticks(), 90_000);
        let skipped = c.skip_behind(t0 + Duration::from_secs(3));
        assert!(skipped > 0);
        assert!(t0 + Duration::from_secs(3) - c.due() <= MAX_LAG);
    }
}
