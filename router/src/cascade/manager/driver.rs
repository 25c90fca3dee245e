//! The manager task: feeds the link-control machine and carries out what it asks.

use super::conn::{self, close, FrameTx};
use super::metrics::{CascadeMetrics, LogThrottle, Refusal};
use super::relay::{self, LinkCounters, RxTask, RxUpdate, TxUpdate};
use super::Cmd;
use crate::cascade::link::{Admission, ConnId, LinkConfig, LinkControl, NodeId, Output, RequestId};
use crate::cascade::plane::PlaneSide;
use crate::cascade::NodeIdentity;
use crate::config::CascadeResolved;
use crate::control::{ApiError, Control};
use crate::media::types::LinkId;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::v1 as pb;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often link figures (RTT, bytes) are copied into the metrics.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// At most one refusal warning per reason this often.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// What the manager starts with.
pub(super) struct Setup<'a> {
    pub(super) me: NodeIdentity,
    pub(super) cfg: &'a CascadeResolved,
    pub(super) control: Arc<Control>,
    pub(super) endpoint: quinn::Endpoint,
    pub(super) client: quinn::ClientConfig,
    pub(super) cmd: mpsc::UnboundedSender<Cmd>,
    pub(super) tx: mpsc::UnboundedSender<TxUpdate>,
    pub(super) metrics: CascadeMetrics,
}

/// A live connection: where its frames and receive updates go.
struct Live {
    peer: NodeId,
    conn: quinn::Connection,
    frames: FrameTx,
    rx: mpsc::UnboundedSender<RxUpdate>,
    /// UDP bytes already counted in the metrics (sent, received).
    counted: (u64, u64),
}

pub(super) struct Manager {
    machine: LinkControl,
    control: Arc<Control>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addrs: HashMap<NodeId, String>,
    cmd: mpsc::UnboundedSender<Cmd>,
    tx: mpsc::UnboundedSender<TxUpdate>,
    metrics: CascadeMetrics,
    refusals: LogThrottle,
    live: HashMap<ConnId, Live>,
    /// Connections accepted by the machine, not yet announced by its `LinkUp`.
    opening: HashMap<ConnId, (quinn::Connection, FrameTx)>,
    counters: HashMap<LinkId, Arc<LinkCounters>>,
    /// Home workers of remote tracks.
    plane: PlaneSide,
    calls: HashMap<RequestId, oneshot::Sender<Result<pb::RouterRef, ApiError>>>,
    next_call: u64,
}

