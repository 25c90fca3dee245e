//! One participant's peer connection on a worker: the str0m `Rtc`, what it
//! publishes, its outgoing (subscribed) streams, and its own deadlines.
//! The worker core reaches it only through the methods here; offer/answer
//! is in `sdp`.

mod sdp;

pub use sdp::{sdp_error, NewLine};

use super::layer::Layer;
use super::outstream::{Forwarded, OutStream, Switch};
use super::tcp::outq::{classify, Class};
use super::types::MediaPacket;
use kaskade_protocol::drain::Drained;
use kaskade_protocol::{ParticipantId, RoomId, SessionId, TrackId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::bwe::Bitrate;
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::Protocol;
use str0m::rtp::Ssrc;
use str0m::{Event, IceConnectionState, Input, Rtc, RtcError};

/// How long a session may take to connect after creation.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long ICE may stay disconnected before the session is closed.
pub const DISCONNECT_GRACE: Duration = Duration::from_secs(10);

/// Immediate `Input::Timeout(now)` rounds one drain may feed.
const MAX_TIMEOUT_ROUNDS: usize = 8;
/// ICE-TCP connections (remote addresses) one session may use at once.
pub const MAX_TCP_PEERS: usize = 4;
/// UDP remote addresses one session keeps. A new one beyond these
/// replaces the oldest: a roaming peer keeps working, and a peer that
/// sends valid binding requests from many ports cannot grow the tables.
pub const MAX_UDP_PEERS: usize = 8;

/// What [`Session::learn_addr`] did with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// It was known already.
    Known,
    /// It was added.
    New,
    /// It was added in place of this, the oldest of [`MAX_UDP_PEERS`].
    Replaced(SocketAddr),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Where to.
    pub dst: SocketAddr,
    /// The bytes (str0m's own buffer, moved, never copied).
    pub data: Vec<u8>,
    /// How: from the worker's UDP socket, or on the peer's ICE-TCP
    /// connection.
    pub transport: Transport,
}

/// The transport of a [`Datagram`] (the protocol of the candidate pair
/// str0m sends on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The worker's UDP socket.
    Udp,
    /// The ICE-TCP connection from `dst`, with what its queue may drop first.
    Tcp(Class),
}

/// A track this session publishes.
#[derive(Debug, Clone)]
pub struct PubTrack {
    /// Router-assigned id.
    pub id: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Simulcast rids (empty without simulcast).
    pub rids: Vec<Rid>,
}

/// The session's str0m instance, for code that must reach it directly
/// (tests that stand in for a bug inside the stack).
pub struct SessionRtc<'a> {
    /// The WebRTC stack.
    pub rtc: &'a mut Rtc,
}

/// How far a session that never connected got: the `step` of
/// `kaskade_join_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinStep {
    /// Not one datagram arrived from the peer.
    Timeout,
    /// Datagrams arrived, ICE never connected.
    Ice,
    /// ICE connected, DTLS never completed (or failed).
    Dtls,
}

/// One participant.
pub struct Session {
    id: SessionId,
    room: RoomId,
    participant: ParticipantId,
    rtc: Rtc,
    /// Local ICE ufrag (routes the first STUN packet here).
    ufrag: String,
    /// Remote addresses seen for this session.
    addrs: Vec<SocketAddr>,
    /// Remote addresses of its ICE-TCP connections.
    tcp_addrs: Vec<SocketAddr>,
    /// Payload types of its audio codecs: what an ICE-TCP connection's
    /// queue keeps when it drops video.
    audio_pts: Vec<u8>,
    created: Instant,
    /// ICE + DTLS up at least once.
    connected: bool,
    /// ICE connected at least once.
    ice_connected: bool,
    /// Since when ICE is disconnected.
    disconnected_since: Option<Instant>,
    /// The router's unanswered offer.
    pending: Option<sdp::Pending>,
    /// Published tracks by media line.
    published: HashMap<Mid, PubTrack>,
    /// Incoming SSRC → (track, layer), resolved once per SSRC.
    ssrc_map: HashMap<Ssrc, (TrackId, Layer)>,
    /// Outgoing streams by track.
    outs: HashMap<TrackId, OutStream>,
    /// Outgoing media line → track.
    out_mids: HashMap<Mid, TrackId>,
    /// Streams attached in the answer (WHEP), active once connected.
    awaiting_connect: Vec<TrackId>,
    /// str0m's next timeout.
    next_timeout: Instant,
    /// The latest egress bandwidth estimate (bits per second), if any.
    estimate: Option<u64>,
    /// Packets were written since the last drain.
    dirty: bool,
}

