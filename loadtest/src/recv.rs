//! What a client records about the media it receives.
//!
//! Counters are always kept; the per-packet log ([`MediaRecv::log`]) only up to
//! [`ClientConfig::packet_log_limit`](crate::ClientConfig::packet_log_limit) entries per
//! mid (tests want the full sequence of a short run, the load tester only counters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::rtp::Ssrc;

use crate::media::Probe;

/// One received RTP packet (RTX already unwrapped by str0m).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvPacket {
    /// Arrival time.
    pub at: Instant,
    /// Extended sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub rtp_timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// SSRC of the stream.
    pub ssrc: u32,
    /// Simulcast layer, if the stream has a rid.
    pub rid: Option<Rid>,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// The VP8 payload descriptor (picture id, TL0PICIDX, temporal layer), for VP8.
    pub vp8: Option<crate::media::Vp8DescriptorInfo>,
    /// First packet of a keyframe (VP8: `detect_vp8_keyframe`; H.264: SPS or IDR start).
    pub is_keyframe_start: bool,
    /// The probe in the payload, if found.
    pub probe: Option<Probe>,
}

/// Latency of probed packets: arrival time minus probe send time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyStats {
    /// Probed packets measured.
    pub count: u64,
    /// Sum of latencies in microseconds.
    pub sum_micros: u64,
    /// Smallest latency in microseconds.
    pub min_micros: u64,
    /// Largest latency in microseconds.
    pub max_micros: u64,
}

impl LatencyStats {
    fn add(&mut self, micros: u64) {
        if self.count == 0 || micros < self.min_micros {
            self.min_micros = micros;
        }
        self.max_micros = self.max_micros.max(micros);
        self.count += 1;
        self.sum_micros += micros;
    }

    /// Mean latency, if any packet was measured.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_micros / self.count))
    }
}

const WINDOW_WORDS: usize = 8;
const WINDOW_BITS: u64 = (WINDOW_WORDS * 64) as u64;

/// Probe-based loss of one source tag: indexes missing between the first and the highest
/// seen. Exact for a source forwarded continuously; a subscriber whose SFU switches
/// layers or drops temporal layers sees gaps that are not losses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLoss {
    /// The source tag (see [`crate::media::source_tag`]).
    pub source_tag: u32,
    /// Lowest packet index seen.
    pub first_index: u64,
    /// Highest packet index seen.
    pub highest_index: u64,
    /// Distinct packets received.
    pub received: u64,
    /// Packets received twice (within the last 512 indexes).
    pub duplicates: u64,
    window: [u64; WINDOW_WORDS],
}

impl SourceLoss {
    fn new(source_tag: u32, index: u64) -> Self {
        let mut s = SourceLoss {
            source_tag,
            first_index: index,
            highest_index: index,
            received: 1,
            duplicates: 0,
            window: [0; WINDOW_WORDS],
        };
        s.set(index);
        s
    }

    fn bit(index: u64) -> (usize, u64) {
        let b = index % WINDOW_BITS;
        ((b / 64) as usize, 1u64 << (b % 64))
    }

    fn set(&mut self, index: u64) -> bool {
        let (w, m) = Self::bit(index);
        let was = self.window[w] & m != 0;
        self.window[w] |= m;
        was
    }

    fn add(&mut self, index: u64) {
        if index > self.highest_index {
            if index - self.highest_index >= WINDOW_BITS {
                self.window = [0; WINDOW_WORDS];
            } else {
                for i in self.highest_index + 1..=index {
                    let (w, m) = Self::bit(i);
                    self.window[w] &= !m;
                }
            }
            self.highest_index = index;
            self.set(index);
            self.received += 1;
        } else if self.highest_index - index < WINDOW_BITS {
            if self.set(index) {
                self.duplicates += 1;
            } else {
                self.received += 1;
                self.first_index = self.first_index.min(index);
            }
        } else {
            // Too old to tell a duplicate: count it.
            self.received += 1;
            self.first_index = self.first_index.min(index);
        }
    }

    /// Packets expected from the first to the highest index.
    pub fn expected(&self) -> u64 {
        self.highest_index - self.first_index + 1
    }

