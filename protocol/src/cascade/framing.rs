//! Framing of the control stream: a `u32` big-endian length, then that many bytes (at most
//! [`MAX_FRAME_LEN`]), written by [`write_frame`] and split again by a [`FrameReader`] whatever
//! the read boundaries. Each frame holds one protobuf `Frame` of `kaskade.cascade.v1`.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
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
    use crate::cascade::fragment::tests::payload;

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
}
