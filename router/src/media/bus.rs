//! Messages between media workers. A batch of them is one channel message
//! and one wake-up of the destination worker.
//!
//! # Ingest: media from outside a worker
//!
//! Anything that produces packets of a track outside the worker that fans
//! it out (today the cascade: tracks relayed from other routers) hands them
//! to the track's home worker as [`BusMsg::Ingest`] in a [`BusBatch`], the
//! same way one worker hands media to another: one batch per burst of
//! input, one wake-up, never blocking (a full inbox refuses the batch; the
//! caller counts it). The home worker treats an ingested packet like one
//! its own publisher sent: it meters it, routes it to the workers and links
//! that need its layer, and writes it to its own subscribers. The layer
//! state of such a track comes the same way ([`BusMsg::RemoteLayers`]).
//! `MediaPacket::layer` stays a raw `u8` on this interface.

use super::layer::{Layer, LayerMask};
use super::select::LayerState;
use super::types::{MediaPacket, WorkerId};
use kaskade_protocol::TrackId;
use std::net::SocketAddr;
use std::sync::Arc;

/// One message on the fan-out bus.
#[derive(Debug, Clone)]
pub enum BusMsg {
    /// A packet of a track some subscriber on the destination worker receives.
    Media(Arc<MediaPacket>),
    /// A packet of a remote track arriving over a link, to be fanned out
    /// by the track's home worker as if its publisher were local.
    Ingest(Arc<MediaPacket>),
    /// The origin router's view of a remote track's layers.
    RemoteLayers {
        /// The (local id of the) remote track.
        track: TrackId,
        /// Per layer, as offered.
        layers: Arc<[LayerState]>,
    },
    /// What the publisher of a track sends on each layer (to workers with subscribers).
    LayerInfo {
        /// The track.
        track: TrackId,
        /// Per layer, as offered.
        layers: Arc<[LayerState]>,
    },
    /// The layers of a track the sending worker's subscribers need (to the publisher's worker).
    Demand {
        /// The track.
        track: TrackId,
        /// The worker whose subscribers these are.
        worker: WorkerId,
        /// The layers.
        mask: LayerMask,
    },
    /// A subscriber on another worker needs a keyframe of this track and layer.
    KeyframeRequest {
        /// The track (published on the destination worker).
        track: TrackId,
        /// The simulcast layer.
        layer: Layer,
    },
    /// Video of this track was shed because the destination's inbox was
    /// full: its subscribers there resume at a keyframe and their layer
    /// selectors step down for a while.
    Overload {
        /// The track whose packets were dropped.
        track: TrackId,
        /// The layers that lost packets.
        layers: LayerMask,
    },
    /// Datagrams the sending worker read from the single UDP port for
    /// sessions the destination hosts (`media::handover`).
    Datagrams(Box<Handed>),
    /// The sending worker hosts the session of datagrams from this source:
    /// the destination hands the rest of them over without looking.
    Route(Box<RouteNote>),
}

/// Datagrams one worker hands to another, in one buffer (one allocation
/// per batch of input, not per datagram).
#[derive(Debug, Clone)]
pub struct Handed {
    /// The worker that read them (where route notes go back).
    pub from: WorkerId,
    bytes: Vec<u8>,
    /// Source and end offset in `bytes` of each datagram.
    items: Vec<(SocketAddr, u32)>,
}

impl Handed {
    /// Nothing yet, from worker `from`.
    pub fn new(from: WorkerId) -> Self {
        Self {
            from,
            bytes: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Adds a datagram.
    pub fn push(&mut self, src: SocketAddr, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.items.push((src, self.bytes.len() as u32));
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Each datagram's source and bytes, in the order they were read.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        let mut start = 0;
        self.items.iter().map(move |(src, end)| {
            let d = &self.bytes[start..*end as usize];
            start = *end as usize;
            (*src, d)
        })
    }
}

/// Which worker hosts the session of datagrams from `src`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteNote {
    /// The datagrams' source.
    pub src: SocketAddr,
    /// The worker hosting their session.
    pub worker: WorkerId,
}

/// What crosses a bus channel: all messages one worker produced for another
/// in one loop iteration.
pub type BusBatch = Vec<BusMsg>;

impl BusMsg {
    /// Whether dropping this message under overload is acceptable first
    /// (video), as opposed to audio and control.
    pub fn is_droppable(&self) -> bool {
        match self {
            BusMsg::Media(p) | BusMsg::Ingest(p) => p.kind == str0m::media::MediaKind::Video,
            // Raw input, like a full socket buffer would lose.
            BusMsg::Datagrams(_) => true,
            BusMsg::Route(_)
            | BusMsg::KeyframeRequest { .. }
            | BusMsg::Overload { .. }
            | BusMsg::LayerInfo { .. }
            | BusMsg::RemoteLayers { .. }
            | BusMsg::Demand { .. } => false,
        }
    }
}

/// Messages kept for a worker whose inbox was full, at most this many.
pub const OVERFLOW_LIMIT: usize = 512;

/// What the overload policy dropped from one refused batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Video packets dropped.
    pub video: u64,
    /// Audio and control messages dropped (only past [`OVERFLOW_LIMIT`]).
    pub other: u64,
    /// Handed-over datagrams dropped (single-port mode).
    pub datagrams: u64,
}

