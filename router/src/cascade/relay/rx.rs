//! Relay receive: the media datagrams of one link connection become packets of remote tracks,
//! in batches per home worker. Sans-IO: datagrams and `now` in; packet batches, NACK frames and
//! the next timeout out.
//!
//! - **Reassembly** of fragmented packets ([`Reassembler`], bounded).
//! - **Sequence tracking** per track number and layer: a gap of at most [`MAX_NACK_GAP`]
//!   packets is NACKed once it is [`REORDER_WAIT`] old (a packet only overtaken on the way
//!   arrives meanwhile and is not asked for), again every [`NACK_RETRY`] (at most
//!   [`NACK_TRIES`] times in all), and counted lost if still missing after [`LOSS_DEADLINE`].
//!   A missing packet that arrives late counts as repaired; one that arrives twice (a late
//!   original and its retransmission) is delivered once.
//! - **In-order release**: packets behind a gap younger than [`REORDER_WAIT`] are held (at
//!   most [`MAX_HELD`] per track and layer) and handed on in sequence order when it fills or
//!   ages, so a reordered keyframe reaches the home worker first packet first. The first
//!   [`REORDER_WAIT`] of a track and layer on a connection is held likewise unless its first
//!   packet starts a keyframe: the first to arrive may not be the first sent.
//! - **Resync**: the first packet of a track and layer on a connection (after a break, nobody
//!   can repair what was sent meanwhile), the first after a gap too large to NACK, and the first
//!   after a packet given up on carry [`MediaPacket::resync`]: subscribers forwarded that layer
//!   resume at a keyframe and ask for one, and the flag travels on with the packet to further
//!   links (their downstream link never broke).
//! - **Codec holding**: the codec travels on the control stream and may arrive after the
//!   first datagrams (often the keyframe): up to [`EARLY_PACKETS`] per track are held until it
//!   does.

use crate::cascade::codec;
use crate::media::types::MediaPacket;
use crate::media::WorkerId;
use bytes::Bytes;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::datagram::{self, MediaDatagram, MediaHeader};
use kaskade_protocol::cascade::fragment::Reassembler;
use kaskade_protocol::TrackId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::format::{Codec, PayloadParams};
use str0m::media::MediaKind;

/// Packets of a track held while its codec is not known yet.
pub const EARLY_PACKETS: usize = 128;
/// Gaps larger than this are not NACKed (a layer switch or a long outage).
pub const MAX_NACK_GAP: u32 = 64;
/// Missing packets tracked per track and layer (the oldest count lost beyond it).
pub const MAX_MISSING: usize = 512;
/// A missing packet not repaired within this is counted lost.
pub const LOSS_DEADLINE: Duration = Duration::from_millis(600);
/// A gap is NACKed, and packets behind it are held, only once it is this old. Jitter reorders
/// datagrams by a few milliseconds on most paths (the cluster tests' 0–10 ms per datagram is
/// harsh); 10 ms covers that, is short against the 60 ms NACK retry and a 33 ms frame, and
/// delays nothing while no gap is open.
pub const REORDER_WAIT: Duration = Duration::from_millis(10);
/// Packets held behind a young gap per track and layer (beyond it, the oldest are released).
pub const MAX_HELD: usize = 256;
/// NACKs for a missing packet are repeated this often...
pub const NACK_RETRY: Duration = Duration::from_millis(60);
/// ...this many times in all.
pub const NACK_TRIES: u8 = 3;

/// Where packets of a link-local track number go on this router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxRoute {
    /// The remote track's local id.
    pub track: TrackId,
    /// Its home worker.
    pub worker: WorkerId,
    /// Audio or video.
    pub kind: MediaKind,
}

