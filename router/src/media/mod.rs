//! The media plane: worker cores (sans-IO), their mio drivers and the
//! fan-out bus between them.

pub mod bus;
pub mod command;
pub mod core;
pub mod layers;
pub mod outstream;
pub mod rewrite;
pub mod rtc;
pub mod select;
pub mod session;
pub mod speaker;
pub mod types;
pub mod udp;
pub mod vp8;
pub mod worker;

pub use self::core::{Outputs, WorkerCore};
pub use bus::{BusBatch, BusMsg};
pub use command::{CloseReason, Command, MediaError, WorkerEvent};
pub use rtc::RtcFactory;
pub use session::Datagram;
pub use types::{MediaPacket, TrackInfo, WorkerId};