    /// Packets missing between the first and the highest index.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// Reassembly state of one frame, used until the first keyframe is complete.
#[derive(Debug, Default)]
struct FrameAsm {
    start_seq: Option<u64>,
    end_seq: Option<u64>,
    seqs: Vec<u64>,
}

impl FrameAsm {
    fn complete(&self) -> bool {
        match (self.start_seq, self.end_seq) {
            (Some(s), Some(e)) if e >= s => {
                let need = e - s + 1;
                let have = self.seqs.iter().filter(|q| **q >= s && **q <= e).count() as u64;
                have == need
            }
            _ => false,
        }
    }
}

/// One received encoded stream (one SSRC, e.g. one simulcast layer).
#[derive(Debug)]
pub struct RecvStream {
    /// SSRC.
    pub ssrc: Ssrc,
    /// Simulcast layer, if any.
    pub rid: Option<Rid>,
    /// Packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Arrival of the first packet.
    pub first_packet_at: Option<Instant>,
    /// Whether the first packet started a keyframe.
    pub first_packet_keyframe: Option<bool>,
    /// When the first keyframe was complete (all its packets received).
    pub first_frame_at: Option<Instant>,
    /// Keyframe starts received.
    pub keyframes: u64,
    /// Latency of probed packets.
    pub latency: LatencyStats,
    /// Keyframe requests sent automatically for this stream (see
    /// [`ClientConfig::auto_keyframe_request`](crate::ClientConfig::auto_keyframe_request)).
    pub auto_plis: u64,
    last_auto_pli: Option<Instant>,
    frames: HashMap<u32, FrameAsm>,
}

impl RecvStream {
    fn new(ssrc: Ssrc, rid: Option<Rid>) -> Self {
        RecvStream {
            ssrc,
            rid,
            packets: 0,
            bytes: 0,
            first_packet_at: None,
            first_packet_keyframe: None,
            first_frame_at: None,
            keyframes: 0,
            latency: LatencyStats::default(),
            auto_plis: 0,
            last_auto_pli: None,
            frames: HashMap::new(),
        }
    }

    /// Like a browser's decoder waiting for its first keyframe: true when a keyframe
    /// request is due (at the first packet if it does not start a keyframe, then every
    /// `interval` until a keyframe is complete).
    fn wants_keyframe(&mut self, now: Instant, interval: Duration) -> bool {
        if self.first_frame_at.is_some() {
            return false;
        }
        let due = match (self.last_auto_pli, self.first_packet_keyframe) {
            (None, Some(false)) => true,
            (None, _) => self
                .first_packet_at
                .is_some_and(|t| now.saturating_duration_since(t) >= interval),
            (Some(t), _) => now.saturating_duration_since(t) >= interval,
        };
        if due {
            self.last_auto_pli = Some(now);
            self.auto_plis += 1;
        }
        due
    }

    /// Feeds the first-keyframe reassembly; returns true when it completes.
    fn assemble(&mut self, p: &RecvPacket, keyframe_start: bool) -> bool {
        if self.first_frame_at.is_some() {
            return false;
        }
        if self.frames.len() > 64 && !self.frames.contains_key(&p.rtp_timestamp) {
            // Bounded: forget frames that never became a complete keyframe.
            self.frames.retain(|_, f| f.start_seq.is_some());
            if self.frames.len() > 64 {
                self.frames.clear();
            }
        }
        let f = self.frames.entry(p.rtp_timestamp).or_default();
        if !f.seqs.contains(&p.seq) {
            f.seqs.push(p.seq);
        }
        if keyframe_start {
            f.start_seq = Some(f.start_seq.map_or(p.seq, |s| s.min(p.seq)));
        }
        if p.marker {
            f.end_seq = Some(p.seq);
        }
        if f.complete() {
            self.frames = HashMap::new();
            return true;
        }
        false
    }
}

/// Everything received on one mid.
#[derive(Debug)]
pub struct MediaRecv {
    /// The mid.
    pub mid: Mid,
    /// Audio or video, once known from `Event::MediaAdded`.
    pub kind: Option<MediaKind>,
    /// Direction announced by `Event::MediaAdded` (from this client's side).
    pub direction: Option<Direction>,
    /// Simulcast rids announced by `Event::MediaAdded` (receive side).
    pub rids: Vec<Rid>,
    /// Packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Arrival of the first packet.
    pub first_packet_at: Option<Instant>,
    /// Whether the first packet on this mid started a keyframe (video).
    pub first_packet_keyframe: Option<bool>,
    /// When the first keyframe on this mid was complete (time to first frame).
    pub first_frame_at: Option<Instant>,
    /// Latency of probed packets.
    pub latency: LatencyStats,
    /// Packets without a probe.
    pub unprobed: u64,
    /// One entry per SSRC received.
    pub streams: Vec<RecvStream>,
    /// Probe-based loss per source tag.
    pub sources: Vec<SourceLoss>,
    /// Per-packet log (bounded, see the module docs).
    pub log: Vec<RecvPacket>,
    /// Keyframe requests (PLI) this client sent for the mid.
    pub keyframe_requests_sent: u64,
    /// Packets not yet handed to [`Client::drain_tap`](crate::Client::drain_tap)
    /// (`None`: tap off).
    pub(crate) tap: Option<Vec<RecvPacket>>,
}

impl MediaRecv {
    pub(crate) fn new(mid: Mid) -> Self {
        MediaRecv {
            mid,
            kind: None,
            direction: None,
            rids: vec![],
            packets: 0,
            bytes: 0,
            first_packet_at: None,
            first_packet_keyframe: None,
            first_frame_at: None,
            latency: LatencyStats::default(),
            unprobed: 0,
            streams: vec![],
            sources: vec![],
            log: vec![],
            keyframe_requests_sent: 0,
            tap: None,
        }
    }