/// The overload policy for a batch a full inbox refused: video is dropped
/// (counted, and an [`BusMsg::Overload`] note per track tells the
/// destination's subscribers to resume at a keyframe and their layer
/// selectors to step down); audio and control messages are kept to be
/// offered again with the next batch, up to [`OVERFLOW_LIMIT`]. The sender
/// never blocks.
pub fn shed(refused: BusBatch, kept: &mut BusBatch) -> Shed {
    let mut out = Shed::default();
    let mut notes: Vec<(TrackId, LayerMask)> = Vec::new();
    for m in refused {
        if let BusMsg::Datagrams(d) = &m {
            out.datagrams += d.len() as u64;
        } else if m.is_droppable() {
            out.video += 1;
            if let BusMsg::Media(p) | BusMsg::Ingest(p) = &m {
                let bit = LayerMask::of(p.layer());
                match notes.iter_mut().find(|(t, _)| *t == p.track) {
                    Some((_, mask)) => *mask |= bit,
                    None => notes.push((p.track, bit)),
                }
            }
        } else if kept.len() < OVERFLOW_LIMIT {
            kept.push(m);
        } else {
            out.other += 1;
        }
    }
    for (track, layers) in notes {
        // One note per track: merge into one already waiting.
        let waiting = kept.iter_mut().find_map(|m| match m {
            BusMsg::Overload { track: t, layers } if *t == track => Some(layers),
            _ => None,
        });
        match waiting {
            Some(mask) => *mask |= layers,
            // A note may exceed the limit: there is at most one per track.
            None => kept.push(BusMsg::Overload { track, layers }),
        }
    }
    out
}

/// A destination worker's bounded inbox, as the sender sees it.
pub trait Inbox {
    /// Hands a batch over without blocking, or gives it back when full.
    fn offer(&self, batch: BusBatch) -> Result<(), BusBatch>;
}

impl Inbox for crossbeam_channel::Sender<BusBatch> {
    fn offer(&self, batch: BusBatch) -> Result<(), BusBatch> {
        self.try_send(batch).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(b)
            | crossbeam_channel::TrySendError::Disconnected(b) => b,
        })
    }
}

/// The sending side of the bus for one worker: per destination, what a full
/// inbox refused and is to be offered again first. Sans-IO: the driver (or
/// the simulation) passes the inboxes in.
#[derive(Debug, Default)]
pub struct Outbox {
    overflow: Vec<BusBatch>,
}

impl Outbox {
    /// An outbox for `workers` destinations.
    pub fn new(workers: usize) -> Self {
        Self {
            overflow: vec![Vec::new(); workers],
        }
    }

    /// Offers `batch` (emptied) to destination `dst`, after what is left
    /// over from before. Returns whether a batch was handed over (the
    /// destination is then to be woken) and what was shed.
    pub fn hand_over(
        &mut self,
        dst: usize,
        batch: &mut BusBatch,
        inbox: &impl Inbox,
    ) -> (bool, Shed) {
        let Some(left) = self.overflow.get_mut(dst) else {
            batch.clear();
            return (false, Shed::default());
        };
        if batch.is_empty() && left.is_empty() {
            return (false, Shed::default());
        }
        // Audio and control a full inbox refused last time go first.
        let mut b = std::mem::take(left);
        b.append(batch);
        match inbox.offer(b) {
            Ok(()) => (true, Shed::default()),
            Err(refused) => (false, shed(refused, left)),
        }
    }

    /// Messages waiting for destination `dst`.
    pub fn waiting(&self, dst: usize) -> usize {
        self.overflow.get(dst).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::types::MediaPacket;
    use std::time::Instant;
    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::{Frequency, MediaKind};

    fn pkt(kind: MediaKind) -> BusMsg {
        pkt_on(kind, 0)
    }

    fn pkt_on(kind: MediaKind, layer: u8) -> BusMsg {
        let spec = CodecSpec {
            codec: if kind == MediaKind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            },
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        };
        BusMsg::Media(Arc::new(MediaPacket {
            track: TrackId(1),
            kind,
            layer,
            params: PayloadParams::new(96.into(), None, spec),
            seq: 1,
            rtp_time: 0,
            marker: false,
            keyframe: false,
            resync: false,
            audio_level: None,
            voice_activity: None,
            arrival: Instant::now(),
            vp8: None,
            payload: Arc::from(vec![0u8; 10]),
        }))
    }

