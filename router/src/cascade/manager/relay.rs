//! The relay drivers: one task that runs every link's [`RelayTx`] (packets from the workers →
//! QUIC datagrams), and one task per connection that runs its [`RelayRx`] (QUIC datagrams →
//! batches for the home workers). They only move bytes and timers; the machines decide.

use super::conn::FrameTx;
use crate::cascade::relay::{
    Budget, LinkRate, RelayRx, RelayTx, RxRoute, RxStats, TxOutput, TxStats,
};
use crate::control::Control;
use crate::media::bus::{BusBatch, BusMsg, Outbox};
use crate::media::types::LinkId;
use crate::media::{MediaPacket, WorkerId};
use kaskade_protocol::cascade as cpb;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Datagrams taken from a connection per wake-up (one ingest per worker per batch).
const RX_BATCH: usize = 64;
/// How soon messages a full worker inbox refused are offered again when nothing else arrives.
const RETRY: Duration = Duration::from_millis(5);

/// Figures of one link, kept across its connections, shared by its tasks.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Datagrams received.
    pub datagrams_received: AtomicU64,
    /// Media not sent (link down, too large, over the link's budget).
    pub datagrams_dropped: AtomicU64,
    /// Of those, dropped because the link's budget (`cascade.link_rate_mbps`) was spent.
    pub budget_dropped: AtomicU64,
    /// Packets the far side asked for again.
    pub nacked: AtomicU64,
    /// Packets resent from the cache.
    pub retransmitted: AtomicU64,
    /// Packets never received even after asking.
    pub lost: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Updates for the sending task.
