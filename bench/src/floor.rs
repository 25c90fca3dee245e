//! The floor routine: only what forwarding must do, written directly.
//!
//! Per incoming 1200-byte SRTP packet (AEAD_AES_128_GCM, RFC 7714): one
//! decrypt. Then per subscriber: a header rewrite (SSRC, sequence number,
//! timestamp), one AES-128-GCM encrypt with that subscriber's key, and the
//! packet goes into a `sendmmsg` batch of 32 to the subscriber's own
//! loopback address. aws-lc through `aws-lc-rs`, the same build str0m uses.

use crate::net::{Sinks, MAX_BATCH};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

/// Size of every incoming SRTP packet (header + payload + tag).
pub const PACKET_LEN: usize = 1200;
/// Fixed RTP header, no extensions.
const HEADER_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Plain RTP payload per packet.
pub const PAYLOAD_LEN: usize = PACKET_LEN - HEADER_LEN - TAG_LEN;
/// Slot size of the send batch.
const SLOT: usize = 1500;

/// One direction's SRTP AEAD_AES_128_GCM context: key schedule kept across
/// packets (the known cheap win), salt for the IV.
struct GcmContext {
    key: LessSafeKey,
    salt: [u8; 12],
}

impl GcmContext {
    fn new(seed: u8) -> Self {
        let key_bytes: [u8; 16] =
            std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8));
        let salt: [u8; 12] = std::array::from_fn(|i| seed.wrapping_add(7 * i as u8));
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key_bytes).expect("AES-128 key"));
        Self { key, salt }
    }

    /// RFC 7714 §8.1: IV = (0x0000 || SSRC || ROC || SEQ) XOR salt.
    fn nonce(&self, ssrc: u32, roc: u32, seq: u16) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }
}