/// What the receive side counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Datagrams handed in.
    pub datagrams: u64,
    /// Datagrams that could not be decoded.
    pub malformed: u64,
    /// Packets for a number with no route (withdrawn, or never announced).
    pub unrouted: u64,
    /// Packets dropped while waiting for their codec (beyond [`EARLY_PACKETS`]).
    pub early_dropped: u64,
    /// Codec messages that could not be used.
    pub bad_codec: u64,
    /// Packets delivered to home workers.
    pub delivered: u64,
    /// Packets that arrived again (a late original after its retransmission, or the other
    /// way round), or too old to place: not delivered.
    pub duplicates: u64,
    /// Sequence numbers NACKed (each try counts).
    pub nacked: u64,
    /// Missing packets that arrived after all.
    pub repaired: u64,
    /// Missing packets given up on: the residual loss.
    pub lost: u64,
    /// Packets delivered with the resync flag (set here, or as received).
    pub resyncs: u64,
}

impl std::ops::AddAssign for RxStats {
    fn add_assign(&mut self, s: Self) {
        self.datagrams += s.datagrams;
        self.malformed += s.malformed;
        self.unrouted += s.unrouted;
        self.early_dropped += s.early_dropped;
        self.bad_codec += s.bad_codec;
        self.delivered += s.delivered;
        self.duplicates += s.duplicates;
        self.nacked += s.nacked;
        self.repaired += s.repaired;
        self.lost += s.lost;
        self.resyncs += s.resyncs;
    }
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    first: Instant,
    /// When it is NACKed next (while `tries` < [`NACK_TRIES`]).
    next: Instant,
    tries: u8,
}

/// Sequence numbers seen among the last [`Window::LEN`] up to the highest: a retransmission
/// of a packet that was only late is not delivered twice.
#[derive(Debug, Default)]
struct Window {
    bits: [u64; Window::WORDS],
}

impl Window {
    const WORDS: usize = 16;
    const LEN: u32 = 64 * Window::WORDS as u32;

    fn bit(seq: u32) -> (usize, u64) {
        let i = (seq % Self::LEN) as usize;
        (i / 64, 1 << (i % 64))
    }

    /// The window's top moves from `old` to `new`: the numbers it passes are not seen yet.
    fn advance(&mut self, old: u32, new: u32) {
        let n = new.wrapping_sub(old);
        if n >= Self::LEN {
            self.bits = [0; Self::WORDS];
            return;
        }
        for k in 1..=n {
            let (w, b) = Self::bit(old.wrapping_add(k));
            self.bits[w] &= !b;
        }
    }

    /// Marks `seq` seen; false if it was already.
    fn see(&mut self, seq: u32) -> bool {
        let (w, b) = Self::bit(seq);
        let fresh = self.bits[w] & b == 0;
        self.bits[w] |= b;
        fresh
    }
}

#[derive(Debug, Default)]
struct SeqState {
    highest: Option<u32>,
    /// The lowest seen on this connection: every number from it to `highest` is seen or
    /// missing, so what never arrives is counted lost.
    lowest: u32,
    seen: Window,
    missing: BTreeMap<u32, Missing>,
    /// A packet was lost for good: the next one delivered carries the resync flag.
    resync: bool,
    /// Packets behind a young gap, with their arrival, in sequence order.
    held: VecDeque<(MediaDatagram, Instant)>,
    /// Until then every packet is held: the first to arrive may not be the first sent (the
    /// keyframe a new subscriber starts on, shuffled).
    start_until: Option<Instant>,
}

impl SeqState {
    /// Signed distance of `seq` from the highest seen (negative: older).
    fn dist(&self, seq: u32) -> i64 {
        // Wrapping difference read as signed: the two's complement cast is the intent.
        i64::from(seq.wrapping_sub(self.highest.unwrap_or(seq)) as i32)
    }

    /// The oldest gap still inside [`REORDER_WAIT`] at `now`, as a distance.
    fn young_gap(&self, now: Instant) -> Option<i64> {
        if self.start_until.is_some_and(|t| now < t) {
            return Some(i64::MIN);
        }
        self.missing
            .iter()
            .filter(|(_, m)| now < m.first + REORDER_WAIT)
            .map(|(seq, _)| self.dist(*seq))
            .min()
    }

