//! One router's cascade in the cluster: its link-control machine and relay machines, carried
//! out against its real control plane the way the production driver
//! (`cascade::manager::driver` and `relay`) does it, with the simulated network in place of
//! quinn and direct calls in place of tokio tasks.

use super::hooks::{Hook, HookQueue};
use crate::cascade::link::{ConnId, LinkControl, NodeId, Output, RequestId, RouterRef};
use crate::cascade::plane::PlaneSide;
use crate::cascade::relay::{Budget, LinkRate, RelayRx, RelayTx, RxStats, TxOutput, TxStats};
use crate::cascade::sim::{Net, MAX_DATAGRAM};
use crate::control::{ApiError, Control};
use crate::media::bus::{BusMsg, Outbox};
use crate::media::types::{LinkId, MediaPacket};
use crate::media::{BusBatch, WorkerId};
use kaskade_protocol::cascade::frame::Msg;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How soon messages a full worker inbox refused are offered again (as `relay::run_rx`).
pub(super) const RETRY: Duration = Duration::from_millis(5);

/// Figures of one link, kept across its connections (the production `LinkCounters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Media datagrams sent.
    pub datagrams_sent: u64,
    /// Media datagrams received.
    pub datagrams_received: u64,
    /// Media not sent (link down, too large, over the link's budget).
    pub datagrams_dropped: u64,
    /// Of those, dropped because the link's budget (`cascade.link_rate_mbps`) was spent.
    pub budget_dropped: u64,
    /// Packets the far side asked for again.
    pub nacked: u64,
    /// Packets resent.
    pub retransmitted: u64,
    /// Packets never received even after asking (loss after repair).
    pub lost: u64,
}

/// The receiving side of one connection: its relay machine and the batches for the home
/// workers (what `relay::run_rx` keeps).
#[derive(Debug)]
struct RxConn {
    link: LinkId,
    rx: RelayRx,
    outbox: Outbox,
    batches: Vec<BusBatch>,
    seen: RxStats,
    /// When to offer what a full inbox refused again.
    retry_at: Option<Instant>,
}

/// The sending side of one link (what `relay::run_tx` keeps per link).
#[derive(Debug)]
struct TxLink {
    tx: RelayTx,
    budget: Budget,
    seen: TxStats,
}

impl TxLink {
    fn new(rate: LinkRate) -> Self {
        Self {
            tx: RelayTx::new(),
            budget: Budget::new(rate),
            seen: TxStats::default(),
        }
    }
}

/// One router's cascade.
#[derive(Debug)]
pub struct Side {
    /// The link-control machine.
    pub machine: LinkControl,
    pub(super) hooks: Arc<HookQueue>,
    /// What each link may send (`cascade.link_rate_mbps`).
    pub(super) rate: LinkRate,
    tx: BTreeMap<LinkId, TxLink>,
    rx: BTreeMap<ConnId, RxConn>,
    link_conn: BTreeMap<LinkId, ConnId>,
    /// Receive figures of connections that ended.
    rx_done: RxStats,
    /// Home workers of remote tracks.
    plane: PlaneSide,
    counts: BTreeMap<LinkId, LinkCounts>,
    /// Answers to `LinkRoom` calls.
    pub replies: BTreeMap<RequestId, Result<RouterRef, ApiError>>,
}

/// What a side works with: its router's control plane and index, the network.
pub(super) struct Env<'a> {
    pub(super) now: Instant,
    pub(super) me: &'a NodeId,
    pub(super) idx: usize,
    pub(super) control: &'a Control,
    pub(super) net: &'a mut Net,
    pub(super) rng: &'a mut StdRng,
    pub(super) ids: &'a BTreeMap<NodeId, usize>,
}

impl Side {
    pub(super) fn new(machine: LinkControl, hooks: Arc<HookQueue>, rate: LinkRate) -> Self {
        Self {
            machine,
            hooks,
            rate,
            tx: BTreeMap::new(),
            rx: BTreeMap::new(),
            link_conn: BTreeMap::new(),
            rx_done: RxStats::default(),
            plane: PlaneSide::default(),
            counts: BTreeMap::new(),
            replies: BTreeMap::new(),
        }
    }

    /// A link's figures.
    pub fn counts(&self, link: LinkId) -> LinkCounts {
        self.counts.get(&link).copied().unwrap_or_default()
    }

    /// The relay receive figures over all connections, past and present.
    pub fn rx_stats(&self) -> RxStats {
        let mut s = self.rx_done;
        for r in self.rx.values() {
            s += r.rx.stats();
        }
        s
    }

