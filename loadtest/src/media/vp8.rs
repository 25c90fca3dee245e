//! Synthetic VP8: one simulcast layer with an RFC 7741 payload descriptor.
//!
//! Each packet is `descriptor (6 bytes) | [VP8 payload header] | probe | filler`:
//!
//! * descriptor: `X=1, N, S, PID=0`, then `I=1 L=1 T=1 K=0`, a 15-bit picture id
//!   (`M=1`), `TL0PICIDX`, and `TID | Y | KEYIDX=0`.
//! * payload header (first packet of a frame only): the 3-byte frame tag (`P` bit 0
//!   for keyframes, `show_frame=1`, first partition size), plus on keyframes the start
//!   code `9d 01 2a` and the 14-bit width and height. `str0m::format::detect_vp8_keyframe`
//!   recognises the first packet of each keyframe.
//!
//! Frame sizes follow the layer bitrate: keyframes ~10× a delta frame, temporal layer 0
//! frames larger than upper-layer frames, ±25 % seeded jitter.

use std::collections::VecDeque;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{
    balanced_chunks, micros_since, push_filler, FrameClock, MediaPacket, MediaSource, Probe,
    SourceStats, VideoLayer, PROBE_LEN,
};

/// Descriptor length as written by [`Vp8Source`].
const DESC_LEN: usize = 6;
/// Frame tag length.
const TAG_LEN: usize = 3;
/// Keyframe start code + dimensions.
const KEY_HDR_LEN: usize = 7;
/// A keyframe is this many times a delta frame.
const KEYFRAME_FACTOR: f64 = 10.0;

/// Synthetic VP8 encoder output for one layer.
#[derive(Debug)]
pub struct Vp8Source {
    tag: u32,
    epoch: Instant,
    layer: VideoLayer,
    clock: FrameClock,
    rng: SmallRng,
    rtp_base: u32,
    picture_id: u16,
    tl0_pic_idx: u8,
    pattern_pos: usize,
    synced: [bool; 4],
    index: u64,
    force_keyframe: bool,
    requested: bool,
    last_keyframe: Option<Instant>,
    pending: VecDeque<MediaPacket>,
    stats: SourceStats,
}

