//! The sans-IO core of one media worker.
//!
//! Nothing here reads the clock or touches a socket: every input comes with
//! its `now`, every output is collected in [`Outputs`] for the driver. The
//! core is a set of small machines with their own state, driven from here:
//!
//! - `sessions::SessionTable`: the sessions, found by id, address and ICE
//!   username, each with one deadline in a timer queue;
//! - `fanout::FanOut`: where packets of each track go (workers, links,
//!   local subscribers) and where each subscribed track is published;
//! - `keyframes::KeyframeThrottle`: keyframe requests per publisher layer;
//! - `exchange::LayerExchange`: layer state and demand between workers;
//! - `select`: layer selection per subscriber (the policy is
//!   [`crate::media::select`]);
//! - `stats::CoreStats`: counters, folded into the shared metrics.
//!
//! # Inputs (`handle_*`) and outputs (`poll_*`)
//!
//! - [`WorkerCore::handle_datagram`]: a datagram from the worker's socket.
//!   Media of a track published here goes to the other workers' bus batches
//!   at once and to this worker's own subscribers only in the next
//!   [`WorkerCore::flush`]: the driver hands the bus batches over first, so
//!   the other workers fan out meanwhile.
//! - [`WorkerCore::flush`]: writes pending media to this worker's own
//!   subscribers.
//! - [`WorkerCore::handle_command`], [`WorkerCore::handle_bus`]: the control
//!   plane's commands, other workers' batches.
//! - [`WorkerCore::handle_timeout`]: when [`WorkerCore::poll_timeout`] has come.
//! - [`WorkerCore::outputs`]: datagrams, bus batches, events and relayed
//!   packets, emptied by the driver.
//!
//! `crate::media::drive` is the one loop that calls them, in its order.

mod commands;
mod drain;
mod exchange;
mod fanout;
mod keyframes;
mod media;
mod select;
mod sessions;
mod stats;
mod transport;

use super::bus::{BusBatch, BusMsg};
use super::command::{CloseReason, MediaError, WorkerEvent};
use super::rtc::RtcFactory;
use super::session::{Datagram, JoinStep, Session, SessionRtc};
use super::types::{LinkId, MediaPacket, WorkerId};
use crate::metrics::WorkerMetrics;
use exchange::LayerExchange;
use fanout::FanOut;
use kaskade_protocol::SessionId;
use keyframes::KeyframeThrottle;
use sessions::{SessionKey, SessionTable};
use stats::CoreStats;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input};

/// Minimum time between two keyframe requests to one publisher layer, by
/// default (`media.keyframe_interval_ms`). Chrome's encoder ignores a request
/// that arrives within 300 ms of the last one it acted on; the extra 30 ms
/// keep a held request from arriving early by the path's jitter (and being
/// ignored, which would cost the waiting subscriber another round).
pub const PUBLISHER_KEYFRAME_INTERVAL: Duration = Duration::from_millis(330);

/// How often layer state is measured and selections are revisited.
pub const TICK: Duration = Duration::from_millis(100);

/// Everything the core wants done, drained by the driver.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Datagrams to send from this worker's socket.
    pub transmits: Vec<Datagram>,
    /// Bus messages per destination worker (indexed by worker id).
    pub bus: Vec<BusBatch>,
    /// Events for the control plane.
    pub events: Vec<WorkerEvent>,
    /// Packets of local tracks to relay over links.
    pub links: Vec<(LinkId, Arc<MediaPacket>)>,
    /// Peers of ICE-TCP connections whose session closed: the driver
    /// closes them.
    pub tcp_closed: Vec<SocketAddr>,
}