impl Session {
    /// Wraps a freshly built `Rtc`.
    pub fn new(
        id: SessionId,
        room: RoomId,
        participant: ParticipantId,
        rtc: Rtc,
        ufrag: String,
        now: Instant,
    ) -> Self {
        Self {
            id,
            room,
            participant,
            rtc,
            ufrag,
            addrs: Vec::new(),
            tcp_addrs: Vec::new(),
            audio_pts: Vec::new(),
            created: now,
            connected: false,
            ice_connected: false,
            disconnected_since: None,
            pending: None,
            published: HashMap::new(),
            ssrc_map: HashMap::new(),
            outs: HashMap::new(),
            out_mids: HashMap::new(),
            awaiting_connect: Vec::new(),
            next_timeout: now,
            // str0m starts from this estimate; its first report follows.
            estimate: Some(super::rtc::INITIAL_ESTIMATE_KBPS * 1000),
            dirty: false,
        }
    }

    // ----- who it is ------------------------------------------------------

    /// Its id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Its room.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Its participant.
    pub fn participant(&self) -> &ParticipantId {
        &self.participant
    }

    /// Its local ICE ufrag.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// The remote addresses seen for it.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Remembers a remote address, forgetting the oldest beyond
    /// [`MAX_UDP_PEERS`].
    pub fn learn_addr(&mut self, a: SocketAddr) -> Learned {
        if self.addrs.contains(&a) {
            return Learned::Known;
        }
        let learned = if self.addrs.len() >= MAX_UDP_PEERS {
            Learned::Replaced(self.addrs.remove(0))
        } else {
            Learned::New
        };
        self.addrs.push(a);
        learned
    }

    /// The remote addresses of its ICE-TCP connections.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// Whether packets from ICE-TCP connection `a` may reach it: known, or
    /// new within [`MAX_TCP_PEERS`].
    pub fn admits_tcp(&self, a: SocketAddr) -> bool {
        self.tcp_addrs.contains(&a) || self.tcp_addrs.len() < MAX_TCP_PEERS
    }

    /// Remembers an ICE-TCP connection's address; false if it was known
    /// (or there are [`MAX_TCP_PEERS`] already).
    pub fn learn_tcp_addr(&mut self, a: SocketAddr) -> bool {
        if !self.admits_tcp(a) || self.tcp_addrs.contains(&a) {
            return false;
        }
        self.tcp_addrs.push(a);
        true
    }

    /// Forgets an ICE-TCP connection's address (the connection closed).
    pub fn forget_tcp_addr(&mut self, a: SocketAddr) {
        self.tcp_addrs.retain(|x| *x != a);
    }

