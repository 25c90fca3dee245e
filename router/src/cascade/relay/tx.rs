//! Relay send: packets of tracks announced on one link become media datagrams, and NACKs from
//! the far side are answered from a repair cache. Sans-IO: packets, NACKs and the connection's
//! current datagram limit in; datagrams and control frames (the codec, before a track's first
//! packet) out.

use crate::cascade::codec;
use crate::media::types::MediaPacket;
use bytes::Bytes;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::datagram::MediaHeader;
use kaskade_protocol::cascade::fragment::Fragmenter;
use kaskade_protocol::TrackId;
use std::collections::{HashMap, VecDeque};
use str0m::media::Pt;

/// Packets kept per (track, layer) to answer NACKs from the far side.
pub const CACHE_PACKETS: usize = 512;

/// What the send side gives its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum TxOutput {
    /// A datagram to send (`repair`: a retransmission).
    Datagram {
        /// The bytes.
        data: Bytes,
        /// Sent again because the far side missed it.
        repair: bool,
    },
    /// A control frame (a track's codec).
    Frame(cpb::frame::Msg),
}

/// What the send side counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Packets of announced tracks handed in.
    pub packets: u64,
    /// Packets not sent: the link is down, the packet cannot be split small enough, or its
    /// codec cannot be described on the link.
    pub dropped: u64,
    /// Sequence numbers the far side asked for again.
    pub nacked: u64,
    /// Of those, no longer (or never) in the cache.
    pub not_cached: u64,
}

/// The last [`CACHE_PACKETS`] packets of one (track, layer), by sequence number: a ring indexed
/// by the sequence number, so a lookup is one probe and storing reuses the slot's buffer.
#[derive(Debug)]
pub struct RepairCache {
    slots: Vec<Option<(u32, Vec<Bytes>)>>,
}

impl Default for RepairCache {
    fn default() -> Self {
        Self::new(CACHE_PACKETS)
    }
}

impl RepairCache {
    /// A cache of `n` packets (at least 1).
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| None).collect(),
        }
    }

    fn slot(&self, seq: u32) -> usize {
        seq as usize % self.slots.len()
    }

    /// Keeps the datagrams of packet `seq` (replacing whatever was in its slot).
    pub fn store(&mut self, seq: u32, datagrams: &[Bytes]) {
        let i = self.slot(seq);
        match &mut self.slots[i] {
            Some((s, v)) => {
                *s = seq;
                v.clear();
                v.extend_from_slice(datagrams);
            }
            empty => *empty = Some((seq, datagrams.to_vec())),
        }
    }

    /// The datagrams of packet `seq`, if still held.
    pub fn get(&self, seq: u32) -> Option<&[Bytes]> {
        match &self.slots[self.slot(seq)] {
            Some((s, v)) if *s == seq => Some(v),
            _ => None,
        }
    }
}

/// The send side of one link. See the [module docs](self).
#[derive(Debug, Default)]
pub struct RelayTx {
    nums: HashMap<TrackId, u32>,
    /// The codec last announced per number.
    codec: HashMap<u32, Pt>,
    fragmenter: Fragmenter,
    cache: HashMap<(u32, u8), RepairCache>,
    scratch: Vec<Bytes>,
    out: VecDeque<TxOutput>,
    stats: TxStats,
}

impl RelayTx {
    /// A send side with no tracks.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new connection: numbers, codecs and the cache start afresh.
    pub fn reset(&mut self) {
        self.nums.clear();
        self.codec.clear();
        self.cache.clear();
        self.out.clear();
    }

    /// A track is announced on the link as `num` (None: withdrawn).
    pub fn map(&mut self, track: TrackId, num: Option<u32>) {
        match num {
            Some(n) => {
                self.nums.insert(track, n);
            }
            None => {
                if let Some(n) = self.nums.remove(&track) {
                    self.codec.remove(&n);
                    self.cache.retain(|(num, _), _| *num != n);
                }
            }
        }
    }

    /// A packet of a track relayed to this link; `max_datagram` is the connection's current
    /// datagram limit (None: the link is down or takes no datagrams).
    pub fn handle_packet(&mut self, pkt: &MediaPacket, max_datagram: Option<usize>) {
        let Some(&num) = self.nums.get(&pkt.track) else {
            return;
        };
        self.stats.packets += 1;
        let Some(max) = max_datagram else {
            self.stats.dropped += 1;
            return;
        };
        if self.codec.get(&num) != Some(&pkt.params.pt()) {
            // The far side needs the codec before it can use the packets.
            let Some(params) = codec::to_wire(&pkt.params) else {
                self.stats.dropped += 1;
                return;
            };
            self.out
                .push_back(TxOutput::Frame(cpb::frame::Msg::Codec(cpb::Codec {
                    link_track: num,
                    params: Some(params),
                })));
            self.codec.insert(num, pkt.params.pt());
        }
        let header = MediaHeader {
            track: num,
            layer: pkt.layer,
            marker: pkt.marker,
            keyframe: pkt.keyframe,
            seq: pkt.seq as u32,
            timestamp: pkt.rtp_time,
            audio_level: pkt.audio_level,
            voice_activity: pkt.voice_activity.unwrap_or(false),
            resync: pkt.resync,
        };
        self.scratch.clear();
        if self
            .fragmenter
            .encode(&header, &pkt.payload, max, &mut self.scratch)
            .is_err()
        {
            self.stats.dropped += 1;
            return;
        }
        for d in &self.scratch {
            self.out.push_back(TxOutput::Datagram {
                data: d.clone(),
                repair: false,
            });
        }
        self.cache
            .entry((num, pkt.layer))
            .or_default()
            .store(header.seq, &self.scratch);
    }

    /// The far side misses these packets of `num` on `layer`: resent from the cache.
    pub fn handle_nack(&mut self, num: u32, layer: u8, seqs: &[u32]) {
        self.stats.nacked += seqs.len() as u64;
        let Some(cache) = self.cache.get(&(num, layer)) else {
            self.stats.not_cached += seqs.len() as u64;
            return;
        };
        // A NACK asks for at most what the cache can hold: a peer cannot
        // queue more repairs with one message than there are packets.
        let (asked, beyond) = seqs.split_at(seqs.len().min(CACHE_PACKETS));
        self.stats.not_cached += beyond.len() as u64;
        for seq in asked {
            match cache.get(*seq) {
                Some(datagrams) => {
                    for d in datagrams {
                        self.out.push_back(TxOutput::Datagram {
                            data: d.clone(),
                            repair: true,
                        });
                    }
                }
                None => self.stats.not_cached += 1,
            }
        }
    }

    /// The next datagram or frame to send.
    pub fn poll_output(&mut self) -> Option<TxOutput> {
        self.out.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> TxStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_cache_finds_recent_packets_and_forgets_old_ones() {
        let mut c = RepairCache::new(4);
        let d = |n: u8| vec![Bytes::from(vec![n])];
        for seq in 10..16u32 {
            c.store(seq, &d(seq as u8));
        }
        assert_eq!(c.get(15).unwrap()[0][0], 15);
        assert_eq!(c.get(12).unwrap()[0][0], 12);
        assert!(c.get(11).is_none(), "overwritten by 15");
        assert!(c.get(99).is_none());
        // Sequence numbers wrap.
        c.store(u32::MAX, &d(1));
        c.store(0, &d(2));
        assert_eq!(c.get(u32::MAX).unwrap()[0][0], 1);
        assert_eq!(c.get(0).unwrap()[0][0], 2);
    }
}
