//! The media datagram: one relayed RTP payload under a small header, sent as a QUIC datagram.
//! Pure: no IO, no clock.
//!
//! All integers big-endian. 15 bytes of fixed header, then optional fields in this order:
//!
//! ```text
//! offset size field
//!  0     1    version (high nibble, 1) | kind (low nibble, 0 = media)
//!  1     1    flags: 0x01 marker, 0x02 keyframe, 0x04 audio level present,
//!                    0x08 fragment, 0x10 voice activity, 0x20 resync (packets of this
//!                    track and layer before it are lost for good); other bits must be 0
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
//! A packet that does not fit the connection's current datagram limit (quinn's
//! `Connection::max_datagram_size()`) is split by a [`Fragmenter`](super::fragment::Fragmenter)
//! into 2..=255 fragments of near-equal size, each carrying the full header plus the fragment
//! fields; the receiver's [`Reassembler`](super::fragment::Reassembler) rebuilds it, with bounded
//! memory. Unknown versions, kinds and flags are errors (a new optional field needs a new flag,
//! which old decoders must not misparse).

use bytes::{Buf as _, BufMut, Bytes};

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
const FLAG_RESYNC: u8 = 0x20;
const KNOWN_FLAGS: u8 = FLAG_MARKER
    | FLAG_KEYFRAME
    | FLAG_AUDIO_LEVEL
    | FLAG_FRAGMENT
    | FLAG_VOICE_ACTIVITY
    | FLAG_RESYNC;

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
    /// Packets of this track and layer before this one are lost for good (a link on the way
    /// broke, or a gap could not be repaired): subscribers resume at a keyframe.
    pub resync: bool,
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

    pub(crate) fn put(&self, fragment: Option<Fragment>, out: &mut impl BufMut) {
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
        if self.resync {
            flags |= FLAG_RESYNC;
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
/// `BytesMut`). Use a [`Fragmenter`](super::fragment::Fragmenter) when the packet may exceed the
/// datagram limit.
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
        resync: flags & FLAG_RESYNC != 0,
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
impl MediaDatagram {
    /// Appends this datagram as it travels (header, fragment fields, payload) to `out`.
    pub fn write(&self, out: &mut impl BufMut) {
        self.header.put(self.fragment, out);
        out.put_slice(&self.payload);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;

    /// A header with every fixed field set (shared by the codec tests).
    pub(crate) fn header() -> MediaHeader {
        MediaHeader {
            track: 0xdead_beef,
            layer: 2,
            marker: true,
            keyframe: false,
            seq: 70_000,
            timestamp: 0x1234_5678,
            audio_level: None,
            voice_activity: false,
            resync: false,
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
            resync: true,
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
}
