//! Synthetic H.264, packetization-mode 1, single layer (constrained baseline).
//!
//! * Keyframe: one STAP-A packet aggregating SPS, PPS and a `user_data_unregistered`
//!   SEI that carries the probe, followed by the IDR slice as one NAL unit packet or
//!   FU-A fragments.
//! * Delta frame: a non-IDR slice (NAL type 1), single NAL unit packet or FU-A.
//!
//! Every packet carries a probe: after the NAL header (single NAL unit), after the FU
//! indicator + FU header (FU-A), inside the SEI (STAP-A). The SPS encodes the layer's
//! width and height. Slice bodies are filler, not decodable.
//!
//! `str0m::format::detect_h264_keyframe` is true for the IDR slice packet (or its FU-A
//! start fragment), not for the STAP-A (SPS, PPS) packet that precedes it with the same
//! RTP timestamp, as with browsers.

use std::collections::VecDeque;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{
    balanced_chunks, micros_since, push_filler, FrameClock, MediaPacket, MediaSource, Probe,
    SourceStats, VideoLayer, PROBE_LEN,
};

/// NAL unit type of a non-IDR slice.
pub(crate) const NAL_SLICE: u8 = 1;
/// NAL unit type of an IDR slice.
pub(crate) const NAL_IDR: u8 = 5;
/// NAL unit type of SEI.
pub(crate) const NAL_SEI: u8 = 6;
/// NAL unit type of SPS.
pub(crate) const NAL_SPS: u8 = 7;
/// NAL unit type of PPS.
pub(crate) const NAL_PPS: u8 = 8;
/// STAP-A packet type.
pub(crate) const STAP_A: u8 = 24;
/// FU-A packet type.
pub(crate) const FU_A: u8 = 28;

/// Offset of the probe inside the SEI NAL unit: NAL header, payload type (5),
/// payload size, 16-byte UUID.
pub(crate) const SEI_PROBE_OFFSET: usize = 1 + 1 + 1 + 16;

/// UUID of the probe SEI (`user_data_unregistered`).
const SEI_UUID: [u8; 16] = *b"kaskade-probe-v1";

const KEYFRAME_FACTOR: f64 = 10.0;

/// Synthetic H.264 encoder output for one layer.
#[derive(Debug)]
pub struct H264Source {
    tag: u32,
    epoch: Instant,
    layer: VideoLayer,
    clock: FrameClock,
    rng: SmallRng,
    rtp_base: u32,
    sps: Vec<u8>,
    pps: Vec<u8>,
    index: u64,
    force_keyframe: bool,
    requested: bool,
    last_keyframe: Option<Instant>,
    pending: VecDeque<MediaPacket>,
    stats: SourceStats,
}

