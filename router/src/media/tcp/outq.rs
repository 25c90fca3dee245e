//! What a TCP connection holds for a peer that reads slower than the
//! router writes: a bounded queue of framed packets, and the policy for
//! what is dropped when it fills. Sans-IO: the driver writes
//! [`OutQueue::slices`] to the socket and reports what it took.
//!
//! The policy, in bytes queued (the framing prefix included):
//! - below [`SOFT_LIMIT`] everything is queued;
//! - from there to [`HARD_LIMIT`] only packets that are not video are
//!   (STUN, DTLS, RTCP, audio): video is dropped and counted, the
//!   subscriber's NACKs and keyframe requests repair what the decoder
//!   misses, and its bandwidth estimate (which sees the queueing delay)
//!   steps it down a layer;
//! - past [`HARD_LIMIT`] everything is dropped and counted: the peer has
//!   stopped reading, and its session times out on its own.
//!
//! A packet is queued whole or not at all, so the stream never desyncs, and
//! a write never waits: the worker goes on with its other sessions.

use kaskade_protocol::rfc4571;
use std::collections::VecDeque;

/// Bytes queued past which video is dropped. About 0.4 s of a 2.5 Mbit/s
/// layer, on top of the kernel's send buffer ([`super::SEND_BUFFER`]).
pub const SOFT_LIMIT: usize = 128 * 1024;
/// Bytes queued past which every packet is dropped.
pub const HARD_LIMIT: usize = 512 * 1024;

/// How a packet may be treated when the queue fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// STUN, DTLS, RTCP, audio: kept up to [`HARD_LIMIT`].
    Keep,
    /// Video (RTP that is not audio, retransmissions and probing padding
    /// included): dropped past [`SOFT_LIMIT`].
    Video,
}

/// Whether a packet the router sends is video: RTP (RFC 7983: first byte
/// 128..=191, and not RTCP, whose packet types 192..=223 put 64..=95 in the
/// payload-type bits) with a payload type that is not one of `audio_pts`.
/// The RTP header is not encrypted by SRTP, so this reads the packet as
/// sent.
pub fn classify(packet: &[u8], audio_pts: &[u8]) -> Class {
    match packet {
        [b0, b1, ..] if (128..=191).contains(b0) => {
            let pt = b1 & 0x7f;
            if (64..=95).contains(&pt) || audio_pts.contains(&pt) {
                Class::Keep
            } else {
                Class::Video
            }
        }
        _ => Class::Keep,
    }
}

/// What became of a packet offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued, to be written.
    Yes,
    /// Dropped: the queue is past the limit of its class (or the packet
    /// does not fit the framing).
    Dropped(Class),
}

/// The bounded queue of one connection. See the [module docs](self).
#[derive(Debug, Default)]
pub struct OutQueue {
    bytes: VecDeque<u8>,
}

impl OutQueue {
    /// An empty queue (it allocates as it fills, at most [`HARD_LIMIT`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames and queues `packet`, or drops it by the policy.
    pub fn push(&mut self, class: Class, packet: &[u8]) -> Queued {
        let limit = match class {
            Class::Keep => HARD_LIMIT,
            Class::Video => SOFT_LIMIT,
        };
        let Some(prefix) = rfc4571::header(packet.len()) else {
            return Queued::Dropped(class);
        };
        if self.bytes.len() + prefix.len() + packet.len() > limit {
            return Queued::Dropped(class);
        }
        self.bytes.extend(prefix);
        self.bytes.extend(packet);
        Queued::Yes
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The waiting bytes, in order, as (at most) two slices for one
    /// vectored write.
    pub fn slices(&self) -> (&[u8], &[u8]) {
        self.bytes.as_slices()
    }

    /// The first `n` waiting bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.bytes.drain(..n.min(self.bytes.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS: u8 = 111;

    fn rtp(pt: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x80;
        p[1] = pt;
        p
    }

    #[test]
    fn packets_are_classified_by_what_they_carry() {
        assert_eq!(classify(&rtp(96, 1200), &[OPUS]), Class::Video);
        assert_eq!(
            classify(&rtp(96 | 0x80, 1200), &[OPUS]),
            Class::Video,
            "marker bit"
        );
        assert_eq!(classify(&rtp(OPUS, 100), &[OPUS]), Class::Keep);
        // RTCP: sender report (200), receiver report (201), feedback (205, 206).
        for pt in [200u8, 201, 205, 206] {
            assert_eq!(classify(&rtp(pt, 60), &[]), Class::Keep, "RTCP {pt}");
        }
        // STUN (first byte 0..=3) and DTLS (20..=63).
        assert_eq!(classify(&[0, 1, 0, 0], &[]), Class::Keep);
        assert_eq!(classify(&[22, 254, 253], &[]), Class::Keep);
        assert_eq!(classify(&[], &[]), Class::Keep);
    }

    #[test]
    fn a_slow_reader_loses_video_first_then_everything_and_never_more_than_the_limit() {
        let mut q = OutQueue::new();
        let video = rtp(96, 1198);
        let audio = rtp(OPUS, 98);
        let mut queued_video = 0;
        while q.push(Class::Video, &video) == Queued::Yes {
            queued_video += 1;
        }
        assert_eq!(queued_video, SOFT_LIMIT / 1200);
        // Past the soft limit: video is dropped, audio and control still go.
        assert_eq!(q.push(Class::Video, &video), Queued::Dropped(Class::Video));
        assert_eq!(q.push(Class::Keep, &audio), Queued::Yes);
        while q.push(Class::Keep, &audio) == Queued::Yes {}
        assert!(q.len() <= HARD_LIMIT);
        assert!(q.len() > HARD_LIMIT - 100);
        assert_eq!(q.push(Class::Keep, &audio), Queued::Dropped(Class::Keep));
        // Once the reader catches up, video is queued again.
        q.consume(q.len());
        assert!(q.is_empty());
        assert_eq!(q.push(Class::Video, &video), Queued::Yes);
    }

    #[test]
    fn writes_take_whole_frames_in_order_across_partial_writes() {
        let mut q = OutQueue::new();
        for i in 1..=50u8 {
            assert_eq!(q.push(Class::Keep, &vec![i; 300]), Queued::Yes);
        }
        // A socket that takes 777 bytes at a time.
        let mut written = Vec::new();
        while !q.is_empty() {
            let (a, b) = q.slices();
            let chunk: Vec<u8> = a.iter().chain(b).take(777).copied().collect();
            written.extend_from_slice(&chunk);
            q.consume(chunk.len());
        }
        let mut d = rfc4571::Decoder::new(2048, 0);
        let mut got = Vec::new();
        let mut rest = &written[..];
        while !rest.is_empty() {
            let n = d.push(rest);
            rest = &rest[n..];
            while let Some(p) = d.next_packet().unwrap() {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got.len(), 50);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, p)| p == &vec![i as u8 + 1; 300]));
    }
}
