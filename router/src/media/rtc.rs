//! Builds the `Rtc` of each session: one crypto provider and one DTLS
//! certificate per process (generating a certificate per connection is
//! slow), ICE-lite, RTP mode, the codecs the router forwards.

use rand::distr::Alphanumeric;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use str0m::bwe::Bitrate;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::net::TcpType;
use str0m::{Candidate, IceCreds, Rtc, RtcConfig};

/// The downlink estimate a new session starts from: enough for the middle
/// layer of a typical three-layer simulcast; probing climbs from there.
pub const INITIAL_ESTIMATE_KBPS: u64 = 800;

/// Packets each outgoing video stream keeps to answer NACKs (str0m's
/// default is 1000). The cache holds a ~450-byte record per packet (the
/// payload itself is shared with every other subscriber), so it is most of
/// a subscribed video track's memory, and in a large fan-out every write
/// lands in a cold slot of it. 128 packets hold 0.85 s of a 1.5 Mbit/s top
/// layer (~150 packets/s), 0.5 s at 2.5 Mbit/s and 2.5 s of a 500 kbit/s
/// middle layer: a NACK round trip and a retry on paths up to ~250 ms RTT.
/// A subscribed video track then costs ~200 kB (512 packets: 370 kB).
/// Configurable as `media.rtx_cache`; the figures are in docs/benchmarks.md.
pub const DEFAULT_RTX_CACHE: usize = 128;

/// Why an `Rtc` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RtcBuildError {
    /// The DTLS certificate could not be generated.
    #[error("cannot generate the DTLS certificate: {0}")]
    Certificate(String),
    /// The advertised address is not usable as an ICE candidate.
    #[error("cannot use {0} as an ICE candidate")]
    Candidate(SocketAddr),
}

/// Shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct RtcFactory {
    crypto: Arc<CryptoProvider>,
    cert: DtlsCert,
    rtx_cache: usize,
}

impl std::fmt::Debug for RtcFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RtcFactory")
    }
}

impl RtcFactory {
    /// Creates the process-wide provider and certificate.
    pub fn new() -> Result<Self, RtcBuildError> {
        let crypto = str0m::crypto::from_feature_flags();
        let cert = crypto.dtls_provider.generate_certificate().ok_or_else(|| {
            RtcBuildError::Certificate("the crypto provider returned none".into())
        })?;
        Ok(Self {
            crypto: Arc::new(crypto),
            cert,
            rtx_cache: DEFAULT_RTX_CACHE,
        })
    }

    /// Sets the packets each outgoing video stream keeps for NACKs.
    pub fn with_rtx_cache(mut self, packets: usize) -> Self {
        self.rtx_cache = packets.max(1);
        self
    }

    /// The configuration every session starts from.
    pub fn config(&self) -> RtcConfig {
        RtcConfig::new()
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_send_buffer_video(self.rtx_cache)
            // Send-side estimation (TWCC) of each subscriber's downlink,
            // for simulcast layer selection.
            .enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
    }

    /// A new ICE-lite `Rtc` with the given local ufrag, a UDP host
    /// candidate at `local_addr` and, with ICE-TCP on, a passive TCP host
    /// candidate at `tcp_addr` (RFC 6544).
    pub fn build(
        &self,
        now: Instant,
        ufrag: &str,
        rng: &mut impl Rng,
        local_addr: SocketAddr,
        tcp_addr: Option<SocketAddr>,
    ) -> Result<Rtc, RtcBuildError> {
        let pass: String = (0..24).map(|_| rng.sample(Alphanumeric) as char).collect();
        let mut rtc = self
            .config()
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.to_string(),
                pass,
            })
            .build(now);
        let cand =
            Candidate::host(local_addr, "udp").map_err(|_| RtcBuildError::Candidate(local_addr))?;
        rtc.add_local_candidate(cand);
        if let Some(addr) = tcp_addr {
            let cand = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|_| RtcBuildError::Candidate(addr))?;
            rtc.add_local_candidate(cand);
        }
        Ok(rtc)
    }
}