impl H264Source {
    /// A layer whose first frame (a keyframe) is due at `start`.
    pub fn new(tag: u32, seed: u64, layer: VideoLayer, epoch: Instant, start: Instant) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let rtp_base = rng.random();
        H264Source {
            tag,
            epoch,
            layer,
            clock: FrameClock::new(start, layer.fps),
            rng,
            rtp_base,
            sps: make_sps(layer.width, layer.height),
            pps: make_pps(),
            index: 0,
            force_keyframe: true,
            requested: false,
            last_keyframe: None,
            pending: VecDeque::new(),
            stats: SourceStats::default(),
        }
    }

    /// The SPS NAL unit (with header) this source sends.
    pub fn sps(&self) -> &[u8] {
        &self.sps
    }

    fn delta_mean(&self) -> f64 {
        let per_frame = f64::from(self.layer.bitrate_bps) / 8.0 / f64::from(self.layer.fps.max(1));
        let frames_per_key =
            (self.layer.keyframe_interval.as_secs_f64() * f64::from(self.layer.fps)).max(1.0);
        per_frame * frames_per_key / (frames_per_key - 1.0 + KEYFRAME_FACTOR)
    }

    fn next_probe(&mut self, sent_micros: u64) -> Probe {
        let p = Probe {
            source_tag: self.tag,
            packet_index: self.index,
            sent_micros,
        };
        self.index += 1;
        p
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        due: Instant,
        rtp_time: u32,
        marker: bool,
        keyframe: bool,
        frame_start: bool,
        probe: Probe,
        payload: Vec<u8>,
    ) {
        self.stats.packets += 1;
        self.stats.bytes += payload.len() as u64;
        self.pending.push_back(MediaPacket {
            due,
            rtp_time,
            marker,
            keyframe,
            frame_start,
            audio_level: None,
            probe,
            payload,
        });
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
            self.stats.keyframes += 1;
        }
        let rtp_time = self.rtp_base.wrapping_add(self.clock.rtp_ticks());
        let sent = micros_since(self.epoch, now);
        let jitter = self.rng.random_range(0.75..1.25);
        let weight = if keyframe { KEYFRAME_FACTOR } else { 1.0 };
        let size = ((self.delta_mean() * weight * jitter) as usize).max(PROBE_LEN + 8);
        let max = self.layer.max_payload.max(PROBE_LEN + 16);

        let mut frame_start = true;
        if keyframe {
            // STAP-A: SPS, PPS, probe SEI.
            let probe = self.next_probe(sent);
            let sei = make_probe_sei(&probe);
            let mut p = Vec::with_capacity(1 + 6 + self.sps.len() + self.pps.len() + sei.len());
            p.push(0x60 | STAP_A); // NRI 3
            for nalu in [&self.sps[..], &self.pps[..], &sei[..]] {
                p.extend_from_slice(&(nalu.len() as u16).to_be_bytes());
                p.extend_from_slice(nalu);
            }
            self.push(due, rtp_time, false, true, true, probe, p);
            frame_start = false;
        }

        let (nal_header, nal_type) = if keyframe {
            (0x60 | NAL_IDR, NAL_IDR)
        } else {
            (0x40 | NAL_SLICE, NAL_SLICE)
        };
        // NAL unit = header + body; body starts with the probe.
        if size < max {
            let probe = self.next_probe(sent);
            let mut p = Vec::with_capacity(1 + size);
            p.push(nal_header);
            let at = p.len();
            p.resize(at + PROBE_LEN, 0);
            probe.write(&mut p[at..]);
            push_filler(&mut p, size - PROBE_LEN);
            self.push(due, rtp_time, true, keyframe, frame_start, probe, p);
        } else {
            let chunks: Vec<usize> = balanced_chunks(size, max - 2).collect();
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let probe = self.next_probe(sent);
                let mut p = Vec::with_capacity(2 + chunk.max(PROBE_LEN));
                p.push((nal_header & 0xe0) | FU_A);
                let mut fu = nal_type;
                if i == 0 {
                    fu |= 0x80;
                }
                if i + 1 == n {
                    fu |= 0x40;
                }
                p.push(fu);
                let at = p.len();
                p.resize(at + PROBE_LEN, 0);
                probe.write(&mut p[at..]);
                push_filler(&mut p, chunk.saturating_sub(PROBE_LEN));
                let first = frame_start && i == 0;
                self.push(due, rtp_time, i + 1 == n, keyframe, first, probe, p);
            }
        }
        self.stats.frames += 1;
        self.clock.advance();
    }
}

impl MediaSource for H264Source {
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

/// True if an H.264 RTP payload starts a keyframe access unit: it carries an SPS or an
/// IDR slice start (STAP-A, single NAL unit or FU-A start fragment).
pub fn h264_keyframe_start(payload: &[u8]) -> bool {
    str0m::format::detect_h264_nalu(payload, NAL_SPS)
        || str0m::format::detect_h264_keyframe(payload)
}

fn make_probe_sei(probe: &Probe) -> Vec<u8> {
    let mut sei = Vec::with_capacity(SEI_PROBE_OFFSET + PROBE_LEN + 1);
    sei.push(NAL_SEI); // NRI 0
    sei.push(5); // user_data_unregistered
    sei.push((16 + PROBE_LEN) as u8);
    sei.extend_from_slice(&SEI_UUID);
    let at = sei.len();
    sei.resize(at + PROBE_LEN, 0);
    probe.write(&mut sei[at..]);
    sei.push(0x80); // rbsp trailing bits
    sei
}

/// Minimal MSB-first bit writer with Exp-Golomb codes.
struct BitWriter {
    bytes: Vec<u8>,
    cur: u8,
    bits: u8,
}

impl BitWriter {
    fn new() -> Self {
        BitWriter {
            bytes: Vec::new(),
            cur: 0,
            bits: 0,
        }
    }

