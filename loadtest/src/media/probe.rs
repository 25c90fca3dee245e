//! The probe header embedded in every synthetic media payload.
//!
//! A probe lets a receiver measure loss and end-to-end latency exactly, whatever
//! happened on the way (SFU forwarding, layer switches, retransmissions):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    magic 0x4b534b44 ("KSKD")                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          source_tag                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                   packet_index (64 bits)                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                   sent_micros (64 bits)                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! All fields are big endian. Where the probe sits depends on the codec:
//!
//! * Opus: at payload offset 0.
//! * VP8: right after the VP8 payload descriptor, and after the VP8 payload header
//!   (3-byte frame tag, plus 7 bytes start code and dimensions on keyframes) on the
//!   first packet of a frame.
//! * H.264: after the NAL unit header (single NAL unit packets), after the FU indicator
//!   and FU header (FU-A), and in STAP-A packets inside an aggregated SEI NAL unit
//!   (`user_data_unregistered`, after the NAL header, payload type, payload size and
//!   16-byte UUID).
//!
//! `sent_micros` is the time the source produced the packet, in microseconds since the
//! caller-provided epoch [`Instant`](std::time::Instant) (see
//! [`ClientConfig::epoch`](crate::ClientConfig::epoch)). All clients of one process share
//! that epoch, so `latency = now - (epoch + sent_micros)`.

use super::h264 as h264_fmt;

/// `"KSKD"` in ASCII.
pub const PROBE_MAGIC: u32 = 0x4b53_4b44;

/// Encoded size of a probe in bytes.
pub const PROBE_LEN: usize = 24;

/// The probe header carried in each synthetic media payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    /// Identifies the source and layer (see [`source_tag`]).
    pub source_tag: u32,
    /// Per source-tag counter, starting at 0, incremented for every packet, never reused.
    pub packet_index: u64,
    /// Production time in microseconds since the process epoch.
    pub sent_micros: u64,
}

/// Builds a source tag: `client` (24 bits), `track` (4 bits), `layer` (4 bits).
pub fn source_tag(client: u32, track: u8, layer: u8) -> u32 {
    (client << 8) | (u32::from(track & 0x0f) << 4) | u32::from(layer & 0x0f)
}

/// Splits a source tag into `(client, track, layer)`.
pub fn split_source_tag(tag: u32) -> (u32, u8, u8) {
    (tag >> 8, ((tag >> 4) & 0x0f) as u8, (tag & 0x0f) as u8)
}

impl Probe {
    /// Writes the probe at the start of `buf`. Returns false (and writes nothing) if
    /// `buf` is shorter than [`PROBE_LEN`].
    pub fn write(&self, buf: &mut [u8]) -> bool {
        let Some(out) = buf.get_mut(..PROBE_LEN) else {
            return false;
        };
        out[0..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.source_tag.to_be_bytes());
        out[8..16].copy_from_slice(&self.packet_index.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_micros.to_be_bytes());
        true
    }

    /// Reads a probe at the start of `buf` (magic checked).
    pub fn read(buf: &[u8]) -> Option<Probe> {
        let b = buf.get(..PROBE_LEN)?;
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != PROBE_MAGIC {
            return None;
        }
        let mut tag = [0; 4];
        tag.copy_from_slice(&b[4..8]);
        let mut idx = [0; 8];
        idx.copy_from_slice(&b[8..16]);
        let mut sent = [0; 8];
        sent.copy_from_slice(&b[16..24]);
        Some(Probe {
            source_tag: u32::from_be_bytes(tag),
            packet_index: u64::from_be_bytes(idx),
            sent_micros: u64::from_be_bytes(sent),
        })
    }

    /// Finds the probe in an RTP payload of any of the supported codecs: tries the Opus
    /// layout, then VP8, then H.264. The magic makes a false match practically
    /// impossible; use the codec-specific functions when the codec is known.
    pub fn find(payload: &[u8]) -> Option<Probe> {
        Self::find_opus(payload)
            .or_else(|| Self::find_vp8(payload))
            .or_else(|| Self::find_h264(payload))
    }

    /// Probe of an Opus payload (at offset 0).
    pub fn find_opus(payload: &[u8]) -> Option<Probe> {
        Self::read(payload)
    }

