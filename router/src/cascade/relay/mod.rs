//! Relayed media on a link, as sans-IO machines:
//!
//! - [`tx::RelayTx`] (one per link): packets of local tracks (and of remote tracks relayed
//!   onward) become media datagrams; NACKs are answered from its repair cache.
//! - [`rx::RelayRx`] (one per link connection): datagrams become packets of remote tracks, in
//!   one batch per home worker; gaps are NACKed on a schedule and the residual loss counted.
//! - [`budget::Budget`] (one per link): how much the link may send, from its configured rate,
//!   not from loss; beyond it media is dropped and counted, never queued.
//!
//! None reads the clock or touches a socket; the quinn driver moves their datagrams, frames
//! and batches, and calls them at `poll_timeout`.

pub mod budget;
pub mod rx;
pub mod tx;

pub use budget::{Budget, BudgetStats, LinkRate};
pub use rx::{RelayRx, RxRoute, RxStats};
pub use tx::{RelayTx, RepairCache, TxOutput, TxStats};

#[cfg(test)]
mod tests;
