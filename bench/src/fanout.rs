//! The kaskade side: one publisher with one VP8 video track, N subscribers
//! (bootstrapped with a data channel, or a receive-only line: see
//! [`receive_only_bootstrap`]) subscribed to it, all on one real worker core, driven by the
//! router's test kit (`kaskade_router::testkit::Sim`) on a virtual clock.
//!
//! Measuring: [`FanOut::record_publisher`] runs only the publisher for a
//! window of virtual time and keeps the datagrams it sends to the router;
//! [`FanOut::replay`] then feeds them to the worker core in a tight loop
//! (with its timers), like the mio driver does, and drains the core's
//! transmits: dropped ("core only") or sent with `sendmmsg` in batches of 32
//! to loopback sinks ("core + send"). Nothing else runs inside the measured
//! loop: the subscribers do not receive that window's packets, so their own
//! work (and their RTCP) is not counted. [`FanOut::run_for`] resynchronises
//! everyone afterwards.

use crate::alloc::with_router;
use crate::net::{Sinks, MAX_BATCH};
use kaskade_loadtest::{Datagram as NetDatagram, VideoLayer};
use kaskade_protocol::v1 as pb;
use kaskade_router::media::{Datagram, WorkerCore};
use kaskade_router::testkit::{client_addr, Sim, SimOptions};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::media::Mid;

/// The publisher's only layer: 720p VP8 at a fixed 4 Mbps, 30 fps, so most
/// packets carry a full 1150-byte payload (~1.2 kB on the wire, like the
/// floor's 1200-byte packets) at ~430 packets/s.
pub const VIDEO: VideoLayer = VideoLayer {
    bitrate_bps: 4_000_000,
    ..VideoLayer::HIGH
};

/// First UDP port of the simulated clients (`testkit::client_addr(0)`).
fn client_port_base() -> u16 {
    client_addr(0).port()
}

/// Whether a datagram is RTP (not RTCP, STUN, DTLS): RFC 5761 / 7983 demultiplexing.
pub fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && b[0] & 0xc0 == 0x80 && !(192..=223).contains(&b[1])
}

/// A publisher's datagram to the router, with the virtual time it was sent.
pub type Recorded = (Instant, NetDatagram);

/// The scenario.
pub struct FanOut {
    /// The simulation (router, clients, network).
    pub sim: Sim,
    /// Index of the publisher in `sim.clients`.
    pub publisher: usize,
    /// Indexes of the subscribers in `sim.clients`.
    pub subscribers: Vec<usize>,
    /// The published video track.
    pub track: pb::Track,
    /// Each subscriber's media line for the video (once subscribed).
    pub mids: Vec<Mid>,
    /// Room size limit of the router under test (sessions per room).
    pub room_limit: usize,
    scratch: Vec<Datagram>,
    /// RTP packets the worker sent to subscribers outside measured windows.
    pub rtp_out: u64,
}

impl FanOut {
    /// Builds the room: the publisher and up to `subscribers` subscribers
    /// (fewer if the router's room limit says so), joined and connected,
    /// nobody subscribed yet. Router work is marked for the tagging allocator.
    pub fn connect(subscribers: usize, seed: u64) -> Self {
        Self::connect_with(subscribers, seed, SimOptions::default())
    }

    /// [`FanOut::connect`] with a router set up as `options` say.
    pub fn connect_with(subscribers: usize, seed: u64, options: SimOptions) -> Self {
        Self::connect_on(1, subscribers, seed, options)
    }

