//! [`ClientConfig`] and the codec constants a client offers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::VideoCodec;

/// Payload type of the H.264 codec offered by H.264 clients (RTX on 109).
pub const H264_PT: u8 = 108;
/// Profile-level-id of the H.264 codec: constrained baseline, level 3.1.
pub const H264_PROFILE_LEVEL_ID: u32 = 0x0042_e01f;

/// Configuration of a [`Client`](super::Client).
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
    /// Events buffered for [`Client::poll_event`](super::Client::poll_event); older ones
    /// are dropped beyond this.
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
    /// Keep every received packet for [`Client::drain_tap`](super::Client::drain_tap) (the
    /// load tester's per-packet measurements). Off by default.
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

    /// Keeps every received packet for [`Client::drain_tap`](super::Client::drain_tap).
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
