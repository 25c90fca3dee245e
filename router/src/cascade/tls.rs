//! Mutual TLS 1.3 over QUIC between routers.
//!
//! # Trust model
//!
//! - The cluster CA (`ca.pem`) is the only trust anchor, on both sides. No system roots, no
//!   platform verifier.
//! - The accepting router (QUIC server) **requires** a client certificate that chains to the
//!   cluster CA and carries the `clientAuth` usage; a peer without one gets no connection.
//! - The dialling router (QUIC client) verifies the accepting router's certificate against the
//!   cluster CA and checks the server name: it dials with [`server_name`]`(peer_node_id)` =
//!   `<peer_node_id>.kaskade.invalid`, a DNS name every node certificate carries for its own
//!   node id, so a link reaches the node it was meant for and not just any cluster member.
//! - Both sides then read the peer's [`NodeIdentity`] (node id and region) from its certificate
//!   with [`peer_identity`]; policy (is this peer expected, is its region allowed for a room) is
//!   the caller's.
//! - TLS 1.3 only, ALPN [`ALPN`], only the aws-lc-rs provider (passed explicitly: nothing depends
//!   on a process-wide default). Session resumption and 0-RTT are off: links are long-lived, and
//!   every handshake then verifies the full certificate path.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{client::WebPkiServerVerifier, RootCertStore};

use super::cert::{identity_of, node_dns_name, CertError, NodeIdentity};
use super::congestion::FixedRateFactory;
use super::relay::LinkRate;

/// ALPN protocol of cascade links.
pub const ALPN: &[u8] = b"kaskade-cascade/1";
/// Keep-alive interval: keeps NAT bindings and detects a dead peer well within the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Idle timeout: a link with no traffic (not even keep-alives) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer for incoming datagrams (quinn drops datagrams beyond it): ~170 ms at
/// 100 Mbit/s.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 2 << 20;
/// Concurrent bidirectional streams a peer may open (control uses one).
pub const MAX_BIDI_STREAMS: u32 = 4;
/// Concurrent unidirectional streams a peer may open.
pub const MAX_UNI_STREAMS: u32 = 4;

/// Errors of TLS configuration and of reading a peer's identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input (CA, certificate or key) could not be decoded.
    #[error("cannot read {what}: {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA could not be used as a trust anchor.
    #[error("cluster CA: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Our own certificate is not valid under the cluster CA (wrong CA, expired, wrong usage,
    /// or its names do not match its identity).
    #[error("own certificate is not usable with this cluster CA: {0}")]
    OwnCertificate(rustls::Error),
    /// A certificate carries no valid identity.
    #[error("{0}")]
    Identity(#[from] CertError),
    /// The connection has no peer certificate (should not happen after a completed handshake).
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    move |e| TlsError::Pem {
        what,
        detail: e.to_string(),
    }
}

/// The TLS server name to dial a peer with: `<node_id>.kaskade.invalid`.
pub fn server_name(node_id: &str) -> String {
    node_dns_name(node_id)
}

/// The transport parameters of a cascade link (same on both sides) that may send at `rate`:
/// the congestion window follows the rate, not loss ([`FixedRateFactory`]), and the datagram
/// send buffer holds only a short time of it ([`LinkRate::send_buffer`]; quinn drops the
/// oldest beyond it).
pub fn transport_config(rate: LinkRate) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(Arc::new(FixedRateFactory::new(rate)));
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            // 10 s is far below the 2^62 ms limit of a QUIC varint: the conversion cannot fail.
            IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits a varint"),
        ))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(rate.send_buffer())
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    t
}

/// Builds the QUIC server and client configurations of a router from the cluster CA, its
/// certificate and its key (all PEM).
///
/// Both configurations use [`transport_config`] of `rate`. The router's own certificate is checked up
/// front: it must chain to `ca_pem`, carry a valid identity, and be valid both as a server
/// certificate for its own [`server_name`] and as a client certificate; otherwise no peer would
/// accept it, and we say so now rather than at the first link.
pub fn endpoint_configs(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    rate: LinkRate,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = RootCertStore::empty();
    let mut n_roots = 0;
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.map_err(pem_err("CA certificate"))?)?;
        n_roots += 1;
    }
    if n_roots == 0 {
        return Err(TlsError::Pem {
            what: "CA certificate",
            detail: "no CERTIFICATE block".into(),
        });
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate"))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem {
            what: "certificate",
            detail: "no CERTIFICATE block".into(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("private key"))?;

    let identity = identity_of(leaf)?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;

    // Our own certificate, as a peer will see it.
    let now = UnixTime::now();
    let own_name = ServerName::try_from(server_name(&identity.node_id))
        .map_err(|e| TlsError::OwnCertificate(rustls::Error::General(e.to_string())))?;
    client_verifier
        .verify_client_cert(leaf, &chain[1..], now)
        .map_err(TlsError::OwnCertificate)?;
    server_verifier
        .verify_server_cert(leaf, &chain[1..], &own_name, &[], now)
        .map_err(TlsError::OwnCertificate)?;

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_early_data_size = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    client.enable_early_data = false;

    let transport = Arc::new(transport_config(rate));
    let mut server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server_config.transport_config(transport.clone());
    let mut client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client_config.transport_config(transport);
    Ok((server_config, client_config))
}

/// The verified identity of the peer of an established cascade connection, read from the
/// certificate it presented in the handshake.
pub fn peer_identity(conn: &quinn::Connection) -> Result<NodeIdentity, TlsError> {
    let any = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    Ok(identity_of(leaf)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cascade::cert::{generate_ca, generate_node};

    const RATE: LinkRate = LinkRate::from_mbps(100);

    #[test]
    fn configs_build_and_check_own_certificate() {
        let (ca, ca_key) = generate_ca("test").unwrap();
        let (cert, key) = generate_node(&ca, &ca_key, "fra", "eu-de-fra", &[]).unwrap();
        endpoint_configs(&ca, &cert, &key, RATE).unwrap();

        // A certificate from another CA is caught before any link.
        let (other_ca, other_key) = generate_ca("other").unwrap();
        let (foreign, foreign_key) =
            generate_node(&other_ca, &other_key, "fra", "eu-de-fra", &[]).unwrap();
        assert!(matches!(
            endpoint_configs(&ca, &foreign, &foreign_key, RATE),
            Err(TlsError::OwnCertificate(_))
        ));
        // Key of another certificate.
        let (_, key2) = generate_node(&ca, &ca_key, "ams", "eu-nl-ams", &[]).unwrap();
        assert!(endpoint_configs(&ca, &cert, &key2, RATE).is_err());
        // The CA as a node certificate carries no identity.
        assert!(matches!(
            endpoint_configs(&ca, &ca, &ca_key, RATE),
            Err(TlsError::Identity(_))
        ));
        // Garbage.
        assert!(matches!(
            endpoint_configs("nope", &cert, &key, RATE),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            endpoint_configs(&ca, &cert, "nope", RATE),
            Err(TlsError::Pem { .. })
        ));
    }

    #[test]
    fn server_name_is_the_node_dns_name() {
        assert_eq!(server_name("fra"), "fra.kaskade.invalid");
        assert!(ServerName::try_from(server_name("0-a")).is_ok());
    }
}