    /// When something of this side is next due.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let mut next = self.machine.poll_timeout();
        for r in self.rx.values() {
            for t in [r.rx.poll_timeout(), r.retry_at].into_iter().flatten() {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        }
        next
    }

    /// Serves due timers of the machines.
    pub(super) fn handle_timeout(&mut self, env: &mut Env<'_>) {
        let now = env.now;
        if self.machine.poll_timeout().is_some_and(|t| t <= now) {
            self.machine.handle_timeout(now);
        }
        let due: Vec<ConnId> = self
            .rx
            .iter()
            .filter(|(_, r)| {
                r.rx.poll_timeout().is_some_and(|t| t <= now)
                    || r.retry_at.is_some_and(|t| t <= now)
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in due {
            if let Some(r) = self.rx.get_mut(&conn) {
                if r.rx.poll_timeout().is_some_and(|t| t <= now) {
                    r.rx.handle_timeout(now);
                }
            }
            self.flush_rx(env, conn);
        }
    }

    /// A datagram of connection `conn` arrived.
    pub(super) fn handle_datagram(&mut self, env: &mut Env<'_>, conn: ConnId, data: bytes::Bytes) {
        if let Some(r) = self.rx.get_mut(&conn) {
            r.rx.handle_datagram(env.now, data);
        }
        self.flush_rx(env, conn);
    }

    /// Hands the control plane's hook calls and the workers' relayed packets to the machines
    /// and carries out what they ask; whether anything happened.
    pub(super) fn settle(
        &mut self,
        env: &mut Env<'_>,
        relayed: &mut Vec<(LinkId, Arc<MediaPacket>)>,
    ) -> bool {
        let mut progressed = false;
        for h in self.hooks.take() {
            progressed = true;
            let m = &mut self.machine;
            match h {
                Hook::RoomCreated(room, policy) => m.room_created(room, policy),
                Hook::RoomDeleted(room) => m.room_deleted(&room),
                Hook::TrackPublished(info) => m.track_published(&info),
                Hook::TrackUnpublished(track) => {
                    self.plane.forget(track);
                    m.track_unpublished(track);
                }
                Hook::RemoteDemand(track, mask) => m.remote_demand(track, mask),
                Hook::RemoteKeyframe(track, layer) => m.remote_keyframe(track, layer),
                Hook::LinkLayers(track, layers) => m.link_layers(track, &layers),
            }
        }
        for (link, pkt) in relayed.drain(..) {
            progressed = true;
            if self.tx.contains_key(&link) {
                let up = self.link_conn.contains_key(&link);
                if let Some(l) = self.tx.get_mut(&link) {
                    l.tx.handle_packet(&pkt, up.then_some(MAX_DATAGRAM));
                }
                self.flush_tx(env, link);
            }
        }
        while let Some(o) = self.machine.poll_output() {
            progressed = true;
            self.output(env, o);
        }
        progressed
    }

    /// Sends what a link's relay machine produced; counts the outcome (as `TxLink::flush`).
    fn flush_tx(&mut self, env: &mut Env<'_>, link: LinkId) {
        let conn = self.link_conn.get(&link).copied();
        let Some(l) = self.tx.get_mut(&link) else {
            return;
        };
        let c = self.counts.entry(link).or_default();
        while let Some(o) = l.tx.poll_output() {
            match o {
                TxOutput::Datagram { data, repair } => {
                    let Some(conn) = conn else {
                        c.datagrams_dropped += 1;
                        continue;
                    };
                    if !l.budget.admit(env.now, data.len()) {
                        c.datagrams_dropped += 1;
                        c.budget_dropped += 1;
                        continue;
                    }
                    env.net
                        .send_datagram(env.now, env.rng, env.idx, conn, data, repair);
                    c.datagrams_sent += 1;
                    c.retransmitted += u64::from(repair);
                }
                TxOutput::Frame(msg) => {
                    if let Some(conn) = conn {
                        env.net.send_frame(env.now, (env.idx, env.me), conn, msg);
                    }
                }
            }
        }
        let s = l.tx.stats();
        c.nacked += s.nacked - l.seen.nacked;
        c.datagrams_dropped += s.dropped - l.seen.dropped;
        l.seen = s;
    }

    /// Packets a connection's relay machine finished go to their home workers, under the bus's
    /// overload policy; its NACKs go to the peer (as `relay::run_rx`).
    fn flush_rx(&mut self, env: &mut Env<'_>, conn: ConnId) {
        let Some(r) = self.rx.get_mut(&conn) else {
            return;
        };
        while let Some((worker, batch)) = r.rx.poll_batch() {
            if let Some(b) = r.batches.get_mut(worker.index()) {
                b.extend(batch.into_iter().map(BusMsg::Ingest));
            }
        }
        let mut waiting = false;
        for (i, b) in r.batches.iter_mut().enumerate() {
            if !b.is_empty() || r.outbox.waiting(i) > 0 {
                // Worker indexes fit a u16: a simulated router has a handful.
                let w = WorkerId(u16::try_from(i).unwrap_or(u16::MAX));
                env.control.ingest_batch(&mut r.outbox, w, b);
                waiting |= r.outbox.waiting(i) > 0;
            }
        }
        r.retry_at = waiting.then_some(env.now + RETRY);
        while let Some(n) = r.rx.poll_nack() {
            env.net
                .send_frame(env.now, (env.idx, env.me), conn, Msg::Nack(n));
        }
        let s = r.rx.stats();
        let c = self.counts.entry(r.link).or_default();
        c.datagrams_received += s.datagrams - r.seen.datagrams;
        c.lost += s.lost - r.seen.lost;
        r.seen = s;
    }

    /// Carries out one output of the machine, as the production manager does.
    fn output(&mut self, env: &mut Env<'_>, o: Output) {
        let c = env.control;
        let Some(o) = self.plane.apply(c, &mut self.machine, o) else {
            return;
        };
        let now = env.now;
        let rate = self.rate;
        match o {
            Output::Dial(peer) => {
                let to = env.ids.get(&peer).copied();
                let alive = to.is_some_and(|t| env.net.alive(t));
                env.net.dial(now, env.idx, to, peer, alive);
            }
            Output::Frame { conn, msg, .. } => {
                env.net.send_frame(now, (env.idx, env.me), conn, msg)
            }
            Output::Close { conn, code, .. } => env.net.close(now, env.idx, conn, env.me, code),
            Output::LinkUp { link, conn, .. } => {
                self.tx
                    .entry(link)
                    .or_insert_with(|| TxLink::new(rate))
                    .tx
                    .reset();
                self.link_conn.insert(link, conn);
                let workers = c.worker_count();
                self.rx.insert(
                    conn,
                    RxConn {
                        link,
                        rx: RelayRx::new(),
                        outbox: Outbox::new(workers),
                        batches: vec![Vec::new(); workers],
                        seen: RxStats::default(),
                        retry_at: None,
                    },
                );
            }
            Output::LinkDown { link, conn, .. } => {
                if self.link_conn.get(&link) == Some(&conn) {
                    self.link_conn.remove(&link);
                }
                if let Some(r) = self.rx.remove(&conn) {
                    self.rx_done += r.rx.stats();
                }
                self.tx
                    .entry(link)
                    .or_insert_with(|| TxLink::new(rate))
                    .tx
                    .reset();
            }
            Output::TxMap { link, track, num } => {
                self.tx
                    .entry(link)
                    .or_insert_with(|| TxLink::new(rate))
                    .tx
                    .map(track, num);
            }
            Output::TxNack {
                link,
                num,
                layer,
                seqs,
            } => {
                if let Some(l) = self.tx.get_mut(&link) {
                    l.tx.handle_nack(num, layer, &seqs);
                }
                self.flush_tx(env, link);
            }
            Output::RxRoute {
                conn, num, route, ..
            } => {
                let Some(route) = self.plane.route(route) else {
                    return; // the control plane did not take the track
                };
                if let Some(r) = self.rx.get_mut(&conn) {
                    r.rx.set_route(num, route);
                }
            }
            Output::RxCodec {
                conn, num, params, ..
            } => {
                if let Some(r) = self.rx.get_mut(&conn) {
                    r.rx.set_codec(num, &params);
                }
                self.flush_rx(env, conn);
            }
            // Taken by `PlaneSide::apply` above.
            Output::EnsureRoom { .. }
            | Output::AddRemoteTrack(_)
            | Output::RemoveRemoteTrack(_)
            | Output::SetLinkDemand { .. }
            | Output::RequestKeyframe { .. }
            | Output::RemoteLayers { .. }
            | Output::LinkChanged { .. }
            | Output::LinkRefused { .. }
            | Output::Reached { .. } => {}
            Output::Reply { req, result } => {
                self.replies.insert(req, result);
            }
        }
    }
}
