//! Relayed media on links: the sending task (packets of local tracks from
//! the workers → QUIC datagrams, with a short cache to answer NACKs) and the
//! receiving task of each link (datagrams → packets of remote tracks into
//! their home worker, with gap detection that asks for retransmission).

use crate::control::Control;
use crate::media::bus::BusMsg;
use crate::media::types::LinkId;
use crate::media::{MediaPacket, WorkerId};
use bytes::Bytes;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::datagram::{self as wire, MediaHeader};
use kaskade_protocol::cascade::fragment::{Fragmenter, Reassembler};
use kaskade_protocol::TrackId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::format::{Codec, PayloadParams};
use str0m::media::MediaKind;
use tokio::sync::mpsc;

/// Packets kept per (track, layer) to answer NACKs from the far side.
const CACHE_PACKETS: usize = 512;
/// Packets of a track held while its codec is not known yet.
const EARLY_PACKETS: usize = 128;
/// Gaps larger than this are not NACKed (a layer switch or a long outage).
const MAX_NACK_GAP: u32 = 64;
/// A missing packet not repaired within this is counted lost.
const LOSS_DEADLINE: Duration = Duration::from_millis(600);
/// NACKs for a missing packet are repeated this often, at most `NACK_TRIES` times.
const NACK_RETRY: Duration = Duration::from_millis(60);
const NACK_TRIES: u8 = 3;

/// Figures of one link, shared by its tasks.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Datagrams received.
    pub datagrams_received: AtomicU64,
    /// Media not sent (link down, too large, congested).
    pub datagrams_dropped: AtomicU64,
    /// Packets the far side asked for again.
    pub nacked: AtomicU64,
    /// Packets resent from the cache.
    pub retransmitted: AtomicU64,
    /// Packets never received even after asking.
    pub lost: AtomicU64,
}

/// Updates for the sending task.
#[derive(Debug)]
pub enum TxUpdate {
    /// The link's connection (or none while it is down) and control frames.
    Link {
        /// The link.
        link: LinkId,
        /// Its connection.
        conn: Option<quinn::Connection>,
        /// Where control frames go.
        frames: Option<mpsc::UnboundedSender<cpb::Frame>>,
        /// Its counters.
        counters: Arc<LinkCounters>,
    },
    /// A local track is announced on a link as `num` (None: withdrawn).
    Map {
        /// The link.
        link: LinkId,
        /// The local track.
        track: TrackId,
        /// Its link-local number.
        num: Option<u32>,
    },
    /// The far side misses these packets.
    Nack {
        /// The link.
        link: LinkId,
        /// Link-local track number.
        num: u32,
        /// The layer.
        layer: u8,
        /// Sequence numbers (low 32 bits).
        seqs: Vec<u32>,
    },
}

/// Recently sent packets of one (track, layer): sequence number → datagrams.
type SentCache = VecDeque<(u32, Vec<Bytes>)>;

#[derive(Default)]
struct TxLink {
    conn: Option<quinn::Connection>,
    frames: Option<mpsc::UnboundedSender<cpb::Frame>>,
    counters: Arc<LinkCounters>,
    nums: HashMap<TrackId, u32>,
    /// The codec last announced per number.
    codec: HashMap<u32, str0m::media::Pt>,
    fragmenter: Fragmenter,
    cache: HashMap<(u32, u8), SentCache>,
}

/// The sending task: runs until both channels close.
pub async fn run_tx(
    mut packets: mpsc::Receiver<(LinkId, Arc<MediaPacket>)>,
    mut updates: mpsc::UnboundedReceiver<TxUpdate>,
) {
    let mut links: HashMap<LinkId, TxLink> = HashMap::new();
    let mut out = Vec::new();
    loop {
        tokio::select! {
            p = packets.recv() => {
                let Some((link, pkt)) = p else { return };
                if let Some(l) = links.get_mut(&link) {
                    send_packet(l, &pkt, &mut out);
                }
            }
            u = updates.recv() => {
                let Some(u) = u else { return };
                match u {
                    TxUpdate::Link { link, conn, frames, counters } => {
                        let l = links.entry(link).or_default();
                        l.conn = conn;
                        l.frames = frames;
                        l.counters = counters;
                        l.nums.clear();
                        l.codec.clear();
                        l.cache.clear();
                    }
                    TxUpdate::Map { link, track, num } => {
                        let l = links.entry(link).or_default();
                        match num {
                            Some(n) => {
                                l.nums.insert(track, n);
                            }
                            None => {
                                if let Some(n) = l.nums.remove(&track) {
                                    l.codec.remove(&n);
                                    l.cache.retain(|(num, _), _| *num != n);
                                }
                            }
                        }
                    }
                    TxUpdate::Nack { link, num, layer, seqs } => {
                        if let Some(l) = links.get_mut(&link) {
                            resend(l, num, layer, &seqs);
                        }
                    }
                }
            }
        }
    }
}