    /// [`FanOut::connect_with`] on `workers` worker cores: the router places
    /// the sessions (least loaded first), so the publisher is on worker 0
    /// and the subscribers are spread evenly.
    pub fn connect_on(workers: usize, subscribers: usize, seed: u64, options: SimOptions) -> Self {
        let mut sim = Sim::with_options(workers, seed, options);
        with_router(|| sim.create_room("bench"));
        let room = sim.control.get_room("bench").expect("the room exists");
        let room_limit = room.max_sessions as usize;
        let n = subscribers.min(room_limit.saturating_sub(1));
        let publisher = sim.add_client(|c| c.packet_log(0));
        sim.clients[publisher]
            .client
            .add_video_layers(&[], &[VIDEO]);
        let mut f = Self {
            sim,
            publisher,
            subscribers: Vec::with_capacity(n),
            track: pb::Track::default(),
            mids: Vec::new(),
            room_limit,
            scratch: Vec::new(),
            rtp_out: 0,
        };
        let tracks = f.join(publisher, "pub");
        f.track = tracks
            .first()
            .cloned()
            .expect("the video track is published");
        for i in 0..n {
            let s = f.sim.add_client(|c| c.packet_log(0));
            if receive_only_bootstrap() {
                f.sim.clients[s]
                    .client
                    .add_receiver(str0m::media::MediaKind::Video);
            } else {
                f.sim.clients[s].client.add_data_channel("bench");
            }
            f.join(s, &format!("sub{i}"));
            f.subscribers.push(s);
        }
        let end = f.sim.now + Duration::from_secs(10);
        while !(0..f.sim.clients.len()).all(|c| f.sim.connected(c)) {
            assert!(f.sim.now < end, "clients did not connect");
            f.run_for(Duration::from_millis(10));
        }
        f
    }

    /// As `Sim::join`, with the router's part marked.
    fn join(&mut self, client: usize, participant: &str) -> Vec<pb::Track> {
        let offer = self.sim.clients[client]
            .client
            .create_offer()
            .expect("the client has something to offer");
        let control = self.sim.control.clone();
        let req = pb::CreateSessionRequest {
            room_id: "bench".into(),
            participant_id: participant.into(),
            sdp_offer: offer,
            metadata: String::new(),
        };
        let sim = &mut self.sim;
        let resp =
            with_router(|| sim.api(control.create_session(req))).expect("create the session");
        let c = &mut self.sim.clients[client];
        c.client
            .accept_answer(&resp.sdp_answer)
            .expect("the client accepts the answer");
        c.session = Some(resp.session_id);
        c.tracks = resp.tracks.clone();
        resp.tracks
    }

    /// Subscribes every subscriber to the video track (router work marked
    /// for the tagging allocator).
    pub fn subscribe_all(&mut self) {
        for s in self.subscribers.clone() {
            let session = self.sim.clients[s].session.clone().expect("joined");
            let control = self.sim.control.clone();
            let req = pb::SubscribeRequest {
                session_id: session.clone(),
                track_ids: vec![self.track.track_id.clone()],
            };
            let sim = &mut self.sim;
            let resp = with_router(|| sim.api(control.subscribe(req))).expect("subscribe");
            let answer = self.sim.clients[s]
                .client
                .accept_offer(&resp.sdp_offer)
                .expect("the subscriber accepts the router's offer");
            let req = pb::SetAnswerRequest {
                session_id: session,
                sdp_answer: answer,
            };
            let sim = &mut self.sim;
            with_router(|| sim.api(control.set_answer(req))).expect("set answer");
            let mid = resp
                .subscriptions
                .iter()
                .find(|x| x.track_id == self.track.track_id)
                .map(|x| Mid::from(x.mid.as_str()))
                .expect("a subscription for the track");
            self.mids.push(mid);
        }
    }

    /// Runs until every subscriber has received video (panics after 10 s).
    pub fn wait_media(&mut self) {
        let end = self.sim.now + Duration::from_secs(10);
        while !self.all_receiving() {
            assert!(self.sim.now < end, "subscribers did not receive video");
            self.run_for(Duration::from_millis(50));
        }
    }

    fn all_receiving(&self) -> bool {
        self.subscribers.iter().zip(&self.mids).all(|(s, mid)| {
            self.sim.clients[*s]
                .client
                .received_on(*mid)
                .is_some_and(|r| r.packets > 0)
        })
    }

    /// Builds, connects, subscribes and warms up the scenario.
    pub fn new(subscribers: usize, seed: u64) -> Self {
        Self::new_on(1, subscribers, seed)
    }

    /// [`FanOut::new`] on `workers` worker cores.
    pub fn new_on(workers: usize, subscribers: usize, seed: u64) -> Self {
        let mut f = Self::connect_on(workers, subscribers, seed, options_from_env());
        f.subscribe_all();
        f.wait_media();
        // Steady state: str0m's RTX caches (up to 1000 packets or 3 s per
        // stream) have stopped growing.
        f.run_for(Duration::from_secs(3));
        f
    }

