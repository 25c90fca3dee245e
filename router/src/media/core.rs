//! The sans-IO core of one media worker.
//!
//! Inputs: datagrams, control commands, bus batches and timeouts, each with
//! `now`. Outputs: datagrams to send, bus messages per destination worker and
//! events for the control plane, collected in [`Outputs`] and drained by the
//! driver (the mio loop in production, the simulation harness in tests).
//! Nothing here reads the clock or touches a socket.

use super::bus::{BusBatch, BusMsg};
use super::command::{AnswerOk, CloseReason, Command, MediaError, NewTrack, OfferOk, WorkerEvent};
use super::layers::LayerMeters;
use super::outstream::Forwarded;
use super::rtc::RtcFactory;
use super::select::LayerState;
use super::session::{Datagram, PubTrack, Session};
use super::types::{LinkId, MediaPacket, WorkerId};
use crate::metrics::WorkerMetrics;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState, Input};

/// H.264 NAL unit type of a sequence parameter set.
const H264_NALU_SPS: u8 = 7;

/// Minimum time between two keyframe requests to one publisher layer, by
/// default (`media.keyframe_interval_ms`). Chrome's encoder ignores a request
/// that arrives within 300 ms of the last one it acted on; the extra 30 ms
/// keep a held request from arriving early by the path's jitter (and being
/// ignored, which would cost the waiting subscriber another round).
pub const PUBLISHER_KEYFRAME_INTERVAL: Duration = Duration::from_millis(330);

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
}

mod simulcast;

/// How often layer state is measured and selections are revisited.
pub const TICK: Duration = Duration::from_millis(100);

/// A worker with subscribers of a published track.
#[derive(Debug, Clone, Copy)]
struct Dest {
    worker: WorkerId,
    /// Subscribers there.
    count: u32,
    /// Layers they need (bit per layer).
    mask: u32,
}

/// A track published on this worker: by a local session, or (`session`
/// `None`) arriving over a link with this worker as its home.
#[derive(Debug)]
struct Published {
    session: Option<SessionId>,
    /// Links relaying this track, with the layers each needs.
    links: Vec<(LinkId, u32)>,
    mid: Mid,
    kind: MediaKind,
    rids: Vec<str0m::media::Rid>,
    dests: Vec<Dest>,
    /// Last keyframe request per layer.
    last_request: Vec<Option<Instant>>,
    /// Layers whose keyframe arrived since their last request (bit per
    /// layer); a clear bit means a request is still being answered.
    answered: u32,
    /// Layers with a request that came within the throttle interval: sent
    /// when the interval is over (bit per layer).
    keyframe_pending: u32,
    /// What the publisher sends per layer.
    meters: LayerMeters,
    /// Layers some subscriber wants, as last reported.
    wanted: u32,
    /// When layer info last went to the other workers.
    info_sent: Option<Instant>,
    /// The last layer info sent.
    info: Arc<[LayerState]>,
}