/// The state machine of one media worker.
pub struct WorkerCore {
    id: WorkerId,
    /// The address in this worker's ICE candidates (and the destination of
    /// every datagram it receives).
    local_addr: SocketAddr,
    factory: RtcFactory,
    rng: rand::rngs::SmallRng,
    /// The `now` of the input being handled.
    now: Instant,
    sessions: SessionTable,
    fanout: FanOut,
    keyframes: KeyframeThrottle,
    exchange: LayerExchange,
    stats: CoreStats,
    out: Outputs,
    /// str0m events waiting to be handled, per session.
    queue: VecDeque<(SessionKey, Event)>,
    scratch_events: Vec<Event>,
    /// Sessions whose deadline came, being handled.
    scratch_due: Vec<SessionKey>,
    /// Sessions handled because their deadline came, so far.
    session_timeouts: u64,
    /// Next periodic tick.
    next_tick: Instant,
    /// Sessions written to since their last drain.
    dirty: Vec<SessionKey>,
    /// Packets of local tracks for this worker's own subscribers, written
    /// by the next [`WorkerCore::flush`].
    local_pending: Vec<Arc<MediaPacket>>,
    /// Voice activity of the audio tracks published (or homed) here.
    speakers: super::speaker::SpeakerMeters,
    /// The advertised ICE-TCP candidate, when ICE-TCP is on.
    tcp_addr: Option<SocketAddr>,
    /// Routes of the single UDP port, in single-port mode.
    handover: Option<super::handover::Handover>,
    /// Per destination worker, where in its pending bus batch the
    /// datagrams handed to it are gathered (a hint, checked before use).
    handed_at: Vec<usize>,
    /// `kaskade_single_port_handovers_total`.
    handover_metric: prometheus::IntCounter,
}

/// Runs `f` with str0m's panics contained: a panic is a bug in the stack,
/// never bad input, and it costs that session only.
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

impl WorkerCore {
    /// A worker core with no sessions.
    pub fn new(
        id: WorkerId,
        workers: usize,
        local_addr: SocketAddr,
        factory: RtcFactory,
        metrics: WorkerMetrics,
        seed: u64,
        now: Instant,
    ) -> Self {
        use rand::SeedableRng;
        Self {
            id,
            local_addr,
            factory,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            now,
            sessions: SessionTable::new(),
            fanout: FanOut::new(id),
            keyframes: KeyframeThrottle::new(PUBLISHER_KEYFRAME_INTERVAL),
            exchange: LayerExchange::new(),
            stats: CoreStats::new(&metrics),
            out: Outputs {
                bus: vec![Vec::new(); workers],
                ..Default::default()
            },
            queue: VecDeque::new(),
            scratch_events: Vec::new(),
            scratch_due: Vec::new(),
            session_timeouts: 0,
            next_tick: now,
            dirty: Vec::new(),
            local_pending: Vec::new(),
            speakers: Default::default(),
            tcp_addr: None,
            handover: None,
            handed_at: vec![usize::MAX; workers],
            handover_metric: metrics.transport.handovers.clone(),
        }
    }

    /// Sets the minimum time between two keyframe requests to one
    /// publisher layer (`media.keyframe_interval_ms`).
    pub fn with_keyframe_interval(mut self, interval: Duration) -> Self {
        self.keyframes.set_interval(interval);
        self
    }

    /// This worker's id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The address this worker advertises.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The outputs produced so far; the driver empties them.
    pub fn outputs(&mut self) -> &mut Outputs {
        &mut self.out
    }

    /// Sessions handled because their deadline came, since the start (a
    /// diagnostic: a turn touches only those, see [`Self::session_deadlines`]).
    pub fn session_timeouts(&self) -> u64 {
        self.session_timeouts
    }

    /// Every session's deadline, earliest first (a diagnostic; O(sessions)).
    pub fn session_deadlines(&self) -> Vec<Instant> {
        let mut d: Vec<Instant> = self.sessions.iter().map(|(_, s)| s.deadline()).collect();
        d.sort_unstable();
        d
    }

    /// Adds what was counted since the last call to the shared metrics.
    pub fn fold_metrics(&self) {
        self.stats.fold();
        if let Some(h) = &self.handover {
            h.fold();
        }
    }

