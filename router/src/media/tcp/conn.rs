//! One ICE-TCP connection on the worker that hosts its session: the packets
//! it delivers, what waits to be written to it, and when it is closed.
//! Sans-IO: the driver reads into [`Conn::spare`], gives each packet to the
//! core and reports whether a session took it ([`Conn::on_packet`]), writes
//! [`Conn::out`] and asks [`Conn::deadline`] when to look again.
//!
//! - The first packet comes from the listener, already checked to be a STUN
//!   binding request for this worker. If no session takes it (the ufrag is
//!   not one of this worker's sessions), the connection is closed:
//!   `unknown_session`.
//! - A connection no session has taken a packet from for [`IDLE_TIMEOUT`]
//!   is closed: `idle` (a browser sends a consent check every few seconds;
//!   a closed session's peer stops being answered).
//! - Packets that are not RFC 4571 frames of at most one datagram close it:
//!   `framing`.

use super::outq::{Class, OutQueue, Queued};
use super::CloseReason;
use crate::media::udp::MAX_DATAGRAM;
use kaskade_protocol::rfc4571::{Decoder, PREFIX_LEN};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A connection whose packets no session has taken for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from one connection per turn of the worker's loop, at most
/// (then the other inputs get their turn; the rest is read next turn).
pub const READ_BUDGET: usize = 64 * 1024;
/// The receive buffer of a connection: a few datagrams per read.
const READ_BUFFER: usize = 4 * (PREFIX_LEN + MAX_DATAGRAM);

/// One connection. See the [module docs](self).
#[derive(Debug)]
pub struct Conn {
    peer: SocketAddr,
    decoder: Decoder,
    out: OutQueue,
    /// A session has taken a packet of it.
    adopted: bool,
    last_taken: Instant,
}

impl Conn {
    /// A connection from `peer` handed over at `now` with the bytes the
    /// listener read from it (at most one datagram and its prefix, so they
    /// fit the buffer).
    pub fn new(peer: SocketAddr, now: Instant, first: &[u8]) -> Self {
        let mut decoder = Decoder::new(MAX_DATAGRAM, READ_BUFFER);
        let taken = decoder.push(first);
        debug_assert_eq!(
            taken,
            first.len(),
            "the listener reads less than the buffer holds"
        );
        Self {
            peer,
            decoder,
            out: OutQueue::new(),
            adopted: false,
            last_taken: now,
        }
    }

    /// The peer's address (the session's remote candidate).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where to read next.
    pub fn spare(&mut self) -> &mut [u8] {
        self.decoder.spare()
    }

    /// `n` bytes were read into [`Conn::spare`].
    pub fn filled(&mut self, n: usize) {
        self.decoder.filled(n);
    }

    /// The next complete packet, if any; `Err` closes the connection.
    pub fn next_packet(&mut self) -> Result<Option<&[u8]>, CloseReason> {
        self.decoder.next_packet().map_err(|_| CloseReason::Framing)
    }

    /// Whether the packet just taken from [`Conn::next_packet`] was taken
    /// by a session; `Some` closes the connection.
    pub fn on_packet(&mut self, now: Instant, taken: bool) -> Option<CloseReason> {
        if taken {
            self.adopted = true;
            self.last_taken = now;
            None
        } else if !self.adopted {
            Some(CloseReason::UnknownSession)
        } else {
            None
        }
    }

    /// When to look at it again (it idles out then).
    pub fn deadline(&self) -> Instant {
        self.last_taken + IDLE_TIMEOUT
    }

    /// Whether it has idled out.
    pub fn idle(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// Queues a packet to the peer (see [`super::outq`] for the policy).
    pub fn queue(&mut self, class: Class, packet: &[u8]) -> Queued {
        self.out.push(class, packet)
    }

    /// What waits to be written.
    pub fn out(&mut self) -> &mut OutQueue {
        &mut self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 50_000))
    }

    fn frames(c: &mut Conn) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(p) = c.next_packet().unwrap() {
            v.push(p.to_vec());
        }
        v
    }

    #[test]
    fn the_first_packet_no_session_takes_closes_the_connection() {
        let t0 = Instant::now();
        let mut c = Conn::new(peer(), t0, &[0, 3, 0, 1, 2]);
        assert_eq!(frames(&mut c), vec![vec![0, 1, 2]]);
        assert_eq!(c.on_packet(t0, false), Some(CloseReason::UnknownSession));
    }

    #[test]
    fn once_adopted_a_refused_packet_is_only_dropped_and_silence_idles_it_out() {
        let t0 = Instant::now();
        let mut c = Conn::new(peer(), t0, &[]);
        assert_eq!(c.on_packet(t0, true), None);
        assert_eq!(c.on_packet(t0, false), None);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(c.on_packet(later, true), None);
        assert_eq!(c.deadline(), later + IDLE_TIMEOUT);
        assert!(!c.idle(later + IDLE_TIMEOUT - Duration::from_millis(1)));
        assert!(c.idle(later + IDLE_TIMEOUT));
    }

    #[test]
    fn reads_split_into_packets_and_bad_framing_closes() {
        let t0 = Instant::now();
        let mut c = Conn::new(peer(), t0, &[0, 2, 9]);
        assert!(frames(&mut c).is_empty(), "half a packet");
        let spare = c.spare();
        spare[..4].copy_from_slice(&[9, 0, 1, 7]);
        c.filled(4);
        assert_eq!(frames(&mut c), vec![vec![9, 9], vec![7]]);
        let spare = c.spare();
        spare[..2].copy_from_slice(&[0xff, 0xff]);
        c.filled(2);
        assert_eq!(c.next_packet(), Err(CloseReason::Framing));
    }
}
