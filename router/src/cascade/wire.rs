//! The cascade wire format: relayed media packets as QUIC datagrams (with fragmentation) and
//! length-prefixed frames for the control stream. Pure: no IO, no clock (time is an input).
//!
//! # Media datagram
//!
//! All integers big-endian. 15 bytes of fixed header, then optional fields in this order:
//!
//! ```text
//! offset size field
//!  0     1    version (high nibble, 1) | kind (low nibble, 0 = media)
//!  1     1    flags: 0x01 marker, 0x02 keyframe, 0x04 audio level present,
//!                    0x08 fragment, 0x10 voice activity; other bits must be 0
//!  2     4    track: link-local track number
//!  6     1    layer: simulcast layer index
//!  7     4    sequence number: low 32 bits of the extended RTP sequence number
//! 11     4    RTP timestamp
//! [15    1    audio level, i8 (RFC 6464 -dBov as str0m gives it), if flag 0x04]
//! [      2    fragment id, u16 (per-sender counter, wraps), if flag 0x08
//!        1    fragment index (0-based)
//!        1    fragment count (2..=255)]
//! ...         RTP payload (or, for a fragment, its slice of the payload)
//! ```
//!
//! A packet that does not fit the connection's current datagram limit
//! (`quinn::Connection::max_datagram_size()`) is split by a [`Fragmenter`] into 2..=255
//! fragments of near-equal size, each carrying the full header plus the fragment fields; the
//! receiver's [`Reassembler`] rebuilds it, with bounded memory. Unknown versions, kinds and flags
//! are errors (a new optional field needs a new flag, which old decoders must not misparse).
//!
//! # Control frames
//!
//! A `u32` big-endian length, then that many bytes (at most [`MAX_FRAME_LEN`]):
//! [`write_frame`] and [`FrameReader`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf as _, BufMut, Bytes, BytesMut};

/// Wire format version (high nibble of the first byte).
pub const WIRE_VERSION: u8 = 1;
/// Datagram kind: relayed media packet (low nibble of the first byte).
pub const KIND_MEDIA: u8 = 0;
/// Length of the fixed part of the media header.
pub const BASE_HEADER_LEN: usize = 15;
/// Length of the fragment fields.
pub const FRAGMENT_FIELDS_LEN: usize = 4;
/// Longest possible media header (audio level and fragment fields present).
pub const MAX_HEADER_LEN: usize = BASE_HEADER_LEN + 1 + FRAGMENT_FIELDS_LEN;
/// Most fragments one packet may be split into.
pub const MAX_FRAGMENTS: usize = 255;

const FLAG_MARKER: u8 = 0x01;
const FLAG_KEYFRAME: u8 = 0x02;
const FLAG_AUDIO_LEVEL: u8 = 0x04;
const FLAG_FRAGMENT: u8 = 0x08;
const FLAG_VOICE_ACTIVITY: u8 = 0x10;
const KNOWN_FLAGS: u8 =
    FLAG_MARKER | FLAG_KEYFRAME | FLAG_AUDIO_LEVEL | FLAG_FRAGMENT | FLAG_VOICE_ACTIVITY;

/// The per-packet header of a relayed media packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MediaHeader {
    /// Link-local track number (assigned by the control protocol).
    pub track: u32,
    /// Simulcast layer index.
    pub layer: u8,
    /// RTP marker bit.
    pub marker: bool,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// Low 32 bits of the extended RTP sequence number.
    pub seq: u32,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Audio level (RFC 6464), if the packet had one.
    pub audio_level: Option<i8>,
    /// Voice activity flag of the audio level extension.
    pub voice_activity: bool,
}

/// Fragment fields: this datagram is fragment `index` of `count` of packet `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    /// Fragment set id (per sender, wrapping).
    pub id: u16,
    /// 0-based index of this fragment.
    pub index: u8,
    /// Number of fragments in the set (2..=255).
    pub count: u8,
}