    /// The str0m instance, for tests that stand in for a bug in the stack.
    pub fn rtc_access(&mut self) -> SessionRtc<'_> {
        SessionRtc { rtc: &mut self.rtc }
    }

    // ----- time -----------------------------------------------------------

    /// When the worker must call in next (str0m's timeout or our own ICE deadlines).
    pub fn deadline(&self) -> Instant {
        let mut t = self.next_timeout;
        if !self.connected {
            t = t.min(self.created + CONNECT_TIMEOUT);
        }
        if let Some(since) = self.disconnected_since {
            t = t.min(since + DISCONNECT_GRACE);
        }
        t
    }

    /// Whether our own ICE deadlines say the session is dead.
    pub fn timed_out(&self, now: Instant) -> bool {
        (!self.connected && now >= self.created + CONNECT_TIMEOUT)
            || self
                .disconnected_since
                .is_some_and(|s| now >= s + DISCONNECT_GRACE)
            || !self.rtc.is_alive()
    }

    /// For a session that never connected: how far it got.
    pub fn join_step(&self) -> Option<JoinStep> {
        if self.connected {
            None
        } else if self.addrs.is_empty() && self.tcp_addrs.is_empty() {
            Some(JoinStep::Timeout)
        } else if !self.ice_connected {
            Some(JoinStep::Ice)
        } else {
            Some(JoinStep::Dtls)
        }
    }

    // ----- str0m in and out -----------------------------------------------

    /// Whether str0m takes this input (it belongs to this peer connection).
    pub fn accepts(&self, input: &Input<'_>) -> bool {
        self.rtc.accepts(input)
    }

    /// Feeds an input to str0m.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), RtcError> {
        self.rtc.handle_input(input)
    }

    /// Drains str0m's outputs (the drive-loop contract, `kaskade_protocol::drain`):
    /// transmits to `tx`, events to `events`.
    pub fn drain(
        &mut self,
        now: Instant,
        tx: &mut Vec<Datagram>,
        events: &mut Vec<Event>,
    ) -> Result<(), RtcError> {
        let audio = &self.audio_pts;
        let t = kaskade_protocol::drain::drain(&mut self.rtc, now, MAX_TIMEOUT_ROUNDS, |d| {
            sink(d, tx, events, audio)
        })?;
        self.next_timeout = t;
        Ok(())
    }

    /// A timeout round, then a drain: for a session whose deadline came, or
    /// one that was written to (str0m releases written packets from a
    /// timeout round).
    pub fn drain_after_timeout(
        &mut self,
        now: Instant,
        tx: &mut Vec<Datagram>,
        events: &mut Vec<Event>,
    ) -> Result<(), RtcError> {
        self.dirty = false;
        let audio = &self.audio_pts;
        let t = kaskade_protocol::drain::drain_after_timeout(
            &mut self.rtc,
            now,
            MAX_TIMEOUT_ROUNDS,
            |d| sink(d, tx, events, audio),
        )?;
        self.next_timeout = t;
        Ok(())
    }

    /// Marks the session written to; true if it was not yet.
    pub fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// Says goodbye (DTLS close).
    pub fn disconnect(&mut self) {
        self.rtc.disconnect();
    }

    // ----- state from str0m's events ---------------------------------------

    /// ICE and DTLS are up; true the first time.
    pub fn on_connected(&mut self) -> bool {
        !std::mem::replace(&mut self.connected, true)
    }

    /// ICE changed state.
    pub fn on_ice_state(&mut self, now: Instant, state: IceConnectionState) {
        match state {
            IceConnectionState::Disconnected => {
                self.disconnected_since.get_or_insert(now);
            }
            IceConnectionState::Connected | IceConnectionState::Completed => {
                self.ice_connected = true;
                self.disconnected_since = None;
            }
            _ => {}
        }
    }

    /// str0m's estimate of the downlink.
    pub fn set_estimate(&mut self, bps: u64) {
        self.estimate = Some(bps);
    }

    /// The latest estimate of the downlink, bits per second.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// Tells str0m's bandwidth estimation what the subscriptions need at
    /// least and would like (it probes towards `desired`).
    pub fn set_bwe_bounds(&mut self, min: Bitrate, desired: Bitrate) {
        self.rtc.bwe().set_bitrate(min, desired);
    }

    // ----- what it publishes -------------------------------------------------

    /// The track and layer of an incoming SSRC (resolved once per SSRC:
    /// the rid header extension stops after the first packets).
    pub fn resolve_ssrc(&mut self, ssrc: Ssrc) -> Option<(TrackId, Layer)> {
        if let Some(v) = self.ssrc_map.get(&ssrc) {
            return Some(*v);
        }
        let (mid, rid) = self
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid()))?;
        let t = self.published.get(&mid)?;
        let layer = rid
            .and_then(|r| t.rids.iter().position(|x| *x == r))
            .unwrap_or(0);
        let v = (t.id, Layer::new(layer.min(usize::from(u8::MAX)) as u8));
        self.ssrc_map.insert(ssrc, v);
        Some(v)
    }

    /// The publisher's codec parameters for a payload type.
    pub fn payload_params(&self, pt: Pt) -> Option<PayloadParams> {
        self.rtc.codec_config().find(|c| c.pt() == pt).copied()
    }

    /// Records a published media line.
    pub fn add_published(&mut self, mid: Mid, track: PubTrack) {
        self.published.insert(mid, track);
    }

    /// Forgets a published media line; returns its track.
    pub fn remove_published(&mut self, mid: Mid) -> Option<TrackId> {
        let t = self.published.remove(&mid)?;
        self.ssrc_map.retain(|_, (tr, _)| *tr != t.id);
        Some(t.id)
    }

    /// The tracks it publishes.
    pub fn published_tracks(&self) -> impl Iterator<Item = TrackId> + '_ {
        self.published.values().map(|t| t.id)
    }

    /// Asks the publisher (this session's browser) for a keyframe.
    pub fn request_keyframe(&mut self, mid: Mid, rid: Option<Rid>) {
        if let Some(s) = self.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            s.request_keyframe(KeyframeRequestKind::Pli);
        }
    }

    // ----- what it receives ----------------------------------------------------

    /// Offers a packet to its stream of the packet's track; also returns
    /// the layer switches that are now to report, if any.
    pub fn forward(&mut self, pkt: &MediaPacket, now: Instant) -> (Forwarded, Option<Vec<Switch>>) {
        let Some(o) = self.outs.get_mut(&pkt.track) else {
            return (Forwarded::Skipped, None);
        };
        let r = o.forward(&mut self.rtc, pkt, now);
        let switches = (!o.switches.is_empty()).then(|| std::mem::take(&mut o.switches));
        (r, switches)
    }

    /// Layer switches of its stream of `track` not yet reported.
    pub fn take_switches(&mut self, track: TrackId) -> Vec<Switch> {
        self.outs
            .get_mut(&track)
            .map(|o| std::mem::take(&mut o.switches))
            .unwrap_or_default()
    }

    /// Its streams, to change (layer selection).
    pub fn outs_mut(&mut self) -> impl Iterator<Item = (TrackId, &mut OutStream)> {
        self.outs.iter_mut().map(|(t, o)| (*t, o))
    }

    /// Its stream of `track`.
    pub fn out(&self, track: TrackId) -> Option<&OutStream> {
        self.outs.get(&track)
    }

    /// Its stream of `track`, to change.
    pub fn out_mut(&mut self, track: TrackId) -> Option<&mut OutStream> {
        self.outs.get_mut(&track)
    }

    /// The track its outgoing media line `mid` carries.
    pub fn track_of_mid(&self, mid: Mid) -> Option<TrackId> {
        self.out_mids.get(&mid).copied()
    }

    /// Whether it receives any video.
    pub fn receives_video(&self) -> bool {
        self.outs.values().any(|o| o.kind == MediaKind::Video)
    }

    /// The tracks it receives.
    pub fn subscribed_tracks(&self) -> impl Iterator<Item = TrackId> + '_ {
        self.outs.keys().copied()
    }
}

