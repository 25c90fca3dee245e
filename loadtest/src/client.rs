//! [`Client`]: a browser-like WebRTC peer wrapping [`str0m::Rtc`].
//!
//! Sans-IO: no sockets, no clock reads. Every call that moves time takes `now`, the
//! caller delivers datagrams with [`Client::handle_receive`], calls
//! [`Client::handle_timeout`] at [`Client::next_timeout`] and sends what
//! [`Client::poll_transmit`] hands out. Internally every str0m mutation is followed by
//! a full drain of `poll_output` (str0m's drive-loop contract); events are buffered.
//!
//! The `Rtc` is configured like a browser: full ICE (not ICE-lite), RTP mode, Opus plus
//! one video codec (VP8, or H.264 constrained baseline with packetization-mode 1), a
//! per-`Rtc` crypto provider (aws-lc-rs, no process-wide setup needed) and one DTLS
//! certificate generated once per process and cloned into every client.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kaskade_protocol::drain::Drained;
use rand::distr::Alphanumeric;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::media::{Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::RtcError;
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Rtc, RtcConfig};

use crate::media::{source_tag, H264Source, MediaSource, OpusSource, VideoLayer, Vp8Source};
use crate::publish::{LayerSender, LayerStats, LocalTrack, Source, TrackStats};
use crate::recv::{MediaRecv, RecvPacket};
use crate::{Datagram, TrackId, TrackState, VideoCodec};

/// Payload type of the H.264 codec offered by H.264 clients (RTX on 109).
pub const H264_PT: u8 = 108;
/// Profile-level-id of the H.264 codec: constrained baseline, level 3.1.
pub const H264_PROFILE_LEVEL_ID: u32 = 0x0042_e01f;

/// How many times a drain feeds `Input::Timeout(now)` while str0m keeps reporting a
/// timeout at or before `now`.
const MAX_TIMEOUT_ROUNDS: usize = 4;

/// Configuration of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The client's address: its ICE host candidate and the destination of every
    /// datagram it receives.
    pub local_addr: SocketAddr,
    /// Video codec offered and sent.
    pub video_codec: VideoCodec,
    /// Enable str0m's send-side bandwidth estimation (TWCC).
    pub enable_bwe: bool,
    /// Initial BWE estimate (only with `enable_bwe`).
    pub bwe_initial_bps: u64,
    /// Seed for everything random the client controls: ICE credentials, RTP sequence
    /// numbers and timestamps, frame sizes. (str0m draws its own SSRCs, mids and DTLS
    /// randomness, which are not seeded.)
    pub seed: u64,
    /// Zero of the probes' `sent_micros`. Give all clients of a process the same epoch:
    /// receivers compute latency as `arrival - (epoch + sent_micros)`.
    pub epoch: Instant,
    /// Client part of the probe source tags (24 bits); defaults to bits of the seed.
    pub client_tag: u32,
    /// str0m stats interval (`Event::PeerStats`, `MediaIngressStats`, ...), off if `None`.
    pub stats_interval: Option<Duration>,
    /// Per-packet log entries kept per receiving mid (0: counters only).
    pub packet_log_limit: usize,
    /// Events buffered for [`Client::poll_event`]; older ones are dropped beyond this.
    pub max_buffered_events: usize,
    /// Browser-like start-up: a receiving video stream without a complete keyframe sends
    /// a PLI at its first packet (if that does not start a keyframe) and then every
    /// interval until one is complete. Off (`None`) by default so tests count only the
    /// PLIs they ask for.
    pub auto_keyframe_request: Option<Duration>,
    /// Browser-like encoder: a keyframe request for a layer within this long
    /// of the last one it honoured is ignored, as libwebrtc's encoder does
    /// (300 ms, `kMinKeyframeSendIntervalMs`). Off (`None`) by default so
    /// tests see every request answered.
    pub keyframe_min_interval: Option<Duration>,
    /// Keep every received packet for [`Client::drain_tap`] (the load tester's
    /// per-packet measurements). Off by default.
    pub packet_tap: bool,
    /// ICE-TCP instead of UDP: the client's only candidate is an active TCP
    /// host candidate at `local_addr` (see [`crate::tcp`]), and what it
    /// receives arrives over TCP. Off by default.
    pub tcp: bool,
}

impl ClientConfig {
    /// Defaults: VP8, no BWE, seed 0, no stats, no packet log.
    pub fn new(local_addr: SocketAddr, epoch: Instant) -> Self {
        ClientConfig {
            local_addr,
            video_codec: VideoCodec::Vp8,
            enable_bwe: false,
            bwe_initial_bps: 1_000_000,
            seed: 0,
            epoch,
            client_tag: 0,
            stats_interval: None,
            packet_log_limit: 0,
            max_buffered_events: 1024,
            auto_keyframe_request: None,
            keyframe_min_interval: None,
            packet_tap: false,
            tcp: false,
        }
    }