    #[test]
    fn full_inbox_drops_video_keeps_audio_and_control() {
        let batch = vec![
            pkt(MediaKind::Video),
            pkt(MediaKind::Audio),
            BusMsg::KeyframeRequest {
                track: TrackId(1),
                layer: Layer::BASE,
            },
            pkt(MediaKind::Video),
        ];
        let mut kept = Vec::new();
        assert_eq!(
            shed(batch, &mut kept),
            Shed {
                video: 2,
                ..Shed::default()
            }
        );
        // Audio, the keyframe request and one overload note for the track.
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|m| !m.is_droppable()));
        assert!(matches!(
            kept[2],
            BusMsg::Overload {
                track: TrackId(1),
                layers
            } if layers == LayerMask::of(Layer::BASE)
        ));
    }

    #[test]
    fn audio_is_dropped_only_beyond_the_overflow_limit() {
        let mut kept = Vec::new();
        let batch: BusBatch = (0..OVERFLOW_LIMIT + 10)
            .map(|_| pkt(MediaKind::Audio))
            .collect();
        assert_eq!(
            shed(batch, &mut kept),
            Shed {
                other: 10,
                ..Shed::default()
            }
        );
        assert_eq!(kept.len(), OVERFLOW_LIMIT);
    }

    #[test]
    fn handed_datagrams_keep_their_sources_and_order_and_are_shed_like_input() {
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:2000".parse().unwrap();
        let mut h = Handed::new(WorkerId(1));
        h.push(a, b"one");
        h.push(b, b"");
        h.push(a, b"three");
        let got: Vec<(SocketAddr, &[u8])> = h.iter().collect();
        assert_eq!(
            got,
            vec![(a, &b"one"[..]), (b, &b""[..]), (a, &b"three"[..])]
        );
        let mut kept = Vec::new();
        let note = BusMsg::Route(Box::new(RouteNote {
            src: a,
            worker: WorkerId(0),
        }));
        let s = shed(vec![BusMsg::Datagrams(Box::new(h)), note], &mut kept);
        assert_eq!(
            s,
            Shed {
                datagrams: 3,
                ..Shed::default()
            }
        );
        assert!(
            matches!(kept[..], [BusMsg::Route(_)]),
            "route notes are kept"
        );
    }

    #[test]
    fn notes_merge_per_track() {
        let mut kept = Vec::new();
        shed(vec![pkt(MediaKind::Video)], &mut kept);
        shed(
            vec![pkt_on(MediaKind::Video, 2), pkt(MediaKind::Video)],
            &mut kept,
        );
        assert_eq!(kept.len(), 1);
        assert!(matches!(kept[0], BusMsg::Overload { layers, .. } if layers.bits() == 0b101));
    }

    #[test]
    fn a_full_inbox_never_blocks_and_keeps_the_order_once_it_drains() {
        let (tx, rx) = crossbeam_channel::bounded::<BusBatch>(1);
        let mut out = Outbox::new(2);
        let mut total = Shed::default();
        // Fill the inbox, then keep sending: every call returns at once.
        for i in 0..10_000 {
            let mut b = vec![pkt(MediaKind::Video), pkt(MediaKind::Audio)];
            if i % 100 == 0 {
                b.push(BusMsg::KeyframeRequest {
                    track: TrackId(1),
                    layer: Layer::BASE,
                });
            }
            let (_, s) = out.hand_over(1, &mut b, &tx);
            assert!(b.is_empty());
            total.video += s.video;
            total.other += s.other;
        }
        // The first batch got in; every later video packet was shed, and
        // audio/control beyond the limit.
        assert_eq!(total.video, 9_999);
        assert!(out.waiting(1) <= OVERFLOW_LIMIT + 1);
        assert_eq!(rx.try_recv().map(|b| b.len()).ok(), Some(3));
        // Once there is room, what was kept goes first, the note included.
        let (sent, _) = out.hand_over(1, &mut Vec::new(), &tx);
        assert!(sent);
        let b = rx.try_recv().expect("kept batch");
        assert!(b.iter().all(|m| !m.is_droppable()));
        assert!(b.iter().any(|m| matches!(m, BusMsg::Overload { .. })));
        assert_eq!(out.waiting(1), 0);
        // Nothing to send and nothing kept: no hand-over, no wake-up.
        assert_eq!(
            out.hand_over(1, &mut Vec::new(), &tx),
            (false, Shed::default())
        );
    }
}
