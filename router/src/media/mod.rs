//! The media plane: worker cores (sans-IO), the one loop that drives them,
//! their mio threads and the fan-out bus between them.

pub mod bus;
pub mod command;
pub mod core;
pub mod drive;
pub mod handover;
pub mod layer;
pub mod layers;
pub mod outstream;
pub mod placement;
pub mod rewrite;
pub mod rtc;
pub mod select;
pub mod session;
pub mod speaker;
pub mod tcp;
pub mod timers;
pub mod types;
pub mod udp;
pub mod ufrag;
pub mod vp8;
pub mod worker;

pub use self::core::{Outputs, WorkerCore};
pub use bus::{BusBatch, BusMsg, Outbox};
pub use command::{CloseReason, Command, MediaError, WorkerEvent};
pub use layer::{Layer, LayerMask};
pub use rtc::RtcFactory;
pub use session::{Datagram, Transport};
pub use types::{MediaPacket, TrackInfo, WorkerId};