    /// When [`WorkerCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.dirty.is_empty() || !self.local_pending.is_empty() {
            // Written or pending packets wait for a flush: now.
            return Some(self.now);
        }
        let sessions = self.sessions.next_deadline();
        if sessions.is_none() && !self.fanout.publishes_anything() {
            // Idle: nothing to measure or select.
            return None;
        }
        let next = sessions.map_or(self.next_tick, |s| s.min(self.next_tick));
        Some(self.keyframes.poll_timeout().map_or(next, |k| k.min(next)))
    }

    // ----- inputs -------------------------------------------------------

    /// A datagram arrived on this worker's socket from `src`.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, buf: &[u8]) {
        self.now = now;
        let key = match self.sessions.by_addr(src) {
            Some(k) => k,
            None => match self.route_unknown(now, src, buf) {
                Some(k) => k,
                None => return,
            },
        };
        self.receive(now, key, Protocol::Udp, src, buf);
        // This worker's own subscribers get the packet in `flush`, which the
        // driver calls once it has handed the packet to the other workers.
    }

    /// Gives a packet from `src` to a session's stack; returns whether the
    /// session took it.
    fn receive(
        &mut self,
        now: Instant,
        key: SessionKey,
        proto: Protocol,
        src: SocketAddr,
        buf: &[u8],
    ) -> bool {
        let local = match (proto, self.tcp_addr) {
            (Protocol::Tcp, Some(tcp)) => tcp,
            _ => self.local_addr,
        };
        let Ok(recv) = Receive::new(proto, src, local, buf) else {
            self.stats.drop_malformed.inc();
            return false;
        };
        let input = Input::Receive(now, recv);
        let Some(sess) = self.sessions.get_mut(key) else {
            return false;
        };
        let tcp = proto == Protocol::Tcp;
        if !sess.accepts(&input) || (tcp && !sess.admits_tcp(src)) {
            self.stats.drop_rejected.inc();
            return false;
        }
        let ok = guarded(|| sess.handle_input(input)).is_some_and(|r| r.is_ok());
        if tcp {
            self.sessions.learn_tcp_addr(key, src);
        } else {
            self.sessions.learn_addr(key, src);
        }
        if !ok {
            // A str0m error on input is the peer's fault or a bug: either
            // way only this session is affected.
            self.stats.drop_rejected.inc();
        }
        self.drain_session(now, key);
        self.process_queue(now);
        true
    }

    fn session_by_stun(&self, buf: &[u8]) -> Option<SessionKey> {
        let Ok(msg) = str0m::ice::StunMessage::parse(buf) else {
            // RFC 7983: a first byte of 0..=3 is STUN. One that does not
            // parse (truncated, say) is malformed, whoever sent it.
            if buf.first().is_some_and(|b| *b <= 3) {
                self.stats.drop_malformed.inc();
            } else {
                self.stats.drop_unknown_source.inc();
            }
            return None;
        };
        let key = msg
            .split_username()
            .and_then(|(local, _remote)| self.sessions.by_ufrag(local));
        if key.is_none() {
            self.stats.drop_unknown_source.inc();
        }
        key
    }

    /// A batch of bus messages from another worker.
    pub fn handle_bus(&mut self, now: Instant, batch: BusBatch) {
        self.now = now;
        for msg in batch {
            match msg {
                BusMsg::Media(pkt) => {
                    self.deliver_local(now, &pkt);
                    self.flush(now);
                }
                BusMsg::KeyframeRequest { track, layer } => {
                    self.request_publisher_keyframe(now, track, layer)
                }
                BusMsg::Ingest(pkt) => self.ingest(now, pkt),
                BusMsg::RemoteLayers { track, layers } => {
                    self.exchange.set_remote_layers(track, layers)
                }
                BusMsg::LayerInfo { track, layers } => {
                    if self.fanout.is_subscribed(track) {
                        self.exchange.set_layer_info(track, layers);
                    }
                }
                BusMsg::Demand {
                    track,
                    worker,
                    mask,
                } => self.fanout.set_demand(track, worker, mask),
                BusMsg::Overload { track, layers } => self.on_overload(now, track, layers),
                BusMsg::Datagrams(h) => self.handle_handed(now, &h),
                BusMsg::Route(note) => self.learn_route(now, &note),
            }
        }
        self.process_queue(now);
    }

    /// Writes the packets pending for this worker's own subscribers, one by
    /// one, draining each subscriber written to after each packet (once,
    /// however many of its tracks the packet touched). The driver calls it
    /// after handing a batch of input's bus messages to the other workers;
    /// [`WorkerCore::poll_timeout`] asks for it too.
    pub fn flush(&mut self, now: Instant) {
        self.now = now;
        loop {
            let pending = std::mem::take(&mut self.local_pending);
            if pending.is_empty() {
                break;
            }
            for pkt in &pending {
                self.deliver_local(now, pkt);
                // Subscribers are drained after every packet: with a burst
                // written before one drain, str0m keeps most of it queued
                // (even on unpaced streams) and costs far more per packet
                // (docs/benchmarks.md).
                self.drain_dirty(now);
            }
            // Keep the allocation, unless draining a subscriber that also
            // publishes queued more packets (then go round again).
            if self.local_pending.is_empty() {
                self.local_pending = pending;
                self.local_pending.clear();
            }
            self.process_queue(now);
        }
        self.drain_dirty(now);
        self.process_queue(now);
    }

    /// Drains every session written to since the last call, each after a
    /// timeout round (str0m releases a written packet only from one).
    fn drain_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            self.drain_session_with(now, *key, true);
        }
        self.dirty = dirty;
        self.dirty.clear();
        self.process_queue(now);
    }

    /// Time passed: held keyframe requests, the periodic tick, and the
    /// sessions whose deadline has come (only those).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.flush(now);
        if self.keyframes.poll_timeout().is_some_and(|t| t <= now) {
            self.send_pending_keyframe_requests(now);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
            self.speakers.tick(now, &mut self.out.events);
        }
        // Take every due session off the queue before handling any: one
        // that str0m keeps asking for "now" waits for the next call.
        let mut due = std::mem::take(&mut self.scratch_due);
        while let Some(key) = self.sessions.pop_due(now) {
            due.push(key);
        }
        self.session_timeouts += due.len() as u64;
        for key in due.drain(..) {
            let Some(sess) = self.sessions.get(key) else {
                continue;
            };
            if sess.timed_out(now) {
                let step = sess.join_step();
                match step {
                    Some(JoinStep::Timeout) => self.stats.join_timeout.inc(),
                    Some(JoinStep::Ice) => self.stats.join_ice.inc(),
                    Some(JoinStep::Dtls) => self.stats.join_dtls.inc(),
                    None => {}
                }
                // ICE got through but DTLS never completed (a handshake the
                // peer's certificate broke, say): say so, not "ice timeout".
                let reason = match step {
                    Some(JoinStep::Dtls) => CloseReason::DtlsFailed,
                    _ => CloseReason::IceTimeout,
                };
                self.close_session(key, reason, true);
                continue;
            }
            self.drain_session_with(now, key, true);
        }
        self.scratch_due = due;
        self.process_queue(now);
    }

    /// Runs `f` on a session's str0m instance with panics contained: a
    /// panic (a bug in the stack, never bad input) closes that session only,
    /// counts it, and tells the control plane; the worker and every other
    /// session go on.
    pub fn with_session<R>(
        &mut self,
        id: SessionId,
        f: impl FnOnce(&mut SessionRtc<'_>) -> R,
    ) -> Result<R, MediaError> {
        let key = self.sessions.key(id).ok_or(MediaError::UnknownSession)?;
        self.with_key(key, |s| f(&mut s.rtc_access()))
    }

    /// Runs `f` on a session with panics contained (see [`Self::with_session`]).
    fn with_key<R>(
        &mut self,
        key: SessionKey,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<R, MediaError> {
        let sess = self
            .sessions
            .get_mut(key)
            .ok_or(MediaError::UnknownSession)?;
        match guarded(|| f(sess)) {
            Some(r) => Ok(r),
            None => {
                self.fail_session(key);
                Err(MediaError::Internal)
            }
        }
    }

    // ----- closing ------------------------------------------------------

    fn fail_session(&mut self, key: SessionKey) {
        self.stats.session_failures.inc();
        self.close_session(key, CloseReason::Internal, true);
    }

    /// Removes a session and everything that points at it. `report` tells
    /// the control plane (for closes it did not ask for).
    fn close_session(&mut self, key: SessionKey, reason: CloseReason, report: bool) {
        let Some(mut sess) = self.sessions.remove(key) else {
            return;
        };
        self.out.tcp_closed.extend_from_slice(sess.tcp_addrs());
        for t in sess.published_tracks() {
            self.unpublish(t);
        }
        for t in sess.subscribed_tracks() {
            self.fanout.unsubscribe(t, key);
        }
        if reason != CloseReason::Internal {
            // Say goodbye (DTLS close) where the stack is still sound.
            let mut events = Vec::new();
            let now = self.now;
            let tx = &mut self.out.transmits;
            let _ = guarded(|| {
                sess.disconnect();
                let _ = sess.drain(now, tx, &mut events);
            });
        }
        if report {
            self.out.events.push(WorkerEvent::Closed {
                session: sess.id(),
                reason,
            });
        }
    }
}
