//! Shared by the integration tests: the deterministic simulation kit.

#![allow(unused_imports)]

pub use kaskade_router::testkit::*;

#[allow(dead_code)]
pub mod cascade;
#[allow(dead_code)]
pub mod checks;
#[allow(dead_code)]
pub mod daemon;
#[allow(dead_code)]
pub mod proxy;
#[allow(dead_code)]
pub mod web;
