//! VP8 and H.264 payload parsing and the per-subscriber rewriting of sequence numbers,
//! timestamps and VP8 picture ids.
//!
//! The input is used twice:
//! - whole, as one RTP payload: the parsers the publisher's worker runs on every packet
//!   (`vp8::parse`, str0m's VP8 descriptor, the keyframe detectors), then the VP8 rewriter's
//!   patch for it;
//! - as a script of 4-byte steps for one outgoing stream (what `OutStream::forward` does with
//!   the rewriters): switch to a new source, forward a packet, drop a packet of a filtered
//!   temporal layer, let time pass. Packets may arrive reordered, repeated or lost.
//!
//! Checked: nothing panics (overflow checks are on in the `--dev` builds used); an outgoing
//! sequence number is never below the stream's first one and never given to two different
//! packets; a 7-bit picture id stays 7 bits.
#![no_main]

use kaskade_router::media::rewrite::{SeqRewriter, TsRewriter};
use kaskade_router::media::vp8::{self, Vp8Info, Vp8Rewriter};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use str0m::rtp::Vp8Descriptor;

fuzz_target!(|data: &[u8]| {
    payload(data);
    stream(data);
});

fn payload(data: &[u8]) {
    let info = vp8::parse(data);
    let desc = Vp8Descriptor::parse(data).ok();
    let _ = str0m::format::detect_vp8_keyframe(data);
    let _ = str0m::format::detect_h264_keyframe(data);
    let _ = str0m::format::detect_h264_nalu(data, 7);
    let _ = str0m::format::detect_vp9_keyframe(data);
    let _ = str0m::format::detect_av1_keyframe(data);
    if let Some(i) = info {
        if i.resolution.is_some() {
            assert!(i.frame_start, "a resolution is read only at a frame start");
        }
        if let Some(p) = i.picture_id.filter(|_| !i.picture_id_15) {
            assert!(p <= 0x7f);
        }
    }
    if let (Some(i), Some(d)) = (info, desc) {
        let mut r = Vp8Rewriter::default();
        r.switch_to(&i);
        // A second source with other ids: the patch must rewrite this payload's fields.
        let _ = r.patch(&i, &d);
        let other = Vp8Info {
            picture_id: i.picture_id.map(|p| p.wrapping_add(1000) & 0x7fff),
            tl0: i.tl0.map(|t| t.wrapping_add(77)),
            ..i
        };
        r.switch_to(&other);
        let (pid, _) = r.rewrite(&i);
        if !i.picture_id_15 {
            assert!(
                pid.is_none_or(|p| p <= 0x7f),
                "7-bit picture id stays 7 bits"
            );
        }
        let _ = r.patch(&i, &d);
    }
}

/// One outgoing stream driven by the input, 4 bytes a step.
fn stream(data: &[u8]) {
    let t0 = Instant::now();
    let start = u16::from_le_bytes([
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    ]);
    let mut seq = SeqRewriter::new(start);
    let mut ts = TsRewriter::new(90_000, u32::from(start) << 8);
    let mut pids = Vp8Rewriter::default();
    // Outgoing number -> (source, source sequence number) it was given to.
    let mut given: HashMap<u64, (u32, u64)> = HashMap::new();
    let mut source = 0u32;
    // Highest source sequence number seen of the current source, and its start.
    let mut high = 0u64;
    let mut now = t0;
    for step in data.get(2..).unwrap_or(&[]).chunks_exact(4) {
        let [op, a, b, c] = [step[0], step[1], step[2], step[3]];
        // Reordering: up to 16 behind or ahead of the highest number seen.
        let near = |high: u64| high.saturating_add_signed(i64::from((a as i8) >> 3));
        match op % 5 {
            0 => {
                // A keyframe of another source (a layer switch): its numbers are unrelated,
                // within what str0m's extended numbers (from 16 bits) or a cascade's
                // (32 bits) reach.
                source += 1;
                high = u64::from(u32::from_le_bytes([a, b, c, op]));
                seq.switch_to(high);
                ts.switch_to(u32::from_le_bytes([b, c, a, op]), now);
                pids.switch_to(&vp8_info(a, b, c));
                emit(&mut seq, &mut given, source, high, start);
            }
            1 | 2 => {
                let s = near(high);
                high = high.max(s);
                let _ = ts.rewrite(u32::from_le_bytes([b, c, a, 0]), now);
                let _ = pids.rewrite(&vp8_info(a, b, c));
                emit(&mut seq, &mut given, source, s, start);
            }
            3 => {
                // A packet of a temporal layer above the subscriber's cap.
                let s = near(high);
                high = high.max(s);
                seq.drop_packet(s);
                pids.drop_picture(&vp8_info(a, b, c));
            }
            _ => now += Duration::from_millis(u64::from(a)),
        }
    }
}

fn emit(
    seq: &mut SeqRewriter,
    given: &mut HashMap<u64, (u32, u64)>,
    source: u32,
    s: u64,
    start: u16,
) {
    let Some(out) = seq.rewrite(s) else {
        return;
    };
    assert!(
        out >= u64::from(start),
        "outgoing number {out} below the stream's first one {start}"
    );
    let prev = given.insert(out, (source, s));
    assert!(
        prev.is_none_or(|p| p == (source, s)),
        "outgoing number {out} given to {prev:?} and again to {:?}",
        (source, s)
    );
}

fn vp8_info(a: u8, b: u8, c: u8) -> Vp8Info {
    Vp8Info {
        picture_id: (a & 1 == 0).then_some(u16::from_le_bytes([b, c]) & 0x7fff),
        picture_id_15: a & 2 == 0,
        tl0: (a & 4 == 0).then_some(c),
        tid: Some(b >> 6),
        frame_start: a & 8 == 0,
        resolution: None,
    }
}