    /// Probe of a VP8 payload (after descriptor and payload header).
    pub fn find_vp8(payload: &[u8]) -> Option<Probe> {
        let offset = vp8_probe_offset(payload)?;
        Self::read(payload.get(offset..)?)
    }

    /// Probe of an H.264 payload (single NAL unit, STAP-A or FU-A).
    pub fn find_h264(payload: &[u8]) -> Option<Probe> {
        let first = *payload.first()?;
        match first & 0x1f {
            // Single NAL unit packet: after the NAL header.
            1..=23 => Self::read(payload.get(1..)?),
            h264_fmt::STAP_A => {
                let mut offset = 1;
                while offset + 2 <= payload.len() {
                    let size =
                        usize::from(u16::from_be_bytes([payload[offset], payload[offset + 1]]));
                    offset += 2;
                    let nalu = payload.get(offset..offset + size)?;
                    if let Some(p) = probe_in_nalu(nalu) {
                        return Some(p);
                    }
                    offset += size;
                }
                None
            }
            h264_fmt::FU_A => Self::read(payload.get(2..)?),
            _ => None,
        }
    }
}

/// A probe directly after the NAL header, or inside a `user_data_unregistered` SEI.
fn probe_in_nalu(nalu: &[u8]) -> Option<Probe> {
    let header = *nalu.first()?;
    if header & 0x1f == h264_fmt::NAL_SEI {
        return Probe::read(nalu.get(h264_fmt::SEI_PROBE_OFFSET..)?);
    }
    Probe::read(nalu.get(1..)?)
}

/// Length of the VP8 payload descriptor at the start of `payload` (RFC 7741 §4.2).
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    let mut idx = 1;
    if b0 & 0x80 != 0 {
        let ext = *payload.get(idx)?;
        idx += 1;
        if ext & 0x80 != 0 {
            let pic = *payload.get(idx)?;
            idx += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            idx += 1;
        }
        if ext & 0x30 != 0 {
            idx += 1;
        }
    }
    (idx <= payload.len()).then_some(idx)
}

/// Offset of the probe in a VP8 payload: descriptor, then the payload header on the
/// first packet of a frame (S=1, PID=0).
fn vp8_probe_offset(payload: &[u8]) -> Option<usize> {
    let desc = vp8_descriptor_len(payload)?;
    let b0 = payload[0];
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    if !start {
        return Some(desc);
    }
    let tag = *payload.get(desc)?;
    let keyframe = tag & 0x01 == 0;
    Some(desc + if keyframe { 10 } else { 3 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Probe {
        Probe {
            source_tag: source_tag(0x00ab_cdef, 3, 2),
            packet_index: 0x0102_0304_0506_0708,
            sent_micros: 987_654_321,
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let mut buf = [0u8; 40];
        assert!(p.write(&mut buf));
        assert_eq!(&buf[..4], b"KSKD");
        assert_eq!(Probe::read(&buf), Some(p));
        assert_eq!(Probe::find(&buf), Some(p));
    }

    #[test]
    fn short_buffer_and_bad_magic() {
        let p = sample();
        let mut short = [0u8; PROBE_LEN - 1];
        assert!(!p.write(&mut short));
        assert_eq!(Probe::read(&short), None);
        let mut buf = [0u8; PROBE_LEN];
        p.write(&mut buf);
        buf[0] ^= 1;
        assert_eq!(Probe::read(&buf), None);
    }

    #[test]
    fn source_tag_split() {
        let t = source_tag(0x12_3456, 5, 7);
        assert_eq!(split_source_tag(t), (0x12_3456, 5, 7));
    }

    #[test]
    fn vp8_descriptor_lengths() {
        // No extension.
        assert_eq!(vp8_descriptor_len(&[0x10, 0]), Some(1));
        // X, I with 15-bit id, L, T.
        assert_eq!(
            vp8_descriptor_len(&[0x90, 0xe0, 0x80, 0x01, 0x05, 0x40]),
            Some(6)
        );
        // X, I with 7-bit id.
        assert_eq!(vp8_descriptor_len(&[0x90, 0x80, 0x01]), Some(3));
        assert_eq!(vp8_descriptor_len(&[0x90]), None);
    }
}