    /// Uses ICE-TCP instead of UDP (see [`Self::tcp`]).
    pub fn tcp(mut self, on: bool) -> Self {
        self.tcp = on;
        self
    }

    /// Keeps every received packet for [`Client::drain_tap`].
    pub fn packet_tap(mut self, on: bool) -> Self {
        self.packet_tap = on;
        self
    }

    /// Enables browser-like automatic keyframe requests (see
    /// [`Self::auto_keyframe_request`]).
    pub fn auto_keyframe_request(mut self, interval: Option<Duration>) -> Self {
        self.auto_keyframe_request = interval;
        self
    }

    /// Ignores keyframe requests closer than `interval` to the last one
    /// honoured, per layer (see [`Self::keyframe_min_interval`]).
    pub fn keyframe_min_interval(mut self, interval: Option<Duration>) -> Self {
        self.keyframe_min_interval = interval;
        self
    }

    /// Sets the seed (and the client tag, from the seed's low 24 bits).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self.client_tag = (seed & 0x00ff_ffff) as u32;
        self
    }

    /// Sets the video codec.
    pub fn video_codec(mut self, codec: VideoCodec) -> Self {
        self.video_codec = codec;
        self
    }

    /// Enables BWE.
    pub fn bwe(mut self, enable: bool) -> Self {
        self.enable_bwe = enable;
        self
    }

    /// Keeps up to `n` log entries per receiving mid.
    pub fn packet_log(mut self, n: usize) -> Self {
        self.packet_log_limit = n;
        self
    }

    /// Sets the str0m stats interval.
    pub fn stats_interval(mut self, interval: Option<Duration>) -> Self {
        self.stats_interval = interval;
        self
    }
}

/// What libwebrtc's encoder keeps between two keyframes it makes on request
/// (`kMinKeyframeSendIntervalMs`): Chrome ignores requests closer than this.
pub const BROWSER_KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// Errors of the client API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The SDP did not parse.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// str0m refused the operation.
    #[error("rtc: {0}")]
    Rtc(#[from] RtcError),
    /// `accept_answer` without an offer pending.
    #[error("no offer pending")]
    NoPendingOffer,
    /// The local address is not usable as an ICE host candidate.
    #[error("bad local candidate: {0}")]
    Candidate(String),
}

/// Buffered events (RTP packets are not buffered: they are recorded, see
/// [`Client::received`]).
#[derive(Debug)]
pub enum ClientEvent {
    /// ICE and DTLS are up: media flows.
    Connected,
    /// ICE connection state change.
    IceState(IceConnectionState),
    /// A media line was negotiated.
    MediaAdded {
        /// Its mid.
        mid: Mid,
        /// Audio or video.
        kind: MediaKind,
        /// Direction from this client's side.
        direction: Direction,
        /// Simulcast rids (receive layers for a receiving mid, send layers otherwise).
        rids: Vec<Rid>,
    },
    /// A data channel opened.
    ChannelOpen {
        /// Channel id.
        id: ChannelId,
        /// Its label.
        label: String,
    },
    /// Data channel message.
    ChannelData {
        /// Channel id.
        id: ChannelId,
        /// Binary or text.
        binary: bool,
        /// Message.
        data: Vec<u8>,
    },
    /// A data channel closed.
    ChannelClose(ChannelId),
    /// The remote asked for a keyframe on a sending layer (already acted upon).
    KeyframeRequest {
        /// The mid.
        mid: Mid,
        /// The layer.
        rid: Option<Rid>,
        /// PLI or FIR.
        kind: KeyframeRequestKind,
    },
    /// New egress bandwidth estimate.
    EgressBitrate(Bitrate),
    /// The `Rtc` closed.
    Closed,
    /// Any other str0m event (stats, stream paused, ...).
    Other(Box<Event>),
}

fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// The process-wide DTLS certificate (generating one per connection is slow).
fn dtls_cert() -> Option<DtlsCert> {
    static CERT: OnceLock<Option<DtlsCert>> = OnceLock::new();
    CERT.get_or_init(|| crypto_provider().dtls_provider.generate_certificate())
        .clone()
}

fn random_string(rng: &mut SmallRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect()
}

enum Queued {
    Track(TrackId),
    Channel(String),
    Receiver(MediaKind),
}

/// A browser-like WebRTC peer. See the [module docs](self).
pub struct Client {
    rtc: Rtc,
    config: ClientConfig,
    rng: SmallRng,
    now: Instant,
    rtc_timeout: Instant,

