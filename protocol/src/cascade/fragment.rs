//! Fragmentation of media packets larger than a connection's datagram limit, and their
//! reassembly with bounded memory. Sans-IO: time is an input.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::datagram::{encode, EncodeError, Fragment, MediaDatagram, MediaHeader, MAX_FRAGMENTS};
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cascade::datagram::decode;
    use crate::cascade::datagram::tests::header;

    fn fragments(payload: &[u8], max: usize) -> Vec<MediaDatagram> {
        let mut f = Fragmenter::new();
        let mut out = Vec::new();
        f.encode(&header(), payload, max, &mut out).unwrap();
        out.into_iter()
            .inspect(|d| assert!(d.len() <= max))
            .map(|d| decode(d).unwrap())
            .collect()
    }

    /// A payload whose bytes differ from their neighbours (shared by the codec tests).
    pub(crate) fn payload(n: usize) -> Vec<u8> {
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
}
