//! The cascade manager: one task that owns every link's state. Connections
//! (dialled or accepted), control frames, the control plane's hooks and the
//! API's requests all arrive as `Cmd`s on one channel, so the state needs
//! no locks.

use super::media::{self, LinkCounters, Route, RxUpdate, TxUpdate};
use super::tls;
use super::NodeIdentity;
use crate::config::{CascadeResolved, PeerAddr};
use crate::control::registry::region_allowed;
use crate::control::{ApiError, CascadeHooks, Control, RemoteTrack};
use crate::media::bus::BusMsg;
use crate::media::select::LayerState;
use crate::media::types::LinkId;
use crate::media::{MediaPacket, TrackInfo};

use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::cascade::framing::{write_frame, FrameReader};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, TrackId};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use str0m::media::{MediaKind, Rid};
use tokio::sync::{mpsc, oneshot};

/// How long remote tracks stay (paused) after their link went down.
const DOWN_GRACE: Duration = Duration::from_secs(30);
/// Longest wait between two dial attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long `LinkRoom` waits for the peer's connection and answer.
const LINK_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the router with the larger node id waits for the smaller one to
/// dial before dialling itself.
const LARGER_ID_WAIT: Duration = Duration::from_secs(2);
/// Capacity of the workers' channel of packets to relay.
pub const RELAY_QUEUE: usize = 8192;

/// Why the cascade could not start.
#[derive(Debug, thiserror::Error)]
pub enum CascadeStartError {
    /// Files or certificates.
    #[error("cascade: {0}")]
    Config(String),
    /// The QUIC socket.
    #[error("cascade: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Everything the manager task reacts to.
enum Cmd {
    // From the control plane (hooks).
    TrackPublished(RoomId, Arc<TrackInfo>),
    TrackUnpublished(RoomId, TrackId),
    RemoteDemand(TrackId, u32),
    RemoteKeyframe(TrackId, u8),
    LinkLayers(TrackId, Arc<[LayerState]>),
    RoomDeleted(RoomId),
    // From the API.
    LinkRoom {
        room: RoomId,
        peer: String,
        reply: oneshot::Sender<Result<pb::RouterRef, ApiError>>,
    },
    UnlinkRoom {
        room: RoomId,
        peer: String,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    ListLinks(oneshot::Sender<Vec<pb::Link>>),
    // From connection tasks.
    Connected {
        identity: NodeIdentity,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        dialed: bool,
    },
    Frame {
        peer: String,
        gen: u64,
        frame: cpb::Frame,
    },
    Disconnected {
        peer: String,
        gen: u64,
    },
    Expire {
        peer: String,
        gen: u64,
    },
    Redial(String),
    /// `LinkRoom` requests still waiting for a connection to `peer` fail.
    LinkTimeout(String),
}

/// The handle the control plane and the API hold.
#[derive(Clone)]
pub struct CascadeHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// This router's identity, from its certificate.
    pub identity: NodeIdentity,
    /// The bound QUIC address.
    pub local_addr: SocketAddr,
}

impl std::fmt::Debug for CascadeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CascadeHandle({})", self.identity.node_id)
    }
}

impl CascadeHooks for CascadeHandle {
    fn track_published(&self, room: &RoomId, track: &Arc<TrackInfo>) {
        let _ = self
            .tx
            .send(Cmd::TrackPublished(room.clone(), track.clone()));
    }
    fn track_unpublished(&self, room: &RoomId, track: TrackId) {
        let _ = self.tx.send(Cmd::TrackUnpublished(room.clone(), track));
    }
    fn remote_demand(&self, track: TrackId, mask: u32) {
        let _ = self.tx.send(Cmd::RemoteDemand(track, mask));
    }
    fn remote_keyframe(&self, track: TrackId, layer: u8) {
        let _ = self.tx.send(Cmd::RemoteKeyframe(track, layer));
    }
    fn link_layers(&self, track: TrackId, layers: Arc<[LayerState]>) {
        let _ = self.tx.send(Cmd::LinkLayers(track, layers));
    }
    fn room_deleted(&self, room: &RoomId) {
        let _ = self.tx.send(Cmd::RoomDeleted(room.clone()));
    }
}