#[derive(Debug)]
pub enum TxUpdate {
    /// The link's connection (or none while it is down) and its control stream.
    Link {
        /// The link.
        link: LinkId,
        /// Its connection.
        conn: Option<quinn::Connection>,
        /// Where control frames go.
        frames: Option<FrameTx>,
        /// Its counters.
        counters: Arc<LinkCounters>,
        /// `kaskade_cascade_link_budget_dropped_total{peer}` of its peer.
        budget_dropped: IntCounter,
    },
    /// A track is announced on a link as `num` (None: withdrawn).
    Map {
        /// The link.
        link: LinkId,
        /// The track.
        track: kaskade_protocol::TrackId,
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

struct TxLink {
    tx: RelayTx,
    budget: Budget,
    conn: Option<quinn::Connection>,
    frames: Option<FrameTx>,
    counters: Arc<LinkCounters>,
    budget_dropped: Option<IntCounter>,
    seen: TxStats,
}

impl TxLink {
    fn new(rate: LinkRate) -> Self {
        Self {
            tx: RelayTx::new(),
            budget: Budget::new(rate),
            conn: None,
            frames: None,
            counters: Arc::default(),
            budget_dropped: None,
            seen: TxStats::default(),
        }
    }

    /// Sends what the machine produced, within the link's budget; counts the outcome.
    fn flush(&mut self) {
        let now = Instant::now();
        while let Some(o) = self.tx.poll_output() {
            match o {
                TxOutput::Datagram { data, repair } => {
                    let Some(conn) = &self.conn else {
                        add(&self.counters.datagrams_dropped, 1);
                        continue;
                    };
                    if !self.budget.admit(now, data.len()) {
                        add(&self.counters.datagrams_dropped, 1);
                        add(&self.counters.budget_dropped, 1);
                        if let Some(m) = &self.budget_dropped {
                            m.inc();
                        }
                        continue;
                    }
                    if conn.send_datagram(data).is_ok() {
                        add(&self.counters.datagrams_sent, 1);
                        add(&self.counters.retransmitted, u64::from(repair));
                    } else {
                        add(&self.counters.datagrams_dropped, 1);
                    }
                }
                TxOutput::Frame(msg) => {
                    if let Some(f) = &self.frames {
                        f.send(msg);
                    }
                }
            }
        }
        let s = self.tx.stats();
        add(&self.counters.nacked, s.nacked - self.seen.nacked);
        add(
            &self.counters.datagrams_dropped,
            s.dropped - self.seen.dropped,
        );
        self.seen = s;
    }
}

/// The sending task: runs until both channels close.
pub async fn run_tx(
    mut packets: mpsc::Receiver<(LinkId, Arc<MediaPacket>)>,
    mut updates: mpsc::UnboundedReceiver<TxUpdate>,
    rate: LinkRate,
) {
    let mut links: HashMap<LinkId, TxLink> = HashMap::new();
    loop {
        tokio::select! {
            p = packets.recv() => {
                let Some((link, pkt)) = p else { return };
                if let Some(l) = links.get_mut(&link) {
                    let max = l.conn.as_ref().and_then(|c| c.max_datagram_size());
                    l.tx.handle_packet(&pkt, max);
                    l.flush();
                }
            }
            u = updates.recv() => {
                let Some(u) = u else { return };
                match u {
                    TxUpdate::Link { link, conn, frames, counters, budget_dropped } => {
                        let l = links.entry(link).or_insert_with(|| TxLink::new(rate));
                        l.tx.reset();
                        l.conn = conn;
                        l.frames = frames;
                        l.counters = counters;
                        l.budget_dropped = Some(budget_dropped);
                    }
                    TxUpdate::Map { link, track, num } => {
                        links.entry(link).or_insert_with(|| TxLink::new(rate)).tx.map(track, num);
                    }
                    TxUpdate::Nack { link, num, layer, seqs } => {
                        if let Some(l) = links.get_mut(&link) {
                            l.tx.handle_nack(num, layer, &seqs);
                            l.flush();
                        }
                    }
                }
            }
        }
    }
}

/// Updates for a connection's receiving task.
#[derive(Debug)]
pub enum RxUpdate {
    /// Packets numbered `num` belong to this route (None: forget the number).
    Route {
        /// Link-local track number.
        num: u32,
        /// Where they go.
        route: Option<RxRoute>,
    },
    /// The codec of `num`, as the peer sent it.
    Codec {
        /// Link-local track number.
        num: u32,
        /// The parameters.
        params: cpb::CodecParams,
    },
}

/// What one receiving task needs.
pub struct RxTask {
    /// The connection.
    pub conn: quinn::Connection,
    /// The control plane (ingest into home workers).
    pub control: Arc<Control>,
    /// The control stream (NACKs).
    pub frames: FrameTx,
    /// Route and codec updates from the manager.
    pub updates: mpsc::UnboundedReceiver<RxUpdate>,
    /// The link's counters.
    pub counters: Arc<LinkCounters>,
    /// `kaskade_cascade_link_lost_packets_total{peer}`.
    pub lost: IntCounter,
}

/// Polls a future once: its value if ready, `None` if not (the future is dropped; quinn's
/// `read_datagram` loses nothing that way).
async fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// The receiving task of one link connection: runs until it closes.
pub async fn run_rx(t: RxTask) {
    let RxTask {
        conn,
        control,
        frames,
        mut updates,
        counters,
        lost,
    } = t;
    let mut rx = RelayRx::new();
    let mut seen = RxStats::default();
    // Per home worker: the batch being built, and what a full inbox refused (kept audio and
    // layer reports, offered again first).
    let workers = control.worker_count();
    let mut outbox = Outbox::new(workers);
    let mut batches: Vec<BusBatch> = vec![Vec::new(); workers];
    loop {
        let waiting = (0..workers).any(|w| outbox.waiting(w) > 0);
        let deadline = match (rx.poll_timeout(), waiting) {
            // Offer what a full inbox refused again soon, even if nothing else arrives.
            (d, true) => Some(d.map_or(Instant::now() + RETRY, |d| d.min(Instant::now() + RETRY))),
            (d, false) => d,
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            d = conn.read_datagram() => {
                let Ok(d) = d else { return };
                let now = Instant::now();
                rx.handle_datagram(now, d);
                // Whatever else has arrived goes in the same batch.
                for _ in 1..RX_BATCH {
                    match ready_now(conn.read_datagram()).await {
                        Some(Ok(d)) => rx.handle_datagram(now, d),
                        _ => break,
                    }
                }
            }
            u = updates.recv() => {
                let Some(u) = u else { return };
                match u {
                    RxUpdate::Route { num, route } => rx.set_route(num, route),
                    RxUpdate::Codec { num, params } => rx.set_codec(num, &params),
                }
            }
            () = sleep => rx.handle_timeout(Instant::now()),
        }
        while let Some((worker, batch)) = rx.poll_batch() {
            if let Some(b) = batches.get_mut(worker.index()) {
                b.extend(batch.into_iter().map(BusMsg::Ingest));
            }
        }
        for (i, b) in batches.iter_mut().enumerate() {
            if !b.is_empty() || outbox.waiting(i) > 0 {
                // Worker indexes fit a u16: there are at most as many as cores.
                let w = WorkerId(u16::try_from(i).unwrap_or(u16::MAX));
                control.ingest_batch(&mut outbox, w, b);
            }
        }
        while let Some(n) = rx.poll_nack() {
            frames.send(cpb::frame::Msg::Nack(n));
        }
        let s = rx.stats();
        add(&counters.datagrams_received, s.datagrams - seen.datagrams);
        add(&counters.lost, s.lost - seen.lost);
        lost.inc_by(s.lost - seen.lost);
        seen = s;
    }
}