fn write_header(h: &mut [u8], ssrc: u32, seq: u16, ts: u32, marker: bool) {
    h[0] = 0x80;
    h[1] = 96 | if marker { 0x80 } else { 0 };
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

struct Subscriber {
    ctx: GcmContext,
    ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    sink: usize,
}

/// The floor for one fan-out size.
pub struct Floor {
    publisher: GcmContext,
    publisher_ssrc: u32,
    /// Pre-encrypted incoming packets (replayed round-robin).
    incoming: Vec<Vec<u8>>,
    subs: Vec<Subscriber>,
    /// The receive buffer.
    scratch: Vec<u8>,
    /// Send batch slots.
    slots: Vec<[u8; SLOT]>,
    lens: [usize; MAX_BATCH],
    dsts: [usize; MAX_BATCH],
    queued: usize,
    next_seq: u16,
}

impl Floor {
    /// A floor with `subscribers` subscribers whose packets go to sinks
    /// `1..=subscribers` (sink 0 is the publisher's, as in the kaskade scenario).
    pub fn new(subscribers: usize) -> Self {
        let publisher = GcmContext::new(1);
        let publisher_ssrc = 0x1234_5678;
        let incoming = (0..256u16)
            .map(|seq| {
                let mut p = vec![0u8; PACKET_LEN];
                let marker = seq % 8 == 7;
                write_header(
                    &mut p[..HEADER_LEN],
                    publisher_ssrc,
                    seq,
                    u32::from(seq / 8) * 3000,
                    marker,
                );
                for (i, b) in p[HEADER_LEN..HEADER_LEN + PAYLOAD_LEN]
                    .iter_mut()
                    .enumerate()
                {
                    *b = (i as u8).wrapping_mul(seq as u8 | 1);
                }
                let (h, body) = p.split_at_mut(HEADER_LEN);
                let (plain, tag_out) = body.split_at_mut(PAYLOAD_LEN);
                let tag = publisher
                    .key
                    .seal_in_place_separate_tag(
                        publisher.nonce(publisher_ssrc, 0, seq),
                        Aad::from(&*h),
                        plain,
                    )
                    .expect("seal");
                tag_out.copy_from_slice(tag.as_ref());
                p
            })
            .collect();
        let subs = (0..subscribers)
            .map(|i| Subscriber {
                ctx: GcmContext::new(10 + i as u8),
                ssrc: 0x5000_0000 + i as u32,
                seq_offset: (i as u16).wrapping_mul(977),
                ts_offset: (i as u32).wrapping_mul(123_457),
                sink: i + 1,
            })
            .collect();
        Self {
            publisher,
            publisher_ssrc,
            incoming,
            subs,
            scratch: vec![0u8; 2048],
            slots: vec![[0u8; SLOT]; MAX_BATCH],
            lens: [0; MAX_BATCH],
            dsts: [0; MAX_BATCH],
            queued: 0,
            next_seq: 0,
        }
    }

    /// Forwards `packets` incoming packets; returns the number of outgoing
    /// packets. With `sinks`, they are sent in `sendmmsg` batches of 32;
    /// without, only decrypt + rewrite + encrypt are done (the "core only"
    /// counterpart).
    pub fn run(&mut self, packets: usize, mut sinks: Option<&mut Sinks>) -> u64 {
        let mut out = 0u64;
        for _ in 0..packets {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            let src = &self.incoming[usize::from(seq) % self.incoming.len()];
            // Receive: the datagram lands in the receive buffer.
            self.scratch[..PACKET_LEN].copy_from_slice(src);
            let (hdr, body) = self.scratch[..PACKET_LEN].split_at_mut(HEADER_LEN);
            let in_seq = u16::from_be_bytes([hdr[2], hdr[3]]);
            let in_ts = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let marker = hdr[1] & 0x80 != 0;
            let payload = self
                .publisher
                .key
                .open_in_place(
                    self.publisher.nonce(self.publisher_ssrc, 0, in_seq),
                    Aad::from(&*hdr),
                    body,
                )
                .expect("decrypt");
            let plen = payload.len();
            for s in &self.subs {
                let slot = &mut self.slots[self.queued];
                let sseq = in_seq.wrapping_add(s.seq_offset);
                let (h, rest) = slot.split_at_mut(HEADER_LEN);
                write_header(h, s.ssrc, sseq, in_ts.wrapping_add(s.ts_offset), marker);
                let (plain, tail) = rest.split_at_mut(plen);
                plain.copy_from_slice(payload);
                let tag = s
                    .ctx
                    .key
                    .seal_in_place_separate_tag(s.ctx.nonce(s.ssrc, 0, sseq), Aad::from(&*h), plain)
                    .expect("encrypt");
                tail[..TAG_LEN].copy_from_slice(tag.as_ref());
                self.lens[self.queued] = HEADER_LEN + plen + TAG_LEN;
                self.dsts[self.queued] = s.sink;
                self.queued += 1;
                out += 1;
                if self.queued == MAX_BATCH {
                    Self::flush(
                        &self.slots,
                        &self.lens,
                        &self.dsts,
                        &mut self.queued,
                        sinks.as_deref_mut(),
                    );
                }
            }
        }
        Self::flush(&self.slots, &self.lens, &self.dsts, &mut self.queued, sinks);
        out
    }

    fn flush(
        slots: &[[u8; SLOT]],
        lens: &[usize; MAX_BATCH],
        dsts: &[usize; MAX_BATCH],
        queued: &mut usize,
        sinks: Option<&mut Sinks>,
    ) {
        if let Some(sinks) = sinks {
            let mut batch = [(&[][..], 0usize); MAX_BATCH];
            for i in 0..*queued {
                batch[i] = (&slots[i][..lens[i]], dsts[i]);
            }
            sinks.send(&batch[..*queued]);
        }
        *queued = 0;
    }
}

/// Seals `packets` 1200-byte SRTP packets with one key of `alg` (aws-lc,
/// key schedule kept); returns the count, for [`crate::measure::measure`].
/// Compares the profiles a browser may negotiate: the floor uses
/// AES-128-GCM, str0m's DTLS (dimpl) picks AES-256-GCM whenever offered.
pub fn seal_packets(alg: &'static aws_lc_rs::aead::Algorithm, packets: u64) -> u64 {
    let key_bytes = vec![7u8; alg.key_len()];
    let key = LessSafeKey::new(UnboundKey::new(alg, &key_bytes).expect("AES key"));
    let mut buf = vec![0u8; PAYLOAD_LEN];
    let header = [0x80u8, 96, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    for i in 0..packets {
        let mut iv = [0u8; 12];
        iv[4..12].copy_from_slice(&i.to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(header),
                &mut buf,
            )
            .expect("seal");
        let _ = std::hint::black_box(tag);
    }
    packets
}