impl Vp8Source {
    /// A layer whose first frame (a keyframe) is due at `start`.
    pub fn new(tag: u32, seed: u64, layer: VideoLayer, epoch: Instant, start: Instant) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let rtp_base = rng.random();
        let picture_id = rng.random::<u16>() & 0x7fff;
        let tl0_pic_idx = rng.random();
        Vp8Source {
            tag,
            epoch,
            layer,
            clock: FrameClock::new(start, layer.fps),
            rng,
            rtp_base,
            picture_id,
            tl0_pic_idx,
            pattern_pos: 0,
            synced: [false; 4],
            index: 0,
            force_keyframe: true,
            requested: false,
            last_keyframe: None,
            pending: VecDeque::new(),
            stats: SourceStats::default(),
        }
    }

    /// The layer settings.
    pub fn layer(&self) -> &VideoLayer {
        &self.layer
    }

    fn temporal_id(&self) -> u8 {
        match self.layer.temporal_layers {
            0 | 1 => 0,
            2 => [0, 1][self.pattern_pos % 2],
            _ => [0, 2, 1, 2][self.pattern_pos % 4],
        }
    }

    /// Mean size of a delta frame in bytes so the layer averages its bitrate.
    fn delta_mean(&self) -> f64 {
        let per_frame = f64::from(self.layer.bitrate_bps) / 8.0 / f64::from(self.layer.fps.max(1));
        let frames_per_key =
            (self.layer.keyframe_interval.as_secs_f64() * f64::from(self.layer.fps)).max(1.0);
        per_frame * frames_per_key / (frames_per_key - 1.0 + KEYFRAME_FACTOR)
    }

    fn frame_size(&mut self, keyframe: bool, tid: u8) -> usize {
        let weight = if keyframe {
            KEYFRAME_FACTOR
        } else {
            match (self.layer.temporal_layers, tid) {
                (0 | 1, _) => 1.0,
                (2, 0) => 1.25,
                (2, _) => 0.75,
                (_, 0) => 1.5,
                (_, 1) => 1.0,
                _ => 0.75,
            }
        };
        let jitter = self.rng.random_range(0.75..1.25);
        let size = (self.delta_mean() * weight * jitter) as usize;
        let min = TAG_LEN + if keyframe { KEY_HDR_LEN } else { 0 } + PROBE_LEN;
        size.max(min)
    }

    fn make_frame(&mut self, now: Instant) {
        let due = self.clock.due();
        let interval_due = self
            .last_keyframe
            .is_none_or(|t| due.saturating_duration_since(t) >= self.layer.keyframe_interval);
        let keyframe = self.force_keyframe || interval_due;
        if keyframe {
            if self.requested {
                self.stats.requested_keyframes += 1;
            }
            self.force_keyframe = false;
            self.requested = false;
            self.last_keyframe = Some(due);
            self.pattern_pos = 0;
            self.synced = [false; 4];
            self.stats.keyframes += 1;
        }
        let tid = self.temporal_id();
        if tid == 0 {
            self.tl0_pic_idx = self.tl0_pic_idx.wrapping_add(1);
        }
        let layer_sync = keyframe || (tid > 0 && !self.synced[usize::from(tid)]);
        self.synced[usize::from(tid)] = true;
        // The top temporal layer is never referenced.
        let non_ref = self.layer.temporal_layers > 1 && tid + 1 == self.layer.temporal_layers;

        let size = self.frame_size(keyframe, tid);
        let rtp_time = self.rtp_base.wrapping_add(self.clock.rtp_ticks());
        let sent_micros = micros_since(self.epoch, now);
        let max_data = self
            .layer
            .max_payload
            .saturating_sub(DESC_LEN)
            .max(PROBE_LEN + 16);
        let header_len = TAG_LEN + if keyframe { KEY_HDR_LEN } else { 0 };
        let chunks: Vec<usize> = balanced_chunks(size, max_data).collect();
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let first = i == 0;
            let mut payload = Vec::with_capacity(DESC_LEN + chunk.max(PROBE_LEN + header_len));
            // Payload descriptor.
            let mut b0 = 0x80u8; // X
            if non_ref {
                b0 |= 0x20; // N
            }
            if first {
                b0 |= 0x10; // S, PID = 0
            }
            payload.push(b0);
            payload.push(0xe0); // I L T
            payload.push(0x80 | ((self.picture_id >> 8) as u8 & 0x7f));
            payload.push(self.picture_id as u8);
            payload.push(self.tl0_pic_idx);
            payload.push((tid << 6) | (u8::from(layer_sync) << 5));
            let mut used = 0;
            if first {
                // Frame tag: P, version 0, show_frame, first partition size.
                let first_part = ((size / 8) as u32) & 0x7_ffff;
                let tag = u32::from(!keyframe) | (1 << 4) | (first_part << 5);
                payload.extend_from_slice(&tag.to_le_bytes()[..3]);
                if keyframe {
                    payload.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                    payload.extend_from_slice(&(self.layer.width & 0x3fff).to_le_bytes());
                    payload.extend_from_slice(&(self.layer.height & 0x3fff).to_le_bytes());
                }
                used = header_len;
            }
            let probe = Probe {
                source_tag: self.tag,
                packet_index: self.index,
                sent_micros,
            };
            let at = payload.len();
            payload.resize(at + PROBE_LEN, 0);
            probe.write(&mut payload[at..]);
            used += PROBE_LEN;
            push_filler(&mut payload, chunk.saturating_sub(used));
            self.index += 1;
            self.stats.packets += 1;
            self.stats.bytes += payload.len() as u64;
            self.pending.push_back(MediaPacket {
                due,
                rtp_time,
                marker: i + 1 == n,
                keyframe,
                frame_start: first,
                audio_level: None,
                probe,
                payload,
            });
        }
        self.stats.frames += 1;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.pattern_pos += 1;
        self.clock.advance();
    }
}

