//! Relayed media on a link, as two sans-IO machines:
//!
//! - [`tx::RelayTx`] (one per link): packets of local tracks (and of remote tracks relayed
//!   onward) become media datagrams; NACKs are answered from its repair cache.
//! - [`rx::RelayRx`] (one per link connection): datagrams become packets of remote tracks, in
//!   one batch per home worker; gaps are NACKed on a schedule and the residual loss counted.
//!
//! Neither reads the clock or touches a socket; the quinn driver moves their datagrams, frames
//! and batches, and calls them at `poll_timeout`.

pub mod rx;
pub mod tx;

pub use rx::{RelayRx, RxRoute, RxStats};
pub use tx::{RelayTx, RepairCache, TxOutput, TxStats};

#[cfg(test)]
mod tests;