fn send_packet(l: &mut TxLink, pkt: &MediaPacket, out: &mut Vec<Bytes>) {
    let Some(&num) = l.nums.get(&pkt.track) else {
        return;
    };
    let Some(conn) = l.conn.as_ref() else {
        l.counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if l.codec.get(&num) != Some(&pkt.params.pt()) {
        // The far side needs the codec before it can use the packets.
        let Some(frames) = l.frames.as_ref() else {
            return;
        };
        let Some(params) = super::codec::to_wire(&pkt.params) else {
            l.counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let _ = frames.send(cpb::Frame {
            msg: Some(cpb::frame::Msg::Codec(cpb::Codec {
                link_track: num,
                params: Some(params),
            })),
        });
        l.codec.insert(num, pkt.params.pt());
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
    };
    let Some(max) = conn.max_datagram_size() else {
        l.counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    out.clear();
    if l.fragmenter
        .encode(&header, &pkt.payload, max, out)
        .is_err()
    {
        l.counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for d in out.iter() {
        match conn.send_datagram(d.clone()) {
            Ok(()) => {
                l.counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                l.counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let cache = l.cache.entry((num, pkt.layer)).or_default();
    if cache.len() >= CACHE_PACKETS {
        cache.pop_front();
    }
    cache.push_back((header.seq, out.clone()));
}

fn resend(l: &mut TxLink, num: u32, layer: u8, seqs: &[u32]) {
    l.counters
        .nacked
        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
    let Some(conn) = l.conn.as_ref() else {
        return;
    };
    let Some(cache) = l.cache.get(&(num, layer)) else {
        return;
    };
    for seq in seqs {
        // The cache is in sending order, which is sequence order per layer.
        if let Some((_, datagrams)) = cache.iter().find(|(s, _)| s == seq) {
            for d in datagrams {
                if conn.send_datagram(d.clone()).is_ok() {
                    l.counters.retransmitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Where packets of a link-local track number go on this router.
#[derive(Debug, Clone)]
pub struct Route {
    /// The remote track's local id.
    pub track: TrackId,
    /// Its home worker.
    pub worker: WorkerId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Its codec, once announced.
    pub params: Option<PayloadParams>,
}

/// Updates for a link's receiving task.
#[derive(Debug)]
pub enum RxUpdate {
    /// Packets numbered `num` belong to this route (None: forget it).
    Route {
        /// Link-local track number.
        num: u32,
        /// The route.
        route: Option<Route>,
    },
    /// The codec of `num`.
    Codec {
        /// Link-local track number.
        num: u32,
        /// Its codec.
        params: PayloadParams,
    },
}

#[derive(Debug, Default)]
struct SeqState {
    highest: Option<u32>,
    /// Missing sequence number → (first noticed, NACKs sent).
    missing: HashMap<u32, (Instant, u8, Instant)>,
}

/// The receiving task of one link connection: runs until it closes.
pub async fn run_rx(
    conn: quinn::Connection,
    control: Arc<Control>,
    frames: mpsc::UnboundedSender<cpb::Frame>,
    mut updates: mpsc::UnboundedReceiver<RxUpdate>,
    counters: Arc<LinkCounters>,
) {
    let mut routes: HashMap<u32, Route> = HashMap::new();
    let mut seqs: HashMap<(u32, u8), SeqState> = HashMap::new();
    let mut reassembler = Reassembler::new();
    let mut early: HashMap<u32, Vec<(wire::MediaDatagram, Instant)>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            d = conn.read_datagram() => {
                let Ok(d) = d else { return };
                counters.datagrams_received.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let Ok(dg) = wire::decode(d) else { continue };
                let Some(dg) = reassembler.push(now, dg) else { continue };
                let Some(route) = routes.get(&dg.header.track) else { continue };
                track_gaps(&mut seqs, &dg.header, now, &frames);
                let Some(params) = route.params else {
                    // The codec travels on the control stream and can arrive
                    // after the first datagrams (often the keyframe): hold
                    // them until it does.
                    let q = early.entry(dg.header.track).or_default();
                    if q.len() < EARLY_PACKETS {
                        q.push((dg, now));
                    } else {
                        counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                };
                let pkt = media_packet(route, params, &dg, now);
                control.ingest(route.worker, vec![BusMsg::Ingest(Arc::new(pkt))]);
            }
            u = updates.recv() => {
                let Some(u) = u else { return };
                match u {
                    RxUpdate::Route { num, route: Some(r) } => {
                        let params = routes.get(&num).and_then(|old| old.params);
                        routes.insert(num, Route { params: r.params.or(params), ..r });
                    }
                    RxUpdate::Route { num, route: None } => {
                        routes.remove(&num);
                        early.remove(&num);
                        seqs.retain(|(n, _), _| *n != num);
                    }
                    RxUpdate::Codec { num, params } => {
                        if let Some(r) = routes.get_mut(&num) {
                            r.params = Some(params);
                            let held: Vec<BusMsg> = early
                                .remove(&num)
                                .unwrap_or_default()
                                .iter()
                                .map(|(dg, at)| {
                                    BusMsg::Ingest(Arc::new(media_packet(r, params, dg, *at)))
                                })
                                .collect();
                            if !held.is_empty() {
                                control.ingest(r.worker, held);
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => {
                retry_nacks(&mut seqs, Instant::now(), &frames, &counters);
            }
        }
    }
}

/// The media packet of a relayed datagram, for the track's home worker.
fn media_packet(
    route: &Route,
    params: PayloadParams,
    dg: &wire::MediaDatagram,
    arrival: Instant,
) -> MediaPacket {
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
        audio_level: dg.header.audio_level,
        voice_activity: dg.header.audio_level.map(|_| dg.header.voice_activity),
        arrival,
        vp8,
        payload,
    }
}

fn nack(frames: &mpsc::UnboundedSender<cpb::Frame>, num: u32, layer: u8, seqs: Vec<u32>) {
    if seqs.is_empty() {
        return;
    }
    let _ = frames.send(cpb::Frame {
        msg: Some(cpb::frame::Msg::Nack(cpb::Nack {
            link_track: num,
            layer: u32::from(layer),
            seqs,
        })),
    });
}

fn track_gaps(
    seqs: &mut HashMap<(u32, u8), SeqState>,
    h: &MediaHeader,
    now: Instant,
    frames: &mpsc::UnboundedSender<cpb::Frame>,
) {
    let s = seqs.entry((h.track, h.layer)).or_default();
    s.missing.remove(&h.seq);
    let Some(high) = s.highest else {
        s.highest = Some(h.seq);
        return;
    };
    let ahead = h.seq.wrapping_sub(high);
    if ahead == 0 || ahead > u32::MAX / 2 {
        return; // a duplicate or a late (possibly retransmitted) packet
    }
    s.highest = Some(h.seq);
    if ahead > 1 && ahead <= MAX_NACK_GAP {
        let gap: Vec<u32> = (1..ahead).map(|i| high.wrapping_add(i)).collect();
        for g in &gap {
            s.missing.insert(*g, (now, 1, now));
        }
        nack(frames, h.track, h.layer, gap);
    }
}

fn retry_nacks(
    seqs: &mut HashMap<(u32, u8), SeqState>,
    now: Instant,
    frames: &mpsc::UnboundedSender<cpb::Frame>,
    counters: &LinkCounters,
) {
    for ((num, layer), s) in seqs.iter_mut() {
        let mut again = Vec::new();
        s.missing.retain(|seq, (first, tries, last)| {
            if now.saturating_duration_since(*first) >= LOSS_DEADLINE {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            if *tries < NACK_TRIES && now.saturating_duration_since(*last) >= NACK_RETRY {
                *tries += 1;
                *last = now;
                again.push(*seq);
            }
            true
        });
        nack(frames, *num, *layer, again);
    }
}
