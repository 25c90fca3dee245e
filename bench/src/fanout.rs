//! The kaskade side: one publisher with one VP8 video track, N subscribers
//! (bootstrapped with a data channel, or a receive-only line: see
//! [`receive_only_bootstrap`]) subscribed to it, all on one real worker core, driven by the
//! router's test kit (`kaskade_router::testkit::Sim`) on a virtual clock.
//!
//! Measuring: [`FanOut::record_publisher`] runs only the publisher for a
//! window of virtual time and keeps the datagrams it sends to the router;
//! [`FanOut::replay`] then feeds them to the worker core through the
//! router's own drive loop (`kaskade_router::media::drive`, the mio
//! worker's loop), one datagram per turn, and its transmits go out:
//! dropped ("core only") or sent with `sendmmsg` in batches of 32 to
//! loopback sinks ("core + send"). Nothing else runs inside the measured
//! loop: the subscribers do not receive that window's packets, so their own
//! work (and their RTCP) is not counted. [`FanOut::run_for`] resynchronises
//! everyone afterwards (the test kit's loop, router work marked for the
//! tagging allocator).

use crate::alloc::{router_mark, with_router};
use crate::net::{Sinks, MAX_BATCH};
use kaskade_loadtest::VideoLayer;
use kaskade_protocol::v1 as pb;
use kaskade_router::media::drive::{Drive, Port};
use kaskade_router::media::types::{LinkId, MediaPacket};
use kaskade_router::media::udp::{RecvBatch, BATCH};
use kaskade_router::media::{BusBatch, Command, Datagram, WorkerEvent};
use kaskade_router::metrics::WorkerMetrics;
use kaskade_router::testkit::{client_addr, Sim, SimOptions};
use std::net::SocketAddr;
use std::sync::Arc;
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
pub type Recorded = (Instant, kaskade_loadtest::Datagram);

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
    /// The drive loop of the replays (worker 0's).
    drive: Drive,
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
    /// the sessions (the test kit's least-loaded placement unless `options`
    /// say otherwise), so the publisher is on worker 0 and the subscribers
    /// are spread evenly.
    pub fn connect_on(workers: usize, subscribers: usize, seed: u64, options: SimOptions) -> Self {
        let mut sim = Sim::with_options(workers, seed, options);
        sim.router_mark = router_mark;
        let drive = Drive::new(0, workers, &WorkerMetrics::new(&sim.metrics));
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
            drive,
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

    /// Advances the virtual clock by `d`, running everyone (the test kit's
    /// loop, router work marked for the tagging allocator).
    pub fn run_for(&mut self, d: Duration) {
        self.sim.run_for(d);
    }

    /// RTP packets the router forwarded to subscribers so far.
    pub fn forwarded(&self) -> u64 {
        self.sim.metric("kaskade_rtp_packets_forwarded_total") as u64
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

    /// Feeds recorded datagrams to worker 0 through the router's drive loop
    /// ([`Drive::turn`], as the mio thread runs it), [`replay_burst`]
    /// datagrams per turn (1 = an idle worker that sees one datagram per
    /// loop; more = a busy one that reads many), its transmits sent to
    /// `sinks` in `sendmmsg` batches of 32, or dropped. Returns the RTP
    /// packets sent to subscribers. Afterwards `sim.now` is the end of the
    /// window; call [`Self::run_for`] to let everyone catch up.
    pub fn replay(
        &mut self,
        rec: &[Recorded],
        window_end: Instant,
        sinks: Option<&mut Sinks>,
    ) -> u64 {
        let mut port = ReplayPort::new(rec, self.publisher, sinks);
        let core = &mut self.sim.workers[0].core;
        while port.next < rec.len() {
            self.drive.turn(core, &mut port, true);
        }
        let (rtp, events) = port.finish();
        for ev in events {
            self.sim.control.on_worker_event(ev);
        }
        self.sim.now = window_end;
        rtp
    }

    /// Address of the router's worker.
    pub fn worker_addr(&self) -> SocketAddr {
        self.sim.workers[0].addr
    }
}

/// Where a replay's transmits go: to loopback sinks in `sendmmsg` batches of
/// [`MAX_BATCH`] ("core + send"), or dropped ("core only"); counts the RTP
/// packets that went to subscribers.
pub struct Outflow {
    staged: Vec<Datagram>,
    publisher_port: u16,
    /// RTP packets to subscribers so far.
    pub rtp: u64,
}

impl Outflow {
    /// For a scenario whose publisher is client `publisher`.
    pub fn new(publisher: usize) -> Self {
        Self {
            staged: Vec::with_capacity(2 * MAX_BATCH),
            publisher_port: client_port_base() + publisher as u16,
            rtp: 0,
        }
    }

    /// Takes the transmits out of `out` (emptied).
    pub fn take(&mut self, out: &mut Vec<Datagram>, sinks: Option<&mut Sinks>) {
        let publisher_port = self.publisher_port;
        let to_subscriber = |t: &Datagram| t.dst.port() != publisher_port && is_rtp(&t.data);
        match sinks {
            None => {
                for t in out.drain(..) {
                    self.rtp += u64::from(to_subscriber(&t));
                }
            }
            Some(sinks) => {
                for t in out.drain(..) {
                    self.rtp += u64::from(to_subscriber(&t));
                    self.staged.push(t);
                    if self.staged.len() == MAX_BATCH {
                        send(&mut self.staged, sinks);
                    }
                }
            }
        }
    }

    /// Sends what is still staged.
    pub fn finish(&mut self, sinks: Option<&mut Sinks>) {
        match sinks {
            Some(sinks) if !self.staged.is_empty() => send(&mut self.staged, sinks),
            _ => self.staged.clear(),
        }
    }
}

/// Worker 0 as the drive loop sees it during a replay: the recorded
/// datagrams in, at their recorded times; transmits to the sinks (or
/// dropped); events kept for the control plane; no other worker.
pub struct ReplayPort<'a> {
    rec: &'a [Recorded],
    /// The next recorded datagram.
    pub next: usize,
    burst: usize,
    now: Instant,
    out: Outflow,
    sinks: Option<&'a mut Sinks>,
    events: Vec<WorkerEvent>,
    /// Inboxes of the other workers (index = worker), with the batch's time.
    peers: Vec<Option<crossbeam_channel::Sender<(Instant, BusBatch)>>>,
}

