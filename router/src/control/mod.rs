//! The control plane: the gRPC API, the registry of rooms and sessions,
//! and the commands it sends to the media workers.

pub mod error;
pub mod events;
pub mod grpc;
pub mod grpc_errors;
pub mod hooks;
pub mod limits;
pub mod plane;
pub mod registry;
pub mod sdp_pt;
pub mod speakers;
pub mod watch;

pub use error::ApiError;
pub use grpc::Api;
pub use hooks::CascadeHooks;
pub use plane::{Control, Identity, Limits, RemoteTrack};
