//! The ICE-TCP listener's decisions about the connections it accepted and
//! has not handed over yet. Sans-IO: the listener thread accepts, reads into
//! [`Pending::spare`] and acts on the [`Verdict`]; time comes in as `now`.
//!
//! - A connection's first packet must be a STUN binding request whose
//!   USERNAME names one of the router's workers (`media::ufrag`): then it
//!   goes to that worker, with every byte read so far.
//! - Anything else (bytes that are not RFC 4571 frames, a first packet that
//!   is not such a request) closes it at once: `garbage`.
//! - A connection that has not sent its request within [`FIRST_PACKET_TIMEOUT`]
//!   is closed: `timeout`.
//! - At most [`MAX_PENDING`] wait at once. One more closes the one that has
//!   waited longest (`pending_limit`): a real client sends its request one
//!   round trip after connecting, so an attacker must open more than
//!   [`MAX_PENDING`] connections per round trip to crowd it out, not per
//!   timeout.

use super::CloseReason;
use crate::media::timers::TimerQueue;
use crate::media::types::WorkerId;
use crate::media::udp::MAX_DATAGRAM;
use kaskade_protocol::rfc4571::{Decoder, PREFIX_LEN};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an accepted connection may take to send its first STUN
/// binding request.
pub const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting for their first request, at most.
pub const MAX_PENDING: usize = 256;

/// A pending connection: its slot and the generation of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingId {
    slot: u32,
    generation: u32,
}

impl PendingId {
    /// The slot, for the driver's own table (sockets, poll tokens).
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

/// What to do with a connection after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its first packet is not complete yet: read more.
    Wait,
    /// Hand it to this worker ([`Pending::take`] gives the bytes read).
    HandTo(WorkerId),
    /// Close it.
    Close(CloseReason),
}

struct Entry {
    generation: u32,
    peer: SocketAddr,
    decoder: Decoder,
    live: bool,
}

/// The connections waiting for their first packet. See the [module docs](self).
pub struct Pending {
    entries: Vec<Entry>,
    free: Vec<u32>,
    timers: TimerQueue,
    workers: usize,
    live: usize,
}

impl Pending {
    /// Nothing pending, for a router of `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            timers: TimerQueue::new(),
            workers,
            live: 0,
        }
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// A connection from `peer` was accepted. Returns its id, and the one
    /// to close to stay within [`MAX_PENDING`] (the one that waited longest).
    pub fn accept(&mut self, now: Instant, peer: SocketAddr) -> (PendingId, Option<PendingId>) {
        let evicted = if self.live >= MAX_PENDING {
            // Everything waiting is due by `now + timeout`: the earliest goes.
            let slot = self.timers.pop_due(now + FIRST_PACKET_TIMEOUT);
            slot.and_then(|s| self.release(s))
        } else {
            None
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    peer,
                    // One largest datagram and its prefix: a first packet
                    // longer than that is not a binding request.
                    decoder: Decoder::new(MAX_DATAGRAM, PREFIX_LEN + MAX_DATAGRAM),
                    live: false,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[slot as usize];
        e.peer = peer;
        e.live = true;
        e.decoder = Decoder::new(MAX_DATAGRAM, PREFIX_LEN + MAX_DATAGRAM);
        self.live += 1;
        self.timers.set(slot, now + FIRST_PACKET_TIMEOUT);
        let id = PendingId {
            slot,
            generation: e.generation,
        };
        (id, evicted)
    }

    fn entry(&mut self, id: PendingId) -> Option<&mut Entry> {
        self.entries
            .get_mut(id.slot())
            .filter(|e| e.live && e.generation == id.generation)
    }

    /// Where to read the connection's next bytes (`None`: not pending).
    pub fn spare(&mut self, id: PendingId) -> Option<&mut [u8]> {
        Some(self.entry(id)?.decoder.spare())
    }

    /// `n` bytes were read into [`Pending::spare`] (0: the peer closed).
    pub fn filled(&mut self, id: PendingId, n: usize) -> Verdict {
        let workers = self.workers;
        let Some(e) = self.entry(id) else {
            return Verdict::Close(CloseReason::Garbage);
        };
        if n == 0 {
            return Verdict::Close(CloseReason::Eof);
        }
        e.decoder.filled(n);
        first_packet(e.decoder.buffered(), workers)
    }

    /// Takes a connection handed over: its peer and every byte read from it.
    pub fn take(&mut self, id: PendingId) -> Option<(SocketAddr, Vec<u8>)> {
        let e = self.entry(id)?;
        let out = (e.peer, e.decoder.buffered().to_vec());
        self.release(id.slot);
        Some(out)
    }

    /// Forgets a connection the driver closed.
    pub fn close(&mut self, id: PendingId) {
        if self.entry(id).is_some() {
            self.release(id.slot);
        }
    }

    fn release(&mut self, slot: u32) -> Option<PendingId> {
        let e = self.entries.get_mut(slot as usize)?;
        if !e.live {
            return None;
        }
        let id = PendingId {
            slot,
            generation: e.generation,
        };
        e.live = false;
        e.generation = e.generation.wrapping_add(1);
        self.timers.remove(slot);
        self.free.push(slot);
        self.live -= 1;
        Some(id)
    }

    /// When the next connection times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A connection whose first packet is overdue, taken off the table: the
    /// driver closes it (`timeout`). Call until `None`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<PendingId> {
        let slot = self.timers.pop_due(now)?;
        self.release(slot)
    }
}

