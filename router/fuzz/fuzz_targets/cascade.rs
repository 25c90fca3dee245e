//! The cascade link's wire: media datagrams (decode, re-encode, fragment reassembly), the
//! control stream's length-prefixed frames (`FrameReader`, then the protobuf `Frame`), and the
//! router's relay receive side (`RelayRx`: routes, codecs from the wire, sequence tracking,
//! NACKs, loss deadlines) fed with all of it.
//!
//! The input is a script of records: one op byte, a 16-bit little-endian length, that many
//! bytes (the last record takes what is left).
//! - op 0, 1: a media datagram for the relay's receive side (and a bounded reassembler);
//! - op 2: bytes of the control stream; each complete frame is decoded, and a `Codec` frame's
//!   parameters are given to the receive side;
//! - op 3: a route (link track number `b0 % 8`, layer kind from `b1`) set or withdrawn;
//! - op 4: time passes (`b0` ms): timeouts run, batches and NACKs are drained.
//!
//! Checked: nothing panics; whatever decodes re-encodes to the same bytes; the reassembler and
//! the frame reader stay within their bounds; every packet counted delivered is handed over.
#![no_main]

use bytes::Bytes;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::datagram;
use kaskade_protocol::cascade::fragment::Reassembler;
use kaskade_protocol::cascade::framing::FrameReader;
use kaskade_protocol::TrackId;
use kaskade_router::cascade::relay::rx::{RelayRx, RxRoute, MAX_MISSING};
use kaskade_router::media::WorkerId;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use std::time::{Duration, Instant};
use str0m::media::MediaKind;

const MAX_SETS: usize = 8;
const MAX_BYTES: usize = 64 << 10;
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut rx = RelayRx::new();
    let mut reasm = Reassembler::with_limits(MAX_SETS, Duration::from_millis(50), MAX_BYTES);
    let mut frames = FrameReader::with_max_len(MAX_FRAME);
    let mut drained = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = match tail {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => tail.len(),
        };
        let body_all = tail.get(2..).unwrap_or(&[]);
        let body = &body_all[..len.min(body_all.len())];
        rest = &body_all[body.len()..];
        match op % 5 {
            0 | 1 => {
                let bytes = Bytes::copy_from_slice(body);
                if let Ok(d) = datagram::decode(bytes.clone()) {
                    let mut again = Vec::new();
                    d.write(&mut again);
                    assert_eq!(again, body, "decode then encode gives the same bytes");
                    if let Some(whole) = reasm.push(now, d) {
                        assert!(whole.fragment.is_none());
                    }
                    assert!(reasm.pending_sets() <= MAX_SETS);
                    assert!(reasm.pending_bytes() <= MAX_BYTES);
                }
                rx.handle_datagram(now, bytes);
            }
            2 => {
                frames.push(body);
                loop {
                    match frames.next_frame() {
                        Ok(Some(f)) => {
                            assert!(f.len() <= MAX_FRAME);
                            if let Ok(cpb::Frame {
                                msg: Some(cpb::frame::Msg::Codec(c)),
                            }) = cpb::Frame::decode(f)
                            {
                                if let Some(p) = &c.params {
                                    rx.set_codec(c.link_track, p);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            frames = FrameReader::with_max_len(MAX_FRAME);
                            break;
                        }
                    }
                }
                assert!(frames.buffered() <= MAX_FRAME + 8);
            }
            3 => {
                let num = body.first().map_or(0, |b| b % 8);
                let route = match body.get(1) {
                    None => None,
                    Some(k) => {
                        let track = TrackId(u64::from(*k));
                        Some(RxRoute {
                            track,
                            worker: WorkerId(u16::from(k & 1)),
                            kind: if k & 2 == 0 {
                                MediaKind::Audio
                            } else {
                                MediaKind::Video
                            },
                        })
                    }
                };
                rx.set_route(u32::from(num), route);
            }
            _ => {
                now += Duration::from_millis(u64::from(body.first().copied().unwrap_or(1)));
                reasm.expire(now);
                if rx.poll_timeout().is_some_and(|t| t <= now) {
                    rx.handle_timeout(now);
                }
                drain(&mut rx, &mut drained);
            }
        }
    }
    now += Duration::from_secs(2);
    rx.handle_timeout(now);
    drain(&mut rx, &mut drained);
    let s = rx.stats();
    assert!(s.malformed <= s.datagrams);
    assert_eq!(
        s.delivered, drained,
        "every packet counted delivered was handed over"
    );
});

fn drain(rx: &mut RelayRx, drained: &mut u64) {
    while let Some((_, batch)) = rx.poll_batch() {
        *drained += batch.len() as u64;
    }
    while let Some(n) = rx.poll_nack() {
        assert!(!n.seqs.is_empty());
        assert!(n.seqs.len() <= MAX_MISSING);
    }
}