    fn bit(&mut self, b: bool) {
        self.cur = (self.cur << 1) | u8::from(b);
        self.bits += 1;
        if self.bits == 8 {
            self.bytes.push(self.cur);
            self.cur = 0;
            self.bits = 0;
        }
    }

    fn u(&mut self, n: u32, v: u32) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    fn ue(&mut self, v: u32) {
        let x = v + 1;
        let len = 32 - x.leading_zeros();
        self.u(len - 1, 0);
        self.u(len, x);
    }

    fn se(&mut self, v: i32) {
        let k = if v > 0 {
            (v as u32) * 2 - 1
        } else {
            v.unsigned_abs() * 2
        };
        self.ue(k);
    }

    /// rbsp_trailing_bits, then emulation prevention.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        while self.bits != 0 {
            self.bit(false);
        }
        let mut out = Vec::with_capacity(self.bytes.len() + 2);
        let mut zeros = 0;
        for b in self.bytes {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            out.push(b);
        }
        out
    }
}

/// SPS for constrained baseline, level 3.1, with the given dimensions.
fn make_sps(width: u16, height: u16) -> Vec<u8> {
    let mbs_w = u32::from(width).div_ceil(16).max(1);
    let mbs_h = u32::from(height).div_ceil(16).max(1);
    let mut w = BitWriter::new();
    w.u(8, 66); // profile_idc: baseline
    w.u(8, 0xe0); // constraint_set0..2
    w.u(8, 31); // level_idc
    w.ue(0); // seq_parameter_set_id
    w.ue(0); // log2_max_frame_num_minus4
    w.ue(2); // pic_order_cnt_type
    w.ue(1); // max_num_ref_frames
    w.bit(false); // gaps_in_frame_num_value_allowed_flag
    w.ue(mbs_w - 1);
    w.ue(mbs_h - 1);
    w.bit(true); // frame_mbs_only_flag
    w.bit(true); // direct_8x8_inference_flag
    let crop_r = (mbs_w * 16 - u32::from(width)) / 2;
    let crop_b = (mbs_h * 16 - u32::from(height)) / 2;
    if crop_r > 0 || crop_b > 0 {
        w.bit(true);
        w.ue(0);
        w.ue(crop_r);
        w.ue(0);
        w.ue(crop_b);
    } else {
        w.bit(false);
    }
    w.bit(false); // vui_parameters_present_flag
    let mut nalu = vec![0x60 | NAL_SPS];
    nalu.extend(w.finish());
    nalu
}