/// A decoded media datagram. `payload` shares the received buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDatagram {
    /// The packet header.
    pub header: MediaHeader,
    /// Fragment fields, if this datagram is a fragment.
    pub fragment: Option<Fragment>,
    /// The RTP payload, or this fragment's slice of it.
    pub payload: Bytes,
}

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header says.
    #[error("truncated datagram: {len} bytes, header needs {needed}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// Unknown wire version.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// Unknown datagram kind.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// Reserved flag bits set.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// Fragment fields out of range (count < 2 or index >= count).
    #[error("invalid fragment {index}/{count}")]
    BadFragment {
        /// Index field.
        index: u8,
        /// Count field.
        count: u8,
    },
}

/// Why a packet could not be encoded into datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The datagram limit cannot hold a fragment header and one byte of payload.
    #[error("datagram limit {max_datagram_size} is too small")]
    DatagramTooSmall {
        /// The limit given.
        max_datagram_size: usize,
    },
    /// More than [`MAX_FRAGMENTS`] fragments would be needed.
    #[error("payload of {payload_len} bytes needs more than {MAX_FRAGMENTS} fragments")]
    TooManyFragments {
        /// Payload length.
        payload_len: usize,
    },
}

impl MediaHeader {
    /// Encoded header length, with or without fragment fields.
    pub fn encoded_len(&self, fragment: bool) -> usize {
        BASE_HEADER_LEN
            + usize::from(self.audio_level.is_some())
            + if fragment { FRAGMENT_FIELDS_LEN } else { 0 }
    }

    fn put(&self, fragment: Option<Fragment>, out: &mut impl BufMut) {
        let mut flags = 0;
        if self.marker {
            flags |= FLAG_MARKER;
        }
        if self.keyframe {
            flags |= FLAG_KEYFRAME;
        }
        if self.audio_level.is_some() {
            flags |= FLAG_AUDIO_LEVEL;
        }
        if fragment.is_some() {
            flags |= FLAG_FRAGMENT;
        }
        if self.voice_activity {
            flags |= FLAG_VOICE_ACTIVITY;
        }
        out.put_u8((WIRE_VERSION << 4) | KIND_MEDIA);
        out.put_u8(flags);
        out.put_u32(self.track);
        out.put_u8(self.layer);
        out.put_u32(self.seq);
        out.put_u32(self.timestamp);
        if let Some(level) = self.audio_level {
            out.put_i8(level);
        }
        if let Some(f) = fragment {
            out.put_u16(f.id);
            out.put_u8(f.index);
            out.put_u8(f.count);
        }
    }
}

/// Appends one unfragmented media datagram (header + payload) to `out` (a `Vec<u8>` or a
/// `BytesMut`). Use a [`Fragmenter`] when the packet may exceed the datagram limit.
pub fn encode(header: &MediaHeader, payload: &[u8], out: &mut impl BufMut) {
    header.put(None, out);
    out.put_slice(payload);
}

/// Decodes a datagram's header. Returns the header, the fragment fields and the offset of the
/// payload.
pub fn decode_header(
    datagram: &[u8],
) -> Result<(MediaHeader, Option<Fragment>, usize), DecodeError> {
    let len = datagram.len();
    let truncated = |needed| DecodeError::Truncated { len, needed };
    if len < BASE_HEADER_LEN {
        // Report version / kind problems before length ones where we can.
        if let Some(&b0) = datagram.first() {
            check_first_byte(b0)?;
        }
        return Err(truncated(BASE_HEADER_LEN));
    }
    let mut buf = datagram;
    check_first_byte(buf.get_u8())?;
    let flags = buf.get_u8();
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::UnknownFlags(flags & !KNOWN_FLAGS));
    }
    let has_level = flags & FLAG_AUDIO_LEVEL != 0;
    let has_fragment = flags & FLAG_FRAGMENT != 0;
    let needed = BASE_HEADER_LEN
        + usize::from(has_level)
        + if has_fragment { FRAGMENT_FIELDS_LEN } else { 0 };
    if len < needed {
        return Err(truncated(needed));
    }
    let mut header = MediaHeader {
        track: buf.get_u32(),
        layer: buf.get_u8(),
        marker: flags & FLAG_MARKER != 0,
        keyframe: flags & FLAG_KEYFRAME != 0,
        seq: buf.get_u32(),
        timestamp: buf.get_u32(),
        audio_level: None,
        voice_activity: flags & FLAG_VOICE_ACTIVITY != 0,
    };
    if has_level {
        header.audio_level = Some(buf.get_i8());
    }
    let fragment = if has_fragment {
        let f = Fragment {
            id: buf.get_u16(),
            index: buf.get_u8(),
            count: buf.get_u8(),
        };
        if f.count < 2 || f.index >= f.count {
            return Err(DecodeError::BadFragment {
                index: f.index,
                count: f.count,
            });
        }
        Some(f)
    } else {
        None
    };
    Ok((header, fragment, needed))
}

