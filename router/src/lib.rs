//! kaskade: a WebRTC media router (SFU) for integrators who bring their own
//! signalling. See `docs/architecture.md` for the shape of the code.

#![warn(missing_docs, clippy::unwrap_used)]
pub mod auth;
pub mod cascade;
pub mod config;
pub mod control;
pub mod control_tls;
pub mod drain;
pub mod http;
pub mod listener;
pub mod media;
pub mod metrics;
pub mod ops_metrics;
pub mod panics;
pub mod server;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod web;
pub mod webhooks;