    // ----- the simulation loop (as `Sim::run_for`), router calls marked ----

    /// Lets the worker write what it holds for its subscribers (router
    /// work), then moves its transmits into the network (not router work).
    fn flush_worker(&mut self) {
        let now = self.sim.now;
        let base = client_port_base();
        for w in 0..self.sim.workers.len() {
            let core = &mut self.sim.workers[w].core;
            with_router(|| core.flush(now));
            let src = self.sim.workers[w].addr;
            self.scratch
                .append(&mut self.sim.workers[w].core.outputs().transmits);
            for d in self.scratch.drain(..) {
                if d.dst.port() != base + self.publisher as u16 && is_rtp(&d.data) {
                    self.rtp_out += 1;
                }
                self.sim.net.send(
                    now,
                    NetDatagram {
                        src,
                        dst: d.dst,
                        data: d.data,
                    },
                );
            }
        }
        let sim = &mut self.sim;
        with_router(|| sim.pump());
    }

    fn step(&mut self) {
        let now = self.sim.now;
        for w in 0..self.sim.workers.len() {
            let core = &mut self.sim.workers[w].core;
            if core.poll_timeout().is_some_and(|t| t <= now) {
                with_router(|| core.handle_timeout(now));
            }
        }
        self.flush_worker();
        for i in 0..self.sim.clients.len() {
            let c = &mut self.sim.clients[i].client;
            c.handle_timeout(now);
            c.tick(now);
            while let Some(d) = c.poll_transmit() {
                self.sim.net.send(now, d);
            }
        }
        let mut out = Vec::new();
        while let Some(d) = self.sim.net.poll_deliver(now) {
            if let Some(w) = self.sim.workers.iter().position(|w| w.addr == d.dst) {
                let core = &mut self.sim.workers[w].core;
                with_router(|| core.handle_datagram(now, d.src, &d.data));
                self.flush_worker();
            } else if let Some(c) = self
                .sim
                .clients
                .iter_mut()
                .find(|c| c.client.local_addr() == d.dst)
            {
                c.client.handle_receive(now, d.src, &d.data);
                c.client.drain_transmits(&mut out);
                for d in out.drain(..) {
                    self.sim.net.send(now, d);
                }
            }
        }
    }

    /// Advances the virtual clock by `d`, running everyone (as `Sim::run_for`).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.sim.now + d;
        while self.sim.now < end {
            self.step();
            let mut next = end;
            for w in &self.sim.workers {
                if let Some(t) = w.core.poll_timeout() {
                    next = next.min(t);
                }
            }
            for c in &self.sim.clients {
                next = next.min(c.client.next_timeout());
            }
            if let Some(t) = self.sim.net.next_delivery() {
                next = next.min(t);
            }
            self.sim.now = next
                .max(self.sim.now + Duration::from_micros(200))
                .min(end.max(self.sim.now));
            if self.sim.now >= end {
                self.step();
                break;
            }
        }
    }

    // ----- measured windows -------------------------------------------------

    /// Runs only the publisher for `window` of virtual time from `sim.now`
    /// and returns what it sent to the router. `sim.now` does not move.
    pub fn record_publisher(&mut self, window: Duration) -> Vec<Recorded> {
        let c = &mut self.sim.clients[self.publisher].client;
        let mut now = self.sim.now;
        let end = now + window;
        let mut out = Vec::new();
        loop {
            if c.next_timeout() <= now {
                c.handle_timeout(now);
            }
            while let Some(d) = c.poll_transmit() {
                out.push((now, d));
            }
            let next = c.next_timeout();
            if next >= end {
                break;
            }
            now = next.max(now + Duration::from_micros(50));
        }
        out
    }

    /// Feeds recorded datagrams to the worker core as the mio driver would,
    /// in bursts of [`replay_burst`] datagrams (timers checked before each
    /// burst, subscribers flushed after it; 1 = an idle worker that sees one
    /// datagram per loop, larger = a busy one that reads many), draining its
    /// transmits after each: sent to `sinks` in `sendmmsg` batches of 32, or dropped. Returns
    /// the RTP packets sent to subscribers. Afterwards `sim.now` is the end
    /// of the window; call [`Self::run_for`] to let everyone catch up.
    pub fn replay(
        &mut self,
        rec: &[Recorded],
        window_end: Instant,
        sinks: Option<&mut Sinks>,
    ) -> u64 {
        let burst = replay_burst();
        let mut out = Outflow::new(self.publisher);
        let core = &mut self.sim.workers[0].core;
        let mut sinks = sinks;
        let mut rtp = 0u64;
        for (i, (at, d)) in rec.iter().enumerate() {
            if i % burst == 0 && core.poll_timeout().is_some_and(|t| t <= *at) {
                core.handle_timeout(*at);
            }
            core.handle_datagram(*at, d.src, &d.data);
            if (i + 1) % burst == 0 || i + 1 == rec.len() {
                core.flush(*at);
            }
            rtp += out.take(core, sinks.as_deref_mut());
        }
        out.finish(sinks);
        self.sim.now = window_end;
        rtp
    }

    /// Address of the router's worker.
    pub fn worker_addr(&self) -> SocketAddr {
        self.sim.workers[0].addr
    }
}