impl MediaSource for Vp8Source {
    fn next_due(&self) -> Instant {
        match self.pending.front() {
            Some(p) => p.due,
            None => self.clock.due(),
        }
    }

    fn poll(&mut self, now: Instant) -> Option<MediaPacket> {
        if self.pending.is_empty() && self.clock.due() <= now {
            let skipped = self.clock.skip_behind(now);
            if skipped > 0 {
                self.stats.skipped_frames += skipped;
                // The decoder state is gone after a gap: restart with a keyframe.
                self.force_keyframe = true;
            }
            self.make_frame(now);
        }
        match self.pending.front() {
            Some(p) if p.due <= now => self.pending.pop_front(),
            _ => None,
        }
    }

    fn request_keyframe(&mut self) {
        self.force_keyframe = true;
        self.requested = true;
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// Fields of a VP8 payload descriptor (RFC 7741 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8DescriptorInfo {
    /// N: non-reference frame.
    pub non_reference: bool,
    /// S: start of a VP8 partition.
    pub start: bool,
    /// PID: partition index.
    pub partition: u8,
    /// Picture id (7 or 15 bits), if present.
    pub picture_id: Option<u16>,
    /// TL0PICIDX, if present.
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer id, if present.
    pub tid: Option<u8>,
    /// Y: layer sync.
    pub layer_sync: bool,
    /// KEYIDX, if present.
    pub key_idx: Option<u8>,
    /// Descriptor length in bytes.
    pub len: usize,
}

/// Parses a VP8 payload descriptor (str0m has no accessor for the temporal layer id).
pub fn parse_vp8_descriptor(payload: &[u8]) -> Option<Vp8DescriptorInfo> {
    let b0 = *payload.first()?;
    let mut d = Vp8DescriptorInfo {
        non_reference: b0 & 0x20 != 0,
        start: b0 & 0x10 != 0,
        partition: b0 & 0x07,
        ..Default::default()
    };
    let mut idx = 1;
    if b0 & 0x80 != 0 {
        let ext = *payload.get(idx)?;
        idx += 1;
        if ext & 0x80 != 0 {
            let p0 = *payload.get(idx)?;
            if p0 & 0x80 != 0 {
                let p1 = *payload.get(idx + 1)?;
                d.picture_id = Some((u16::from(p0 & 0x7f) << 8) | u16::from(p1));
                idx += 2;
            } else {
                d.picture_id = Some(u16::from(p0));
                idx += 1;
            }
        }
        if ext & 0x40 != 0 {
            d.tl0_pic_idx = Some(*payload.get(idx)?);
            idx += 1;
        }
        if ext & 0x30 != 0 {
            let b = *payload.get(idx)?;
            if ext & 0x20 != 0 {
                d.tid = Some(b >> 6);
                d.layer_sync = b & 0x20 != 0;
            }
            if ext & 0x10 != 0 {
                d.key_idx = Some(b & 0x1f);
            }
            idx += 1;
        }
    }
    d.len = idx;
    Some(d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use str0m::format::detect_vp8_keyframe;

    fn run(layer: VideoLayer, secs: u64) -> (Vp8Source, Vec<MediaPacket>) {
        let t0 = Instant::now();
        let mut s = Vp8Source::new(0x100, 42, layer, t0, t0);
        let end = t0 + Duration::from_secs(secs);
        let mut now = t0;
        let mut out = vec![];
        while now < end {
            while let Some(p) = s.poll(now) {
                out.push(p);
            }
            now = s.next_due();
        }
        (s, out)
    }

    #[test]
    fn keyframes_detected_by_str0m() {
        let (s, pkts) = run(VideoLayer::HIGH, 7);
        let starts: Vec<&MediaPacket> = pkts.iter().filter(|p| p.frame_start).collect();
        // Exactly the first packet of each keyframe is detected.
        for p in &pkts {
            assert_eq!(
                detect_vp8_keyframe(&p.payload),
                p.keyframe && p.frame_start,
                "detect mismatch"
            );
        }
        assert!(pkts[0].keyframe && pkts[0].frame_start);
        // 7 s with a 3 s interval: keyframes at 0, 3, 6.
        assert_eq!(s.stats().keyframes, 3);
        assert_eq!(starts.len() as u64, s.stats().frames);
        // The keyframe header carries the dimensions.
        let k = &pkts[0].payload;
        assert_eq!(&k[DESC_LEN + 3..DESC_LEN + 6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([k[DESC_LEN + 6], k[DESC_LEN + 7]]), 1280);
        assert_eq!(u16::from_le_bytes([k[DESC_LEN + 8], k[DESC_LEN + 9]]), 720);
    }

    #[test]
    fn descriptor_fields_and_str0m_parser_agree() {
        let (_, pkts) = run(VideoLayer::MEDIUM, 2);
        let mut last_pid: Option<u16> = None;
        let mut tids = vec![];
        for p in &pkts {
            assert!(p.payload.len() <= VideoLayer::MEDIUM.max_payload);
            let d = parse_vp8_descriptor(&p.payload).unwrap();
            assert_eq!(d.len, DESC_LEN);
            assert_eq!(d.start, p.frame_start);
            let s = str0m::rtp::Vp8Descriptor::parse(&p.payload).unwrap();
            assert_eq!(s.picture_id(), d.picture_id);
            assert_eq!(s.tl0_pic_idx(), d.tl0_pic_idx);
            assert_eq!(Probe::find_vp8(&p.payload), Some(p.probe));
            assert_eq!(Probe::find(&p.payload), Some(p.probe));
            if p.frame_start {
                let pid = d.picture_id.unwrap();
                if let Some(l) = last_pid {
                    assert_eq!(pid, (l + 1) & 0x7fff);
                }
                last_pid = Some(pid);
                tids.push(d.tid.unwrap());
                // The top temporal layer is non-reference.
                assert_eq!(d.non_reference, d.tid == Some(2));
            }
        }
        assert_eq!(&tids[..8], &[0, 2, 1, 2, 0, 2, 1, 2]);
    }

    #[test]
    fn bitrate_and_marker() {
        let (s, pkts) = run(VideoLayer::HIGH, 9);
        let bits = s.stats().bytes as f64 * 8.0 / 9.0;
        assert!((1_200_000.0..1_800_000.0).contains(&bits), "bitrate {bits}");
        // Marker on the last packet of each frame, timestamps +3000 per frame.
        let mut frame_ts = vec![];
        for w in pkts.windows(2) {
            assert_eq!(w[0].marker, w[1].frame_start);
            if w[1].frame_start {
                frame_ts.push(w[1].rtp_time.wrapping_sub(w[0].rtp_time));
            } else {
                assert_eq!(w[0].rtp_time, w[1].rtp_time);
            }
        }
        assert!(frame_ts.iter().all(|d| *d == 3000));
        assert!(pkts.last().unwrap().marker);
        // Probe indexes are contiguous.
        for (i, p) in pkts.iter().enumerate() {
            assert_eq!(p.probe.packet_index, i as u64);
        }
    }

    #[test]
    fn keyframe_on_request() {
        let t0 = Instant::now();
        let mut s = Vp8Source::new(1, 1, VideoLayer::LOW, t0, t0);
        let mut now = t0;
        let mut n = 0;
        while n < 10 {
            while let Some(p) = s.poll(now) {
                if p.frame_start {
                    n += 1;
                }
            }
            now = s.next_due();
        }
        s.request_keyframe();
        let p = loop {
            if let Some(p) = s.poll(now) {
                break p;
            }
            now = s.next_due();
        };
        assert!(p.keyframe && detect_vp8_keyframe(&p.payload));
        assert_eq!(s.stats().requested_keyframes, 1);
        assert_eq!(s.stats().keyframes, 2);
    }

    #[test]
    fn late_poll_skips_and_restarts_with_keyframe() {
        let t0 = Instant::now();
        let mut s = Vp8Source::new(1, 1, VideoLayer::LOW, t0, t0);
        while s.poll(t0).is_some() {}
        let late = t0 + Duration::from_secs(2);
        let p = s.poll(late).unwrap();
        assert!(p.keyframe);
        assert!(s.stats().skipped_frames > 0);
    }
}
