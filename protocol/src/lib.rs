//! The kaskade control API (`kaskade.v1`): generated gRPC types, clients and
//! servers; the router-to-router link protocol ([`cascade`]: its protobuf
//! frames, the media datagram codec, fragmentation and stream framing); the
//! RFC 4571 framing of ICE-TCP ([`rfc4571`]); and the id newtypes shared by the router, the load tester and the tests.

#![warn(clippy::unwrap_used)]
#[cfg(feature = "str0m")]
pub mod drain;
pub mod ids;
pub mod rfc4571;

/// Generated code of the `kaskade.v1` protobuf package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("kaskade.v1");
}

pub mod cascade;

/// The encoded `FileDescriptorSet` of `kaskade.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kaskade_descriptor.bin"));

pub use ids::{IdError, ParticipantId, RoomId, SessionId, TrackId};
