//! RFC 4571 framing: STUN, DTLS, RTP and RTCP packets over a byte stream
//! (ICE-TCP, RFC 6544), each packet after its length as a 16-bit big-endian
//! number.
//!
//! [`Decoder`] splits what a stream delivers into packets inside one fixed
//! buffer: reads land in its spare space ([`Decoder::spare`]) and packets are
//! borrowed from it ([`Decoder::next_packet`]), so a packet costs neither a
//! copy nor an allocation. [`header`] is the prefix of an outgoing packet.
//! Shared by the router and the load tester's clients.

/// Length of the length prefix.
pub const PREFIX_LEN: usize = 2;
/// The largest packet the framing can carry.
pub const MAX_PACKET: usize = u16::MAX as usize;

/// Why a stream cannot be read on: it is out of sync (or hostile), and the
/// caller should close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A packet longer than the decoder's limit.
    #[error("a packet of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A packet of length 0 (no STUN, DTLS or RTP packet is empty).
    #[error("an empty packet")]
    Empty,
}

/// The length prefix of a packet of `len` bytes; `None` if it does not fit
/// the framing (empty, or longer than [`MAX_PACKET`]).
pub fn header(len: usize) -> Option<[u8; PREFIX_LEN]> {
    u16::try_from(len)
        .ok()
        .filter(|l| *l > 0)
        .map(u16::to_be_bytes)
}

/// Splits a byte stream into packets, whatever the read boundaries. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Decoder {
    buf: Box<[u8]>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    max: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder of packets up to `max_packet` bytes (at most
    /// [`MAX_PACKET`]) with a buffer of `capacity` bytes (at least one
    /// largest packet with its prefix; more lets one read take several).
    pub fn new(max_packet: usize, capacity: usize) -> Self {
        let max = max_packet.clamp(1, MAX_PACKET);
        let capacity = capacity.max(PREFIX_LEN + max);
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            max,
            failed: None,
        }
    }

    /// Where the next read goes (never empty while the decoder works: a
    /// complete packet is always taken before more is read). Moves the
    /// unparsed bytes to the front when the tail has no room for a whole
    /// packet (at most one packet's worth is moved).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < PREFIX_LEN + self.max {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Decoder::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies in as much of `data` as fits; returns how much that was.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }

    /// The bytes received but not yet taken as packets.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The next complete packet; `Ok(None)` while more bytes are needed.
    /// After an error the stream is out of sync and the error repeats.
    pub fn next_packet(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let have = &self.buf[self.start..self.end];
        let Some(prefix) = have.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        let error = if len == 0 {
            Some(FrameError::Empty)
        } else if len > self.max {
            Some(FrameError::TooLarge { len, max: self.max })
        } else {
            None
        };
        if let Some(e) = error {
            self.failed = Some(e);
            return Err(e);
        }
        if have.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let at = self.start + PREFIX_LEN;
        self.start = at + len;
        Ok(Some(&self.buf[at..at + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            out.extend_from_slice(&header(p.len()).unwrap());
            out.extend_from_slice(p);
        }
        out
    }

    fn drain(d: &mut Decoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = d.next_packet().unwrap() {
            out.push(p.to_vec());
        }
        out
    }

    #[test]
    fn packets_come_out_whole_whatever_the_read_boundaries() {
        let packets: Vec<Vec<u8>> = (1..60u8).map(|i| vec![i; usize::from(i) * 20]).collect();
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let stream = framed(&refs);
        for chunk in [1, 2, 3, 7, 100, 1500, 5000] {
            let mut d = Decoder::new(2048, 4096);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                let mut rest = c;
                while !rest.is_empty() {
                    let n = d.push(rest);
                    rest = &rest[n..];
                    got.extend(drain(&mut d));
                }
            }
            assert_eq!(got, packets, "reads of {chunk} bytes");
            assert!(d.buffered().is_empty());
        }
    }

    #[test]
    fn an_oversized_or_empty_packet_stops_the_stream() {
        let mut d = Decoder::new(1500, 0);
        d.push(&[0x05, 0xdd]); // 1501
        let e = FrameError::TooLarge {
            len: 1501,
            max: 1500,
        };
        assert_eq!(d.next_packet(), Err(e));
        assert_eq!(d.next_packet(), Err(e), "the error repeats");
        let mut d = Decoder::new(1500, 0);
        d.push(&[0, 0, 1, 2]);
        assert_eq!(d.next_packet(), Err(FrameError::Empty));
    }

    #[test]
    fn the_buffer_never_needs_more_than_one_packet_and_its_prefix() {
        let mut d = Decoder::new(100, 0);
        let stream = framed(&[&[1; 100], &[2; 100], &[3; 50]]);
        let mut rest = &stream[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let n = d.push(rest);
            assert!(n > 0, "room for more once the packets are taken");
            rest = &rest[n..];
            got.extend(drain(&mut d));
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn headers_fit_the_framing_only() {
        assert_eq!(header(1), Some([0, 1]));
        assert_eq!(header(MAX_PACKET), Some([0xff, 0xff]));
        assert_eq!(header(0), None);
        assert_eq!(header(MAX_PACKET + 1), None);
    }
}