impl Manager {
    pub(super) fn new(s: Setup<'_>) -> Self {
        let now = Instant::now();
        let addrs: HashMap<NodeId, String> = s
            .cfg
            .peers
            .iter()
            .map(|p| (NodeId::new(p.node_id.clone()), p.addr.clone()))
            .collect();
        let cfg = LinkConfig {
            auto_link: s.cfg.auto_link,
            ..LinkConfig::default()
        };
        let machine = LinkControl::new(s.me, addrs.keys().cloned(), cfg, now);
        Self {
            machine,
            control: s.control,
            endpoint: s.endpoint,
            client: s.client,
            addrs,
            cmd: s.cmd,
            tx: s.tx,
            metrics: s.metrics,
            refusals: LogThrottle::new(REFUSAL_LOG_PERIOD),
            live: HashMap::new(),
            opening: HashMap::new(),
            counters: HashMap::new(),
            plane: PlaneSide::default(),
            calls: HashMap::new(),
            next_call: 1,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut stats = tokio::time::interval(STATS_PERIOD);
        loop {
            self.outputs();
            let deadline = self.machine.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = rx.recv() => {
                    let Some(c) = c else { return };
                    self.handle(c);
                }
                () = sleep => self.machine.handle_timeout(Instant::now()),
                _ = stats.tick() => self.update_stats(),
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = Instant::now();
        let m = &mut self.machine;
        match cmd {
            Cmd::RoomCreated(room, policy) => m.room_created(room, policy),
            Cmd::RoomDeleted(room) => m.room_deleted(&room),
            Cmd::TrackPublished(info) => m.track_published(&info),
            Cmd::TrackUnpublished(track) => {
                self.plane.forget(track);
                self.machine.track_unpublished(track);
            }
            Cmd::RemoteDemand(track, mask) => m.remote_demand(track, mask),
            Cmd::RemoteKeyframe(track, layer) => m.remote_keyframe(track, layer),
            Cmd::LinkLayers(track, layers) => m.link_layers(track, &layers),
            Cmd::LinkRoom { room, peer, reply } => {
                // Calls whose caller gave up are not kept.
                self.calls.retain(|_, r| !r.is_closed());
                let req = RequestId(self.next_call);
                self.next_call += 1;
                self.calls.insert(req, reply);
                m.link_room(now, room, peer, req);
            }
            Cmd::UnlinkRoom { room, peer, reply } => {
                let _ = reply.send(m.unlink_room(&room, &peer));
            }
            Cmd::ListLinks(reply) => {
                let _ = reply.send(self.list_links());
            }
            Cmd::ReloadTls {
                server,
                client,
                reply,
            } => {
                self.endpoint.set_server_config(Some(*server));
                self.client = client;
                tracing::info!("cascade: certificates reloaded (new connections use them)");
                let _ = reply.send(());
            }
            Cmd::Connected {
                identity,
                conn,
                send,
                recv,
                dialed,
            } => self.on_connected(now, identity, conn, send, recv, dialed),
            Cmd::DialFailed { peer, refused } => {
                if let Some((reason, detail)) = refused {
                    self.refused(now, reason, &detail);
                }
                self.machine.handle_dial_failed(now, &peer);
            }
            Cmd::Refused { reason, detail } => self.refused(now, reason, &detail),
            Cmd::Frame { peer, conn, msg } => {
                if matches!(&msg, cpb::frame::Msg::Hello(h) if h.node_id != peer.as_str() || h.version != cpb::LINK_VERSION)
                {
                    self.refused(now, Refusal::Version, peer.as_str());
                }
                self.machine.handle_frame(now, &peer, conn, msg);
            }
            Cmd::Disconnected {
                peer,
                conn,
                refused,
            } => {
                if let Some(reason) = refused {
                    self.refused(now, reason, peer.as_str());
                }
                self.machine.handle_disconnected(now, &peer, conn);
            }
        }
    }

    /// A refused handshake: counted always, logged at most once per reason and period.
    fn refused(&mut self, now: Instant, reason: Refusal, detail: &str) {
        self.metrics
            .refused
            .with_label_values(&[reason.as_str()])
            .inc();
        if let Some(held) = self.refusals.allow(now, reason.as_str()) {
            let who = match reason {
                Refusal::Peer => "the peer refused this router",
                _ => "refused a connection",
            };
            tracing::warn!(
                reason = reason.as_str(),
                detail,
                similar_since_last = held,
                "cascade: {who}"
            );
        }
    }

    fn on_connected(
        &mut self,
        now: Instant,
        identity: NodeIdentity,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        dialed: bool,
    ) {
        match self.machine.handle_connected(now, &identity, dialed) {
            Admission::Refuse(code) => {
                if code == CloseCode::SelfLink {
                    self.refused(now, Refusal::SelfLink, &identity.node_id);
                }
                close(&conn, code);
            }
            Admission::Accept(id) => {
                let peer = NodeId::new(identity.node_id.clone());
                let (ftx, frx, queued) = FrameTx::new(conn.clone());
                tokio::spawn(conn::write_frames(send, frx, queued));
                tokio::spawn(conn::read_frames(
                    recv,
                    conn.clone(),
                    peer,
                    id,
                    self.cmd.clone(),
                ));
                self.opening.insert(id, (conn, ftx));
                tracing::info!(peer = %identity.node_id, region = %identity.region, "cascade link up");
            }
        }
    }

    /// Carries out everything the machine asks, in order.
    fn outputs(&mut self) {
        while let Some(o) = self.machine.poll_output() {
            self.output(o);
        }
    }

    fn output(&mut self, o: Output) {
        let c = &self.control;
        let Some(o) = self.plane.apply(c, &mut self.machine, o) else {
            return;
        };
        match o {
            Output::Dial(peer) => {
                if let Some(addr) = self.addrs.get(&peer).cloned() {
                    tokio::spawn(conn::dial(
                        self.endpoint.clone(),
                        self.client.clone(),
                        peer,
                        addr,
                        self.cmd.clone(),
                    ));
                }
            }
            Output::Frame { conn, msg, .. } => {
                let frames = self
                    .live
                    .get(&conn)
                    .map(|l| &l.frames)
                    .or_else(|| self.opening.get(&conn).map(|o| &o.1));
                if let Some(f) = frames {
                    f.send(msg);
                }
            }
            Output::Close { conn, code, .. } => {
                if let Some(l) = self.live.remove(&conn) {
                    close(&l.conn, code);
                }
                if let Some((c, _)) = self.opening.remove(&conn) {
                    close(&c, code);
                }
            }
            Output::LinkUp {
                peer,
                link,
                conn,
                reconnect,
            } => self.link_up(peer, link, conn, reconnect),
            Output::LinkDown { peer, link, conn } => {
                if let Some(l) = self.live.remove(&conn) {
                    self.count_bytes_of(&l);
                }
                self.opening.remove(&conn);
                self.metrics
                    .link_up
                    .with_label_values(&[peer.as_str()])
                    .set(0);
                let counters = self.counters_of(link);
                let _ = self.tx.send(TxUpdate::Link {
                    link,
                    conn: None,
                    frames: None,
                    counters,
                    budget_dropped: self.metrics.budget_dropped_for(peer.as_str()),
                });
            }
            Output::TxMap { link, track, num } => {
                let _ = self.tx.send(TxUpdate::Map { link, track, num });
            }
            Output::TxNack {
                link,
                num,
                layer,
                seqs,
            } => {
                let _ = self.tx.send(TxUpdate::Nack {
                    link,
                    num,
                    layer,
                    seqs,
                });
            }
            Output::RxRoute {
                conn, num, route, ..
            } => {
                let Some(route) = self.plane.route(route) else {
                    return; // the control plane did not take the track
                };
                if let Some(l) = self.live.get(&conn) {
                    let _ = l.rx.send(RxUpdate::Route { num, route });
                }
            }
            Output::RxCodec {
                conn, num, params, ..
            } => {
                if let Some(l) = self.live.get(&conn) {
                    let _ = l.rx.send(RxUpdate::Codec { num, params });
                }
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
                if let Some(reply) = self.calls.remove(&req) {
                    let _ = reply.send(result.map(|r| pb::RouterRef {
                        node_id: r.node_id.to_string(),
                        region: r.region,
                    }));
                }
            }
        }
    }

    fn counters_of(&mut self, link: LinkId) -> Arc<LinkCounters> {
        self.counters.entry(link).or_default().clone()
    }

    fn link_up(&mut self, peer: NodeId, link: LinkId, id: ConnId, reconnect: bool) {
        let Some((conn, frames)) = self.opening.remove(&id) else {
            return;
        };
        let counters = self.counters_of(link);
        let (rtx, rrx) = mpsc::unbounded_channel();
        tokio::spawn(relay::run_rx(RxTask {
            conn: conn.clone(),
            control: self.control.clone(),
            frames: frames.clone(),
            updates: rrx,
            counters: counters.clone(),
            lost: self.metrics.lost_for(peer.as_str()),
        }));
        let _ = self.tx.send(TxUpdate::Link {
            link,
            conn: Some(conn.clone()),
            frames: Some(frames.clone()),
            counters,
            budget_dropped: self.metrics.budget_dropped_for(peer.as_str()),
        });
        let label = [peer.as_str()];
        self.metrics.link_up.with_label_values(&label).set(1);
        if reconnect {
            self.metrics.reconnects.with_label_values(&label).inc();
        }
        self.live.insert(
            id,
            Live {
                peer,
                conn,
                frames,
                rx: rtx,
                counted: (0, 0),
            },
        );
    }

    /// Adds a connection's new UDP bytes to the metrics.
    fn count_bytes_of(&self, l: &Live) -> (u64, u64) {
        let s = l.conn.stats();
        let (tx, rx) = (s.udp_tx.bytes, s.udp_rx.bytes);
        let peer = l.peer.as_str();
        self.metrics
            .bytes
            .with_label_values(&[peer, "sent"])
            .inc_by(tx.saturating_sub(l.counted.0));
        self.metrics
            .bytes
            .with_label_values(&[peer, "received"])
            .inc_by(rx.saturating_sub(l.counted.1));
        (tx, rx)
    }

    /// RTT, congestion window and bytes of every live link into the metrics.
    fn update_stats(&mut self) {
        let ids: Vec<ConnId> = self.live.keys().copied().collect();
        for id in ids {
            let Some(l) = self.live.get(&id) else {
                continue;
            };
            let counted = self.count_bytes_of(l);
            self.metrics
                .rtt
                .with_label_values(&[l.peer.as_str()])
                .set(l.conn.rtt().as_secs_f64());
            let cwnd = l.conn.congestion_state().window();
            self.metrics
                .cwnd
                .with_label_values(&[l.peer.as_str()])
                .set(i64::try_from(cwnd).unwrap_or(i64::MAX));
            if let Some(l) = self.live.get_mut(&id) {
                l.counted = counted;
            }
        }
    }

    fn list_links(&mut self) -> Vec<pb::Link> {
        let views = self.machine.links();
        let mut out: Vec<pb::Link> = views
            .into_iter()
            .map(|v| {
                let live = v.conn.and_then(|c| self.live.get(&c));
                let stats = live.map(|l| (l.conn.rtt(), l.conn.stats()));
                let c = self.counters.get(&v.link).cloned().unwrap_or_default();
                let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                pb::Link {
                    peer: Some(pb::RouterRef {
                        node_id: v.peer.to_string(),
                        region: v.region,
                    }),
                    up: live.is_some(),
                    rooms: v.rooms.iter().map(|r| r.to_string()).collect(),
                    rtt_us: stats.as_ref().map_or(0, |(rtt, _)| rtt.as_micros() as u64),
                    bytes_sent: stats.as_ref().map_or(0, |(_, s)| s.udp_tx.bytes),
                    bytes_received: stats.as_ref().map_or(0, |(_, s)| s.udp_rx.bytes),
                    datagrams_sent: n(&c.datagrams_sent),
                    datagrams_received: n(&c.datagrams_received),
                    datagrams_dropped: n(&c.datagrams_dropped),
                    nacked: n(&c.nacked),
                    retransmitted: n(&c.retransmitted),
                    lost: n(&c.lost),
                    tracks_sent: v.tracks_sent,
                    tracks_received: v.tracks_received,
                    reconnects: v.reconnects,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            let k = |l: &pb::Link| l.peer.as_ref().map(|p| p.node_id.clone());
            k(a).cmp(&k(b))
        });
        out
    }
}