/// The verdict on what a connection has sent so far.
fn first_packet(buffered: &[u8], workers: usize) -> Verdict {
    let Some(prefix) = buffered.first_chunk::<PREFIX_LEN>() else {
        return Verdict::Wait;
    };
    let len = usize::from(u16::from_be_bytes(*prefix));
    if len == 0 || len > MAX_DATAGRAM {
        return Verdict::Close(CloseReason::Garbage);
    }
    let Some(packet) = buffered.get(PREFIX_LEN..PREFIX_LEN + len) else {
        return Verdict::Wait;
    };
    match crate::media::ufrag::worker_of_binding_request(packet) {
        Some(w) if w.index() < workers => Verdict::HandTo(w),
        _ => Verdict::Close(CloseReason::Garbage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ufrag;
    use kaskade_protocol::SessionId;

    fn peer(i: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 10_000 + i))
    }

    /// A framed STUN binding request for a session on `worker`.
    fn request(worker: u16) -> Vec<u8> {
        let u = ufrag::make(WorkerId(worker), SessionId(42), 7);
        let packet = ufrag::tests::binding_request(&u);
        let mut out = (packet.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&packet);
        out
    }

    fn feed(p: &mut Pending, id: PendingId, bytes: &[u8]) -> Verdict {
        let spare = p.spare(id).unwrap();
        spare[..bytes.len()].copy_from_slice(bytes);
        p.filled(id, bytes.len())
    }

    #[test]
    fn a_binding_request_goes_to_the_worker_its_ufrag_names_with_every_byte_read() {
        let t0 = Instant::now();
        let mut p = Pending::new(4);
        let (id, _) = p.accept(t0, peer(1));
        let mut bytes = request(2);
        bytes.extend_from_slice(&[0, 3, 22, 254, 253]); // a DTLS packet right behind
                                                        // Byte by byte: the verdict waits for the whole packet.
        for b in &bytes[..bytes.len() - 6] {
            assert_eq!(feed(&mut p, id, &[*b]), Verdict::Wait);
        }
        assert_eq!(
            feed(&mut p, id, &bytes[bytes.len() - 6..]),
            Verdict::HandTo(WorkerId(2))
        );
        assert_eq!(p.take(id), Some((peer(1), bytes)));
        assert!(p.is_empty());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn garbage_is_closed_at_once() {
        let t0 = Instant::now();
        let mut p = Pending::new(4);
        let cases: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\n\r\n", // not framed: announces 18245 bytes
            &[0, 0],                   // an empty packet
            &[0, 4, 0x80, 96, 0, 1],   // RTP first
            &[0, 2, 0, 1],             // a truncated STUN header
            &[],                       // (replaced below by a request for worker 9)
        ];
        for (i, c) in cases.iter().enumerate() {
            let (id, _) = p.accept(t0, peer(i as u16));
            let bytes = if c.is_empty() { request(9) } else { c.to_vec() };
            assert_eq!(
                feed(&mut p, id, &bytes),
                Verdict::Close(CloseReason::Garbage),
                "case {i}"
            );
            p.close(id);
        }
        assert!(p.is_empty());
    }

    #[test]
    fn silent_connections_time_out_and_the_longest_waiting_make_room() {
        let t0 = Instant::now();
        let mut p = Pending::new(1);
        let mut ids = Vec::new();
        for i in 0..MAX_PENDING {
            let at = t0 + Duration::from_millis(i as u64);
            let (id, evicted) = p.accept(at, peer(i as u16));
            assert_eq!(evicted, None);
            ids.push(id);
        }
        // One more: the first one goes.
        let (late, evicted) = p.accept(t0 + Duration::from_secs(1), peer(9999));
        assert_eq!(evicted, Some(ids[0]));
        assert_eq!(p.len(), MAX_PENDING);
        assert!(p.spare(ids[0]).is_none(), "an evicted id is stale");
        // Nothing is due before the timeout.
        assert_eq!(
            p.pop_expired(t0 + FIRST_PACKET_TIMEOUT - Duration::from_millis(1)),
            None
        );
        assert_eq!(
            p.poll_timeout(),
            Some(t0 + FIRST_PACKET_TIMEOUT + Duration::from_millis(1))
        );
        let mut expired = Vec::new();
        while let Some(id) = p.pop_expired(t0 + FIRST_PACKET_TIMEOUT + Duration::from_millis(500)) {
            expired.push(id);
        }
        assert_eq!(expired.len(), MAX_PENDING - 1);
        assert!(expired == ids[1..], "the others expire, oldest first");
        assert_eq!(p.len(), 1);
        // A slot reused by a new connection is not the old one.
        let (fresh, _) = p.accept(t0 + Duration::from_secs(2), peer(1));
        assert_ne!(fresh, ids[1]);
        assert!(p.spare(late).is_some());
    }

    #[test]
    fn a_peer_that_closes_before_its_request_is_closed() {
        let mut p = Pending::new(1);
        let (id, _) = p.accept(Instant::now(), peer(1));
        assert_eq!(p.filled(id, 0), Verdict::Close(CloseReason::Eof));
    }
}
