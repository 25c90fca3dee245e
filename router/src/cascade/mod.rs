//! Cascade: router-to-router links over QUIC.
//!
//! Foundations, each usable on its own:
//!
//! - [`cert`]: the cluster CA and node certificates that carry a node id and a region
//!   (`kaskade://node/<node_id>?region=<region>` URI plus `<node_id>.kaskade.invalid` DNS name),
//!   and the file helpers behind `kaskade cert …`;
//! - [`tls`]: quinn endpoint configurations with mutual TLS 1.3 against the cluster CA, and
//!   reading a connected peer's identity;
//! - [`congestion`]: the quinn congestion controller of links, whose window follows the
//!   configured link rate (see [`relay::budget`]);
//! - [`codec`]: codec parameters on the link (str0m's `PayloadParams` ↔ the typed
//!   `CodecParams` message).
//!
//! The wire format itself (control frames, the media datagram codec, fragmentation and
//! reassembly, stream framing, close codes) lives in `kaskade_protocol::cascade`.

pub mod api;
pub mod cert;
pub mod codec;
pub mod congestion;
pub mod link;
pub mod manager;
pub mod plane;
pub mod relay;
#[cfg(any(test, feature = "testkit"))]
pub mod sim;
pub mod tls;

pub use cert::{identity_of, CertError, NodeIdentity};
pub use tls::{endpoint_configs, peer_identity, TlsError, ALPN};