    /// The stream of a simulcast layer.
    pub fn stream_by_rid(&self, rid: &str) -> Option<&RecvStream> {
        let rid: Rid = rid.into();
        self.streams.iter().find(|s| s.rid == Some(rid))
    }

    /// Sum of probe-based losses over all sources.
    pub fn lost(&self) -> u64 {
        self.sources.iter().map(SourceLoss::lost).sum()
    }

    /// Time from the first packet to the first complete keyframe.
    pub fn time_to_first_frame(&self) -> Option<Duration> {
        Some(self.first_frame_at? - self.first_packet_at?)
    }

    /// Records a packet. Returns true if a keyframe should be requested for its stream
    /// (only with `auto_pli`).
    pub(crate) fn record(
        &mut self,
        epoch: Instant,
        log_limit: usize,
        auto_pli: Option<Duration>,
        mut p: RecvPacket,
        codec: Option<Codec>,
        payload: &[u8],
    ) -> bool {
        p.probe = match codec {
            Some(Codec::Opus) => Probe::find_opus(payload),
            Some(Codec::Vp8) => Probe::find_vp8(payload),
            Some(Codec::H264) => Probe::find_h264(payload),
            _ => Probe::find(payload),
        };
        p.is_keyframe_start = match codec {
            Some(Codec::Vp8) => str0m::format::detect_vp8_keyframe(payload),
            Some(Codec::H264) => crate::media::h264_keyframe_start(payload),
            _ => false,
        };

        self.packets += 1;
        self.bytes += p.payload_len as u64;
        if self.first_packet_at.is_none() {
            self.first_packet_at = Some(p.at);
            self.first_packet_keyframe = Some(p.is_keyframe_start);
        }

        let latency = p.probe.map(|probe| {
            let sent = epoch + Duration::from_micros(probe.sent_micros);
            u64::try_from(p.at.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX)
        });
        match (p.probe, latency) {
            (Some(probe), Some(l)) => {
                self.latency.add(l);
                match self
                    .sources
                    .iter_mut()
                    .find(|s| s.source_tag == probe.source_tag)
                {
                    Some(s) => s.add(probe.packet_index),
                    None => self
                        .sources
                        .push(SourceLoss::new(probe.source_tag, probe.packet_index)),
                }
            }
            _ => self.unprobed += 1,
        }

        let ssrc: Ssrc = p.ssrc.into();
        let idx = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                self.streams.push(RecvStream::new(ssrc, p.rid));
                self.streams.len() - 1
            }
        };
        let s = &mut self.streams[idx];
        s.packets += 1;
        s.bytes += p.payload_len as u64;
        if s.first_packet_at.is_none() {
            s.first_packet_at = Some(p.at);
            s.first_packet_keyframe = Some(p.is_keyframe_start);
        }
        if p.is_keyframe_start {
            s.keyframes += 1;
        }
        if let Some(l) = latency {
            s.latency.add(l);
        }
        let video = matches!(codec, Some(c) if c.is_video());
        if video && s.assemble(&p, p.is_keyframe_start) {
            s.first_frame_at = Some(p.at);
            if self.first_frame_at.is_none() {
                self.first_frame_at = Some(p.at);
            }
        }
        let want_pli = match auto_pli {
            Some(interval) if video => s.wants_keyframe(p.at, interval),
            _ => false,
        };

        if let Some(tap) = self.tap.as_mut() {
            tap.push(p.clone());
        }
        if self.log.len() < log_limit {
            self.log.push(p);
        }
        want_pli
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_gaps_duplicates_and_reorder() {
        let mut s = SourceLoss::new(1, 10);
        for i in [11, 13, 12, 12, 16, 15] {
            s.add(i);
        }
        // 10..=16 expected (7), received 10,11,12,13,15,16 (6), 14 missing.
        assert_eq!(s.expected(), 7);
        assert_eq!(s.received, 6);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.lost(), 1);
        // Late arrival fills the gap.
        s.add(14);
        assert_eq!(s.lost(), 0);
        // A big jump clears the window.
        s.add(10_000);
        assert_eq!(s.lost(), 10_000 - 16 - 1);
        s.add(9_999);
        assert_eq!(s.lost(), 10_000 - 16 - 2);
    }

    #[test]
    fn first_keyframe_completes_with_reordered_packets() {
        let t = Instant::now();
        let mut s = RecvStream::new(1.into(), None);
        let pkt = |seq: u64, marker: bool| RecvPacket {
            at: t,
            seq,
            rtp_timestamp: 3000,
            marker,
            ssrc: 1,
            rid: None,
            payload_len: 100,
            vp8: None,
            is_keyframe_start: false,
            probe: None,
        };
        assert!(!s.assemble(&pkt(101, false), false));
        assert!(!s.assemble(&pkt(103, true), false));
        assert!(!s.assemble(&pkt(100, false), true));
        assert!(s.assemble(&pkt(102, false), false));
    }
}
