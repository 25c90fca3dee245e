//! The router-to-router link protocol (`kaskade.cascade.v1`).
//!
//! A link is one QUIC connection between two routers (mutual TLS 1.3, see the router's
//! `cascade::tls`). On it:
//!
//! - **control frames** (the generated protobuf types re-exported here, [`Frame`] first) travel
//!   on one bidirectional stream, each prefixed by its length ([`framing`]);
//! - **relayed media** travels as QUIC datagrams under a small binary header ([`datagram`]),
//!   split into fragments when a packet exceeds the datagram limit ([`fragment`]);
//! - a router that closes a link says why with a [`close::CloseCode`].
//!
//! Everything here is pure: no IO, no clock (time is an input where it matters).

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("kaskade.cascade.v1");
}
pub use pb::*;

pub mod close;
pub mod datagram;
pub mod fragment;
pub mod framing;

#[cfg(test)]
mod fuzz_tests;

/// Version of the link protocol, sent in [`Hello`]. Both routers of a link must speak the same
/// one: a `Hello` with another version closes the link with [`close::CloseCode::Hello`].
///
/// - 1: the first version (codec parameters as str0m's JSON).
/// - 2: codec parameters as the typed [`CodecParams`] message; `HostedRooms` for rooms that
///   link themselves.
pub const LINK_VERSION: u32 = 2;
