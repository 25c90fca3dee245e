//! The wire codec under random and mutated input: the media datagram decoder, the reassembler
//! and the control stream's frame reader never panic and stay within their bounds.

use super::datagram::tests::header;
use super::datagram::{decode, MediaHeader};
use super::fragment::tests::payload;
use super::fragment::{Fragmenter, Reassembler};
use super::framing::FrameReader;
use bytes::Bytes;
use rand::{Rng as _, SeedableRng as _};
use std::time::{Duration, Instant};

/// Random and mutated input never panics; whatever decodes re-encodes to the same bytes.
#[test]
fn random_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b61_736b);
    let t0 = Instant::now();
    let mut r = Reassembler::with_limits(8, Duration::from_millis(50), 64 << 10);
    let mut valid = Vec::new();
    let mut f = Fragmenter::new();
    for seq in 0..50 {
        let h = MediaHeader {
            seq,
            audio_level: (seq % 2 == 0).then_some(-10),
            ..header()
        };
        f.encode(&h, &payload(rng.random_range(0..3000)), 700, &mut valid)
            .unwrap();
    }
    let mut frames = FrameReader::with_max_len(4096);
    for i in 0..200_000u32 {
        let mut buf = if i % 2 == 0 {
            let len = rng.random_range(0..64);
            let mut b = vec![0u8; len];
            rng.fill(&mut b[..]);
            if len > 0 && rng.random_bool(0.5) {
                b[0] = 0x10; // get past the version check
            }
            if len > 1 && rng.random_bool(0.5) {
                b[1] &= 0x3f; // the known flags
            }
            b
        } else {
            let mut b = valid[rng.random_range(0..valid.len())].to_vec();
            for _ in 0..rng.random_range(0..4) {
                if b.is_empty() {
                    break;
                }
                let at = rng.random_range(0..b.len());
                match rng.random_range(0..3) {
                    0 => b[at] = rng.random(),
                    1 => b.truncate(at),
                    _ => b[at] ^= 1 << rng.random_range(0..8),
                }
            }
            b
        };
        let now = t0 + Duration::from_millis(u64::from(i / 100));
        if let Ok(d) = decode(Bytes::from(buf.clone())) {
            let mut again = Vec::new();
            d.write(&mut again);
            assert_eq!(again, buf);
            if let Some(whole) = r.push(now, d) {
                assert!(whole.fragment.is_none());
            }
            assert!(r.pending_sets() <= 8);
            assert!(r.pending_bytes() <= 64 << 10);
        }
        buf.truncate(rng.random_range(0..=buf.len()));
        frames.push(&buf);
        match frames.next_frame() {
            Ok(Some(frame)) => assert!(frame.len() <= 4096),
            Ok(None) => {}
            Err(_) => frames = FrameReader::with_max_len(4096),
        }
    }
    // Valid traffic still reassembles after all that.
    let mut r = Reassembler::new();
    let complete = valid
        .iter()
        .filter_map(|d| r.push(t0, decode(d.clone()).unwrap()))
        .count();
    assert_eq!(complete, 50);
}
