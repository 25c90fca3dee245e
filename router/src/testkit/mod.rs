//! Deterministic test kit (feature `testkit`): the real control plane and
//! real worker cores, str0m clients as browsers, a seeded simulated network,
//! all in one thread on a virtual clock. No sockets, no sleeps. Used by the
//! router's tests and by the benchmarks.
#![allow(missing_docs, clippy::missing_panics_doc)]

pub mod cluster;
mod port;
mod rooms;

pub use rooms::{Pair, Room};

use crate::control::{Control, Identity, Limits};
use crate::media::drive::{Drive, Turn};
use crate::media::placement::Policy;
use crate::media::types::{LinkId, MediaPacket};
use crate::media::worker::{WorkerHandle, WorkerLoad};
use crate::media::{BusBatch, RtcFactory, WorkerCore, WorkerEvent, WorkerId};
use crate::metrics::{Metrics, WorkerMetrics};
use crossbeam_channel::Sender;
use kaskade_loadtest::{Client, ClientConfig, SimNet};
use kaskade_protocol::v1 as pb;
use port::{SimIo, SimPort};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One simulated worker: its core, driven by the production drive loop.
pub struct SimWorker {
    pub core: WorkerCore,
    pub addr: SocketAddr,
    io: SimIo,
    drive: Drive,
    _poll: mio::Poll,
}

/// A simulated client and its session.
pub struct SimClient {
    pub client: Client,
    pub session: Option<String>,
    pub tracks: Vec<pb::Track>,
}

/// How a simulated router is set up (the production defaults unless said).
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    /// Batches each worker's bus inbox holds.
    pub bus_capacity: usize,
    /// Packets kept per outgoing video stream for NACKs (`media.rtx_cache`).
    pub rtx_cache: usize,
    /// Minimum time between keyframe requests to one publisher layer
    /// (`media.keyframe_interval_ms`).
    pub keyframe_interval: Duration,
    /// The control plane's limits.
    pub limits: Limits,
    /// How sessions are placed on workers. Unlike production, the default
    /// here is [`Policy::LeastLoaded`]: every session on the least loaded
    /// worker, so tests of paths across workers get them with few sessions.
    pub placement: Policy,
    /// Every worker on one address (`media.single_port`): the network
    /// gives each datagram to the worker its source hashes to
    /// ([`single_port_worker`]), as the kernel's `SO_REUSEPORT` does.
    pub single_port: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            bus_capacity: 1024,
            rtx_cache: crate::media::rtc::DEFAULT_RTX_CACHE,
            keyframe_interval: crate::media::core::PUBLISHER_KEYFRAME_INTERVAL,
            limits: Limits {
                max_rooms: 100,
                max_sessions_per_room: 1001,
                // A room of 1001 joins before anyone connects (the benches).
                max_pending_sessions: 1001,
                ..Limits::default()
            },
            placement: Policy::LeastLoaded,
            single_port: false,
        }
    }
}

/// In single-port mode, the worker (of `workers`) the simulated kernel
/// gives datagrams from `src` to: a fixed hash of the source, like
/// `SO_REUSEPORT`'s.
pub fn single_port_worker(src: SocketAddr, workers: usize) -> usize {
    let ip = match src.ip() {
        std::net::IpAddr::V4(a) => u64::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a) as u64,
    };
    let h = (ip << 16 | u64::from(src.port())).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 32) as usize % workers.max(1)
}

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub net: SimNet,
    pub workers: Vec<SimWorker>,
    pub clients: Vec<SimClient>,
    pub control: Arc<Control>,
    pub metrics: Metrics,
    pub events: Vec<WorkerEvent>,
    /// Called with `true` when the simulation enters router code (the
    /// worker cores, the control plane) and `false` when it leaves; nested
    /// calls nest. Benchmarks count the router's own work with it (callgrind
    /// collection, allocation accounts). A no-op by default.
    pub router_mark: fn(bool),
    inboxes: Vec<Sender<BusBatch>>,
    loads: Vec<Arc<WorkerLoad>>,
    seed: u64,
    /// Packets the workers handed to the cascade, when there is one (a
    /// [`cluster::Cluster`] takes them); dropped otherwise.
    pub(crate) relayed: Option<Vec<(LinkId, Arc<MediaPacket>)>>,
}

pub fn worker_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16))
}

pub fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 1, 1], 50000 + i as u16))
}

impl Sim {
    /// A router with `workers` worker cores and no clients.
    pub fn new(workers: usize, seed: u64) -> Self {
        Self::with_bus_capacity(workers, seed, 1024)
    }

    /// [`Sim::new`] with bus inboxes of `capacity` batches.
    pub fn with_bus_capacity(workers: usize, seed: u64, capacity: usize) -> Self {
        Self::with_options(
            workers,
            seed,
            SimOptions {
                bus_capacity: capacity,
                ..Default::default()
            },
        )
    }

    /// A router set up as `options` say.
    pub fn with_options(workers: usize, seed: u64, options: SimOptions) -> Self {
        let identity = Identity {
            node_id: "sim".into(),
            region: "eu-sim-1".into(),
        };
        Self::with_identity(workers, seed, options, identity, Instant::now())
    }

