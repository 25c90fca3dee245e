//! Cascade: router-to-router links over QUIC.
//!
//! Foundations, each usable on its own:
//!
//! - [`cert`]: the cluster CA and node certificates that carry a node id and a region
//!   (`kaskade://node/<node_id>?region=<region>` URI plus `<node_id>.kaskade.invalid` DNS name),
//!   and the file helpers behind `kaskade cert …`;
//! - [`tls`]: quinn endpoint configurations with mutual TLS 1.3 against the cluster CA, and
//!   reading a connected peer's identity;
//! - [`wire`]: the media datagram codec (header, fragmentation, reassembly) and the
//!   length-prefixed framing of the control stream. Pure, no IO.

pub mod api;
pub mod cert;
pub mod manager;
pub mod media;
pub mod tls;
pub mod wire;

pub use cert::{identity_of, CertError, NodeIdentity};
pub use tls::{endpoint_configs, peer_identity, TlsError, ALPN};
