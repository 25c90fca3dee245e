//! ICE-TCP (RFC 6544, passive candidates, RFC 4571 framing): one listener
//! per router, its connections handed to the worker that hosts their
//! session and driven in that worker's mio loop.
//!
//! ```text
//!  browser ──TCP──► listener thread ──(stream + bytes read)──► worker W
//!                   accepts, reads the first          registers it in its
//!                   STUN binding request, finds       own mio Poll; packets
//!                   W in its ufrag (media::ufrag)     go to the core like
//!                                                     datagrams, no locks
//! ```
//!
//! The decisions are sans-IO machines with their own tests: [`pending`]
//! (the listener's: what to accept, hand over or close, when), [`conn`] (a
//! worker's connection: which packets a session took, idling out) and
//! [`outq`] (what a slow reader loses: video first, never the worker's
//! time). [`listener`] and [`streams`] are the thin drivers.

pub mod conn;
pub mod listener;
pub mod metrics;
pub mod outq;
pub mod pending;
pub mod streams;

use std::net::SocketAddr;

/// The kernel send buffer asked for on each connection. Small on purpose:
/// a bigger one hides a slow reader from the queue policy ([`outq`]) and
/// from the bandwidth estimate, which see the delay only once this is full.
pub const SEND_BUFFER: usize = 128 * 1024;

/// Why a connection was closed: the `reason` of
/// `kaskade_tcp_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No STUN binding request within the first-packet timeout.
    Timeout,
    /// The first packet was not a STUN binding request for one of this
    /// router's workers (or not RFC 4571 framing at all).
    Garbage,
    /// Closed to make room: too many connections waited for their first
    /// packet.
    PendingLimit,
    /// The worker's hand-over queue was full.
    WorkerBusy,
    /// No session of the worker took its first packet.
    UnknownSession,
    /// An oversized or empty packet on an adopted connection.
    Framing,
    /// No session took a packet from it for a while.
    Idle,
    /// Its session closed.
    SessionClosed,
    /// The peer closed it.
    Eof,
    /// A socket error.
    Error,
    /// The router stopped.
    Shutdown,
}

impl CloseReason {
    /// Every reason, for the metric's label values.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Timeout,
        CloseReason::Garbage,
        CloseReason::PendingLimit,
        CloseReason::WorkerBusy,
        CloseReason::UnknownSession,
        CloseReason::Framing,
        CloseReason::Idle,
        CloseReason::SessionClosed,
        CloseReason::Eof,
        CloseReason::Error,
        CloseReason::Shutdown,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Timeout => "timeout",
            CloseReason::Garbage => "garbage",
            CloseReason::PendingLimit => "pending_limit",
            CloseReason::WorkerBusy => "worker_busy",
            CloseReason::UnknownSession => "unknown_session",
            CloseReason::Framing => "framing",
            CloseReason::Idle => "idle",
            CloseReason::SessionClosed => "session_closed",
            CloseReason::Eof => "eof",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// A connection the listener hands to a worker.
#[derive(Debug)]
pub struct Handoff {
    /// The connection (non-blocking).
    pub stream: std::net::TcpStream,
    /// Its peer.
    pub peer: SocketAddr,
    /// Every byte read from it so far (its first packet, and what followed).
    pub bytes: Vec<u8>,
}

/// Asks the kernel for [`SEND_BUFFER`] and no Nagle delay (packets are
/// written a turn's worth at a time already).
pub fn tune(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = stream.set_nodelay(true);
    let v = SEND_BUFFER as libc::c_int;
    // SAFETY: the fd is a live socket owned by `stream`; `v` outlives the
    // call and the length is its size. Failure only keeps the default.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