fn check_first_byte(b0: u8) -> Result<(), DecodeError> {
    if b0 >> 4 != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(b0 >> 4));
    }
    if b0 & 0x0f != KIND_MEDIA {
        return Err(DecodeError::UnknownKind(b0 & 0x0f));
    }
    Ok(())
}

/// Decodes a received datagram (as `quinn::Connection::read_datagram` gives it); the payload is
/// a zero-copy slice of `datagram`.
pub fn decode(datagram: Bytes) -> Result<MediaDatagram, DecodeError> {
    let (header, fragment, offset) = decode_header(&datagram)?;
    Ok(MediaDatagram {
        header,
        fragment,
        payload: datagram.slice(offset..),
    })
}

/// Splits packets into datagrams no larger than the connection's limit. One per link (the
/// fragment id counter is per sender).
#[derive(Debug, Default)]
pub struct Fragmenter {
    next_id: u16,
}

impl Fragmenter {
    /// A fragmenter starting at fragment id 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes one packet as one datagram if it fits in `max_datagram_size`, otherwise as
    /// near-equal fragments. Appends the datagrams to `out` (they share one allocation) and
    /// returns how many were appended.
    pub fn encode(
        &mut self,
        header: &MediaHeader,
        payload: &[u8],
        max_datagram_size: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<usize, EncodeError> {
        let whole = header.encoded_len(false) + payload.len();
        if whole <= max_datagram_size {
            let mut buf = BytesMut::with_capacity(whole);
            encode(header, payload, &mut buf);
            out.push(buf.freeze());
            return Ok(1);
        }
        let frag_header = header.encoded_len(true);
        let room = max_datagram_size
            .checked_sub(frag_header)
            .filter(|&r| r > 0)
            .ok_or(EncodeError::DatagramTooSmall { max_datagram_size })?;
        let count = payload.len().div_ceil(room).max(2);
        if count > MAX_FRAGMENTS {
            return Err(EncodeError::TooManyFragments {
                payload_len: payload.len(),
            });
        }
        // Near-equal chunks: the first `payload.len() % count` chunks get one byte more.
        let (base, extra) = (payload.len() / count, payload.len() % count);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut buf = BytesMut::with_capacity(count * frag_header + payload.len());
        let mut rest = payload;
        for index in 0..count {
            let n = base + usize::from(index < extra);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            // `count` <= 255 was checked above, so `index` and `count` fit a u8.
            let fragment = Fragment {
                id,
                index: index as u8,
                count: count as u8,
            };
            header.put(Some(fragment), &mut buf);
            buf.put_slice(chunk);
            out.push(buf.split().freeze());
        }
        Ok(count)
    }
}

/// Counters of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReassemblyStats {
    /// Packets rebuilt from fragments.
    pub completed: u64,
    /// Incomplete sets dropped because they grew older than the age limit.
    pub expired: u64,
    /// Incomplete sets dropped to stay within the set or byte limits.
    pub evicted: u64,
    /// Sets dropped because their fragments disagreed (count or header).
    pub inconsistent: u64,
    /// Duplicate fragments ignored.
    pub duplicates: u64,
}

