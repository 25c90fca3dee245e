//! VP8 payload descriptor facts the router needs (RFC 7741) and the
//! picture id / TL0PICIDX rewriting that keeps a subscriber's stream
//! continuous across layer switches and dropped temporal layers.

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// What the router reads from a VP8 payload, once, at the publisher's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Info {
    /// Picture id, if present.
    pub picture_id: Option<u16>,
    /// The picture id field is 15 bits wide (else 7).
    pub picture_id_15: bool,
    /// TL0PICIDX, if present.
    pub tl0: Option<u8>,
    /// Temporal layer id, if present.
    pub tid: Option<u8>,
    /// Start of a VP8 partition 0 (the first packet of a frame).
    pub frame_start: bool,
    /// Width and height, on the first packet of a keyframe.
    pub resolution: Option<(u16, u16)>,
}

/// Parses the descriptor and, on a keyframe's first packet, the frame size.
/// `None` for payloads that are not valid VP8.
pub fn parse(payload: &[u8]) -> Option<Vp8Info> {
    let b0 = *payload.first()?;
    let mut off = 1;
    let mut info = Vp8Info {
        frame_start: b0 & 0x10 != 0 && b0 & 0x07 == 0,
        ..Default::default()
    };
    if b0 & 0x80 != 0 {
        let x = *payload.get(off)?;
        off += 1;
        if x & 0x80 != 0 {
            let p = *payload.get(off)?;
            off += 1;
            if p & 0x80 != 0 {
                let lo = *payload.get(off)?;
                off += 1;
                info.picture_id = Some((u16::from(p & 0x7f) << 8) | u16::from(lo));
                info.picture_id_15 = true;
            } else {
                info.picture_id = Some(u16::from(p));
            }
        }
        if x & 0x40 != 0 {
            info.tl0 = Some(*payload.get(off)?);
            off += 1;
        }
        if x & 0x30 != 0 {
            let t = *payload.get(off)?;
            off += 1;
            if x & 0x20 != 0 {
                info.tid = Some(t >> 6);
            }
        }
    }
    let frame = payload.get(off..)?;
    // Keyframe: inverse key-frame bit clear, then the start code and size.
    if info.frame_start
        && frame.len() >= 10
        && frame[0] & 0x01 == 0
        && frame[3..6] == [0x9d, 0x01, 0x2a]
    {
        let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
        let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
        info.resolution = Some((w, h));
    }
    Some(info)
}

const PID_MOD: u32 = 1 << 15;
/// Picture ids of a source that sends 7-bit ones wrap here.
const PID_MOD_7: u32 = 1 << 7;

/// The modulus of the source's picture ids: 2^15, or 2^7 for 7-bit ids.
/// Offsets are kept mod 2^15, which 2^7 divides, so they hold for both.
fn pid_mod(info: &Vp8Info) -> u32 {
    if info.picture_id_15 {
        PID_MOD
    } else {
        PID_MOD_7
    }
}

/// Keeps picture ids and TL0PICIDX of one outgoing stream continuous.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    /// Added (mod 2^15) to the source's picture ids.
    pid_offset: u32,
    /// Added (mod 2^8) to the source's TL0PICIDX.
    tl0_offset: u8,
    /// Last picture id written, and the source's picture id it came from.
    last_pid: Option<(u16, u16)>,
    last_tl0: Option<u8>,
    started: bool,
}

/// Whether `b` is after `a` in serial arithmetic mod `m` (`a` may have
/// come from a source with a larger modulus: it is reduced first).
fn pid_after(a: u16, b: u16, m: u32) -> bool {
    let d = (u32::from(b) % m + m - u32::from(a) % m) % m;
    d != 0 && d < m / 2
}

impl Vp8Rewriter {
    /// Makes a new source (a keyframe of another layer) continue the ids.
    pub fn switch_to(&mut self, first: &Vp8Info) {
        if let Some(pid) = first.picture_id {
            let m = pid_mod(first);
            let next = self
                .last_pid
                .map_or(u32::from(pid), |(out, _)| (u32::from(out) + 1) % m);
            self.pid_offset = (next + PID_MOD - u32::from(pid)) % PID_MOD;
            self.last_pid = None;
        }
        if let Some(tl0) = first.tl0 {
            let next = self.last_tl0.map_or(tl0, |t| t.wrapping_add(1));
            self.tl0_offset = next.wrapping_sub(tl0);
        }
        self.started = true;
    }

    /// A whole picture of the current source is not forwarded (a dropped
    /// temporal layer): later pictures close the gap.
    pub fn drop_picture(&mut self, info: &Vp8Info) {
        let (Some(pid), Some((_, last_src))) = (info.picture_id, self.last_pid) else {
            return;
        };
        if info.frame_start && pid_after(last_src, pid, pid_mod(info)) {
            self.pid_offset = (self.pid_offset + PID_MOD - 1) % PID_MOD;
            // The dropped picture's id is now taken by the next one.
            self.last_pid = self.last_pid.map(|(out, _)| (out, pid));
        }
    }