fn sink(d: Drained, tx: &mut Vec<Datagram>, events: &mut Vec<Event>, audio_pts: &[u8]) {
    match d {
        Drained::Transmit(t) => tx.push(Datagram {
            dst: t.destination,
            transport: match t.proto {
                Protocol::Tcp => Transport::Tcp(classify(&t.contents, audio_pts)),
                _ => Transport::Udp,
            },
            data: t.contents.into(),
        }),
        Drained::Event(e) => events.push(e),
    }
}

/// The payload types of an `Rtc`'s audio codecs (and their
/// retransmissions).
fn audio_pts(rtc: &Rtc) -> Vec<u8> {
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| p.spec().codec.is_audio())
        .flat_map(|p| std::iter::once(p.pt()).chain(p.resend()))
        .map(|pt| *pt)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_a_bounded_set_of_udp_addresses() {
        let now = Instant::now();
        let mut s = Session::new(
            SessionId(1),
            RoomId::parse("r").expect("a valid room id"),
            ParticipantId::parse("p").expect("a valid participant id"),
            Rtc::new(now),
            "k".into(),
            now,
        );
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(s.learn_addr(addr(1)), Learned::New);
        assert_eq!(s.learn_addr(addr(1)), Learned::Known);
        for port in 2..=MAX_UDP_PEERS as u16 {
            assert_eq!(s.learn_addr(addr(port)), Learned::New);
        }
        // One more replaces the oldest, and so on: the set never grows.
        for port in 1000..1100 {
            assert!(matches!(s.learn_addr(addr(port)), Learned::Replaced(_)));
            assert_eq!(s.addrs().len(), MAX_UDP_PEERS);
        }
        assert_eq!(s.addrs().last(), Some(&addr(1099)));
    }
}
