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
use str0m::bwe::Bitrate;
use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::Ssrc;
use str0m::RtcError;
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Rtc, RtcConfig};

use crate::publish::LocalTrack;
use crate::recv::MediaRecv;
use crate::{Datagram, TrackId, VideoCodec};

mod config;
mod event;
mod offer;
mod receive;
mod send;

pub use config::{ClientConfig, BROWSER_KEYFRAME_MIN_INTERVAL, H264_PROFILE_LEVEL_ID, H264_PT};
pub use event::{ClientError, ClientEvent};

/// How many times a drain feeds `Input::Timeout(now)` while str0m keeps reporting a
/// timeout at or before `now`.
const MAX_TIMEOUT_ROUNDS: usize = 4;

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
