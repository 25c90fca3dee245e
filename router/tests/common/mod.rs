//! Shared by the integration tests: the deterministic simulation kit.

#![allow(unused_imports)]

pub(crate) use kaskade_router::testkit::*;

#[allow(dead_code)]
pub(crate) mod cascade;
#[allow(dead_code)]
pub(crate) mod checks;
#[allow(dead_code)]
pub(crate) mod daemon;
#[allow(dead_code)]
pub(crate) mod process;
#[allow(dead_code)]
pub(crate) mod proxy;
#[allow(dead_code)]
pub(crate) mod web;
