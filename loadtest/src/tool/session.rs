//! What every target's join code shares: creating clients in the driver, recording
//! how each join went, and timeouts with readable reasons.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kaskade_loadtest::tcp::candidate_addr;
use kaskade_loadtest::{Client, ClientConfig, BROWSER_KEYFRAME_MIN_INTERVAL};
use serde::Serialize;

use super::driver::{ClientId, ClientIo, Driver, NewClient};
use super::impair::{link_of, selected};
use super::scenario::{Scenario, Transport};

/// What a client does in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Publishes only.
    Publisher,
    /// Receives only.
    Subscriber,
    /// Publishes and receives (meeting); on targets that need two connections, the
    /// receiving one.
    Participant,
}

/// A published track.
#[derive(Debug, Clone)]
pub(crate) struct PubTrack {
    /// Router track id (kaskade) or stream mid (Janus).
    pub track_id: String,
    /// Video.
    pub video: bool,
}

/// Janus ids of a publisher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JanusFeed {
    /// Feed (publisher) id in the room.
    pub feed: u64,
}

/// A publisher that joined.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    /// Its client.
    pub id: ClientId,
    /// Its session (kaskade).
    pub session_id: String,
    /// Its Janus ids (Janus).
    pub janus: Option<JanusFeed>,
    /// Its tracks.
    pub tracks: Vec<PubTrack>,
}

/// How one join went.
#[derive(Debug, Clone)]
pub(crate) struct JoinRecord {
    /// The client.
    pub id: ClientId,
    /// Its role.
    pub role: Role,
    /// Its room index.
    pub room: u32,
    /// Index within its role and room.
    pub index: u32,
    /// Its traffic is impaired.
    pub impaired: bool,
    /// When the offer was created.
    pub started: Instant,
    /// When ICE + DTLS were up.
    pub connected: Option<Instant>,
    /// When the subscription was in place (answer applied), if it subscribes.
    pub subscribed: Option<Instant>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The shared state of a run's join tasks.
#[derive(Debug)]
pub(crate) struct Joins {
    /// The client driver.
    pub driver: Driver,
    /// The scenario.
    pub scenario: Scenario,
    /// The probes' time zero.
    pub epoch: Instant,
    /// Clients' IP (loopback).
    pub ip: IpAddr,
    next_id: AtomicU32,
    cycles: AtomicU64,
    records: Mutex<Vec<JoinRecord>>,
    notes: Mutex<Vec<String>>,
    ports: Mutex<HashSet<u16>>,
}

impl Joins {
    /// Join state over a started driver.
    pub(crate) fn new(driver: Driver, scenario: Scenario, epoch: Instant) -> Self {
        Joins {
            driver,
            scenario,
            epoch,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            next_id: AtomicU32::new(0),
            cycles: AtomicU64::new(0),
            records: Mutex::new(vec![]),
            notes: Mutex::new(vec![]),
            ports: Mutex::new(HashSet::new()),
        }
    }

    /// A new publishing client with the scenario's tracks (audio, and video
    /// as simulcast when it has more than one layer).
    pub(crate) async fn new_publisher(
        &self,
        role: Role,
        room: u32,
        index: u32,
    ) -> Result<(ClientId, JoinRecord), String> {
        let s = &self.scenario;
        let (audio, video) = (s.audio, s.video);
        let rids = s.layers.clone();
        self.new_client(role, room, index, 0, move |c| {
            if audio {
                c.add_audio();
            }
            if video {
                let r: Vec<&str> = if rids.len() > 1 {
                    rids.iter().map(String::as_str).collect()
                } else {
                    vec![]
                };
                c.add_video(&r);
            }
        })
        .await
    }