impl CascadeHandle {
    /// `CascadeService.LinkRoom`
    pub async fn link_room(&self, room: RoomId, peer: String) -> Result<pb::RouterRef, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::LinkRoom {
                room,
                peer: peer.clone(),
                reply,
            })
            .map_err(|_| ApiError::Unavailable("cascade stopped".into()))?;
        // Whatever happens to the connection meanwhile, the caller gets an answer.
        match tokio::time::timeout(LINK_TIMEOUT + Duration::from_secs(2), rx).await {
            Ok(r) => r.map_err(|_| ApiError::Unavailable("cascade stopped".into()))?,
            Err(_) => Err(ApiError::Unavailable(format!("no answer from peer {peer}"))),
        }
    }

    /// `CascadeService.UnlinkRoom`
    pub async fn unlink_room(&self, room: RoomId, peer: String) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::UnlinkRoom { room, peer, reply })
            .map_err(|_| ApiError::Unavailable("cascade stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("cascade stopped".into()))?
    }

    /// `CascadeService.ListLinks`
    pub async fn list_links(&self) -> Vec<pb::Link> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::ListLinks(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Peer {
    link: LinkId,
    region: String,
    gen: u64,
    conn: Option<quinn::Connection>,
    dialed: bool,
    frames: Option<mpsc::UnboundedSender<cpb::Frame>>,
    rx: Option<mpsc::UnboundedSender<RxUpdate>>,
    counters: Arc<LinkCounters>,
    /// Rooms linked with this peer (kept across reconnects).
    rooms: BTreeSet<RoomId>,
    /// Local tracks announced to the peer: track → number, and back.
    out: HashMap<TrackId, u32>,
    out_rev: HashMap<u32, (TrackId, RoomId)>,
    next_out: u32,
    /// The peer's numbers → our remote tracks.
    inbound: HashMap<u32, TrackId>,
    reconnects: u32,
    /// LinkRoom requests waiting for the peer's answer.
    pending: HashMap<RoomId, oneshot::Sender<Result<pb::RouterRef, ApiError>>>,
    /// LinkRoom requests waiting for a connection.
    waiting: Vec<(RoomId, oneshot::Sender<Result<pb::RouterRef, ApiError>>)>,
}

struct Manager {
    me: NodeIdentity,
    control: Arc<Control>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addrs: HashMap<String, String>,
    peers: HashMap<String, Peer>,
    next_link: u16,
    next_gen: u64,
    cmd: mpsc::UnboundedSender<Cmd>,
    tx: mpsc::UnboundedSender<TxUpdate>,
    /// Remote track → (peer, its number).
    routes: HashMap<TrackId, (String, u32)>,
    /// Last demand per remote track (re-sent after a reconnect).
    demand: HashMap<TrackId, u32>,
}

/// Packets of local tracks the media workers hand to the cascade.
pub type RelayQueue = mpsc::Receiver<(LinkId, Arc<MediaPacket>)>;

/// Starts the cascade: binds the QUIC endpoint, starts the manager and the
/// relay task (reading what the workers send into `relay`), dials the
/// configured peers. Must run inside a tokio runtime.
pub fn start(
    cfg: &CascadeResolved,
    control: Arc<Control>,
    relay: RelayQueue,
) -> Result<CascadeHandle, CascadeStartError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CascadeStartError::Config(format!("cannot read {}: {e}", p.display())))
    };
    let (ca, cert, key) = (read(&cfg.ca)?, read(&cfg.cert)?, read(&cfg.key)?);
    let identity = super::cert::identity_of_pem(&cert)
        .map_err(|e| CascadeStartError::Config(format!("node certificate: {e}")))?;
    let own = control.identity();
    if identity.node_id != own.node_id || identity.region != own.region {
        return Err(CascadeStartError::Config(format!(
            "the certificate is for node {:?} in {:?}, but node.id/node.region say {:?} in {:?}",
            identity.node_id, identity.region, own.node_id, own.region
        )));
    }
    let (server, client) = tls::endpoint_configs(&ca, &cert, &key)
        .map_err(|e| CascadeStartError::Config(e.to_string()))?;
    let endpoint =
        quinn::Endpoint::server(server, cfg.listen).map_err(|source| CascadeStartError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| CascadeStartError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (tx_updates, tx_updates_rx) = mpsc::unbounded_channel();
    tokio::spawn(media::run_tx(relay, tx_updates_rx));
    tokio::spawn(accept_loop(endpoint.clone(), cmd_tx.clone()));
    let mut m = Manager {
        me: identity.clone(),
        control,
        endpoint,
        client,
        addrs: cfg
            .peers
            .iter()
            .map(|PeerAddr { node_id, addr }| (node_id.clone(), addr.clone()))
            .collect(),
        peers: HashMap::new(),
        next_link: 0,
        next_gen: 1,
        cmd: cmd_tx.clone(),
        tx: tx_updates,
        routes: HashMap::new(),
        demand: HashMap::new(),
    };
    for id in m.addrs.keys().cloned().collect::<Vec<_>>() {
        m.peer(&id);
        m.dial_or_wait(id, Duration::ZERO);
    }
    tokio::spawn(m.run(cmd_rx));
    Ok(CascadeHandle {
        tx: cmd_tx,
        identity,
        local_addr,
    })
}