impl ReassemblyStats {
    /// Packets lost to reassembly (expired, evicted or inconsistent sets).
    pub fn dropped(&self) -> u64 {
        self.expired + self.evicted + self.inconsistent
    }
}

type SetKey = (u16, u32, u32); // (fragment id, track, seq)

#[derive(Debug)]
struct PartialSet {
    key: SetKey,
    header: MediaHeader,
    first_seen: Instant,
    parts: Vec<Option<Bytes>>,
    received: usize,
    bytes: usize,
}

/// Rebuilds fragmented packets. Bounded: at most `max_sets` incomplete sets and `max_bytes` of
/// buffered payload; a set older than `max_age` is dropped. Sans-IO: time is passed in.
#[derive(Debug)]
pub struct Reassembler {
    sets: VecDeque<PartialSet>,
    recent: VecDeque<SetKey>,
    bytes: usize,
    max_sets: usize,
    max_age: Duration,
    max_bytes: usize,
    stats: ReassemblyStats,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reassembler {
    /// Default limit on incomplete sets.
    pub const DEFAULT_MAX_SETS: usize = 64;
    /// Default age after which an incomplete set is dropped.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(500);
    /// Default limit on buffered payload bytes.
    pub const DEFAULT_MAX_BYTES: usize = 4 << 20;
    /// How many completed set keys are remembered to recognise late duplicates.
    const RECENT: usize = 64;

    /// A reassembler with the default limits (64 sets, 500 ms, 4 MiB).
    pub fn new() -> Self {
        Self::with_limits(
            Self::DEFAULT_MAX_SETS,
            Self::DEFAULT_MAX_AGE,
            Self::DEFAULT_MAX_BYTES,
        )
    }

    /// A reassembler with explicit limits (`max_sets` at least 1).
    pub fn with_limits(max_sets: usize, max_age: Duration, max_bytes: usize) -> Self {
        Self {
            sets: VecDeque::new(),
            recent: VecDeque::with_capacity(Self::RECENT),
            bytes: 0,
            max_sets: max_sets.max(1),
            max_age,
            max_bytes,
            stats: ReassemblyStats::default(),
        }
    }

    /// Feeds one decoded datagram. An unfragmented datagram comes straight back; a fragment
    /// returns the whole packet once its set is complete, `None` before.
    pub fn push(&mut self, now: Instant, datagram: MediaDatagram) -> Option<MediaDatagram> {
        self.expire(now);
        let Some(frag) = datagram.fragment else {
            return Some(datagram);
        };
        let key = (frag.id, datagram.header.track, datagram.header.seq);
        if self.recent.contains(&key) {
            self.stats.duplicates += 1;
            return None;
        }
        let pos = match self.sets.iter().position(|s| s.key == key) {
            Some(pos) => pos,
            None => {
                while self.sets.len() >= self.max_sets {
                    self.evict_oldest();
                }
                self.sets.push_back(PartialSet {
                    key,
                    header: datagram.header,
                    first_seen: now,
                    parts: vec![None; usize::from(frag.count)],
                    received: 0,
                    bytes: 0,
                });
                self.sets.len() - 1
            }
        };
        let set = &mut self.sets[pos];
        if set.parts.len() != usize::from(frag.count) || set.header != datagram.header {
            self.remove(pos);
            self.stats.inconsistent += 1;
            return None;
        }
        let slot = &mut set.parts[usize::from(frag.index)];
        if slot.is_some() {
            self.stats.duplicates += 1;
            return None;
        }
        let len = datagram.payload.len();
        *slot = Some(datagram.payload);
        set.received += 1;
        set.bytes += len;
        self.bytes += len;

        if set.received == set.parts.len() {
            let set = self.remove(pos);
            let mut payload = BytesMut::with_capacity(set.bytes);
            for part in set.parts.into_iter().flatten() {
                payload.put_slice(&part);
            }
            if self.recent.len() == Self::RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(key);
            self.stats.completed += 1;
            return Some(MediaDatagram {
                header: set.header,
                fragment: None,
                payload: payload.freeze(),
            });
        }
        while self.bytes > self.max_bytes && !self.sets.is_empty() {
            self.evict_oldest();
        }
        None
    }

    /// Drops incomplete sets older than the age limit (also done by [`push`](Self::push)).
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.max_age;
        let before = self.sets.len();
        let mut freed = 0;
        self.sets.retain(|s| {
            let keep = now.saturating_duration_since(s.first_seen) <= max_age;
            if !keep {
                freed += s.bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.stats.expired += (before - self.sets.len()) as u64;
    }

    /// When the oldest incomplete set expires, if any (for a driver's timer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sets.iter().map(|s| s.first_seen + self.max_age).min()
    }

    /// Incomplete sets held.
    pub fn pending_sets(&self) -> usize {
        self.sets.len()
    }

    /// Payload bytes held in incomplete sets.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Counters.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    fn remove(&mut self, pos: usize) -> PartialSet {
        // `pos` always comes from a search of `self.sets` just before.
        let set = self.sets.remove(pos).expect("set index in range");
        self.bytes -= set.bytes;
        set
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .sets
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.first_seen)
            .map(|(i, _)| i);
        if let Some(pos) = oldest {
            self.remove(pos);
            self.stats.evicted += 1;
        }
    }
}