    /// Creates a client for `role` (impaired as the scenario says) in receiver
    /// group `group`, sets it up with `setup` (tracks, channels) and adds it to the
    /// driver. Returns its id and record.
    pub(crate) async fn new_client(
        &self,
        role: Role,
        room: u32,
        index: u32,
        group: u8,
        setup: impl FnOnce(&mut Client) + Send,
    ) -> Result<(ClientId, JoinRecord), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let s = &self.scenario;
        let (spec, n) = match role {
            Role::Subscriber => (&s.subscriber_impairment, s.subscribers),
            Role::Publisher | Role::Participant => (&s.publisher_impairment, s.publishers),
        };
        let impaired = selected(spec, room * n + index, s.rooms * n);
        let (io, addr) = match s.transport {
            Transport::Udp => {
                let socket = std::net::UdpSocket::bind(SocketAddr::new(self.ip, 0))
                    .map_err(|e| format!("bind: {e}"))?;
                let addr = socket.local_addr().map_err(|e| format!("bind: {e}"))?;
                grow_buffers(&socket);
                if let Ok(mut p) = self.ports.lock() {
                    p.insert(addr.port());
                }
                (ClientIo::Udp(socket), addr)
            }
            // The connection opens at the client's first datagram to the
            // router's passive candidate.
            Transport::Tcp => (ClientIo::Tcp, candidate_addr(self.ip)),
        };
        // The client tag (low 24 bits of the seed) is the id: probes name their source.
        let seed = (s.seed << 24) | u64::from(id & 0x00ff_ffff);
        let config = ClientConfig::new(addr, self.epoch)
            .tcp(s.transport == Transport::Tcp)
            .seed(seed)
            .packet_tap(true)
            .auto_keyframe_request(Some(Duration::from_millis(500)))
            // Publishers answer keyframe requests like Chrome's encoder.
            .keyframe_min_interval(Some(BROWSER_KEYFRAME_MIN_INTERVAL));
        let now = Instant::now();
        let mut client = Client::new(config, now).map_err(|e| format!("client: {e}"))?;
        setup(&mut client);
        self.driver
            .add(NewClient {
                id,
                client,
                io,
                impair: impaired.then(|| link_of(spec)),
                group,
            })
            .await?;
        let record = JoinRecord {
            id,
            role,
            room,
            index,
            impaired,
            started: now,
            connected: None,
            subscribed: None,
            error: None,
        };
        Ok((id, record))
    }

    /// Waits for the client to connect, within the scenario's join timeout.
    pub(crate) async fn connected(&self, id: ClientId, step: &str) -> Result<Instant, String> {
        let limit = self.scenario.join_timeout.0;
        match tokio::time::timeout(limit, self.driver.wait_connected(id)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(format!("{step}: {e}")),
            Err(_) => {
                let state = self
                    .driver
                    .call(id, |s| {
                        format!(
                            "ICE {:?}, {} str0m errors{}",
                            s.client.ice_state(),
                            s.client.errors(),
                            s.client
                                .last_error()
                                .map(|e| format!(", last: {e}"))
                                .unwrap_or_default()
                        )
                    })
                    .await
                    .unwrap_or_default();
                Err(format!("{step}: not connected after {:?} ({state})", limit))
            }
        }
    }

    /// Marks when the client asked for media (time-to-first-frame zero).
    pub(crate) async fn media_requested(&self, id: ClientId, at: Instant) {
        let _ = self
            .driver
            .call(id, move |s| s.media_requested_at = Some(at))
            .await;
    }

    /// Counts a finished join/leave cycle; returns how many are done.
    pub(crate) fn cycle_done(&self) -> u64 {
        self.cycles.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Join/leave cycles done so far.
    pub(crate) fn cycles_done(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// Stores a join's outcome.
    pub(crate) fn record(&self, r: JoinRecord) {
        if let Ok(mut v) = self.records.lock() {
            v.push(r);
        }
    }

    /// Adds a note for the report (printed once).
    pub(crate) fn note(&self, text: String) {
        if let Ok(mut v) = self.notes.lock() {
            if !v.contains(&text) {
                eprintln!("note: {text}");
                v.push(text);
            }
        }
    }

    /// The outcomes so far.
    pub(crate) fn records(&self) -> Vec<JoinRecord> {
        self.records.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The clients' UDP ports.
    pub(crate) fn ports(&self) -> HashSet<u16> {
        self.ports.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The notes so far.
    pub(crate) fn notes(&self) -> Vec<String> {
        self.notes.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Socket buffer size asked for: a keyframe burst to many clients of one driver
/// thread must not overflow the default ~200 kB while the thread serves the others.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Grows a client socket's buffers (with `SO_RCVBUFFORCE` when allowed, else up to
/// the system's limit). Failure only leaves the default.
fn grow_buffers(socket: &std::net::UdpSocket) {
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt reads `len` bytes from a live c_int on a socket we own.
        unsafe {
            let p = (&size as *const libc::c_int).cast();
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
            }
        }
    }
}

/// Runs a step with the scenario's join timeout, naming the step in the error.
pub(crate) async fn step<T>(
    limit: Duration,
    name: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{name}: {e}")),
        Err(_) => Err(format!("{name}: no answer within {limit:?}")),
    }
}