async fn accept_loop(endpoint: quinn::Endpoint, cmd: mpsc::UnboundedSender<Cmd>) {
    while let Some(incoming) = endpoint.accept().await {
        let cmd = cmd.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                // A peer without a valid certificate of our CA ends here.
                tracing::warn!("cascade: refused a connection (TLS handshake failed)");
                return;
            };
            let Ok(identity) = tls::peer_identity(&conn) else {
                close(&conn, CloseCode::Identity);
                return;
            };
            let Ok(Ok((send, recv))) =
                tokio::time::timeout(Duration::from_secs(5), conn.accept_bi()).await
            else {
                return;
            };
            let _ = cmd.send(Cmd::Connected {
                identity,
                conn,
                send,
                recv,
                dialed: false,
            });
        });
    }
}

/// Closes a link connection, saying why.
fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(
        quinn::VarInt::from_u32(code.code()),
        code.reason().as_bytes(),
    );
}

fn frame(msg: cpb::frame::Msg) -> cpb::Frame {
    cpb::Frame { msg: Some(msg) }
}

fn kind_num(k: MediaKind) -> u32 {
    match k {
        MediaKind::Audio => 1,
        MediaKind::Video => 2,
    }
}

impl Manager {
    fn peer(&mut self, id: &str) -> &mut Peer {
        if !self.peers.contains_key(id) {
            let link = LinkId(self.next_link);
            self.next_link += 1;
            self.peers.insert(
                id.to_string(),
                Peer {
                    link,
                    region: String::new(),
                    gen: 0,
                    conn: None,
                    dialed: false,
                    frames: None,
                    rx: None,
                    counters: Arc::new(LinkCounters::default()),
                    rooms: BTreeSet::new(),
                    out: HashMap::new(),
                    out_rev: HashMap::new(),
                    next_out: 1,
                    inbound: HashMap::new(),
                    reconnects: 0,
                    pending: HashMap::new(),
                    waiting: Vec::new(),
                },
            );
        }
        self.peers
            .get_mut(id)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// One connection per pair without racing: the smaller node id dials;
    /// the larger one dials only if no connection has come in after a while
    /// (the smaller may not list it as a peer).
    fn dial_or_wait(&self, peer: String, after: Duration) {
        if self.me.node_id < peer {
            self.dial(peer, after);
        } else {
            let cmd = self.cmd.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after + LARGER_ID_WAIT).await;
                let _ = cmd.send(Cmd::Redial(peer));
            });
        }
    }

    fn dial(&self, peer: String, after: Duration) {
        let Some(addr) = self.addrs.get(&peer).cloned() else {
            return;
        };
        let (endpoint, client, cmd) =
            (self.endpoint.clone(), self.client.clone(), self.cmd.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut backoff = Duration::from_millis(250);
            loop {
                if let Some(c) = connect(&endpoint, &client, &peer, &addr).await {
                    let _ = cmd.send(c);
                    return;
                }
                if cmd.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::TrackPublished(room, info) => self.on_track_published(&room, &info),
            Cmd::TrackUnpublished(room, track) => self.on_track_unpublished(&room, track),
            Cmd::RemoteDemand(track, mask) => {
                tracing::debug!(%track, mask, routed = self.routes.contains_key(&track), "remote demand");
                self.demand.insert(track, mask);
                if let Some((peer, num)) = self.routes.get(&track).cloned() {
                    self.send(
                        &peer,
                        cpb::frame::Msg::Subscribe(cpb::Subscribe {
                            link_track: num,
                            layer_mask: mask,
                        }),
                    );
                }
            }
            Cmd::RemoteKeyframe(track, layer) => {
                if let Some((peer, num)) = self.routes.get(&track).cloned() {
                    self.send(
                        &peer,
                        cpb::frame::Msg::KeyframeRequest(cpb::KeyframeRequest {
                            link_track: num,
                            layer: u32::from(layer),
                        }),
                    );
                }
            }
            Cmd::LinkLayers(track, layers) => {
                let msgs: Vec<(String, u32)> = self
                    .peers
                    .iter()
                    .filter_map(|(id, p)| p.out.get(&track).map(|n| (id.clone(), *n)))
                    .collect();
                for (peer, num) in msgs {
                    self.send(
                        &peer,
                        cpb::frame::Msg::LayerInfo(cpb::LayerInfo {
                            link_track: num,
                            layers: layers
                                .iter()
                                .map(|l| cpb::LayerState {
                                    active: l.active,
                                    bitrate: l.bitrate,
                                    width: u32::from(l.width),
                                    height: u32::from(l.height),
                                })
                                .collect(),
                        }),
                    );
                }
            }
            Cmd::RoomDeleted(room) => {
                let ids: Vec<String> = self.peers.keys().cloned().collect();
                for id in ids {
                    if self.peer(&id).rooms.remove(&room) {
                        self.send(
                            &id,
                            cpb::frame::Msg::UnlinkRoom(cpb::UnlinkRoom {
                                room_id: room.to_string(),
                            }),
                        );
                    }
                }
            }
            Cmd::LinkRoom { room, peer, reply } => self.link_room(room, peer, reply),
            Cmd::UnlinkRoom { room, peer, reply } => {
                let r = self.unlink_room(&room, &peer);
                let _ = reply.send(r);
            }
            Cmd::ListLinks(reply) => {
                let _ = reply.send(self.list_links());
            }
            Cmd::Connected {
                identity,
                conn,
                send,
                recv,
                dialed,
            } => self.on_connected(identity, conn, send, recv, dialed),
            Cmd::Frame { peer, gen, frame } => {
                if self.peers.get(&peer).is_some_and(|p| p.gen == gen) {
                    if let Some(msg) = frame.msg {
                        self.on_frame(&peer, msg);
                    }
                }
            }
            Cmd::Disconnected { peer, gen } => self.on_disconnected(&peer, gen),
            Cmd::Expire { peer, gen } => {
                let Some(p) = self.peers.get(&peer) else {
                    return;
                };
                if p.gen != gen || p.conn.is_some() {
                    return;
                }
                // Still down after the grace period: its tracks go away.
                let gone: Vec<TrackId> = self
                    .routes
                    .iter()
                    .filter(|(_, (pid, _))| *pid == peer)
                    .map(|(t, _)| *t)
                    .collect();
                for t in gone {
                    self.routes.remove(&t);
                    self.control.remove_remote_track(t);
                }
            }
            Cmd::Redial(peer) => {
                if self.peers.get(&peer).is_some_and(|p| p.conn.is_none()) {
                    self.dial(peer, Duration::ZERO);
                }
            }
            Cmd::LinkTimeout(peer) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    for (_, reply) in p.waiting.drain(..) {
                        let _ = reply.send(Err(ApiError::Unavailable(format!(
                            "cannot reach peer {peer}"
                        ))));
                    }
                }
            }
        }
    }

    fn send(&mut self, peer: &str, msg: cpb::frame::Msg) {
        if let Some(f) = self.peers.get(peer).and_then(|p| p.frames.as_ref()) {
            let _ = f.send(frame(msg));
        }
    }

    // ----- connections ------------------------------------------------

    fn on_connected(
        &mut self,
        identity: NodeIdentity,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        dialed: bool,
    ) {
        let id = identity.node_id.clone();
        if id == self.me.node_id {
            close(&conn, CloseCode::SelfLink);
            return;
        }
        let me = self.me.node_id.clone();
        let p = self.peer(&id);
        if p.conn.as_ref().is_some_and(|c| c.close_reason().is_none()) {
            // Two connections (both dialled): keep the one dialled by the
            // smaller node id, on both sides alike.
            let keep_new = if dialed { me < id } else { id < me };
            if !keep_new {
                close(&conn, CloseCode::Duplicate);
                return;
            }
            if let Some(old) = p.conn.take() {
                close(&old, CloseCode::Duplicate);
            }
            // Requests sent on the replaced connection go again on the new one.
            let pending: Vec<_> = p.pending.drain().collect();
            p.waiting.extend(pending);
        }
        // A reconnect is a link coming back, not a duplicate replaced.
        if p.gen != 0 && p.conn.is_none() {
            p.reconnects += 1;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let p = self.peer(&id);
        p.gen = gen;
        p.region = identity.region.clone();
        p.conn = Some(conn.clone());
        p.dialed = dialed;
        p.out.clear();
        p.out_rev.clear();
        p.inbound.clear();
        let (ftx, frx) = mpsc::unbounded_channel();
        let (rtx, rrx) = mpsc::unbounded_channel();
        p.frames = Some(ftx.clone());
        p.rx = Some(rtx);
        let counters = p.counters.clone();
        let link = p.link;
        tracing::info!(peer = %id, region = %identity.region, "cascade link up");
        let _ = self.tx.send(TxUpdate::Link {
            link,
            conn: Some(conn.clone()),
            frames: Some(ftx.clone()),
            counters: counters.clone(),
        });
        tokio::spawn(write_frames(send, frx));
        tokio::spawn(read_frames(recv, id.clone(), gen, self.cmd.clone()));
        tokio::spawn(media::run_rx(
            conn,
            self.control.clone(),
            ftx.clone(),
            rrx,
            counters,
        ));
        let _ = ftx.send(frame(cpb::frame::Msg::Hello(cpb::Hello {
            version: cpb::LINK_VERSION,
            node_id: self.me.node_id.clone(),
            region: self.me.region.clone(),
        })));
        // Restore: the rooms linked before the link broke, and requests
        // that waited for the connection.
        let p = self.peer(&id);
        let rooms: Vec<RoomId> = p.rooms.iter().cloned().collect();
        let waiting = std::mem::take(&mut p.waiting);
        for room in rooms {
            self.request_link(&id, &room);
        }
        for (room, reply) in waiting {
            self.link_room(room, id.clone(), reply);
        }
    }

    fn on_disconnected(&mut self, peer: &str, gen: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.gen != gen {
            return;
        }
        tracing::info!(peer, "cascade link down");
        p.conn = None;
        p.frames = None;
        p.rx = None;
        let (link, counters, rooms, region) = (
            p.link,
            p.counters.clone(),
            p.rooms.clone(),
            p.region.clone(),
        );
        let relayed: Vec<TrackId> = p.out.keys().copied().collect();
        p.out.clear();
        p.out_rev.clear();
        p.inbound.clear();
        // Unanswered LinkRoom requests wait for the next connection (a
        // duplicate connection closing is routine) or time out.
        let pending: Vec<_> = p.pending.drain().collect();
        if !pending.is_empty() {
            p.waiting.extend(pending);
            let (cmd, peer_s) = (self.cmd.clone(), peer.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(LINK_TIMEOUT).await;
                let _ = cmd.send(Cmd::LinkTimeout(peer_s));
            });
        }
        let _ = self.tx.send(TxUpdate::Link {
            link,
            conn: None,
            frames: None,
            counters,
        });
        for t in relayed {
            self.control.set_link_demand(t, link, 0);
        }
        for room in &rooms {
            self.control.link_changed(room, peer, &region, false);
        }
        let (cmd, peer_s) = (self.cmd.clone(), peer.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(DOWN_GRACE).await;
            let _ = cmd.send(Cmd::Expire { peer: peer_s, gen });
        });
        self.dial_or_wait(peer.to_string(), Duration::from_millis(200));
    }

    // ----- rooms ------------------------------------------------------

    fn link_room(
        &mut self,
        room: RoomId,
        peer: String,
        reply: oneshot::Sender<Result<pb::RouterRef, ApiError>>,
    ) {
        let Some(policy) = self.control.room_policy(&room) else {
            let _ = reply.send(Err(ApiError::NotFound(format!("room {room} not found"))));
            return;
        };
        if peer == self.me.node_id {
            let _ = reply.send(Err(ApiError::InvalidArgument("that is this router".into())));
            return;
        }
        let known = self.addrs.contains_key(&peer) || self.peers.contains_key(&peer);
        if !known {
            let _ = reply.send(Err(ApiError::NotFound(format!(
                "peer {peer} is not in cascade.peers and has not connected"
            ))));
            return;
        }
        let p = self.peer(&peer);
        if p.conn.is_none() {
            // Answer once connected (or time out).
            p.waiting.push((room.clone(), reply));
            let (cmd, peer2) = (self.cmd.clone(), peer.clone());
            let _ = cmd.send(Cmd::Redial(peer2));
            let cmd = self.cmd.clone();
            tokio::spawn(async move {
                tokio::time::sleep(LINK_TIMEOUT).await;
                let _ = cmd.send(Cmd::LinkTimeout(peer));
            });
            return;
        }
        let region = p.region.clone();
        // The sending side checks the residency policy: it does not trust
        // the receiver to.
        if !region_allowed(&policy, &region) {
            self.control
                .link_refused(&room, &peer, &region, "residency", "local");
            let _ = reply.send(Err(ApiError::PermissionDenied(format!(
                "room {room} may not reach region {region:?} of {peer}"
            ))));
            return;
        }
        let p = self.peer(&peer);
        if p.rooms.contains(&room) && !p.pending.contains_key(&room) {
            let _ = reply.send(Ok(pb::RouterRef {
                node_id: peer,
                region,
            }));
            return;
        }
        p.pending.insert(room.clone(), reply);
        self.request_link(&peer, &room);
    }

    fn request_link(&mut self, peer: &str, room: &RoomId) {
        let policy = self.control.room_policy(room).unwrap_or_default();
        self.send(
            peer,
            cpb::frame::Msg::LinkRoom(cpb::LinkRoom {
                room_id: room.to_string(),
                allowed_regions: policy,
                path: vec![self.me.node_id.clone()],
            }),
        );
    }

    fn unlink_room(&mut self, room: &RoomId, peer: &str) -> Result<(), ApiError> {
        let Some(p) = self.peers.get_mut(peer) else {
            return Err(ApiError::NotFound(format!("no link to {peer}")));
        };
        if !p.rooms.remove(room) {
            return Err(ApiError::NotFound(format!(
                "room {room} is not linked to {peer}"
            )));
        }
        self.send(
            peer,
            cpb::frame::Msg::UnlinkRoom(cpb::UnlinkRoom {
                room_id: room.to_string(),
            }),
        );
        self.drop_room(peer, room);
        Ok(())
    }

    /// Forgets everything of `room` on the link to `peer`.
    fn drop_room(&mut self, peer: &str, room: &RoomId) {
        let region = self
            .peers
            .get(peer)
            .map(|p| p.region.clone())
            .unwrap_or_default();
        for t in self.control.remote_tracks_via(room, peer) {
            self.routes.remove(&t);
            self.control.remove_remote_track(t);
        }
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let link = p.link;
        let out: Vec<(u32, TrackId)> = p
            .out_rev
            .iter()
            .filter(|(_, (_, r))| r == room)
            .map(|(n, (t, _))| (*n, *t))
            .collect();
        for (n, t) in out {
            p.out.remove(&t);
            p.out_rev.remove(&n);
            let _ = self.tx.send(TxUpdate::Map {
                link,
                track: t,
                num: None,
            });
            self.control.set_link_demand(t, link, 0);
        }
        self.control.link_changed(room, peer, &region, false);
    }

    fn room_linked(&mut self, peer: &str, room: &RoomId) {
        let region = self.peer(peer).region.clone();
        self.peer(peer).rooms.insert(room.clone());
        self.control.link_changed(room, peer, &region, true);
        for t in self.control.tracks_for_link(room, peer) {
            self.announce(peer, room, &t);
        }
    }

    // ----- tracks -----------------------------------------------------

    fn announce(&mut self, peer: &str, room: &RoomId, info: &Arc<TrackInfo>) {
        if info.path.iter().any(|n| n == peer) {
            return;
        }
        let me = self.me.node_id.clone();
        let p = self.peer(peer);
        if p.conn.is_none() || !p.rooms.contains(room) || p.out.contains_key(&info.id) {
            return;
        }
        let num = p.next_out;
        p.next_out += 1;
        p.out.insert(info.id, num);
        p.out_rev.insert(num, (info.id, room.clone()));
        let link = p.link;
        let _ = self.tx.send(TxUpdate::Map {
            link,
            track: info.id,
            num: Some(num),
        });
        let mut path = info.path.clone();
        path.push(me);
        self.send(
            peer,
            cpb::frame::Msg::TrackAnnounce(cpb::TrackAnnounce {
                room_id: room.to_string(),
                link_track: num,
                kind: kind_num(info.kind),
                rids: info.rids.iter().map(|r| r.to_string()).collect(),
                path,
                participant_id: info.participant.to_string(),
                origin_track_id: info.id.to_string(),
            }),
        );
    }

    fn on_track_published(&mut self, room: &RoomId, info: &Arc<TrackInfo>) {
        let peers: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.rooms.contains(room))
            .map(|(id, _)| id.clone())
            .collect();
        for peer in peers {
            self.announce(&peer, room, info);
        }
    }

    fn on_track_unpublished(&mut self, _room: &RoomId, track: TrackId) {
        self.routes.remove(&track);
        self.demand.remove(&track);
        let ids: Vec<String> = self.peers.keys().cloned().collect();
        for id in ids {
            let p = self.peer(&id);
            if let Some(num) = p.out.remove(&track) {
                p.out_rev.remove(&num);
                let link = p.link;
                let _ = self.tx.send(TxUpdate::Map {
                    link,
                    track,
                    num: None,
                });
                self.send(
                    &id,
                    cpb::frame::Msg::TrackWithdraw(cpb::TrackWithdraw { link_track: num }),
                );
            }
        }
    }

    // ----- frames -----------------------------------------------------

    fn on_frame(&mut self, peer: &str, msg: cpb::frame::Msg) {
        use cpb::frame::Msg;
        match msg {
            Msg::Hello(h) => {
                if h.node_id != peer || h.version != cpb::LINK_VERSION {
                    tracing::warn!(peer, "cascade: hello does not match the certificate");
                    if let Some(c) = self.peers.get(peer).and_then(|p| p.conn.clone()) {
                        close(&c, CloseCode::Hello);
                    }
                }
            }
            Msg::LinkRoom(l) => self.on_link_request(peer, l),
            Msg::LinkRoomReply(r) => {
                let Ok(room) = RoomId::parse(&r.room_id) else {
                    return;
                };
                let region = self.peer(peer).region.clone();
                let reply = self.peer(peer).pending.remove(&room);
                if r.accepted {
                    self.room_linked(peer, &room);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(pb::RouterRef {
                            node_id: peer.to_string(),
                            region,
                        }));
                    }
                } else {
                    self.peer(peer).rooms.remove(&room);
                    self.control
                        .link_refused(&room, peer, &region, &r.reason, "peer");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ApiError::PermissionDenied(format!(
                            "{peer} refused to link room {room}: {}",
                            r.reason
                        ))));
                    }
                }
            }
            Msg::UnlinkRoom(u) => {
                if let Ok(room) = RoomId::parse(&u.room_id) {
                    if self.peer(peer).rooms.remove(&room) {
                        self.drop_room(peer, &room);
                    }
                }
            }
            Msg::TrackAnnounce(a) => self.on_announce(peer, a),
            Msg::TrackWithdraw(w) => {
                let p = self.peer(peer);
                if let Some(t) = p.inbound.remove(&w.link_track) {
                    if let Some(rx) = &p.rx {
                        let _ = rx.send(RxUpdate::Route {
                            num: w.link_track,
                            route: None,
                        });
                    }
                    self.routes.remove(&t);
                    self.control.remove_remote_track(t);
                }
            }
            Msg::Subscribe(s) => {
                tracing::debug!(
                    peer,
                    num = s.link_track,
                    mask = s.layer_mask,
                    "peer subscribes"
                );
                let p = self.peer(peer);
                if let Some((t, _)) = p.out_rev.get(&s.link_track).cloned() {
                    let link = p.link;
                    self.control.set_link_demand(t, link, s.layer_mask);
                }
            }
            Msg::KeyframeRequest(k) => {
                if let Some((t, _)) = self.peer(peer).out_rev.get(&k.link_track).cloned() {
                    self.control.request_keyframe(t, k.layer.min(31) as u8);
                }
            }
            Msg::Nack(n) => {
                let link = self.peer(peer).link;
                let _ = self.tx.send(TxUpdate::Nack {
                    link,
                    num: n.link_track,
                    layer: n.layer.min(31) as u8,
                    seqs: n.seqs,
                });
            }
            Msg::LayerInfo(l) => {
                let Some(t) = self.peer(peer).inbound.get(&l.link_track).copied() else {
                    return;
                };
                let Some(info) = self.control.track_info(t) else {
                    return;
                };
                let layers: Arc<[LayerState]> = l
                    .layers
                    .iter()
                    .map(|x| LayerState {
                        active: x.active,
                        bitrate: x.bitrate,
                        width: x.width.min(u32::from(u16::MAX)) as u16,
                        height: x.height.min(u32::from(u16::MAX)) as u16,
                    })
                    .collect();
                self.control
                    .ingest(info.worker, vec![BusMsg::RemoteLayers { track: t, layers }]);
            }
            // Rooms that link themselves: not in this version of the manager yet.
            Msg::HostedRooms(_) => {}
            Msg::Codec(c) => {
                let Some(Ok(params)) = c.params.as_ref().map(super::codec::from_wire) else {
                    tracing::warn!(peer, "cascade: unreadable codec");
                    return;
                };
                if let Some(rx) = &self.peer(peer).rx {
                    let _ = rx.send(RxUpdate::Codec {
                        num: c.link_track,
                        params,
                    });
                }
            }
        }
    }

    fn on_link_request(&mut self, peer: &str, l: cpb::LinkRoom) {
        let Ok(room) = RoomId::parse(&l.room_id) else {
            return;
        };
        let region = self.peer(peer).region.clone();
        let refuse = |m: &mut Manager, reason: String| {
            m.control
                .link_refused(&room, peer, &region, &reason, "local");
            m.send(
                peer,
                cpb::frame::Msg::LinkRoomReply(cpb::LinkRoomReply {
                    room_id: room.to_string(),
                    accepted: false,
                    reason,
                }),
            );
        };
        if l.path.iter().any(|n| n == &self.me.node_id) {
            refuse(self, "loop".into());
            return;
        }
        // The peer's region against the policy it sent and against ours.
        let local = self.control.room_policy(&room).unwrap_or_default();
        if !region_allowed(&l.allowed_regions, &region) || !region_allowed(&local, &region) {
            refuse(self, format!("residency: region {region:?} is not allowed"));
            return;
        }
        if let Err(e) = self.control.ensure_room_for_link(&room, &l.allowed_regions) {
            refuse(self, format!("residency: {e}"));
            return;
        }
        self.send(
            peer,
            cpb::frame::Msg::LinkRoomReply(cpb::LinkRoomReply {
                room_id: room.to_string(),
                accepted: true,
                reason: String::new(),
            }),
        );
        self.room_linked(peer, &room);
    }

    fn on_announce(&mut self, peer: &str, a: cpb::TrackAnnounce) {
        let Ok(room) = RoomId::parse(&a.room_id) else {
            return;
        };
        if !self.peer(peer).rooms.contains(&room) || a.path.contains(&self.me.node_id) {
            return;
        }
        let kind = if a.kind == 1 {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let Some(info) = self.control.add_remote_track(RemoteTrack {
            room: room.clone(),
            path: a.path.clone(),
            origin_track_id: a.origin_track_id,
            participant: a.participant_id,
            kind,
            rids: a.rids.iter().map(|r| Rid::from(r.as_str())).collect(),
        }) else {
            return;
        };
        for n in &a.path {
            if n != peer {
                // Regions of routers beyond the peer are not known here.
                self.control.reached(&room, n, "");
            }
        }
        self.routes
            .insert(info.id, (peer.to_string(), a.link_track));
        let p = self.peer(peer);
        p.inbound.insert(a.link_track, info.id);
        if let Some(rx) = &p.rx {
            let _ = rx.send(RxUpdate::Route {
                num: a.link_track,
                route: Some(Route {
                    track: info.id,
                    worker: info.worker,
                    kind,
                    params: None,
                }),
            });
        }
        // After a reconnect: ask again for what subscribers here need.
        if let Some(mask) = self.demand.get(&info.id).copied() {
            self.send(
                peer,
                cpb::frame::Msg::Subscribe(cpb::Subscribe {
                    link_track: a.link_track,
                    layer_mask: mask,
                }),
            );
        }
    }

    fn list_links(&self) -> Vec<pb::Link> {
        let mut out: Vec<pb::Link> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let stats = p.conn.as_ref().map(|c| (c.rtt(), c.stats()));
                let c = &p.counters;
                pb::Link {
                    peer: Some(pb::RouterRef {
                        node_id: id.clone(),
                        region: p.region.clone(),
                    }),
                    up: p.conn.is_some(),
                    rooms: p.rooms.iter().map(|r| r.to_string()).collect(),
                    rtt_us: stats.as_ref().map_or(0, |(rtt, _)| rtt.as_micros() as u64),
                    bytes_sent: stats.as_ref().map_or(0, |(_, s)| s.udp_tx.bytes),
                    bytes_received: stats.as_ref().map_or(0, |(_, s)| s.udp_rx.bytes),
                    datagrams_sent: c.datagrams_sent.load(Ordering::Relaxed),
                    datagrams_received: c.datagrams_received.load(Ordering::Relaxed),
                    datagrams_dropped: c.datagrams_dropped.load(Ordering::Relaxed),
                    nacked: c.nacked.load(Ordering::Relaxed),
                    retransmitted: c.retransmitted.load(Ordering::Relaxed),
                    lost: c.lost.load(Ordering::Relaxed),
                    tracks_sent: p.out.len() as u32,
                    tracks_received: p.inbound.len() as u32,
                    reconnects: p.reconnects,
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

async fn connect(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    peer: &str,
    addr: &str,
) -> Option<Cmd> {
    let sock = tokio::net::lookup_host(addr).await.ok()?.next()?;
    let conn = endpoint
        .connect_with(client.clone(), sock, &tls::server_name(peer))
        .ok()?
        .await
        .ok()?;
    let identity = tls::peer_identity(&conn).ok()?;
    if identity.node_id != peer {
        close(&conn, CloseCode::Identity);
        return None;
    }
    let (send, recv) = conn.open_bi().await.ok()?;
    Some(Cmd::Connected {
        identity,
        conn,
        send,
        recv,
        dialed: true,
    })
}

async fn write_frames(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<cpb::Frame>) {
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        if write_frame(&mut buf, &f.encode_to_vec()).is_err() {
            continue;
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn read_frames(
    mut recv: quinn::RecvStream,
    peer: String,
    gen: u64,
    cmd: mpsc::UnboundedSender<Cmd>,
) {
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                reader.push(&buf[..n]);
                loop {
                    match reader.next_frame() {
                        Ok(Some(bytes)) => {
                            let Ok(frame) = cpb::Frame::decode(bytes) else {
                                tracing::warn!(peer, "cascade: undecodable frame");
                                continue;
                            };
                            let _ = cmd.send(Cmd::Frame {
                                peer: peer.clone(),
                                gen,
                                frame,
                            });
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = cmd.send(Cmd::Disconnected { peer, gen });
                            return;
                        }
                    }
                }
            }
            Ok(None) | Err(_) => {
                let _ = cmd.send(Cmd::Disconnected { peer, gen });
                return;
            }
        }
    }
}