    /// [`Sim::with_options`] for the router `identity`, its clock starting at
    /// `t0` (routers of one [`cluster::Cluster`] share it).
    pub fn with_identity(
        workers: usize,
        seed: u64,
        options: SimOptions,
        identity: Identity,
        t0: Instant,
    ) -> Self {
        let capacity = options.bus_capacity;
        let metrics = Metrics::new();
        let factory = RtcFactory::new()
            .expect("crypto provider")
            .with_rtx_cache(options.rtx_cache);
        let mut sim_workers = Vec::new();
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        let mut loads = Vec::new();
        for i in 0..workers {
            let addr = if options.single_port {
                worker_addr(0)
            } else {
                worker_addr(i)
            };
            let poll = mio::Poll::new().expect("mio poll");
            let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).expect("waker"));
            let (ctx, crx) = crossbeam_channel::unbounded();
            let (btx, brx) = crossbeam_channel::bounded(capacity);
            let load = Arc::new(WorkerLoad::default());
            handles.push(WorkerHandle {
                id: WorkerId(i as u16),
                commands: ctx,
                bus: btx.clone(),
                waker,
                bound: addr,
                load: load.clone(),
            });
            inboxes.push(btx);
            loads.push(load);
            let wm = WorkerMetrics::new(&metrics);
            let mut core = WorkerCore::new(
                WorkerId(i as u16),
                workers,
                addr,
                factory.clone(),
                wm.clone(),
                seed.wrapping_add(i as u64),
                t0,
            )
            .with_keyframe_interval(options.keyframe_interval);
            if options.single_port {
                core = core.with_single_port(workers);
            }
            sim_workers.push(SimWorker {
                core,
                addr,
                io: SimIo {
                    commands: crx,
                    bus: brx,
                    inbound: VecDeque::new(),
                    stalled_until: None,
                },
                drive: Drive::new(i as u16, workers, &wm),
                _poll: poll,
            });
        }
        let control = Arc::new(Control::new(
            handles,
            metrics.clone(),
            options.limits,
            identity,
        ));
        control.set_placement(options.placement);
        Sim {
            t0,
            now: t0,
            net: SimNet::new(seed),
            workers: sim_workers,
            clients: Vec::new(),
            control,
            metrics,
            events: Vec::new(),
            router_mark: |_| {},
            inboxes,
            loads,
            seed,
            relayed: None,
        }
    }

    /// Adds a client (not yet connected); returns its index.
    pub fn add_client(&mut self, configure: impl FnOnce(ClientConfig) -> ClientConfig) -> usize {
        let i = self.clients.len();
        let cfg = configure(
            ClientConfig::new(client_addr(i), self.t0)
                .seed(self.seed * 1000 + i as u64 + 1)
                .packet_log(100_000),
        );
        let client = Client::new(cfg, self.now).expect("client");
        self.clients.push(SimClient {
            client,
            session: None,
            tracks: Vec::new(),
        });
        i
    }

    /// Runs an API future of the real control plane to completion, letting
    /// the worker cores answer its commands on the virtual clock.
    pub fn api<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1000 {
            (self.router_mark)(true);
            let polled = fut.as_mut().poll(&mut cx);
            (self.router_mark)(false);
            if let Poll::Ready(v) = polled {
                self.pump();
                return v;
            }
            self.pump();
        }
        panic!("API call did not complete");
    }

    /// Turns every worker's drive loop (without timers) until nothing moves:
    /// commands, bus batches, datagrams delivered to them, their outputs.
    pub fn pump(&mut self) {
        (self.router_mark)(true);
        self.turn_all(false);
        (self.router_mark)(false);
    }

    /// Turns every worker until nothing moves; the first round serves due
    /// timers if `timers`. Then folds their counters into the metrics, so
    /// tests read exact figures.
    fn turn_all(&mut self, timers: bool) {
        let mut timers = timers;
        loop {
            let mut progressed = false;
            for i in 0..self.workers.len() {
                progressed |= self.turn(i, timers).progressed;
            }
            timers = false;
            if !progressed {
                break;
            }
        }
        for w in &mut self.workers {
            let depth = w.io.bus.len();
            w.drive.fold(&w.core, depth);
        }
    }

    /// One turn of worker `i`'s drive loop.
    fn turn(&mut self, i: usize, timers: bool) -> Turn {
        let Sim {
            workers,
            net,
            control,
            events,
            now,
            inboxes,
            router_mark,
            relayed,
            ..
        } = self;
        let w = &mut workers[i];
        let mut port = SimPort {
            now: *now,
            addr: w.addr,
            io: &mut w.io,
            inboxes,
            net,
            control,
            events,
            relayed,
            mark: *router_mark,
        };
        w.drive.turn(&mut w.core, &mut port, timers)
    }

    /// Worker `w` reads nothing from its bus inbox for `d` (it has fallen
    /// behind); the others keep sending to it.
    pub fn stall(&mut self, w: usize, d: Duration) {
        self.workers[w].io.stalled_until = Some(self.now + d);
    }

    /// Batches waiting in worker `w`'s inbox.
    pub fn inbox_len(&self, w: usize) -> usize {
        self.workers[w].io.bus.len()
    }

    /// Marks worker `w` overloaded (as its thread would when busy): no new
    /// session is placed on it.
    pub fn set_overloaded(&mut self, w: usize, overloaded: bool) {
        self.loads[w].set_busy_permille(if overloaded { 1000 } else { 0 });
    }

    /// The worker a datagram from the network reaches: the one bound to its
    /// destination, or, on a shared port, the one its source hashes to.
    fn worker_for(&self, d: &kaskade_loadtest::Datagram) -> Option<usize> {
        let bound = || (0..self.workers.len()).filter(|i| self.workers[*i].addr == d.dst);
        let k = match bound().count() {
            0 | 1 => 0,
            n => single_port_worker(d.src, n),
        };
        bound().nth(k)
    }

    fn client_by_addr(&mut self, a: SocketAddr) -> Option<&mut Client> {
        self.clients
            .iter_mut()
            .map(|c| &mut c.client)
            .find(|c| c.local_addr() == a)
    }

    /// Advances the virtual clock by `d`, running everything due on the way.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
            let next = self.next_timeout().min(end);
            // Keep the clock moving even if something asks to be woken "now".
            self.now = next
                .max(self.now + Duration::from_micros(200))
                .min(end.max(self.now));
            if self.now >= end {
                self.step();
                break;
            }
        }
    }

    /// Runs until `cond` holds or `limit` passes; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if cond(self) {
                return true;
            }
            self.run_for(Duration::from_millis(10));
        }
        cond(self)
    }

    /// When something is next due: a worker's timer, a client's, a datagram.
    pub fn next_timeout(&self) -> Instant {
        let mut next = self.now + Duration::from_secs(3600);
        for w in &self.workers {
            if let Some(t) = w.core.poll_timeout() {
                next = next.min(t);
            }
        }
        for c in &self.clients {
            next = next.min(c.client.next_timeout());
        }
        if let Some(t) = self.net.next_delivery() {
            next = next.min(t);
        }
        next
    }

    /// Runs everything due at `self.now`: worker timers, clients, the
    /// network's deliveries.
    pub(crate) fn step(&mut self) {
        let now = self.now;
        (self.router_mark)(true);
        self.turn_all(true);
        (self.router_mark)(false);
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i].client;
            c.handle_timeout(now);
            c.tick(now);
            while let Some(d) = c.poll_transmit() {
                self.net.send(now, d);
            }
        }
        while let Some(d) = self.net.poll_deliver(now) {
            if let Some(w) = self.worker_for(&d) {
                self.workers[w].io.inbound.push_back(d);
                self.pump();
            } else if let Some(c) = self.client_by_addr(d.dst) {
                c.handle_receive(now, d.src, &d.data);
                let mut out = Vec::new();
                c.drain_transmits(&mut out);
                for d in out {
                    self.net.send(now, d);
                }
            }
        }
    }

    // ----- API helpers, through the real control plane ---------------

    pub fn create_room(&mut self, room: &str) {
        self.control.create_room(room, 0, &[]).expect("create room");
    }

    /// Offers what the client has queued and creates its session.
    pub fn join(&mut self, room: &str, client: usize, participant: &str) -> Vec<pb::Track> {
        let offer = self.clients[client]
            .client
            .create_offer()
            .expect("client has something to offer");
        let control = self.control.clone();
        let resp = self
            .api(control.create_session(pb::CreateSessionRequest {
                room_id: room.into(),
                participant_id: participant.into(),
                sdp_offer: offer,
                metadata: String::new(),
            }))
            .expect("create session");
        self.clients[client]
            .client
            .accept_answer(&resp.sdp_answer)
            .expect("client accepts answer");
        self.clients[client].session = Some(resp.session_id.clone());
        self.clients[client].tracks = resp.tracks.clone();
        resp.tracks
    }

    /// Subscribes `client` to `tracks` and completes the offer/answer.
    pub fn subscribe(&mut self, client: usize, tracks: &[pb::Track]) -> Vec<pb::Subscription> {
        let session = self.clients[client].session.clone().expect("joined");
        let control = self.control.clone();
        let resp = self
            .api(control.subscribe(pb::SubscribeRequest {
                session_id: session.clone(),
                track_ids: tracks.iter().map(|t| t.track_id.clone()).collect(),
            }))
            .expect("subscribe");
        let answer = self.clients[client]
            .client
            .accept_offer(&resp.sdp_offer)
            .expect("client accepts router offer");
        self.api(control.set_answer(pb::SetAnswerRequest {
            session_id: session,
            sdp_answer: answer,
        }))
        .expect("set answer");
        resp.subscriptions
    }

    pub fn connected(&self, client: usize) -> bool {
        self.clients[client].client.is_connected()
    }

    /// Runs until the clients are connected (panics after 10 s of virtual time).
    pub fn connect(&mut self, clients: &[usize]) {
        let ok = self.run_until(Duration::from_secs(10), |s| {
            clients.iter().all(|c| s.connected(*c))
        });
        assert!(ok, "clients {clients:?} did not connect");
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics.render();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
