//! The cascade's driver: the quinn endpoint and connections around the sans-IO machines.
//!
//! - One **manager task** owns the [`LinkControl`](crate::cascade::link::LinkControl) machine.
//!   Connections (dialled or accepted), control frames, the control plane's hooks and the
//!   API's calls all arrive as commands on one channel; the manager hands them to the machine,
//!   sleeps until its `poll_timeout`, and carries out its outputs (send a frame, dial, close,
//!   publish a remote track, answer a call, tell the relay tasks a track number).
//! - **Connection tasks** (`conn`) accept and dial, and read and write the control stream.
//! - **Relay tasks** ([`relay`]) run the relay machines: one sending task for every link, one
//!   receiving task per connection.
//!
//! None of them decides anything about the link protocol.

mod conn;
mod driver;
pub mod metrics;
pub mod relay;

use super::link::{ConnId, NodeId};
use super::relay::LinkRate;
use super::tls;
use super::NodeIdentity;
use crate::config::CascadeResolved;
use crate::control::{ApiError, CascadeHooks, Control};
use crate::media::select::LayerState;
use crate::media::types::LinkId;
use crate::media::{MediaPacket, TrackInfo};
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, TrackId};
use metrics::Refusal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long `LinkRoom` waits for the peer's connection and answer (the machine gives up
/// first; this only bounds a call whose answer got lost).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the workers' channel of packets to relay.
pub const RELAY_QUEUE: usize = 8192;

/// Why the cascade could not start, or its certificates could not be reloaded.
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
pub(crate) enum Cmd {
    // From the control plane (hooks).
    RoomCreated(RoomId, Vec<String>),
    RoomDeleted(RoomId),
    TrackPublished(Arc<TrackInfo>),
    TrackUnpublished(TrackId),
    RemoteDemand(TrackId, u32),
    RemoteKeyframe(TrackId, u8),
    LinkLayers(TrackId, Arc<[LayerState]>),
    // From the API.
    LinkRoom {
        room: RoomId,
        peer: NodeId,
        reply: oneshot::Sender<Result<pb::RouterRef, ApiError>>,
    },
    UnlinkRoom {
        room: RoomId,
        peer: NodeId,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    ListLinks(oneshot::Sender<Vec<pb::Link>>),
    ReloadTls {
        server: Box<quinn::ServerConfig>,
        client: quinn::ClientConfig,
        reply: oneshot::Sender<()>,
    },
    // From connection tasks.
    Connected {
        identity: NodeIdentity,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        dialed: bool,
    },
    DialFailed {
        peer: NodeId,
        refused: Option<(Refusal, String)>,
    },
    Refused {
        reason: Refusal,
        detail: String,
    },
    Frame {
        peer: NodeId,
        conn: ConnId,
        msg: cpb::frame::Msg,
    },
    Disconnected {
        peer: NodeId,
        conn: ConnId,
        refused: Option<Refusal>,
    },
}

/// Where the certificates come from (re-read by [`CascadeHandle::reload_tls`]).
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// What each link may send (part of the transport configuration).
    rate: LinkRate,
}

impl TlsFiles {
    /// Reads the files and builds the endpoint configurations; the certificate must be this
    /// router's (`expect`), when given.
    fn load(
        &self,
        expect: Option<&NodeIdentity>,
    ) -> Result<(NodeIdentity, quinn::ServerConfig, quinn::ClientConfig), CascadeStartError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| CascadeStartError::Config(format!("cannot read {}: {e}", p.display())))
        };
        let (ca, cert, key) = (read(&self.ca)?, read(&self.cert)?, read(&self.key)?);
        let identity = super::cert::identity_of_pem(&cert)
            .map_err(|e| CascadeStartError::Config(format!("node certificate: {e}")))?;
        if let Some(own) = expect {
            if identity != *own {
                return Err(CascadeStartError::Config(format!(
                    "the certificate is for node {:?} in {:?}, but node.id/node.region say {:?} in {:?}",
                    identity.node_id, identity.region, own.node_id, own.region
                )));
            }
        }
        let (server, client) = tls::endpoint_configs(&ca, &cert, &key, self.rate)
            .map_err(|e| CascadeStartError::Config(e.to_string()))?;
        Ok((identity, server, client))
    }
}

