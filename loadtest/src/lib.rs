//! Synthetic WebRTC clients for kaskade: one str0m-based client library serving the
//! router's deterministic tests, the load tester and the benchmarks.
//!
//! Everything here is sans-IO and deterministic given a seed: no sockets, no clock
//! reads, every call that moves time takes `now: Instant`.
//!
//! * [`Client`] — a browser-like peer (full ICE, DTLS, SRTP, RTP mode) that publishes
//!   synthetic media and records what it receives.
//! * [`media`] — pure synthetic sources (Opus, VP8 simulcast layers, H.264) whose
//!   payloads embed a [`Probe`] for exact loss and latency measurement.
//! * [`netsim`] — [`SimNet`], a seeded network with delay, jitter, loss and bottlenecks.
//!
//! # Driving clients on a virtual clock
//!
//! ```
//! use std::time::{Duration, Instant};
//! use kaskade_loadtest::{Client, ClientConfig, SimNet};
//!
//! let t0 = Instant::now();
//! let (a_addr, b_addr) = ("10.0.0.1:5000".parse().unwrap(), "10.0.0.2:5000".parse().unwrap());
//! let mut a = Client::new(ClientConfig::new(a_addr, t0).seed(1), t0).unwrap();
//! let mut b = Client::new(ClientConfig::new(b_addr, t0).seed(2), t0).unwrap();
//! a.add_audio();
//! a.add_video(&["q", "h", "f"]);
//! let offer = a.create_offer().unwrap();
//! let answer = b.accept_offer(&offer).unwrap();
//! a.accept_answer(&answer).unwrap();
//!
//! let mut net = SimNet::new(7);
//! let mut now = t0;
//! while now < t0 + Duration::from_secs(3) {
//!     while let Some(d) = net.poll_deliver(now) {
//!         let c = if d.dst == a_addr { &mut a } else { &mut b };
//!         c.handle_receive(now, d.src, &d.data);
//!     }
//!     for c in [&mut a, &mut b] {
//!         if c.next_timeout() <= now {
//!             c.handle_timeout(now); // str0m timers + media due
//!         }
//!         while let Some(d) = c.poll_transmit() {
//!             net.send(now, d);
//!         }
//!     }
//!     let next = a.next_timeout().min(b.next_timeout());
//!     let next = net.next_delivery().map_or(next, |d| d.min(next));
//!     now = next.max(now + Duration::from_micros(10)); // never stand still
//! }
//! assert!(b.received().iter().all(|r| r.packets > 0 && r.lost() == 0));
//! ```

#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

use std::net::SocketAddr;

pub mod client;
pub mod media;
pub mod netsim;
pub mod publish;
pub mod recv;
pub mod tcp;
pub mod udp;

pub use client::{Client, ClientConfig, ClientError, ClientEvent, BROWSER_KEYFRAME_MIN_INTERVAL};
pub use media::{MediaPacket, MediaSource, Probe, VideoLayer};
pub use netsim::{Link, LinkKey, LinkStats, SimNet};
pub use publish::{LayerStats, TrackId, TrackState, TrackStats, VideoCodec};
pub use recv::{LatencyStats, MediaRecv, RecvPacket, RecvStream, SourceLoss};
pub use tcp::TcpTransport;
pub use udp::{drive_until, UdpClient, UdpError};

/// A UDP datagram between two addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// Contents.
    pub data: Vec<u8>,
}