/// Moves a worker core's transmits out after each step of a replay: to
/// loopback sinks in `sendmmsg` batches of [`MAX_BATCH`] ("core + send"), or
/// dropped ("core only"); counts the RTP packets that went to subscribers.
pub struct Outflow {
    staged: Vec<Datagram>,
    publisher_port: u16,
}

impl Outflow {
    /// For a scenario whose publisher is client `publisher`.
    pub fn new(publisher: usize) -> Self {
        Self {
            staged: Vec::with_capacity(2 * MAX_BATCH),
            publisher_port: client_port_base() + publisher as u16,
        }
    }

    /// Drains `core`'s transmits; returns the RTP packets to subscribers.
    pub fn take(&mut self, core: &mut WorkerCore, sinks: Option<&mut Sinks>) -> u64 {
        let mut rtp = 0;
        let to_subscriber = |t: &Datagram| t.dst.port() != self.publisher_port && is_rtp(&t.data);
        match sinks {
            None => {
                for t in core.outputs().transmits.drain(..) {
                    rtp += u64::from(to_subscriber(&t));
                }
            }
            Some(sinks) => {
                for t in core.outputs().transmits.drain(..) {
                    rtp += u64::from(to_subscriber(&t));
                    self.staged.push(t);
                    if self.staged.len() == MAX_BATCH {
                        send(&mut self.staged, sinks);
                    }
                }
            }
        }
        rtp
    }

    /// Sends what is still staged.
    pub fn finish(&mut self, sinks: Option<&mut Sinks>) {
        match sinks {
            Some(sinks) if !self.staged.is_empty() => send(&mut self.staged, sinks),
            _ => self.staged.clear(),
        }
    }
}

/// Sends up to [`MAX_BATCH`] staged datagrams to their sinks (index =
/// client port − base) with one `sendmmsg`.
fn send(staged: &mut Vec<Datagram>, sinks: &mut Sinks) {
    let base = client_port_base();
    let mut batch = [(&[][..], 0usize); MAX_BATCH];
    for (slot, d) in batch.iter_mut().zip(staged.iter()) {
        let sink = usize::from(d.dst.port().wrapping_sub(base));
        *slot = (&d.data[..], if sink < sinks.len() { sink } else { 0 });
    }
    sinks.send(&batch[..staged.len()]);
    staged.clear();
}

/// The router's options, with `KASKADE_BENCH_RTX_CACHE` as its
/// `media.rtx_cache` when set.
pub fn options_from_env() -> SimOptions {
    let mut options = SimOptions::default();
    if let Some(v) = std::env::var("KASKADE_BENCH_RTX_CACHE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.rtx_cache = v;
    }
    options
}

/// Whether subscribers bootstrap with a receive-only video line instead of a
/// data channel (`KASKADE_BENCH_SUBSCRIBER=recvonly`; default `datachannel`,
/// the flow docs/api.md describes).
pub fn receive_only_bootstrap() -> bool {
    std::env::var("KASKADE_BENCH_SUBSCRIBER").is_ok_and(|v| v == "recvonly")
}

/// Datagrams the replay hands to the core per loop iteration
/// (`KASKADE_BENCH_BURST`, default 1).
pub fn replay_burst() -> usize {
    std::env::var("KASKADE_BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|b: &usize| *b >= 1)
        .unwrap_or(1)
}