    /// Holds `dg` if a young gap is before it; else appends it to `out`, then whatever held
    /// packets no young gap precedes any more.
    fn release(
        &mut self,
        now: Instant,
        dg: Option<(MediaDatagram, Instant)>,
        out: &mut Vec<(MediaDatagram, Instant)>,
    ) {
        if self.start_until.is_some_and(|t| now >= t) {
            // Over (and no timer for it any more).
            self.start_until = None;
        }
        let gap = self.young_gap(now);
        if let Some(d) = dg {
            let q = self.dist(d.0.header.seq);
            if gap.is_some_and(|g| g < q) {
                let at = self
                    .held
                    .iter()
                    .position(|(h, _)| self.dist(h.header.seq) > q)
                    .unwrap_or(self.held.len());
                self.held.insert(at, d);
                while self.held.len() > MAX_HELD {
                    // Bounded: the oldest go on without waiting.
                    if let Some(h) = self.held.pop_front() {
                        self.emit(h, out);
                    }
                }
            } else {
                self.emit(d, out);
            }
        }
        while let Some((h, _)) = self.held.front() {
            if gap.is_some_and(|g| g < self.dist(h.header.seq)) {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                self.emit(h, out);
            }
        }
    }

    /// Releases a packet; the first after packets lost for good carries the resync flag (in
    /// release order: the first released may not be the first that arrived).
    fn emit(&mut self, mut d: (MediaDatagram, Instant), out: &mut Vec<(MediaDatagram, Instant)>) {
        d.0.header.resync |= std::mem::take(&mut self.resync);
        out.push(d);
    }
}

#[derive(Debug)]
struct Routed {
    route: RxRoute,
    params: Option<PayloadParams>,
    early: Vec<(MediaDatagram, Instant)>,
}

/// The receive side of one link connection. See the [module docs](self).
#[derive(Debug, Default)]
pub struct RelayRx {
    routes: HashMap<u32, Routed>,
    seqs: HashMap<(u32, u8), SeqState>,
    reassembler: Reassembler,
    /// Packets for home workers since the last drain, one batch per worker.
    batches: Vec<(WorkerId, Vec<Arc<MediaPacket>>)>,
    nacks: VecDeque<cpb::Nack>,
    /// Packets released in order, reused (no allocation per packet).
    ready: Vec<(MediaDatagram, Instant)>,
    stats: RxStats,
}

impl RelayRx {
    /// A receive side with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Packets numbered `num` belong to `route` (None: forget the number).
    pub fn set_route(&mut self, num: u32, route: Option<RxRoute>) {
        match route {
            Some(route) => {
                let r = self.routes.entry(num).or_insert(Routed {
                    route,
                    params: None,
                    early: Vec::new(),
                });
                if r.route.track != route.track {
                    r.params = None;
                    r.early.clear();
                }
                r.route = route;
            }
            None => {
                self.routes.remove(&num);
                self.seqs.retain(|(n, _), _| *n != num);
            }
        }
    }

    /// The codec of `num`, as the peer sent it; held packets are released.
    pub fn set_codec(&mut self, num: u32, params: &cpb::CodecParams) {
        let Some(r) = self.routes.get_mut(&num) else {
            return;
        };
        let Ok(params) = codec::from_wire(params) else {
            self.stats.bad_codec += 1;
            return;
        };
        r.params = Some(params);
        let route = r.route;
        for (dg, at) in std::mem::take(&mut r.early) {
            let pkt = media_packet(&route, params, &dg, at);
            self.stats.resyncs += u64::from(pkt.resync);
            push_batch(&mut self.batches, route.worker, pkt);
            self.stats.delivered += 1;
        }
    }