    queued: Vec<Queued>,
    pending: Option<SdpPendingOffer>,
    tracks: Vec<LocalTrack>,
    channel: Option<ChannelId>,
    channel_open: bool,

    transmits: VecDeque<Datagram>,
    /// str0m events of the drain under way (kept for its allocation).
    scratch_events: Vec<Event>,
    events: VecDeque<ClientEvent>,
    events_dropped: u64,

    connected: bool,
    ice_state: IceConnectionState,
    closed: bool,
    errors: u64,
    last_error: Option<String>,
    bad_datagrams: u64,
    egress_estimate: Option<Bitrate>,

    recv: Vec<MediaRecv>,
    ssrc_map: HashMap<Ssrc, (Mid, Option<Rid>)>,
    pt_codec: HashMap<Pt, Codec>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local_addr", &self.config.local_addr)
            .field("connected", &self.connected)
            .field("ice_state", &self.ice_state)
            .field("tracks", &self.tracks.len())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A new client at time `now`, with its host candidate added.
    pub fn new(config: ClientConfig, now: Instant) -> Result<Client, ClientError> {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let creds = IceCreds {
            ufrag: random_string(&mut rng, 8),
            pass: random_string(&mut rng, 24),
        };

        let mut rc = RtcConfig::new()
            .set_crypto_provider(crypto_provider())
            .set_rtp_mode(true)
            .set_local_ice_credentials(creds)
            .set_stats_interval(config.stats_interval)
            .clear_codecs()
            .enable_opus(true, false);
        if let Some(cert) = dtls_cert() {
            rc = rc.set_dtls_cert(cert);
        }
        match config.video_codec {
            VideoCodec::Vp8 => rc = rc.enable_vp8(true),
            VideoCodec::H264 => rc.codec_config().add_h264(
                H264_PT.into(),
                Some((H264_PT + 1).into()),
                true,
                H264_PROFILE_LEVEL_ID,
            ),
        }
        if config.enable_bwe {
            rc = rc.enable_bwe(Some(Bitrate::bps(config.bwe_initial_bps)));
        }
        let mut rtc = rc.build(now);

        let cand = if config.tcp {
            Candidate::builder()
                .tcp()
                .host(config.local_addr)
                .tcptype(TcpType::Active)
                .build()
        } else {
            Candidate::host(config.local_addr, "udp")
        }
        .map_err(|e| ClientError::Candidate(e.to_string()))?;
        rtc.add_local_candidate(cand);

        let mut client = Client {
            rtc,
            config,
            rng,
            now,
            rtc_timeout: now,
            queued: vec![],
            pending: None,
            tracks: vec![],
            channel: None,
            channel_open: false,
            transmits: VecDeque::new(),
            scratch_events: Vec::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            connected: false,
            ice_state: IceConnectionState::New,
            closed: false,
            errors: 0,
            last_error: None,
            bad_datagrams: 0,
            egress_estimate: None,
            recv: vec![],
            ssrc_map: HashMap::new(),
            pt_codec: HashMap::new(),
        };
        client.drain(now);
        Ok(client)
    }

    // ---------------------------------------------------------------- offer side

    /// Queues a sendonly Opus track for the next offer.
    pub fn add_audio(&mut self) -> TrackId {
        self.queue_track(LocalTrack::new(MediaKind::Audio, vec![], vec![]))
    }

    /// Queues a sendonly video track for the next offer, with `a=simulcast` over `rids`
    /// (lowest first) when non-empty. Layers get [`VideoLayer::defaults`].
    pub fn add_video(&mut self, rids: &[&str]) -> TrackId {
        let layers = VideoLayer::defaults(rids.len());
        let layers = layers[layers.len().saturating_sub(rids.len().max(1))..].to_vec();
        self.add_video_layers(rids, &layers)
    }

    /// Like [`Self::add_video`] with explicit layer settings (one per rid, or one).
    pub fn add_video_layers(&mut self, rids: &[&str], layers: &[VideoLayer]) -> TrackId {
        let n = rids.len().max(1);
        let mut layers: Vec<VideoLayer> = layers.iter().copied().take(n).collect();
        while layers.len() < n {
            layers.push(layers.last().copied().unwrap_or(VideoLayer::MEDIUM));
        }
        if self.config.video_codec == VideoCodec::H264 {
            for l in &mut layers {
                l.temporal_layers = 1;
            }
        }
        let rids = rids.iter().map(|r| Rid::from(*r)).collect();
        self.queue_track(LocalTrack::new(MediaKind::Video, rids, layers))
    }

    /// Makes every packet of audio `track` carry `level` (-dBov, 0 loudest,
    /// -127 silence) in its audio-level extension, as a scripted speaker;
    /// `None` goes back to the source's own slow random walk.
    pub fn set_audio_level(&mut self, track: TrackId, level: Option<i8>) {
        if let Some(t) = self.tracks.get_mut(track.0) {
            t.level_override = level;
        }
    }

