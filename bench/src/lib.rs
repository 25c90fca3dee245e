//! Micro benchmarks of the kaskade hot path next to a measured floor.
//!
//! * `cargo bench -p kaskade-bench --bench hotpath`: a worker core forwarding
//!   one publisher's video to N subscribers (SRTP included) next to the floor
//!   routine, in ns and instructions per outgoing packet.
//! * `cargo bench -p kaskade-bench --bench memory`: router bytes per
//!   subscribed video track at steady state, router allocations per packet.
//! * `cargo bench -p kaskade-bench --bench parallel`: one room on 1 and on 2
//!   worker cores, each on its own thread; wall time per outgoing packet.
//! * `cargo bench -p kaskade-bench --bench scenario`: whole simulated rooms
//!   (1 → 6, meetings); router CPU and instructions per forwarded packet.
//!
//! See `docs/benchmarks.md` for the method and the figures.

pub mod alloc;
pub mod fanout;
pub mod floor;
pub mod measure;
pub mod net;
pub mod parallel;
pub mod scenario;