/// The handle the control plane and the API hold.
#[derive(Clone)]
pub struct CascadeHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    files: TlsFiles,
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
    fn room_created(&self, room: &RoomId, allowed_regions: &[String]) {
        let _ = self
            .tx
            .send(Cmd::RoomCreated(room.clone(), allowed_regions.to_vec()));
    }
    fn track_published(&self, _room: &RoomId, track: &Arc<TrackInfo>) {
        let _ = self.tx.send(Cmd::TrackPublished(track.clone()));
    }
    fn track_unpublished(&self, _room: &RoomId, track: TrackId) {
        let _ = self.tx.send(Cmd::TrackUnpublished(track));
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

fn stopped() -> ApiError {
    ApiError::Unavailable("cascade stopped".into())
}

impl CascadeHandle {
    /// `CascadeService.LinkRoom`
    pub async fn link_room(&self, room: RoomId, peer: String) -> Result<pb::RouterRef, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::LinkRoom {
                room,
                peer: NodeId::new(peer.clone()),
                reply,
            })
            .map_err(|_| stopped())?;
        // Whatever happens to the connection meanwhile, the caller gets an answer.
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| stopped())?,
            Err(_) => Err(ApiError::Unavailable(format!("no answer from peer {peer}"))),
        }
    }

    /// `CascadeService.UnlinkRoom`
    pub async fn unlink_room(&self, room: RoomId, peer: String) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::UnlinkRoom {
                room,
                peer: NodeId::new(peer),
                reply,
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// `CascadeService.ListLinks`
    pub async fn list_links(&self) -> Vec<pb::Link> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::ListLinks(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Re-reads the CA, certificate and key from the configured files and uses them for every
    /// connection from now on: the endpoint's server configuration and the client
    /// configuration for dialling. Links that are up stay up. Refused (and nothing changes)
    /// when a file cannot be read or the certificate is not this router's.
    pub async fn reload_tls(&self) -> Result<(), CascadeStartError> {
        let files = self.files.clone();
        let expect = self.identity.clone();
        let (_, server, client) = tokio::task::spawn_blocking(move || files.load(Some(&expect)))
            .await
            .map_err(|e| CascadeStartError::Config(format!("reload: {e}")))??;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::ReloadTls {
                server: Box::new(server),
                client,
                reply,
            })
            .map_err(|_| CascadeStartError::Config("cascade stopped".into()))?;
        rx.await
            .map_err(|_| CascadeStartError::Config("cascade stopped".into()))
    }
}

/// Checks the cascade's certificate files without binding anything: they can be read, the
/// certificate chains to the CA, and it is this router's (`node_id` in `region`). For
/// validating the configuration before any port is taken (a wrong certificate is a
/// configuration error); [`start`] checks the same again.
pub fn check_files(
    cfg: &CascadeResolved,
    node_id: &str,
    region: &str,
) -> Result<(), CascadeStartError> {
    let files = TlsFiles {
        ca: cfg.ca.clone(),
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
        rate: cfg.link_rate,
    };
    let own = NodeIdentity {
        node_id: node_id.into(),
        region: region.into(),
    };
    files.load(Some(&own)).map(|_| ())
}

/// Packets of local tracks the media workers hand to the cascade.
pub type RelayQueue = mpsc::Receiver<(LinkId, Arc<MediaPacket>)>;

/// Starts the cascade: binds the QUIC endpoint, starts the manager and the relay task
/// (reading what the workers send into `relay`), dials the configured peers. Must run inside
/// a tokio runtime.
pub fn start(
    cfg: &CascadeResolved,
    control: Arc<Control>,
    relay: RelayQueue,
) -> Result<CascadeHandle, CascadeStartError> {
    let files = TlsFiles {
        ca: cfg.ca.clone(),
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
        rate: cfg.link_rate,
    };
    let own = control.identity();
    let own = NodeIdentity {
        node_id: own.node_id.clone(),
        region: own.region.clone(),
    };
    let (identity, server, client) = files.load(Some(&own))?;
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
    tokio::spawn(relay::run_tx(relay, tx_updates_rx, cfg.link_rate));
    tokio::spawn(conn::accept_loop(endpoint.clone(), cmd_tx.clone()));
    let metrics = metrics::CascadeMetrics::new(&control.metrics().registry);
    let m = driver::Manager::new(driver::Setup {
        me: identity.clone(),
        cfg,
        control,
        endpoint,
        client,
        cmd: cmd_tx.clone(),
        tx: tx_updates,
        metrics,
    });
    tokio::spawn(m.run(cmd_rx));
    Ok(CascadeHandle {
        tx: cmd_tx,
        files,
        identity,
        local_addr,
    })
}