impl<'a> ReplayPort<'a> {
    /// A replay of `rec` whose publisher is client `publisher`.
    pub fn new(rec: &'a [Recorded], publisher: usize, sinks: Option<&'a mut Sinks>) -> Self {
        Self {
            rec,
            next: 0,
            burst: replay_burst().min(BATCH),
            now: rec.first().map_or_else(Instant::now, |(t, _)| *t),
            out: Outflow::new(publisher),
            sinks,
            events: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// Hands bus batches for worker `i` to `peers[i]` (unbounded channels to
    /// worker threads; the receivers live until the replay ends).
    pub fn with_peers(
        mut self,
        peers: Vec<Option<crossbeam_channel::Sender<(Instant, BusBatch)>>>,
    ) -> Self {
        self.peers = peers;
        self
    }

    /// Sends what is staged; returns the RTP packets sent to subscribers
    /// and the events for the control plane.
    pub fn finish(mut self) -> (u64, Vec<WorkerEvent>) {
        self.out.finish(self.sinks.as_deref_mut());
        (self.out.rtp, self.events)
    }

    /// The outflow (its RTP count).
    pub fn outflow(&self) -> &Outflow {
        &self.out
    }

    /// Sets the time of the next turn (for a worker fed from elsewhere).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }
}

impl Port for ReplayPort<'_> {
    fn now(&mut self) -> Instant {
        self.now
    }

    fn recv(&mut self, buf: &mut RecvBatch) -> usize {
        // One burst per turn: a turn reads the next batch only after a full one.
        if buf.is_empty() && self.next < self.rec.len() {
            self.now = self.rec[self.next].0;
            for (_, d) in &self.rec[self.next..(self.next + self.burst).min(self.rec.len())] {
                buf.push(d.src, &d.data);
                self.next += 1;
            }
        }
        buf.len()
    }

    fn command(&mut self) -> Option<Command> {
        None
    }

    fn bus(&mut self) -> Option<BusBatch> {
        None
    }

    fn send(&mut self, out: &mut Vec<Datagram>) -> usize {
        self.out.take(out, self.sinks.as_deref_mut());
        0
    }

    fn offer(&self, dst: usize, batch: BusBatch) -> Result<(), BusBatch> {
        if let Some(Some(tx)) = self.peers.get(dst) {
            // Unbounded, and the receiver outlives the replay.
            let _ = tx.send((self.now, batch));
        }
        Ok(())
    }

    fn event(&mut self, ev: WorkerEvent) {
        self.events.push(ev);
    }

    fn relay(&mut self, _link: LinkId, _pkt: Arc<MediaPacket>) -> bool {
        true
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