/// The state machine of one media worker.
pub struct WorkerCore {
    id: WorkerId,
    /// The address in this worker's ICE candidates (and the destination of
    /// every datagram it receives).
    local_addr: SocketAddr,
    factory: RtcFactory,
    sessions: HashMap<SessionId, Session>,
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    published: HashMap<TrackId, Published>,
    /// Local subscribers of each track.
    local_subs: HashMap<TrackId, Vec<SessionId>>,
    /// Events waiting to be handled, per session.
    queue: VecDeque<(SessionId, Event)>,
    scratch_events: Vec<Event>,
    out: Outputs,
    metrics: WorkerMetrics,
    rng: rand::rngs::SmallRng,
    next_track: u64,
    /// The `now` of the input being handled.
    now: Instant,
    /// Layer state of every track with subscribers here.
    layer_info: HashMap<TrackId, Arc<[LayerState]>>,
    /// Demand last sent to each track's publisher worker.
    demand_sent: HashMap<TrackId, u32>,
    /// Next periodic tick.
    next_tick: Instant,
    /// Sessions written to since the last [`WorkerCore::flush`].
    dirty: Vec<SessionId>,
    /// Packets of local tracks for this worker's own subscribers, written
    /// by the next [`WorkerCore::flush`]: after the driver has handed the
    /// same packets to the other workers, so that they fan out in parallel.
    local_pending: Vec<Arc<MediaPacket>>,
    /// When the earliest throttled keyframe request is due.
    keyframe_due: Option<Instant>,
    /// Minimum time between two keyframe requests to one publisher layer.
    keyframe_interval: Duration,
    /// Voice activity of the audio tracks published here.
    speakers: super::speaker::SpeakerMeters,
}

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
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            published: HashMap::new(),
            local_subs: HashMap::new(),
            queue: VecDeque::new(),
            scratch_events: Vec::new(),
            out: Outputs {
                bus: vec![Vec::new(); workers],
                ..Default::default()
            },
            metrics,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            next_track: 1,
            now,
            layer_info: HashMap::new(),
            demand_sent: HashMap::new(),
            next_tick: now,
            dirty: Vec::new(),
            local_pending: Vec::new(),
            keyframe_due: None,
            keyframe_interval: PUBLISHER_KEYFRAME_INTERVAL,
            speakers: Default::default(),
        }
    }

    /// Sets the minimum time between two keyframe requests to one
    /// publisher layer (`media.keyframe_interval_ms`).
    pub fn with_keyframe_interval(mut self, interval: Duration) -> Self {
        self.keyframe_interval = interval;
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

    /// When [`WorkerCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.dirty.is_empty() || !self.local_pending.is_empty() {
            // Written or pending packets wait for a flush: now.
            return Some(self.now);
        }
        let sessions = self.sessions.values().map(Session::deadline).min();
        if sessions.is_none() && self.published.is_empty() {
            // Idle: nothing to measure or select.
            return None;
        }
        let next = sessions.map_or(self.next_tick, |s| s.min(self.next_tick));
        Some(self.keyframe_due.map_or(next, |k| k.min(next)))
    }

    // ----- inputs -------------------------------------------------------

    /// A datagram arrived on this worker's socket from `src`.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, buf: &[u8]) {
        self.now = now;
        let sid = match self.by_addr.get(&src) {
            Some(sid) => *sid,
            None => match self.session_by_stun(buf) {
                Some(sid) => sid,
                None => return,
            },
        };
        let Ok(recv) = Receive::new(Protocol::Udp, src, self.local_addr, buf) else {
            self.metrics.drop_malformed.inc();
            return;
        };
        let input = Input::Receive(now, recv);
        let Some(sess) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !sess.rtc.accepts(&input) {
            self.metrics.drop_rejected.inc();
            return;
        }
        if !sess.addrs.contains(&src) {
            sess.addrs.push(src);
            self.by_addr.insert(src, sid);
        }
        let ok = guarded(|| sess.rtc.handle_input(input)).is_some_and(|r| r.is_ok());
        if !ok {
            // A str0m error on input is the peer's fault or a bug: either
            // way only this session is affected.
            self.metrics.drop_rejected.inc();
        }
        self.drain_session(now, sid);
        self.process_queue(now);
        // This worker's own subscribers get the packet in `flush`, which the
        // driver calls once it has handed the packet to the other workers.
    }

    fn session_by_stun(&self, buf: &[u8]) -> Option<SessionId> {
        let Ok(msg) = str0m::ice::StunMessage::parse(buf) else {
            self.metrics.drop_unknown_source.inc();
            return None;
        };
        let sid = msg
            .split_username()
            .and_then(|(local, _remote)| self.by_ufrag.get(local).copied());
        if sid.is_none() {
            self.metrics.drop_unknown_source.inc();
        }
        sid
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
                BusMsg::Ingest(pkt) => {
                    if let Some(p) = self.published.get_mut(&pkt.track) {
                        if p.session.is_none() {
                            p.meters.on_packet(now, pkt.layer, pkt.payload.len(), None);
                            self.fan_out(pkt);
                            self.flush(now);
                        }
                    }
                }
                BusMsg::RemoteLayers { track, layers } => {
                    if let Some(p) = self.published.get_mut(&track) {
                        p.info = layers;
                        // Shared with subscriber workers at the next tick.
                        p.info_sent = None;
                    }
                }
                BusMsg::LayerInfo { track, layers } => {
                    if self.local_subs.contains_key(&track) {
                        self.layer_info.insert(track, layers);
                    }
                }
                BusMsg::Demand {
                    track,
                    worker,
                    mask,
                } => self.set_demand(track, worker, mask),
                BusMsg::Overload { track, layers } => self.on_overload(now, track, layers),
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

    /// Drains every session written to since the last call.
    fn drain_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for sid in &dirty {
            if let Some(s) = self.sessions.get_mut(sid) {
                s.dirty = false;
                // str0m releases a written packet only from a timeout round
                // (its pacer learns of the queue there). Fed before the
                // drain, the round saves the drain a walk of str0m's tree
                // that would only answer "timeout now".
                if guarded(|| s.rtc.handle_input(Input::Timeout(now))).is_none() {
                    self.fail_session(*sid);
                    continue;
                }
            }
            self.drain_session(now, *sid);
        }
        self.dirty = dirty;
        self.dirty.clear();
        self.process_queue(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.flush(now);
        if self.keyframe_due.is_some_and(|t| t <= now) {
            self.send_pending_keyframe_requests(now);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
            self.speakers.tick(now, &mut self.out.events);
        }
        let due: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.deadline() <= now)
            .map(|s| s.id)
            .collect();
        for sid in due {
            let Some(sess) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if sess.timed_out(now) {
                self.close_session(sid, CloseReason::IceTimeout, true);
                continue;
            }
            let ok = guarded(|| sess.rtc.handle_input(Input::Timeout(now)));
            if ok.is_none() {
                self.fail_session(sid);
                continue;
            }
            self.drain_session(now, sid);
        }
        self.process_queue(now);
    }

    /// A command from the control plane.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.now = now;
        match cmd {
            Command::CreateSession {
                session,
                room,
                participant,
                offer,
                reply,
            } => {
                let r = self.create_session(now, session, room, participant, &offer);
                let _ = reply.send(r);
            }
            Command::Renegotiate {
                session,
                offer,
                reply,
            } => {
                let r = self.renegotiate(session, &offer);
                let _ = reply.send(r);
            }
            Command::Subscribe {
                session,
                tracks,
                reply,
            } => {
                let r = self.subscribe(session, &tracks);
                let _ = reply.send(r);
            }
            Command::Unsubscribe {
                session,
                tracks,
                reply,
            } => {
                let r = self.unsubscribe(session, &tracks);
                let _ = reply.send(r);
            }
            Command::SetAnswer {
                session,
                answer,
                reply,
            } => {
                let r = self.set_answer(now, session, &answer);
                let _ = reply.send(r);
            }
            Command::CloseSession { session, reply } => {
                let r = if self.sessions.contains_key(&session) {
                    self.close_session(session, CloseReason::Api, false);
                    Ok(())
                } else {
                    Err(MediaError::UnknownSession)
                };
                let _ = reply.send(r);
            }
            Command::AddDestination { track, worker } => {
                if let Some(p) = self.published.get_mut(&track) {
                    match p.dests.iter_mut().find(|d| d.worker == worker) {
                        Some(d) => d.count += 1,
                        // Every layer until the worker says what it needs,
                        // so a new subscriber sees keyframes at once.
                        None => p.dests.push(Dest {
                            worker,
                            count: 1,
                            mask: u32::MAX,
                        }),
                    }
                    // Tell the new destination what the layers look like, now
                    // (a remote track: once its origin has said).
                    let known = p.session.is_some() || !p.info.is_empty();
                    if p.kind == MediaKind::Video && known {
                        let info: Arc<[LayerState]> = if p.session.is_some() {
                            Arc::from(p.meters.snapshot(now))
                        } else {
                            p.info.clone()
                        };
                        p.info = info.clone();
                        if worker == self.id {
                            self.layer_info.insert(track, info);
                        } else if let Some(b) = self.out.bus.get_mut(worker.index()) {
                            b.push(BusMsg::LayerInfo {
                                track,
                                layers: info,
                            });
                        }
                    }
                }
            }
            Command::RemoveDestination { track, worker } => {
                if let Some(p) = self.published.get_mut(&track) {
                    if let Some(i) = p.dests.iter().position(|d| d.worker == worker) {
                        p.dests[i].count -= 1;
                        if p.dests[i].count == 0 {
                            p.dests.swap_remove(i);
                        }
                    }
                }
            }
            Command::AddRemoteTrack { track, kind, rids } => {
                let n = rids.len();
                self.published.insert(
                    track,
                    Published {
                        session: None,
                        links: Vec::new(),
                        mid: Mid::from("remote"),
                        kind,
                        last_request: vec![None; n.max(1)],
                        answered: 0,
                        keyframe_pending: 0,
                        meters: LayerMeters::new(n),
                        wanted: 0,
                        info_sent: None,
                        info: Arc::from(Vec::new()),
                        rids,
                        dests: Vec::new(),
                    },
                );
            }
            Command::RemoveRemoteTrack { track } => {
                if self
                    .published
                    .get(&track)
                    .is_some_and(|p| p.session.is_none())
                {
                    self.published.remove(&track);
                }
            }
            Command::SetLinkDemand { track, link, mask } => {
                if let Some(p) = self.published.get_mut(&track) {
                    let new_link = !p.links.iter().any(|(l, _)| *l == link);
                    p.links.retain(|(l, _)| *l != link);
                    if mask != 0 {
                        p.links.push((link, mask));
                        if new_link {
                            // The far side needs the layer state at once.
                            p.info_sent = None;
                        }
                    }
                }
            }
            Command::RequestKeyframe { track, layer } => {
                self.request_publisher_keyframe(now, track, layer);
            }
            Command::UpdateSubscription {
                session,
                track,
                update,
                reply,
            } => {
                let r = self.update_subscription(now, session, track, &update);
                let _ = reply.send(r);
            }
            Command::TrackGone { track } => {
                if let Some(subs) = self.local_subs.remove(&track) {
                    for sid in subs {
                        if let Some(o) = self
                            .sessions
                            .get_mut(&sid)
                            .and_then(|s| s.outs.get_mut(&track))
                        {
                            o.gone = true;
                        }
                    }
                }
            }
            Command::Shutdown => {
                let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
                for sid in ids {
                    self.close_session(sid, CloseReason::Shutdown, false);
                }
            }
        }
        self.process_queue(now);
    }

    // ----- commands -----------------------------------------------------

    fn create_session(
        &mut self,
        now: Instant,
        id: SessionId,
        room: RoomId,
        participant: ParticipantId,
        offer: &str,
    ) -> Result<AnswerOk, MediaError> {
        if self.sessions.contains_key(&id) {
            return Err(MediaError::OutOfOrder("session exists"));
        }
        let ufrag = format!("k{:016x}{:08x}", id.0, self.rng.random::<u32>());
        let rtc = self
            .factory
            .build(now, &ufrag, &mut self.rng, self.local_addr)
            .map_err(|_| MediaError::Internal)?;
        let mut sess = Session::new(id, room, participant, rtc, ufrag.clone(), now);
        let (answer, mids) = match guarded(|| sess.accept_offer(offer)) {
            Some(r) => r?,
            None => {
                self.metrics.session_failures.inc();
                return Err(MediaError::Internal);
            }
        };
        self.by_ufrag.insert(ufrag, id);
        self.sessions.insert(id, sess);
        let (added, removed) = self.drain_negotiation(now, id, &mids)?;
        Ok(AnswerOk {
            answer,
            added,
            removed,
        })
    }

    fn renegotiate(&mut self, id: SessionId, offer: &str) -> Result<AnswerOk, MediaError> {
        let (answer, mids) = self.with_session(id, |s| s.accept_offer(offer))??;
        let (added, removed) = self.drain_negotiation(self.now, id, &mids)?;
        Ok(AnswerOk {
            answer,
            added,
            removed,
        })
    }

    /// Drains a session after an offer was accepted and turns the media
    /// lines into published / unpublished tracks.
    fn drain_negotiation(
        &mut self,
        now: Instant,
        id: SessionId,
        mids: &[Mid],
    ) -> Result<(Vec<NewTrack>, Vec<TrackId>), MediaError> {
        self.drain_session(now, id);
        let Some(sess) = self.sessions.get(&id) else {
            return Err(MediaError::Internal);
        };
        let (new_lines, stopped) = sess.publication_changes(mids);
        let mut added = Vec::new();
        for (mid, kind, rids) in new_lines {
            let track = self.new_track_id();
            self.published.insert(
                track,
                Published {
                    session: Some(id),
                    links: Vec::new(),
                    mid,
                    kind,
                    last_request: vec![None; rids.len().max(1)],
                    answered: 0,
                    keyframe_pending: 0,
                    meters: LayerMeters::new(rids.len()),
                    // A browser sends every layer at first.
                    wanted: if rids.is_empty() {
                        0
                    } else {
                        (1u32 << rids.len()) - 1
                    },
                    info_sent: None,
                    info: Arc::from(Vec::new()),
                    rids: rids.clone(),
                    dests: Vec::new(),
                },
            );
            if let Some(sess) = self.sessions.get_mut(&id) {
                sess.published.insert(
                    mid,
                    PubTrack {
                        id: track,
                        kind,
                        rids: rids.clone(),
                    },
                );
            }
            added.push(NewTrack {
                id: track,
                kind,
                mid,
                rids,
            });
        }
        let mut removed = Vec::new();
        if let Some(sess) = self.sessions.get_mut(&id) {
            for mid in stopped {
                if let Some(t) = sess.published.remove(&mid) {
                    sess.ssrc_map.retain(|_, (tr, _)| *tr != t.id);
                    self.published.remove(&t.id);
                    removed.push(t.id);
                }
            }
        }
        Ok((added, removed))
    }

    fn new_track_id(&mut self) -> TrackId {
        // Unique per router: the worker id in the top bits, a counter below,
        // a random middle so ids are not guessable across restarts.
        let n = self.next_track;
        self.next_track += 1;
        let mid: u64 = u64::from(self.rng.random::<u16>());
        TrackId((u64::from(self.id.0) << 48) | (mid << 32) | (n & 0xffff_ffff))
    }

    fn subscribe(
        &mut self,
        id: SessionId,
        tracks: &[Arc<super::types::TrackInfo>],
    ) -> Result<OfferOk, MediaError> {
        // Random starting points per outgoing stream, drawn up front so the
        // session closure does not borrow the core.
        let starts: Vec<(u16, u32)> = (0..tracks.len())
            .map(|_| (self.rng.random_range(0..16384u16), self.rng.random::<u32>()))
            .collect();
        let mut starts = starts.into_iter();
        let (offer, mids) = self.with_session(id, |s| {
            s.offer_subscriptions(tracks, || starts.next().unwrap_or((0, 0)))
        })??;
        for (t, _) in &mids {
            self.local_subs.entry(*t).or_default().push(id);
        }
        self.drain_session(self.now, id);
        Ok(OfferOk { offer, mids })
    }

    fn unsubscribe(&mut self, id: SessionId, tracks: &[TrackId]) -> Result<OfferOk, MediaError> {
        let offer = self.with_session(id, |s| s.offer_unsubscribe(tracks))??;
        for t in tracks {
            if let Some(v) = self.local_subs.get_mut(t) {
                v.retain(|s| *s != id);
            }
        }
        self.drain_session(self.now, id);
        Ok(OfferOk {
            offer,
            mids: Vec::new(),
        })
    }

    fn set_answer(&mut self, now: Instant, id: SessionId, answer: &str) -> Result<(), MediaError> {
        let activated = self.with_session(id, |s| s.accept_answer(answer))??;
        self.drain_session(now, id);
        // New subscribers get a layer chosen and its keyframe asked for at once.
        if !activated.is_empty() {
            self.select_layers(now, id);
            self.send_demand(now);
        }
        Ok(())
    }

    // ----- media ------------------------------------------------------------

    fn on_rtp(&mut self, now: Instant, sid: SessionId, p: RtpPacket) {
        self.metrics.rtp_received.inc();
        let Some(sess) = self.sessions.get_mut(&sid) else {
            return;
        };
        let ssrc = p.header.ssrc;
        let (track, layer) = match sess.ssrc_map.get(&ssrc) {
            Some(v) => *v,
            None => {
                // Resolve the SSRC's media line and rid once; the rid header
                // extension stops after the first packets.
                let Some((mid, rid)) = sess
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                let Some(t) = sess.published.get(&mid) else {
                    return;
                };
                let layer = rid
                    .and_then(|r| t.rids.iter().position(|x| *x == r))
                    .unwrap_or(0) as u8;
                sess.ssrc_map.insert(ssrc, (t.id, layer));
                (t.id, layer)
            }
        };
        let Some(params) = sess
            .rtc
            .codec_config()
            .find(|c| c.pt() == p.header.payload_type)
            .copied()
        else {
            return;
        };
        let Some(publ) = self.published.get_mut(&track) else {
            return;
        };
        let codec = params.spec().codec;
        let vp8 = if codec == Codec::Vp8 {
            super::vp8::parse(&p.payload).zip(str0m::rtp::Vp8Descriptor::parse(&p.payload).ok())
        } else {
            None
        };
        let keyframe = match codec {
            Codec::Vp8 => str0m::format::detect_vp8_keyframe(&p.payload),
            // Chrome sends SPS/PPS (STAP-A) just before the IDR: a keyframe
            // starts there, or the decoder lacks its parameter sets.
            Codec::H264 => {
                str0m::format::detect_h264_nalu(&p.payload, H264_NALU_SPS)
                    || str0m::format::detect_h264_keyframe(&p.payload)
            }
            Codec::Vp9 => str0m::format::detect_vp9_keyframe(&p.payload),
            Codec::Av1 => str0m::format::detect_av1_keyframe(&p.payload),
            _ => false,
        };
        publ.meters.on_packet(
            now,
            layer,
            p.payload.len(),
            vp8.as_ref().and_then(|(i, _)| i.resolution),
        );
        if let Some(level) = p.header.ext_vals.audio_level {
            self.speakers.on_packet(now, track, level);
        }
        let pkt = Arc::new(MediaPacket {
            track,
            kind: publ.kind,
            layer,
            params,
            seq: *p.seq_no,
            rtp_time: p.header.timestamp,
            marker: p.header.marker,
            keyframe,
            audio_level: p.header.ext_vals.audio_level,
            voice_activity: p.header.ext_vals.voice_activity,
            arrival: p.timestamp,
            vp8,
            payload: p.payload,
        });
        self.fan_out(pkt);
    }

    /// Sends a published packet to every worker and link that needs its layer.
    fn fan_out(&mut self, pkt: Arc<MediaPacket>) {
        let Some(publ) = self.published.get_mut(&pkt.track) else {
            return;
        };
        let bit = 1u32 << pkt.layer.min(31);
        if pkt.keyframe {
            publ.answered |= bit;
        }
        let publ = &*publ;
        let mut local = false;
        for d in &publ.dests {
            if d.mask & bit == 0 {
                continue;
            }
            if d.worker == self.id {
                local = true;
            } else {
                self.out.bus[d.worker.index()].push(BusMsg::Media(pkt.clone()));
            }
        }
        for (link, mask) in &publ.links {
            if mask & bit != 0 {
                self.out.links.push((*link, pkt.clone()));
            }
        }
        if local {
            // Written in `flush`, after the driver handed the bus batches
            // over: the other workers start on their subscribers meanwhile.
            self.local_pending.push(pkt);
        }
    }

    /// Writes a packet to every subscriber of its track on this worker.
    fn deliver_local(&mut self, now: Instant, pkt: &MediaPacket) {
        let Some(subs) = self.local_subs.get(&pkt.track) else {
            return;
        };
        let mut failed = Vec::new();
        let mut need_kf = false;
        let mut switched = Vec::new();
        for sid in subs {
            let Some(sess) = self.sessions.get_mut(sid) else {
                continue;
            };
            let Some(o) = sess.outs.get_mut(&pkt.track) else {
                continue;
            };
            let rtc = &mut sess.rtc;
            let Some(res) = guarded(|| o.forward(rtc, pkt, now)) else {
                failed.push(*sid);
                continue;
            };
            if !o.switches.is_empty() {
                switched.push((*sid, std::mem::take(&mut o.switches)));
            }
            match res {
                Forwarded::Sent => {
                    if pkt.kind == MediaKind::Video {
                        self.metrics.fwd_video.inc();
                    } else {
                        self.metrics.fwd_audio.inc();
                    }
                    // Drained once per burst in `flush`, not once per packet:
                    // str0m's poll_output is the dominant per-subscriber cost.
                    if !sess.dirty {
                        sess.dirty = true;
                        self.dirty.push(*sid);
                    }
                }
                Forwarded::NeedKeyframe => need_kf = true,
                Forwarded::Skipped | Forwarded::Waiting => {}
            }
        }
        for (sid, list) in switched {
            self.report_switches(sid, pkt.track, list);
        }
        for sid in failed {
            self.fail_session(sid);
        }
        if need_kf {
            self.metrics.kf_join.inc();
            let w = self.published_worker_of(pkt);
            self.route_keyframe_request(now, w, pkt.track, pkt.layer);
        }
    }

    fn published_worker_of(&self, pkt: &MediaPacket) -> WorkerId {
        if self.published.contains_key(&pkt.track) {
            return self.id;
        }
        // The track's worker is in its id's top bits (see `new_track_id`).
        WorkerId((pkt.track.0 >> 48) as u16)
    }

    fn route_keyframe_request(
        &mut self,
        now: Instant,
        worker: WorkerId,
        track: TrackId,
        layer: u8,
    ) {
        if worker == self.id {
            self.request_publisher_keyframe(now, track, layer);
        } else if let Some(b) = self.out.bus.get_mut(worker.index()) {
            b.push(BusMsg::KeyframeRequest { track, layer });
        }
    }

    /// Asks the publisher of `track` for a keyframe of `layer`, throttled:
    /// a request while an earlier one is still being answered is absorbed
    /// (the keyframe on its way serves both); one that comes within the
    /// interval after a keyframe arrived is held until the interval is over.
    fn request_publisher_keyframe(&mut self, now: Instant, track: TrackId, layer: u8) {
        let interval = self.keyframe_interval;
        let Some(p) = self.published.get_mut(&track) else {
            return;
        };
        let Some(last) = p.last_request.get_mut(usize::from(layer)) else {
            return;
        };
        let bit = 1u32 << layer.min(31);
        if let Some(t) = last.filter(|t| now.saturating_duration_since(*t) < interval) {
            if p.answered & bit == 0 {
                self.metrics.kf_coalesced.inc();
                return;
            }
            // Not dropped: sent once the interval is over, so a subscriber
            // joining just after another waits for that, not for its retry.
            self.metrics.kf_throttled.inc();
            p.keyframe_pending |= bit;
            let due = t + interval;
            self.keyframe_due = Some(self.keyframe_due.map_or(due, |d| d.min(due)));
            return;
        }
        *last = Some(now);
        p.answered &= !bit;
        p.keyframe_pending &= !bit;
        self.metrics.kf_sent.inc();
        let (mid, rid) = (p.mid, p.rids.get(usize::from(layer)).copied());
        let Some(sid) = p.session else {
            // A remote track: the origin router is asked over the link. The
            // request implies the layer is wanted: say so first, or the
            // origin answers with a keyframe it does not relay yet (the
            // demand would only follow at the next tick).
            if p.wanted & bit == 0 {
                p.wanted |= bit;
                let mask = p.wanted;
                self.out
                    .events
                    .push(WorkerEvent::RemoteDemand { track, mask });
            }
            self.out
                .events
                .push(WorkerEvent::RemoteKeyframe { track, layer });
            return;
        };
        let Some(sess) = self.sessions.get_mut(&sid) else {
            return;
        };
        let ok = guarded(|| {
            if let Some(s) = sess.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                s.request_keyframe(KeyframeRequestKind::Pli);
            }
        });
        if ok.is_none() {
            self.fail_session(sid);
            return;
        }
        self.drain_session(now, sid);
    }

    /// Sends the throttled keyframe requests whose interval is over.
    fn send_pending_keyframe_requests(&mut self, now: Instant) {
        self.keyframe_due = None;
        let pending: Vec<(TrackId, u8)> = self
            .published
            .iter_mut()
            .filter(|(_, p)| p.keyframe_pending != 0)
            .flat_map(|(t, p)| {
                let mask = std::mem::take(&mut p.keyframe_pending);
                (0..32u8)
                    .filter(move |l| mask & (1u32 << l) != 0)
                    .map(move |l| (*t, l))
            })
            .collect();
        for (track, layer) in pending {
            // Still within the interval: pending again, with its due time.
            self.request_publisher_keyframe(now, track, layer);
        }
    }

    // ----- events -------------------------------------------------------

    fn drain_session(&mut self, now: Instant, sid: SessionId) {
        let Some(sess) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut events = std::mem::take(&mut self.scratch_events);
        let ok = guarded(|| sess.drain(now, &mut self.out.transmits, &mut events))
            .is_some_and(|r| r.is_ok());
        self.queue.extend(events.drain(..).map(|e| (sid, e)));
        self.scratch_events = events;
        if !ok {
            self.fail_session(sid);
        }
    }

    fn process_queue(&mut self, now: Instant) {
        while let Some((sid, ev)) = self.queue.pop_front() {
            if !self.sessions.contains_key(&sid) {
                continue;
            }
            self.handle_event(now, sid, ev);
        }
    }

    fn handle_event(&mut self, now: Instant, sid: SessionId, ev: Event) {
        match ev {
            Event::RtpPacket(p) => self.on_rtp(now, sid, p),
            Event::Connected => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if !s.connected {
                        s.connected = true;
                        self.out
                            .events
                            .push(WorkerEvent::Connected { session: sid });
                    }
                }
            }
            Event::IceConnectionStateChange(state) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    match state {
                        IceConnectionState::Disconnected => {
                            s.disconnected_since.get_or_insert(now);
                        }
                        IceConnectionState::Connected | IceConnectionState::Completed => {
                            s.disconnected_since = None;
                        }
                        _ => {}
                    }
                }
            }
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate, .. }) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.estimate = Some(estimate.as_u64());
                }
            }
            Event::KeyframeRequest(r) => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                let Some(track) = s.out_mids.get(&r.mid).copied() else {
                    return;
                };
                let Some(o) = s.outs.get(&track) else {
                    return;
                };
                let Some(layer) = o.current.or(o.target()) else {
                    return;
                };
                let w = o.publisher_worker;
                self.metrics.kf_subscriber.inc();
                self.route_keyframe_request(now, w, track, layer);
            }
            _ => {}
        }
    }

    /// Runs `f` on a session with str0m's panics contained: a panic (a bug
    /// in the stack, never bad input) closes that session only, counts it,
    /// and tells the control plane; the worker and every other session go on.
    pub fn with_session<R>(
        &mut self,
        id: SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<R, MediaError> {
        let sess = self
            .sessions
            .get_mut(&id)
            .ok_or(MediaError::UnknownSession)?;
        match guarded(|| f(sess)) {
            Some(r) => Ok(r),
            None => {
                self.fail_session(id);
                Err(MediaError::Internal)
            }
        }
    }

    // ----- closing ------------------------------------------------------

    fn fail_session(&mut self, sid: SessionId) {
        self.metrics.session_failures.inc();
        self.close_session(sid, CloseReason::Internal, true);
    }

    /// Removes a session and everything that points at it. `report` tells
    /// the control plane (for closes it did not ask for).
    fn close_session(&mut self, sid: SessionId, reason: CloseReason, report: bool) {
        let Some(mut sess) = self.sessions.remove(&sid) else {
            return;
        };
        for a in &sess.addrs {
            self.by_addr.remove(a);
        }
        self.by_ufrag.remove(&sess.ufrag);
        for t in sess.published.values() {
            self.published.remove(&t.id);
        }
        for t in sess.outs.keys() {
            if let Some(v) = self.local_subs.get_mut(t) {
                v.retain(|s| *s != sid);
            }
        }
        if reason != CloseReason::Internal {
            // Say goodbye (DTLS close) where the stack is still sound.
            let mut events = Vec::new();
            let _ = guarded(|| {
                sess.rtc.disconnect();
                let _ = sess.drain(self.now, &mut self.out.transmits, &mut events);
            });
        }
        if report {
            self.out.events.push(WorkerEvent::Closed {
                session: sid,
                reason,
            });
        }
    }
}