/// Largest control frame accepted or written.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Length of a frame's length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// A control frame is larger than [`MAX_FRAME_LEN`] (or the reader's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {max}")]
pub struct FrameTooLarge {
    /// Length of the frame.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// Appends a `u32`-length-prefixed frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, frame: &[u8]) -> Result<(), FrameTooLarge> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(FRAME_PREFIX_LEN + frame.len());
    // Fits: checked against MAX_FRAME_LEN above.
    out.put_u32(frame.len() as u32);
    out.put_slice(frame);
    Ok(())
}

/// Splits a byte stream into `u32`-length-prefixed frames, whatever the read boundaries.
///
/// Feed it what the stream gives ([`push`](Self::push)), then take frames
/// ([`next_frame`](Self::next_frame)) until `Ok(None)`. After a [`FrameTooLarge`] the stream is
/// out of sync: the error repeats and the caller should reset the stream.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_len: usize,
    failed: Option<FrameTooLarge>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader accepting frames up to [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_len(MAX_FRAME_LEN)
    }

    /// A reader accepting frames up to `max_len` bytes.
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_len,
            failed: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Some(prefix) = self.buf.get(..FRAME_PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_len {
            let e = FrameTooLarge {
                len,
                max: self.max_len,
            };
            self.failed = Some(e);
            self.buf = BytesMut::new();
            return Err(e);
        }
        if self.buf.len() < FRAME_PREFIX_LEN + len {
            self.buf.reserve(FRAME_PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};

    fn header() -> MediaHeader {
        MediaHeader {
            track: 0xdead_beef,
            layer: 2,
            marker: true,
            keyframe: false,
            seq: 70_000,
            timestamp: 0x1234_5678,
            audio_level: None,
            voice_activity: false,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let h = header();
        let mut v = Vec::new();
        encode(&h, b"payload", &mut v);
        assert_eq!(v.len(), BASE_HEADER_LEN + 7);
        assert_eq!(v[0], 0x10);
        assert_eq!(v[1], FLAG_MARKER);
        assert_eq!(&v[2..6], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(v[6], 2);
        assert_eq!(&v[7..11], &70_000u32.to_be_bytes());
        assert_eq!(&v[11..15], &[0x12, 0x34, 0x56, 0x78]);
        let d = decode(Bytes::from(v)).unwrap();
        assert_eq!(d.header, h);
        assert_eq!(d.fragment, None);
        assert_eq!(&d.payload[..], b"payload");

        let audio = MediaHeader {
            audio_level: Some(-42),
            voice_activity: true,
            keyframe: true,
            marker: false,
            ..h
        };
        let mut b = BytesMut::new();
        encode(&audio, b"", &mut b);
        assert_eq!(b.len(), audio.encoded_len(false));
        assert_eq!(b.len(), BASE_HEADER_LEN + 1);
        let d = decode(b.freeze()).unwrap();
        assert_eq!(d.header, audio);
        assert!(d.payload.is_empty());
    }

    #[test]
    fn payload_is_zero_copy() {
        let mut v = Vec::new();
        encode(&header(), &[7; 100], &mut v);
        let bytes = Bytes::from(v);
        let d = decode(bytes.clone()).unwrap();
        assert_eq!(d.payload.as_ptr(), bytes[BASE_HEADER_LEN..].as_ptr());
    }

    #[test]
    fn malformed_input_errors() {
        assert_eq!(
            decode_header(&[]),
            Err(DecodeError::Truncated { len: 0, needed: 15 })
        );
        assert_eq!(
            decode_header(&[0x20]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(decode_header(&[0x13]), Err(DecodeError::UnknownKind(3)));
        assert_eq!(
            decode_header(&[0x10, 0]),
            Err(DecodeError::Truncated { len: 2, needed: 15 })
        );
        let mut v = Vec::new();
        encode(&header(), b"", &mut v);
        v[1] |= 0x80;
        assert_eq!(decode_header(&v), Err(DecodeError::UnknownFlags(0x80)));
        // Flags announce optional fields the datagram does not have.
        let mut v = Vec::new();
        encode(&header(), b"", &mut v);
        v[1] |= FLAG_AUDIO_LEVEL | FLAG_FRAGMENT;
        assert_eq!(
            decode_header(&v),
            Err(DecodeError::Truncated {
                len: 15,
                needed: 20
            })
        );
        // Fragment fields out of range.
        for (index, count) in [(0u8, 0u8), (0, 1), (2, 2), (255, 255)] {
            let mut v = Vec::new();
            header().put(
                Some(Fragment {
                    id: 1,
                    index,
                    count,
                }),
                &mut v,
            );
            assert_eq!(
                decode_header(&v),
                Err(DecodeError::BadFragment { index, count })
            );
        }
    }

    fn fragments(payload: &[u8], max: usize) -> Vec<MediaDatagram> {
        let mut f = Fragmenter::new();
        let mut out = Vec::new();
        f.encode(&header(), payload, max, &mut out).unwrap();
        out.into_iter()
            .inspect(|d| assert!(d.len() <= max))
            .map(|d| decode(d).unwrap())
            .collect()
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn small_packets_are_not_fragmented() {
        let p = payload(100);
        let ds = fragments(&p, 115);
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].fragment, None);
        assert_eq!(&ds[0].payload[..], &p[..]);
    }

    #[test]
    fn split_and_reassemble() {
        let t0 = Instant::now();
        for (len, max) in [(1200, 1200), (1200, 600), (5000, 100), (10, 20), (101, 115)] {
            let p = payload(len);
            let ds = fragments(&p, max);
            assert!(ds.len() >= 2, "{len}/{max}");
            let sizes: Vec<_> = ds.iter().map(|d| d.payload.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            let mut r = Reassembler::new();
            let n = ds.len();
            for (i, d) in ds.into_iter().enumerate() {
                let got = r.push(t0, d);
                if i + 1 < n {
                    assert!(got.is_none());
                } else {
                    let got = got.unwrap();
                    assert_eq!(got.header, header());
                    assert_eq!(got.fragment, None);
                    assert_eq!(&got.payload[..], &p[..]);
                }
            }
            assert_eq!(r.stats().completed, 1);
            assert_eq!(r.pending_sets(), 0);
            assert_eq!(r.pending_bytes(), 0);
        }
    }

    #[test]
    fn encode_limits() {
        let mut f = Fragmenter::new();
        let mut out = Vec::new();
        assert_eq!(
            f.encode(&header(), &payload(100), 19, &mut out),
            Err(EncodeError::DatagramTooSmall {
                max_datagram_size: 19
            })
        );
        // 255 fragments of 1 byte is the most.
        assert_eq!(f.encode(&header(), &payload(255), 20, &mut out), Ok(255));
        assert_eq!(
            f.encode(&header(), &payload(256), 20, &mut out),
            Err(EncodeError::TooManyFragments { payload_len: 256 })
        );
        // Ids advance per fragmented packet and wrap.
        let mut f = Fragmenter { next_id: u16::MAX };
        let mut out = Vec::new();
        f.encode(&header(), &payload(50), 60, &mut out).unwrap();
        f.encode(&header(), &payload(50), 60, &mut out).unwrap();
        let ids: Vec<_> = out
            .into_iter()
            .map(|d| decode(d).unwrap().fragment.unwrap().id)
            .collect();
        assert_eq!(ids, vec![u16::MAX, u16::MAX, 0, 0]);
    }

    #[test]
    fn reordering_and_duplicates() {
        let t0 = Instant::now();
        let p = payload(3000);
        let mut ds = fragments(&p, 500);
        assert_eq!(ds.len(), 7);
        ds.reverse();
        ds.swap(2, 5);
        let mut r = Reassembler::new();
        let mut done = Vec::new();
        for d in &ds {
            // Each fragment arrives twice; the copy of the completing one comes after the
            // packet was rebuilt and is recognised too.
            done.extend(r.push(t0, d.clone()));
            done.extend(r.push(t0, d.clone()));
        }
        assert_eq!(done.len(), 1);
        assert_eq!(&done[0].payload[..], &p[..]);
        assert_eq!(r.pending_sets(), 0);
        let s = r.stats();
        assert_eq!(s.completed, 1);
        assert_eq!(s.duplicates, 7);
        assert_eq!(s.dropped(), 0);
    }

    #[test]
    fn interleaved_sets() {
        let t0 = Instant::now();
        let mut f = Fragmenter::new();
        let mut out = Vec::new();
        let (p1, p2) = (payload(900), payload(1300));
        let h2 = MediaHeader {
            track: 9,
            seq: 1,
            ..header()
        };
        f.encode(&header(), &p1, 400, &mut out).unwrap();
        let n1 = out.len();
        f.encode(&h2, &p2, 400, &mut out).unwrap();
        let ds: Vec<_> = out.into_iter().map(|d| decode(d).unwrap()).collect();
        let (a, b) = ds.split_at(n1);
        let mut r = Reassembler::new();
        let mut got = Vec::new();
        for i in 0..a.len().max(b.len()) {
            for side in [a, b] {
                if let Some(d) = side.get(i) {
                    got.extend(r.push(t0, d.clone()));
                }
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].payload[..], &p1[..]);
        assert_eq!(got[1].header, h2);
        assert_eq!(&got[1].payload[..], &p2[..]);
    }

    #[test]
    fn lost_fragment_expires() {
        let t0 = Instant::now();
        let p = payload(2000);
        let mut ds = fragments(&p, 500);
        ds.remove(1);
        let mut r = Reassembler::new();
        for d in ds {
            assert!(r.push(t0, d).is_none());
        }
        assert_eq!(r.pending_sets(), 1);
        assert!(r.pending_bytes() > 0);
        assert_eq!(r.poll_timeout(), Some(t0 + Reassembler::DEFAULT_MAX_AGE));
        r.expire(t0 + Duration::from_millis(400));
        assert_eq!(r.pending_sets(), 1);
        r.expire(t0 + Duration::from_millis(501));
        assert_eq!(r.pending_sets(), 0);
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.stats().expired, 1);
        assert_eq!(r.stats().dropped(), 1);
        // Expiry also happens on push: a late fragment of the expired set starts a new one.
        let late = fragments(&p, 500).remove(1);
        assert!(r.push(t0 + Duration::from_secs(1), late).is_none());
        assert_eq!(r.pending_sets(), 1);
    }

    #[test]
    fn bounded_sets_and_bytes() {
        let t0 = Instant::now();
        let mut f = Fragmenter::new();
        let mut r = Reassembler::new();
        // 100 sets, each missing its last fragment.
        for seq in 0..100u32 {
            let mut out = Vec::new();
            let h = MediaHeader { seq, ..header() };
            f.encode(&h, &payload(1000), 600, &mut out).unwrap();
            let d = decode(out.remove(0)).unwrap();
            assert!(r
                .push(t0 + Duration::from_millis(u64::from(seq)), d)
                .is_none());
            assert!(r.pending_sets() <= Reassembler::DEFAULT_MAX_SETS);
        }
        assert_eq!(r.pending_sets(), 64);
        assert_eq!(r.stats().evicted, 36);

        // Byte bound.
        let mut r = Reassembler::with_limits(64, Duration::from_secs(1), 10_000);
        for seq in 0..20u32 {
            let mut out = Vec::new();
            let h = MediaHeader { seq, ..header() };
            f.encode(&h, &payload(6000), 3000, &mut out).unwrap();
            let d = decode(out.remove(0)).unwrap();
            r.push(t0, d);
            assert!(r.pending_bytes() <= 10_000);
        }
        assert!(r.stats().evicted > 0);
    }

    #[test]
    fn inconsistent_fragments_drop_the_set() {
        let t0 = Instant::now();
        let ds = fragments(&payload(1000), 400);
        let mut r = Reassembler::new();
        assert!(r.push(t0, ds[0].clone()).is_none());
        let mut bad = ds[1].clone();
        bad.header.layer = 0;
        assert!(r.push(t0, bad).is_none());
        assert_eq!(r.stats().inconsistent, 1);
        assert_eq!(r.pending_sets(), 0);
        let mut bad = ds[1].clone();
        bad.fragment = Some(Fragment {
            count: 9,
            ..bad.fragment.unwrap()
        });
        assert!(r.push(t0, ds[0].clone()).is_none());
        assert!(r.push(t0, bad).is_none());
        assert_eq!(r.stats().inconsistent, 2);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn unfragmented_passes_through() {
        let mut r = Reassembler::new();
        let mut v = Vec::new();
        encode(&header(), b"x", &mut v);
        let d = decode(Bytes::from(v)).unwrap();
        assert_eq!(r.push(Instant::now(), d.clone()), Some(d));
    }

    #[test]
    fn frames_with_partial_reads() {
        let frames: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), payload(70_000), payload(3)];
        let mut stream = Vec::new();
        for f in &frames {
            write_frame(&mut stream, f).unwrap();
        }
        for chunk in [1, 2, 3, 5, 4096, stream.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                r.push(piece);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, frames, "chunk {chunk}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn frame_size_limit() {
        let mut out = Vec::new();
        assert!(write_frame(&mut out, &vec![0; MAX_FRAME_LEN]).is_ok());
        let big = vec![0; MAX_FRAME_LEN + 1];
        assert_eq!(
            write_frame(&mut Vec::new(), &big),
            Err(FrameTooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        // Exactly the limit is read back.
        let mut r = FrameReader::new();
        r.push(&out);
        assert_eq!(r.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
        // Beyond it: error as soon as the prefix is seen, and it sticks.
        let mut r = FrameReader::new();
        r.push(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes()[..3]);
        assert_eq!(r.next_frame(), Ok(None));
        r.push(&[1]);
        assert!(r.next_frame().is_err());
        r.push(&[0; 10]);
        assert!(r.next_frame().is_err());
        assert_eq!(r.buffered(), 0);
        // A custom limit.
        let mut r = FrameReader::with_max_len(3);
        let mut s = Vec::new();
        write_frame(&mut s, b"abcd").unwrap();
        r.push(&s);
        assert_eq!(r.next_frame(), Err(FrameTooLarge { len: 4, max: 3 }));
    }

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
                    b[1] &= KNOWN_FLAGS;
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
                d.header.put(d.fragment, &mut again);
                again.extend_from_slice(&d.payload);
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
}
