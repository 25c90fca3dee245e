//! kaskade: a WebRTC media router (SFU) for integrators who bring their own
//! signalling. See `docs/architecture.md` for the shape of the code.

pub mod cascade;
pub mod config;
pub mod control;
pub mod media;
pub mod metrics;
pub mod server;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod web;
pub mod webhooks;
