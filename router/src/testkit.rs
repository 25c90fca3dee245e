//! Deterministic test kit (feature `testkit`): the real control plane and
//! real worker cores, str0m clients as browsers, a seeded simulated network,
//! all in one thread on a virtual clock. No sockets, no sleeps. Used by the
//! router's tests and by the benchmarks.
#![allow(missing_docs, clippy::missing_panics_doc)]

use crate::control::{Control, Identity, Limits};
use crate::media::bus::Outbox;
use crate::media::worker::WorkerHandle;
use crate::media::{BusBatch, Command, RtcFactory, WorkerCore, WorkerEvent, WorkerId};
use crate::metrics::{Metrics, WorkerMetrics};
use kaskade_loadtest::{Client, ClientConfig, Datagram as NetDatagram, SimNet};
use kaskade_protocol::v1 as pb;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One simulated worker: its core and the receiving end of its command channel.
pub struct SimWorker {
    pub core: WorkerCore,
    pub addr: SocketAddr,
    commands: crossbeam_channel::Receiver<Command>,
    /// Its bounded bus inbox, the same kind of channel as in production.
    bus: crossbeam_channel::Receiver<BusBatch>,
    inbox: crossbeam_channel::Sender<BusBatch>,
    /// What it sends to the others, with the production overload policy.
    outbox: Outbox,
    /// Until then it reads nothing from its inbox (a worker fallen behind).
    stalled_until: Option<Instant>,
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
                ..Limits::default()
            },
        }
    }
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
    seed: u64,
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
        let capacity = options.bus_capacity;
        let t0 = Instant::now();
        let metrics = Metrics::new();
        let factory = RtcFactory::new()
            .expect("crypto provider")
            .with_rtx_cache(options.rtx_cache);
        let mut sim_workers = Vec::new();
        let mut handles = Vec::new();
        for i in 0..workers {
            let poll = mio::Poll::new().expect("mio poll");
            let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).expect("waker"));
            let (ctx, crx) = crossbeam_channel::unbounded();
            let (btx, brx) = crossbeam_channel::bounded(capacity);
            handles.push(WorkerHandle {
                id: WorkerId(i as u16),
                commands: ctx,
                bus: btx.clone(),
                waker,
                bound: worker_addr(i),
            });
            let core = WorkerCore::new(
                WorkerId(i as u16),
                workers,
                worker_addr(i),
                factory.clone(),
                WorkerMetrics::new(&metrics),
                seed.wrapping_add(i as u64),
                t0,
            )
            .with_keyframe_interval(options.keyframe_interval);
            sim_workers.push(SimWorker {
                core,
                addr: worker_addr(i),
                commands: crx,
                bus: brx,
                inbox: btx,
                outbox: Outbox::new(workers),
                stalled_until: None,
                _poll: poll,
            });
        }
        let control = Arc::new(Control::new(
            handles,
            metrics.clone(),
            options.limits,
            Identity {
                node_id: "sim".into(),
                region: "eu-sim-1".into(),
            },
        ));
        Sim {
            t0,
            now: t0,
            net: SimNet::new(seed),
            workers: sim_workers,
            clients: Vec::new(),
            control,
            metrics,
            events: Vec::new(),
            seed,
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
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                self.pump();
                return v;
            }
            self.pump();
        }
        panic!("API call did not complete");
    }

    /// Delivers pending commands, bus batches, transmits and events.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for w in &mut self.workers {
                w.core.flush(self.now);
            }
            for w in 0..self.workers.len() {
                while let Ok(cmd) = self.workers[w].commands.try_recv() {
                    let now = self.now;
                    self.workers[w].core.handle_command(now, cmd);
                    progressed = true;
                }
            }
            for w in 0..self.workers.len() {
                let src = self.workers[w].addr;
                let out = self.workers[w].core.outputs();
                for d in out.transmits.drain(..) {
                    self.net.send(
                        self.now,
                        NetDatagram {
                            src,
                            dst: d.dst,
                            data: d.data,
                        },
                    );
                }
                let mut batches: Vec<BusBatch> = out.bus.iter_mut().map(std::mem::take).collect();
                let events: Vec<WorkerEvent> = out.events.drain(..).collect();
                for (dst, batch) in batches.iter_mut().enumerate() {
                    if dst >= self.workers.len() {
                        continue;
                    }
                    let inbox = self.workers[dst].inbox.clone();
                    let (_, shed) = self.workers[w].outbox.hand_over(dst, batch, &inbox);
                    self.metrics
                        .bus_dropped
                        .with_label_values(&["video"])
                        .inc_by(shed.video);
                    self.metrics
                        .bus_dropped
                        .with_label_values(&["other"])
                        .inc_by(shed.other);
                }
                for ev in events {
                    self.events.push(ev.clone());
                    self.control.on_worker_event(ev);
                    progressed = true;
                }
            }
            for w in &mut self.workers {
                if w.stalled_until.is_some_and(|t| self.now < t) {
                    continue;
                }
                while let Ok(batch) = w.bus.try_recv() {
                    w.core.handle_bus(self.now, batch);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Worker `w` reads nothing from its bus inbox for `d` (it has fallen
    /// behind); the others keep sending to it.
    pub fn stall(&mut self, w: usize, d: Duration) {
        self.workers[w].stalled_until = Some(self.now + d);
    }

    /// Batches waiting in worker `w`'s inbox.
    pub fn inbox_len(&self, w: usize) -> usize {
        self.workers[w].bus.len()
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
            let mut next = end;
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

    fn step(&mut self) {
        let now = self.now;
        for w in &mut self.workers {
            if w.core.poll_timeout().is_some_and(|t| t <= now) {
                w.core.handle_timeout(now);
            }
        }
        self.pump();
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i].client;
            c.handle_timeout(now);
            c.tick(now);
            while let Some(d) = c.poll_transmit() {
                self.net.send(now, d);
            }
        }
        while let Some(d) = self.net.poll_deliver(now) {
            if let Some(w) = self.workers.iter_mut().find(|w| w.addr == d.dst) {
                w.core.handle_datagram(now, d.src, &d.data);
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

/// A publisher and one subscriber in room "r" (see [`Sim::pair`]).
pub struct Pair {
    pub publ: usize,
    pub sub: usize,
    /// What the publisher published.
    pub tracks: Vec<pb::Track>,
    /// The subscriber's subscriptions to all of it.
    pub subs: Vec<pb::Subscription>,
}

impl Sim {
    /// A router with `workers` workers, a publisher whose tracks `publish`
    /// adds and one data-channel subscriber, in room "r", connected, the
    /// subscriber subscribed to everything published.
    pub fn pair(workers: usize, seed: u64, publish: impl FnOnce(&mut Client)) -> (Sim, Pair) {
        let mut sim = Sim::new(workers, seed);
        let (publ, tracks, subs) = sim.publisher_and_subscribers(1, publish);
        let sub = subs[0];
        let subs = sim.subscribe(sub, &tracks);
        (
            sim,
            Pair {
                publ,
                sub,
                tracks,
                subs,
            },
        )
    }

    /// Room "r" with a publisher whose tracks `publish` adds, joined (not
    /// yet connected). Returns the publisher and its tracks.
    pub fn publisher(&mut self, publish: impl FnOnce(&mut Client)) -> (usize, Vec<pb::Track>) {
        self.create_room("r");
        let publ = self.add_client(|c| c);
        publish(&mut self.clients[publ].client);
        let tracks = self.join("r", publ, "pub");
        (publ, tracks)
    }

    /// Room "r" with a publisher whose tracks `publish` adds and `n`
    /// data-channel subscribers, joined in that order (placed by the
    /// router) and connected; nobody subscribed yet. Returns the publisher,
    /// its tracks and the subscribers.
    pub fn publisher_and_subscribers(
        &mut self,
        n: usize,
        publish: impl FnOnce(&mut Client),
    ) -> (usize, Vec<pb::Track>, Vec<usize>) {
        let (publ, tracks) = self.publisher(publish);
        let subs: Vec<usize> = (0..n)
            .map(|i| {
                let c = self.add_client(|c| c);
                self.clients[c].client.add_data_channel("k");
                self.join("r", c, &format!("s{i}"));
                c
            })
            .collect();
        let mut all = subs.clone();
        all.push(publ);
        self.connect(&all);
        (publ, tracks, subs)
    }
}

/// A room with one publisher and subscribers, all connected and subscribed.
pub struct Room {
    pub sim: Sim,
    pub publ: usize,
    pub subs: Vec<usize>,
    /// Each subscriber's media line of the video track.
    pub mids: Vec<str0m::media::Mid>,
    pub video: pb::Track,
    pub events: tokio::sync::broadcast::Receiver<pb::Event>,
}

impl Room {
    /// One publisher of a video track with the given simulcast rids (none:
    /// a single layer) and `subscribers` data-channel-only subscribers,
    /// connected and subscribed to the video track, on `workers` workers.
    pub fn video(workers: usize, rids: &[&str], subscribers: usize, seed: u64) -> Room {
        Room::video_with(
            workers,
            rids,
            subscribers,
            seed,
            kaskade_loadtest::VideoCodec::Vp8,
        )
    }

    /// [`Room::video`] with the given video codec for every client.
    pub fn video_with(
        workers: usize,
        rids: &[&str],
        subscribers: usize,
        seed: u64,
        codec: kaskade_loadtest::VideoCodec,
    ) -> Room {
        let mut sim = Sim::new(workers, seed);
        sim.create_room("r");
        let events = sim.control.watch("r").expect("room exists").events;
        let publ = sim.add_client(|c| c.video_codec(codec));
        sim.clients[publ].client.add_video(rids);
        let tracks = sim.join("r", publ, "pub");
        let subs: Vec<usize> = (0..subscribers)
            .map(|_| sim.add_client(|c| c.video_codec(codec)))
            .collect();
        for (i, s) in subs.iter().enumerate() {
            sim.clients[*s].client.add_data_channel("k");
            sim.join("r", *s, &format!("s{i}"));
        }
        let mut all = subs.clone();
        all.push(publ);
        sim.connect(&all);
        let mut mids = Vec::new();
        for s in &subs {
            let m = sim.subscribe(*s, &tracks);
            mids.push(str0m::media::Mid::from(m[0].mid.as_str()));
        }
        Room {
            sim,
            publ,
            subs,
            mids,
            video: tracks[0].clone(),
            events,
        }
    }

    /// Sets preferences of subscriber `sub` through the real control plane.
    pub fn update(
        &mut self,
        sub: usize,
        f: impl FnOnce(&mut pb::UpdateSubscriptionRequest),
    ) -> pb::SubscriptionState {
        let mut req = pb::UpdateSubscriptionRequest {
            session_id: self.sim.clients[self.subs[sub]]
                .session
                .clone()
                .expect("joined"),
            track_id: self.video.track_id.clone(),
            ..Default::default()
        };
        f(&mut req);
        let control = self.sim.control.clone();
        self.sim
            .api(control.update_subscription(req))
            .expect("update subscription")
            .subscription
            .expect("subscription state")
    }

    /// The simulcast layer (0 = lowest) of the newest packet subscriber
    /// `sub` received, by sequence number (late retransmissions don't count).
    pub fn layer(&self, sub: usize) -> Option<u8> {
        let r = self.sim.clients[self.subs[sub]]
            .client
            .received_on(self.mids[sub])?;
        r.log
            .iter()
            .rev()
            .take(30)
            .max_by_key(|p| p.seq)
            .and_then(|p| p.probe.as_ref())
            .map(|p| kaskade_loadtest::media::split_source_tag(p.source_tag).2)
    }

    /// Runs until subscriber `sub` receives `pred`'s layer; how long it took.
    pub fn wait_layer(
        &mut self,
        sub: usize,
        limit: Duration,
        pred: impl Fn(u8) -> bool,
    ) -> Option<Duration> {
        let t0 = self.sim.now;
        let end = t0 + limit;
        while self.sim.now < end {
            if self.layer(sub).is_some_and(&pred) {
                return Some(self.sim.now - t0);
            }
            self.sim.run_for(Duration::from_millis(5));
        }
        None
    }
}