fn make_pps() -> Vec<u8> {
    let mut w = BitWriter::new();
    w.ue(0); // pic_parameter_set_id
    w.ue(0); // seq_parameter_set_id
    w.bit(false); // entropy_coding_mode_flag (CAVLC)
    w.bit(false); // bottom_field_pic_order_in_frame_present_flag
    w.ue(0); // num_slice_groups_minus1
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.bit(false); // weighted_pred_flag
    w.u(2, 0); // weighted_bipred_idc
    w.se(0); // pic_init_qp_minus26
    w.se(0); // pic_init_qs_minus26
    w.se(0); // chroma_qp_index_offset
    w.bit(true); // deblocking_filter_control_present_flag
    w.bit(false); // constrained_intra_pred_flag
    w.bit(false); // redundant_pic_cnt_present_flag
    let mut nalu = vec![0x60 | NAL_PPS];
    nalu.extend(w.finish());
    nalu
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use str0m::format::{detect_h264_keyframe, detect_h264_nalu};

    fn run(layer: VideoLayer, secs: u64) -> (H264Source, Vec<MediaPacket>) {
        let t0 = Instant::now();
        let mut s = H264Source::new(0x200, 9, layer, t0, t0);
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
    fn keyframe_structure_detected_by_str0m() {
        let (s, pkts) = run(VideoLayer::MEDIUM, 4);
        assert_eq!(s.stats().keyframes, 2);
        // First packet: STAP-A with SPS + PPS (+ SEI).
        let first = &pkts[0].payload;
        assert_eq!(first[0] & 0x1f, STAP_A);
        assert!(detect_h264_nalu(first, NAL_SPS));
        assert!(detect_h264_nalu(first, NAL_PPS));
        assert!(!detect_h264_keyframe(first));
        assert!(h264_keyframe_start(first));
        // Second packet: FU-A start of the IDR slice.
        let second = &pkts[1].payload;
        assert_eq!(second[0] & 0x1f, FU_A);
        assert!(detect_h264_keyframe(second));
        let idr_starts = pkts
            .iter()
            .filter(|p| detect_h264_keyframe(&p.payload))
            .count();
        assert_eq!(idr_starts, 2);
        // Delta frames are never keyframes.
        for p in pkts.iter().filter(|p| !p.keyframe) {
            assert!(!detect_h264_keyframe(&p.payload));
            assert!(!h264_keyframe_start(&p.payload));
            let t = p.payload[0] & 0x1f;
            assert!(t == NAL_SLICE || (t == FU_A && p.payload[1] & 0x1f == NAL_SLICE));
        }
    }

    #[test]
    fn probes_everywhere_and_sizes_bounded() {
        let (_, pkts) = run(VideoLayer::HIGH, 4);
        for (i, p) in pkts.iter().enumerate() {
            assert!(p.payload.len() <= VideoLayer::HIGH.max_payload);
            assert_eq!(Probe::find_h264(&p.payload), Some(p.probe));
            assert_eq!(Probe::find(&p.payload), Some(p.probe));
            assert_eq!(p.probe.packet_index, i as u64);
        }
        // FU-A fragments: S on first, E on last.
        let frag: Vec<&MediaPacket> = pkts
            .iter()
            .filter(|p| p.rtp_time == pkts[0].rtp_time && p.payload[0] & 0x1f == FU_A)
            .collect();
        assert!(frag.len() > 2);
        assert!(frag[0].payload[1] & 0x80 != 0);
        assert!(frag.last().unwrap().payload[1] & 0x40 != 0);
        assert!(frag.last().unwrap().marker);
    }

    #[test]
    fn sps_encodes_dimensions() {
        // Parse back the dimensions from the SPS (no emulation bytes for these sizes).
        let sps = make_sps(1280, 720);
        assert_eq!(sps[0] & 0x1f, NAL_SPS);
        assert_eq!(&sps[1..4], &[66, 0xe0, 31]);
        let mut r = BitReader {
            b: &sps[4..],
            pos: 0,
        };
        assert_eq!(r.ue(), 0);
        assert_eq!(r.ue(), 0);
        assert_eq!(r.ue(), 2);
        assert_eq!(r.ue(), 1);
        assert!(!r.bit());
        assert_eq!(r.ue() + 1, 80);
        assert_eq!(r.ue() + 1, 45);
    }

    struct BitReader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl BitReader<'_> {
        fn bit(&mut self) -> bool {
            let v = self.b[self.pos / 8] >> (7 - self.pos % 8) & 1 == 1;
            self.pos += 1;
            v
        }
        fn ue(&mut self) -> u32 {
            let mut zeros = 0;
            while !self.bit() {
                zeros += 1;
            }
            let mut v = 1u32;
            for _ in 0..zeros {
                v = (v << 1) | u32::from(self.bit());
            }
            v - 1
        }
    }
}