    /// Queues a data channel for the next offer.
    pub fn add_data_channel(&mut self, label: &str) {
        self.queued.push(Queued::Channel(label.to_string()));
    }

    /// Queues a receive-only media line for the next offer, as
    /// `pc.addTransceiver(kind, {direction: "recvonly"})` does: a subscriber's
    /// first offer can carry one instead of a data channel.
    pub fn add_receiver(&mut self, kind: MediaKind) {
        self.queued.push(Queued::Receiver(kind));
    }

    fn queue_track(&mut self, track: LocalTrack) -> TrackId {
        let id = TrackId(self.tracks.len());
        self.tracks.push(track);
        self.queued.push(Queued::Track(id));
        id
    }

    /// Creates an offer with everything queued, keeping the pending offer for
    /// [`Self::accept_answer`]. `None` if nothing is queued, an offer is already pending,
    /// or the changes needed no negotiation (a second data channel).
    pub fn create_offer(&mut self) -> Option<String> {
        if self.pending.is_some() || self.queued.is_empty() {
            return None;
        }
        let queued = std::mem::take(&mut self.queued);
        let stream_id = format!("kaskade-{}", self.config.client_tag);
        let mut api = self.rtc.sdp_api();
        for q in queued {
            match q {
                Queued::Track(id) => {
                    let t = &mut self.tracks[id.0];
                    let simulcast = (!t.rids.is_empty()).then(|| {
                        let mut s = Simulcast::new();
                        for rid in &t.rids {
                            s.add_send_layer(SimulcastLayer::new(rid));
                        }
                        s
                    });
                    let track_id = format!("{stream_id}-{}", id.0);
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(stream_id.clone()),
                        Some(track_id),
                        simulcast,
                    );
                    t.mid = Some(mid);
                    t.state = TrackState::Offered;
                }
                Queued::Channel(label) => {
                    self.channel.get_or_insert(api.add_channel(label));
                }
                Queued::Receiver(kind) => {
                    api.add_media(kind, Direction::RecvOnly, None, None, None);
                }
            }
        }
        let offer = api.apply();
        let now = self.now;
        self.drain(now);
        let (offer, pending) = offer?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// Applies the remote answer to the pending offer. Accepted tracks start sending
    /// once connected; rejected ones are marked [`TrackState::Rejected`].
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), ClientError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| ClientError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(ClientError::NoPendingOffer)?;
        let res = self.rtc.sdp_api().accept_answer(pending, answer);
        let now = self.now;
        self.drain(now);
        if let Err(e) = res {
            for t in self
                .tracks
                .iter_mut()
                .filter(|t| t.state == TrackState::Offered)
            {
                t.state = TrackState::Rejected;
            }
            return Err(e.into());
        }
        self.activate_tracks();
        if self.connected {
            self.start_senders(now);
        }
        Ok(())
    }

    /// Answers a remote offer (e.g. a router offering subscriptions). A pending local
    /// offer is invalidated by str0m: its tracks are queued again for the next offer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, ClientError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| ClientError::Sdp(e.to_string()))?;
        if self.pending.take().is_some() {
            for (i, t) in self.tracks.iter_mut().enumerate() {
                if t.state == TrackState::Offered {
                    t.state = TrackState::Queued;
                    t.mid = None;
                    self.queued.push(Queued::Track(TrackId(i)));
                }
            }
        }
        let res = self.rtc.sdp_api().accept_offer(offer);
        let now = self.now;
        self.drain(now);
        let answer = res?;
        Ok(answer.to_sdp_string())
    }

    fn activate_tracks(&mut self) {
        let video_codec = match self.config.video_codec {
            VideoCodec::Vp8 => Codec::Vp8,
            VideoCodec::H264 => Codec::H264,
        };
        for t in self
            .tracks
            .iter_mut()
            .filter(|t| t.state == TrackState::Offered)
        {
            let Some(mid) = t.mid else {
                t.state = TrackState::Rejected;
                continue;
            };
            let codec = if t.kind == MediaKind::Audio {
                Codec::Opus
            } else {
                video_codec
            };
            let pt = self.rtc.media(mid).and_then(|m| {
                let remote = m.remote_pts();
                self.rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
                    .map(|p| p.pt())
            });
            match pt {
                Some(pt) => {
                    t.pt = Some(pt);
                    t.state = TrackState::Active;
                }
                None => t.state = TrackState::Rejected,
            }
        }
    }

    /// Creates the media sources of active tracks that have none yet (first due `now`).
    fn start_senders(&mut self, now: Instant) {
        let epoch = self.config.epoch;
        for (ti, t) in self.tracks.iter_mut().enumerate() {
            if t.state != TrackState::Active || !t.senders.is_empty() {
                continue;
            }
            let n = if t.kind == MediaKind::Audio {
                1
            } else {
                t.layers.len()
            };
            for li in 0..n {
                let tag = source_tag(self.config.client_tag, ti as u8, li as u8);
                let seed = self.rng.random();
                let source = match (t.kind, self.config.video_codec) {
                    (MediaKind::Audio, _) => Source::Opus(OpusSource::new(tag, seed, epoch, now)),
                    (_, VideoCodec::Vp8) => {
                        Source::Vp8(Vp8Source::new(tag, seed, t.layers[li], epoch, now))
                    }
                    (_, VideoCodec::H264) => {
                        Source::H264(H264Source::new(tag, seed, t.layers[li], epoch, now))
                    }
                };
                let mut source = source;
                // Requests that came before the source existed: the first frame is a
                // keyframe anyway.
                if t.keyframe_requests[li] > 0 {
                    source.request_keyframe();
                }
                t.senders.push(LayerSender {
                    source,
                    seq: u64::from(self.rng.random_range(0..30_000u32)),
                    ssrc: None,
                    packets_sent: 0,
                    keyframe_honoured: None,
                    keyframe_requests_ignored: 0,
                    bytes_sent: 0,
                    no_stream: 0,
                    paused: false,
                });
            }
        }
    }

    // ---------------------------------------------------------------- driving

    /// Feeds a datagram received from `src` (addressed to `local_addr`; a
    /// packet from the ICE-TCP connection with [`ClientConfig::tcp`]).
    pub fn handle_receive(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        // Time never goes backwards for str0m.
        let now = self.now.max(now);
        self.now = now;
        let proto = if self.config.tcp {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        match Receive::new(proto, src, self.config.local_addr, data) {
            Ok(r) => {
                if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
                    self.record_error(e);
                }
            }
            Err(_) => self.bad_datagrams += 1,
        }
        self.drain(now);
    }

    /// Advances str0m's timers to `now`, then writes the media due ([`Self::tick`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        // Time never goes backwards for str0m.
        let now = self.now.max(now);
        self.now = now;
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.record_error(e);
        }
        self.drain(now);
        self.tick(now);
    }

    /// Writes every media packet due by `now` (no-op until connected).
    pub fn tick(&mut self, now: Instant) {
        // Time never goes backwards for str0m.
        let now = self.now.max(now);
        self.now = now;
        if !self.connected || self.closed {
            return;
        }
        self.start_senders(now);
        for ti in 0..self.tracks.len() {
            let Some(mid) = self.tracks[ti].mid else {
                continue;
            };
            let Some(pt) = self.tracks[ti].pt else {
                continue;
            };
            let video = self.tracks[ti].kind == MediaKind::Video;
            let level_override = self.tracks[ti].level_override;
            for li in 0..self.tracks[ti].senders.len() {
                let rid = self.tracks[ti].rid_of(li);
                loop {
                    let sender = &mut self.tracks[ti].senders[li];
                    let Some(pkt) = sender.source.poll(now) else {
                        break;
                    };
                    if sender.paused {
                        continue;
                    }
                    let mut api = self.rtc.direct_api();
                    let stream = match sender.ssrc {
                        Some(ssrc) => api.stream_tx(&ssrc),
                        // With rid None, str0m matches any rid of the mid: only use that
                        // lookup without simulcast.
                        None => api.stream_tx_by_mid(mid, rid),
                    };
                    let Some(stream) = stream else {
                        sender.no_stream += 1;
                        continue;
                    };
                    sender.ssrc = Some(stream.ssrc());
                    let audio_level = pkt.audio_level.map(|l| level_override.unwrap_or(l));
                    let exts = ExtensionValues {
                        audio_level,
                        voice_activity: audio_level.map(|_| true),
                        ..Default::default()
                    };
                    let len = pkt.payload.len() as u64;
                    stream.write_rtp(
                        RtpWrite::new(pt, sender.seq.into(), pkt.rtp_time, pkt.due, pkt.payload)
                            .marker(pkt.marker)
                            .nackable(video)
                            .ext_vals(exts),
                    );
                    sender.seq += 1;
                    sender.packets_sent += 1;
                    sender.bytes_sent += len;
                    self.drain(now);
                }
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    /// Moves every pending datagram into `out`.
    pub fn drain_transmits(&mut self, out: &mut Vec<Datagram>) {
        out.extend(self.transmits.drain(..));
    }

    /// When [`Self::handle_timeout`] must be called next: str0m's timeout or the next
    /// media packet due, whichever is first.
    pub fn next_timeout(&self) -> Instant {
        let mut t = self.rtc_timeout;
        if self.connected && !self.closed {
            for d in self.tracks.iter().filter_map(LocalTrack::next_due) {
                t = t.min(d);
            }
        }
        t
    }

    fn record_error(&mut self, e: RtcError) {
        self.errors += 1;
        self.last_error = Some(e.to_string());
    }

    /// Drains `poll_output` to its timeout (`kaskade_protocol::drain::drain`, the same
    /// drive-loop contract as the router's sessions): transmits are queued,
    /// events handled once the drain is done.
    fn drain(&mut self, now: Instant) {
        let mut consecutive_errors = 0;
        let mut events = std::mem::take(&mut self.scratch_events);
        loop {
            let rounds = if self.closed { 0 } else { MAX_TIMEOUT_ROUNDS };
            let transmits = &mut self.transmits;
            let r = kaskade_protocol::drain::drain(&mut self.rtc, now, rounds, |out| match out {
                Drained::Transmit(t) => transmits.push_back(Datagram {
                    src: t.source,
                    dst: t.destination,
                    data: t.contents.into(),
                }),
                Drained::Event(e) => events.push(e),
            });
            match r {
                Ok(t) => {
                    self.rtc_timeout = t;
                    break;
                }
                Err(e) => {
                    self.record_error(e);
                    consecutive_errors += 1;
                    if consecutive_errors > 8 || !self.rtc.is_alive() {
                        // Poll again soon rather than spin on a broken instance.
                        self.rtc_timeout = now + Duration::from_millis(10);
                        break;
                    }
                }
            }
        }
        for e in events.drain(..) {
            self.handle_event(now, e);
        }
        self.scratch_events = events;
    }

    fn push_event(&mut self, e: ClientEvent) {
        if self.config.max_buffered_events == 0 {
            self.events_dropped += 1;
            return;
        }
        while self.events.len() >= self.config.max_buffered_events {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn handle_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::RtpPacket(p) => self.on_rtp(p),
            Event::Connected => {
                self.connected = true;
                self.start_senders(now);
                self.push_event(ClientEvent::Connected);
            }
            Event::IceConnectionStateChange(s) => {
                self.ice_state = s;
                self.push_event(ClientEvent::IceState(s));
            }
            Event::MediaAdded(m) => {
                let rids: Vec<Rid> = m
                    .simulcast
                    .map(|s| {
                        let layers = if m.direction.is_receiving() {
                            s.recv
                        } else {
                            s.send
                        };
                        layers.into_iter().map(|l| l.rid).collect()
                    })
                    .unwrap_or_default();
                if m.direction.is_receiving() {
                    let r = self.recv_entry(m.mid);
                    r.kind = Some(m.kind);
                    r.direction = Some(m.direction);
                    r.rids = rids.clone();
                }
                self.push_event(ClientEvent::MediaAdded {
                    mid: m.mid,
                    kind: m.kind,
                    direction: m.direction,
                    rids,
                });
            }
            Event::KeyframeRequest(r) => {
                if let Some(t) = self.tracks.iter_mut().find(|t| t.mid == Some(r.mid)) {
                    let layer = t.layer_of(r.rid);
                    if let Some(c) = t.keyframe_requests.get_mut(layer) {
                        *c += 1;
                    }
                    if let Some(s) = t.senders.get_mut(layer) {
                        let min = self.config.keyframe_min_interval;
                        let too_soon = s
                            .keyframe_honoured
                            .zip(min)
                            .is_some_and(|(t, min)| now.saturating_duration_since(t) < min);
                        if too_soon {
                            s.keyframe_requests_ignored += 1;
                        } else {
                            s.keyframe_honoured = Some(now);
                            s.source.request_keyframe();
                        }
                    }
                }
                self.push_event(ClientEvent::KeyframeRequest {
                    mid: r.mid,
                    rid: r.rid,
                    kind: r.kind,
                });
            }
            Event::ChannelOpen(id, label) => {
                if self.channel.is_none_or(|c| c == id) {
                    self.channel = Some(id);
                    self.channel_open = true;
                }
                self.push_event(ClientEvent::ChannelOpen { id, label });
            }
            Event::ChannelData(d) => self.push_event(ClientEvent::ChannelData {
                id: d.id,
                binary: d.binary,
                data: d.data,
            }),
            Event::ChannelClose(id) => {
                if self.channel == Some(id) {
                    self.channel_open = false;
                }
                self.push_event(ClientEvent::ChannelClose(id));
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.egress_estimate = Some(estimate);
                self.push_event(ClientEvent::EgressBitrate(estimate));
            }
            Event::Closed => {
                self.closed = true;
                self.push_event(ClientEvent::Closed);
            }
            other => self.push_event(ClientEvent::Other(Box::new(other))),
        }
    }

    fn recv_entry(&mut self, mid: Mid) -> &mut MediaRecv {
        let i = match self.recv.iter().position(|r| r.mid == mid) {
            Some(i) => i,
            None => {
                let mut r = MediaRecv::new(mid);
                if self.config.packet_tap {
                    r.tap = Some(vec![]);
                }
                self.recv.push(r);
                self.recv.len() - 1
            }
        };
        &mut self.recv[i]
    }

    fn on_rtp(&mut self, p: str0m::rtp::RtpPacket) {
        let ssrc = p.header.ssrc;
        let (mid, rid) = match self.ssrc_map.get(&ssrc) {
            Some(v) => *v,
            None => {
                let found = self
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                    .or_else(|| p.header.ext_vals.mid.map(|m| (m, p.header.ext_vals.rid)));
                let Some(v) = found else {
                    self.bad_datagrams += 1;
                    return;
                };
                self.ssrc_map.insert(ssrc, v);
                v
            }
        };
        let pt = p.header.payload_type;
        let codec = match self.pt_codec.get(&pt) {
            Some(c) => Some(*c),
            None => {
                let c = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|x| x.pt() == pt)
                    .map(|x| x.spec().codec);
                if let Some(c) = c {
                    self.pt_codec.insert(pt, c);
                }
                c
            }
        };
        let epoch = self.config.epoch;
        let limit = self.config.packet_log_limit;
        let entry = RecvPacket {
            at: p.timestamp,
            seq: *p.seq_no,
            rtp_timestamp: p.header.timestamp,
            marker: p.header.marker,
            ssrc: *ssrc,
            rid,
            payload_len: p.payload.len(),
            vp8: match codec {
                Some(Codec::Vp8) => crate::media::parse_vp8_descriptor(&p.payload),
                _ => None,
            },
            is_keyframe_start: false,
            probe: None,
        };
        let auto = self.config.auto_keyframe_request;
        let r = self.recv_entry(mid);
        if r.kind.is_none() {
            r.kind = codec.map(|c| c.kind());
        }
        if r.record(epoch, limit, auto, entry, codec, &p.payload) {
            // A mutation from inside the drain loop: the loop keeps polling afterwards.
            if let Some(s) = self.rtc.direct_api().stream_rx(&ssrc) {
                s.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    // ---------------------------------------------------------------- receiving

    /// Sends a PLI for a receiving mid: for the given layer, or for every stream of the
    /// mid when `rid` is `None`. Returns false if str0m has no such receive stream yet.
    pub fn request_keyframe(&mut self, mid: Mid, rid: Option<Rid>) -> bool {
        let ssrcs: Vec<Ssrc> = self
            .ssrc_map
            .iter()
            .filter(|(_, (m, r))| *m == mid && (rid.is_none() || *r == rid))
            .map(|(s, _)| *s)
            .collect();
        let mut sent = 0;
        {
            let mut api = self.rtc.direct_api();
            if ssrcs.is_empty() {
                if let Some(s) = api.stream_rx_by_mid(mid, rid) {
                    s.request_keyframe(KeyframeRequestKind::Pli);
                    sent += 1;
                }
            }
            for ssrc in ssrcs {
                if let Some(s) = api.stream_rx(&ssrc) {
                    s.request_keyframe(KeyframeRequestKind::Pli);
                    sent += 1;
                }
            }
        }
        let now = self.now;
        self.drain(now);
        if sent > 0 {
            self.recv_entry(mid).keyframe_requests_sent += sent;
        }
        sent > 0
    }

    /// With [`ClientConfig::packet_tap`]: hands over every packet received since the
    /// last call, with its mid and the mid's kind (if known).
    pub fn drain_tap(&mut self, mut f: impl FnMut(Mid, Option<MediaKind>, &RecvPacket)) {
        for r in &mut self.recv {
            let (mid, kind) = (r.mid, r.kind);
            if let Some(tap) = r.tap.as_mut() {
                for p in tap.drain(..) {
                    f(mid, kind, &p);
                }
            }
        }
    }

    /// What was received per mid.
    pub fn received(&self) -> &[MediaRecv] {
        &self.recv
    }

    /// What was received on one mid.
    pub fn received_on(&self, mid: Mid) -> Option<&MediaRecv> {
        self.recv.iter().find(|r| r.mid == mid)
    }

    /// Mids announced by `Event::MediaAdded` that this client receives on, with kind.
    pub fn receiving_mids(&self) -> Vec<(Mid, MediaKind)> {
        self.recv
            .iter()
            .filter_map(|r| Some((r.mid, r.kind?)))
            .collect()
    }

    // ---------------------------------------------------------------- sending state

    /// The mid of a local track, once offered.
    pub fn track_mid(&self, track: TrackId) -> Option<Mid> {
        self.tracks.get(track.0)?.mid
    }

    /// Counters of a local track.
    pub fn track_stats(&self, track: TrackId) -> Option<TrackStats> {
        let t = self.tracks.get(track.0)?;
        let layers = (0..t.keyframe_requests.len())
            .map(|li| {
                let s = t.senders.get(li);
                LayerStats {
                    rid: t.rid_of(li),
                    ssrc: s.and_then(|s| s.ssrc),
                    packets_sent: s.map_or(0, |s| s.packets_sent),
                    bytes_sent: s.map_or(0, |s| s.bytes_sent),
                    no_stream: s.map_or(0, |s| s.no_stream),
                    keyframe_requests_ignored: s.map_or(0, |s| s.keyframe_requests_ignored),
                    keyframe_requests: t.keyframe_requests[li],
                    source: s.map(|s| s.source.stats()).unwrap_or_default(),
                }
            })
            .collect();
        Some(TrackStats {
            kind: t.kind,
            mid: t.mid,
            state: t.state,
            layers,
        })
    }

    /// Stops or resumes sending one layer of a video track (`rid` as offered;
    /// any rid for a track without simulcast), as a browser does when its
    /// uplink is short. A resumed layer starts with a keyframe. Returns
    /// whether the layer exists (and the client is sending).
    pub fn set_layer_paused(&mut self, track: TrackId, rid: Option<&str>, paused: bool) -> bool {
        let Some(t) = self.tracks.get_mut(track.0) else {
            return false;
        };
        let layer = t.layer_of(rid.map(Rid::from));
        let Some(sender) = t.senders.get_mut(layer) else {
            return false;
        };
        if sender.paused && !paused {
            sender.source.request_keyframe();
        }
        sender.paused = paused;
        true
    }

    /// Keyframe requests received for a local track's layer (`rid` `None`: layer 0).
    pub fn keyframe_requests(&self, track: TrackId, rid: Option<&str>) -> u64 {
        let Some(t) = self.tracks.get(track.0) else {
            return 0;
        };
        let layer = t.layer_of(rid.map(Rid::from));
        t.keyframe_requests.get(layer).copied().unwrap_or(0)
    }

    // ---------------------------------------------------------------- data channel

    /// Sends a message on the data channel. False if it is not open or its buffer is full.
    pub fn send_data(&mut self, binary: bool, data: &[u8]) -> bool {
        let Some(id) = self.channel.filter(|_| self.channel_open) else {
            return false;
        };
        let res = match self.rtc.channel(id) {
            Some(mut ch) => ch.write(binary, data),
            None => Ok(false),
        };
        let now = self.now;
        self.drain(now);
        match res {
            Ok(ok) => ok,
            Err(e) => {
                self.record_error(e);
                false
            }
        }
    }

    // ---------------------------------------------------------------- state

    /// ICE and DTLS are up, and the instance is alive.
    pub fn is_connected(&self) -> bool {
        self.connected && !self.closed && self.ice_state != IceConnectionState::Disconnected
    }

    /// The data channel is open.
    pub fn channel_open(&self) -> bool {
        self.channel_open
    }

    /// ICE reports the connection lost.
    pub fn is_disconnected(&self) -> bool {
        self.ice_state == IceConnectionState::Disconnected
    }

    /// The instance is dead: closed, or str0m disconnected it (e.g. DTLS failure).
    pub fn is_failed(&self) -> bool {
        self.closed || !self.rtc.is_alive()
    }

    /// Current ICE state.
    pub fn ice_state(&self) -> IceConnectionState {
        self.ice_state
    }

    /// str0m errors seen (none panics).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The last str0m error.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Datagrams str0m could not parse, and RTP packets of unknown streams.
    pub fn bad_datagrams(&self) -> u64 {
        self.bad_datagrams
    }

    /// Latest TWCC egress estimate (with BWE enabled).
    pub fn egress_estimate(&self) -> Option<Bitrate> {
        self.egress_estimate
    }

    /// The next buffered event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Events dropped because the buffer was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// The client's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.config.local_addr
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Read access to the `Rtc`.
    pub fn rtc(&self) -> &Rtc {
        &self.rtc
    }

    /// Escape hatch: mutate the `Rtc`; the client drains it afterwards.
    pub fn with_rtc<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> R {
        let r = f(&mut self.rtc);
        let now = self.now;
        self.drain(now);
        r
    }

    /// Closes the `Rtc` (DTLS close_notify goes out with the next transmits).
    pub fn close(&mut self) {
        if let Err(e) = self.rtc.close() {
            self.record_error(e);
        }
        let now = self.now;
        self.drain(now);
    }
}