    /// A datagram arrived at `now`.
    pub fn handle_datagram(&mut self, now: Instant, data: Bytes) {
        self.stats.datagrams += 1;
        let Ok(dg) = datagram::decode(data) else {
            self.stats.malformed += 1;
            return;
        };
        if usize::from(dg.header.layer) >= crate::media::layer::MAX_LAYERS {
            // No announced track has such a layer (announcements are
            // checked): refusing it here keeps per-layer state bounded.
            self.stats.malformed += 1;
            return;
        }
        let Some(dg) = self.reassembler.push(now, dg) else {
            return;
        };
        if !self.routes.contains_key(&dg.header.track) {
            self.stats.unrouted += 1;
            return;
        }
        if !track_gaps(&mut self.seqs, &mut self.stats, &dg.header, now) {
            self.stats.duplicates += 1;
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        if let Some(s) = self.seqs.get_mut(&(dg.header.track, dg.header.layer)) {
            s.release(now, Some((dg, now)), &mut ready);
        }
        for (dg, at) in ready.drain(..) {
            self.deliver(dg, at);
        }
        self.ready = ready;
    }

    /// Hands a packet in sequence to its home worker's batch (or holds it for its codec).
    fn deliver(&mut self, dg: MediaDatagram, at: Instant) {
        let Some(r) = self.routes.get_mut(&dg.header.track) else {
            self.stats.unrouted += 1;
            return;
        };
        let Some(params) = r.params else {
            if r.early.len() < EARLY_PACKETS {
                r.early.push((dg, at));
            } else {
                self.stats.early_dropped += 1;
            }
            return;
        };
        let route = r.route;
        let pkt = media_packet(&route, params, &dg, at);
        self.stats.resyncs += u64::from(pkt.resync);
        push_batch(&mut self.batches, route.worker, pkt);
        self.stats.delivered += 1;
    }

    /// Time has reached `now`: gaps past the reorder wait are NACKed (and the packets held
    /// behind them released), NACKs are repeated, packets missing too long count as lost, old
    /// fragments are dropped.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reassembler.expire(now);
        let mut ready = std::mem::take(&mut self.ready);
        for ((num, layer), s) in self.seqs.iter_mut() {
            let mut again = Vec::new();
            let mut gave_up = false;
            s.missing.retain(|seq, m| {
                if now.saturating_duration_since(m.first) >= LOSS_DEADLINE {
                    self.stats.lost += 1;
                    gave_up = true;
                    return false;
                }
                if m.tries < NACK_TRIES && now >= m.next {
                    m.tries += 1;
                    m.next = now + NACK_RETRY;
                    again.push(*seq);
                }
                true
            });
            s.resync |= gave_up;
            push_nack(&mut self.nacks, &mut self.stats, *num, *layer, again);
            s.release(now, None, &mut ready);
        }
        for (dg, at) in ready.drain(..) {
            self.deliver(dg, at);
        }
        self.ready = ready;
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let missing = self
            .seqs
            .values()
            .flat_map(|s| s.missing.values())
            .map(|m| {
                // The first NACK is due when the gap leaves the reorder wait: packets held
                // behind it go then too.
                let lost = m.first + LOSS_DEADLINE;
                if m.tries < NACK_TRIES {
                    lost.min(m.next)
                } else {
                    lost
                }
            })
            .min();
        let start = self
            .seqs
            .values()
            .filter(|s| !s.held.is_empty())
            .filter_map(|s| s.start_until)
            .min();
        [missing, start, self.reassembler.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next batch of packets for a home worker.
    pub fn poll_batch(&mut self) -> Option<(WorkerId, Vec<Arc<MediaPacket>>)> {
        self.batches.pop()
    }

    /// The next NACK to send on the control stream.
    pub fn poll_nack(&mut self) -> Option<cpb::Nack> {
        self.nacks.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> RxStats {
        self.stats
    }
}

fn push_batch(
    batches: &mut Vec<(WorkerId, Vec<Arc<MediaPacket>>)>,
    worker: WorkerId,
    pkt: MediaPacket,
) {
    let pkt = Arc::new(pkt);
    match batches.iter_mut().find(|(w, _)| *w == worker) {
        Some((_, b)) => b.push(pkt),
        None => batches.push((worker, vec![pkt])),
    }
}

fn push_nack(
    nacks: &mut VecDeque<cpb::Nack>,
    stats: &mut RxStats,
    num: u32,
    layer: u8,
    seqs: Vec<u32>,
) {
    if seqs.is_empty() {
        return;
    }
    stats.nacked += seqs.len() as u64;
    nacks.push_back(cpb::Nack {
        link_track: num,
        layer: u32::from(layer),
        seqs,
    });
}

/// Notes the packet's sequence number: opens new gaps (NACKed after the reorder wait), closes
/// repaired ones, notes packets lost for good (the next released carries the resync flag).
/// False for a packet seen before (or too old to tell), which is not delivered again.
fn track_gaps(
    seqs: &mut HashMap<(u32, u8), SeqState>,
    stats: &mut RxStats,
    h: &MediaHeader,
    now: Instant,
) -> bool {
    let s = seqs.entry((h.track, h.layer)).or_default();
    let Some(high) = s.highest else {
        // The first on this connection: whatever came before (on a broken one) is gone.
        s.highest = Some(h.seq);
        s.lowest = h.seq;
        s.resync = true;
        if !h.keyframe {
            // Perhaps overtaken: hold what comes for the reorder wait and release it sorted.
            s.start_until = Some(now + REORDER_WAIT);
        }
        s.seen.see(h.seq);
        return true;
    };
    let ahead = h.seq.wrapping_sub(high);
    if ahead == 0 || ahead > u32::MAX / 2 {
        // A late packet (perhaps a retransmission), or a duplicate.
        if high.wrapping_sub(h.seq) >= Window::LEN || !s.seen.see(h.seq) {
            return false;
        }
        if s.missing.remove(&h.seq).is_some() {
            stats.repaired += 1;
        }
        let below = s.lowest.wrapping_sub(h.seq);
        if below < Window::LEN {
            // Older than any before (the first to arrive was overtaken): what lies between
            // is missing too.
            s.lowest = h.seq;
            if below <= MAX_NACK_GAP {
                for i in 1..below {
                    s.missing.insert(
                        h.seq.wrapping_add(i),
                        Missing {
                            first: now,
                            next: now + REORDER_WAIT,
                            tries: 0,
                        },
                    );
                }
            }
        }
        return true;
    }
    s.seen.advance(high, h.seq);
    s.seen.see(h.seq);
    s.highest = Some(h.seq);
    if ahead > 1 && ahead <= MAX_NACK_GAP {
        // NACKed once the reorder wait is over (`handle_timeout`).
        for i in 1..ahead {
            s.missing.insert(
                high.wrapping_add(i),
                Missing {
                    first: now,
                    next: now + REORDER_WAIT,
                    tries: 0,
                },
            );
        }
        while s.missing.len() > MAX_MISSING {
            s.missing.pop_first();
            stats.lost += 1;
            s.resync = true;
        }
    } else if ahead > MAX_NACK_GAP {
        // Too many missing to ask for.
        s.resync = true;
    }
    true
}

/// The media packet of a relayed datagram, for the track's home worker.
fn media_packet(
    route: &RxRoute,
    params: PayloadParams,
    dg: &MediaDatagram,
    arrival: Instant,
) -> MediaPacket {
    // The worker's packets share an `Arc<[u8]>`: one copy here (phase 2 hands the datagram's
    // buffer over instead).
    let payload: Arc<[u8]> = Arc::from(&dg.payload[..]);
    let vp8 = if params.spec().codec == Codec::Vp8 {
        crate::media::vp8::parse(&payload).zip(str0m::rtp::Vp8Descriptor::parse(&payload).ok())
    } else {
        None
    };
    MediaPacket {
        track: route.track,
        kind: route.kind,
        layer: dg.header.layer,
        params,
        seq: u64::from(dg.header.seq),
        rtp_time: dg.header.timestamp,
        marker: dg.header.marker,
        keyframe: dg.header.keyframe,
        resync: dg.header.resync,
        audio_level: dg.header.audio_level,
        voice_activity: dg.header.audio_level.map(|_| dg.header.voice_activity),
        arrival,
        vp8,
        payload,
    }
}