    /// The rewritten (picture id, TL0PICIDX) of a forwarded packet.
    pub fn rewrite(&mut self, info: &Vp8Info) -> (Option<u16>, Option<u8>) {
        let m = pid_mod(info);
        let pid = info.picture_id.map(|p| {
            // `m` divides 2^15: the result is below `m`, so below 2^15.
            let out = ((u32::from(p) + self.pid_offset) % m) as u16;
            let newer = self
                .last_pid
                .is_none_or(|(last, _)| pid_after(last, out, m));
            if newer {
                self.last_pid = Some((out, p));
            }
            out
        });
        let tl0 = info.tl0.map(|t| {
            let out = t.wrapping_add(self.tl0_offset);
            if self
                .last_tl0
                .is_none_or(|l| (out.wrapping_sub(l) as i8) > 0)
            {
                self.last_tl0 = Some(out);
            }
            out
        });
        (pid, tl0)
    }

    /// The str0m patch for a packet, or `None` when nothing changes.
    pub fn patch(&mut self, info: &Vp8Info, desc: &Vp8Descriptor) -> Option<Vp8Patch> {
        let (pid, tl0) = self.rewrite(info);
        if pid == info.picture_id && tl0 == info.tl0 {
            return None;
        }
        let mut b = desc.patch();
        if let Some(p) = pid {
            b = b.picture_id(p);
        }
        if let Some(t) = tl0 {
            b = b.tl0_pic_idx(t);
        }
        b.build().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u16, tl0: u8, tid: u8, start: bool) -> Vp8Info {
        Vp8Info {
            picture_id: Some(pid),
            picture_id_15: true,
            tl0: Some(tl0),
            tid: Some(tid),
            frame_start: start,
            resolution: None,
        }
    }

    #[test]
    fn parses_descriptor_and_keyframe_size() {
        // X, S; I L T; 15-bit pid 0x1234; tl0 7; tid 2 with Y.
        let mut p = vec![0x90, 0xe0, 0x80 | 0x12, 0x34, 7, 0b1010_0000];
        // Keyframe header: frame tag (key), start code, 1280x720.
        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&1280u16.to_le_bytes());
        p.extend_from_slice(&720u16.to_le_bytes());
        let i = parse(&p).unwrap();
        assert_eq!(i.picture_id, Some(0x1234));
        assert!(i.picture_id_15);
        assert_eq!(i.tl0, Some(7));
        assert_eq!(i.tid, Some(2));
        assert!(i.frame_start);
        assert_eq!(i.resolution, Some((1280, 720)));
        assert!(str0m::format::detect_vp8_keyframe(&p));
        assert_eq!(parse(&[0x80]), None, "truncated");
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn ids_continue_across_switches_and_wrap() {
        let mut r = Vp8Rewriter::default();
        r.switch_to(&info(32_760, 250, 0, true));
        let mut outs = Vec::new();
        for k in 0..10u16 {
            let pid = (32_760 + k) % 32_768;
            outs.push(r.rewrite(&info(pid, 250u8.wrapping_add(k as u8), 0, true)));
        }
        // Switch to a layer with unrelated ids.
        r.switch_to(&info(100, 3, 0, true));
        for k in 0..5u16 {
            outs.push(r.rewrite(&info(100 + k, 3 + k as u8, 0, true)));
        }
        for w in outs.windows(2) {
            let (p0, t0) = (w[0].0.unwrap(), w[0].1.unwrap());
            let (p1, t1) = (w[1].0.unwrap(), w[1].1.unwrap());
            assert_eq!((u32::from(p0) + 1) % PID_MOD, u32::from(p1));
            assert_eq!(t0.wrapping_add(1), t1);
        }
    }

    /// As [`info`], from a source that sends 7-bit picture ids.
    fn info7(pid: u16, tid: u8, start: bool) -> Vp8Info {
        Vp8Info {
            picture_id_15: false,
            ..info(pid, 0, tid, start)
        }
    }

    #[test]
    fn seven_bit_ids_stay_continuous_after_they_wrap() {
        let mut r = Vp8Rewriter::default();
        r.switch_to(&info7(120, 0, true));
        let mut outs = Vec::new();
        // 120..127, then 0..20 after the wrap; picture 5 (tid 2) is dropped.
        for k in 0..28u16 {
            let pid = (120 + k) % 128;
            if pid == 5 {
                r.drop_picture(&info7(pid, 2, true));
                continue;
            }
            outs.push(r.rewrite(&info7(pid, 0, true)).0.unwrap());
        }
        // A switch to another layer continues from the last id written.
        r.switch_to(&info7(60, 0, true));
        outs.push(r.rewrite(&info7(60, 0, true)).0.unwrap());
        for w in outs.windows(2) {
            assert!(w[1] < 128, "7-bit ids stay 7-bit: {w:?}");
            assert_eq!((w[0] + 1) % 128, w[1], "no gap: {outs:?}");
        }
    }

    #[test]
    fn dropped_temporal_pictures_leave_no_gap() {
        let mut r = Vp8Rewriter::default();
        r.switch_to(&info(10, 1, 0, true));
        let a = r.rewrite(&info(10, 1, 0, true)).0.unwrap();
        // Picture 11 (tid 2) dropped, 12 (tid 1) forwarded.
        r.drop_picture(&info(11, 1, 2, true));
        r.drop_picture(&info(11, 1, 2, false));
        let b = r.rewrite(&info(12, 1, 1, true)).0.unwrap();
        assert_eq!(b, a + 1);
        let b2 = r.rewrite(&info(12, 1, 1, false)).0.unwrap();
        assert_eq!(b2, b, "later packets of the same picture keep its id");
    }
}
