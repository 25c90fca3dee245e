//! The core's side of ICE-TCP and of the single UDP port: packets from a
//! worker's TCP connections, datagrams for sessions another worker hosts
//! (handed over on the bus), and the route notes that go back. The
//! decisions are `media::handover` and `media::tcp`'s machines; this file
//! wires them to the session table.

use super::sessions::SessionKey;
use super::WorkerCore;
use crate::media::bus::{BusMsg, Handed, RouteNote};
use crate::media::handover::{Decision, Handover};
use crate::media::types::WorkerId;
use std::net::SocketAddr;
use std::time::Instant;
use str0m::net::Protocol;

impl WorkerCore {
    /// Offers a passive ICE-TCP candidate at `addr` (the router's TCP
    /// listener, as advertised) in every new session.
    pub fn with_tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp_addr = Some(addr);
        self
    }

    /// Shares the UDP port with the other workers (`media.single_port`):
    /// datagrams for their sessions are handed over to them.
    pub fn with_single_port(mut self, workers: usize) -> Self {
        let handed = self.handover_metric.local();
        self.handover = Some(Handover::new(self.id, workers, handed));
        self
    }

    /// The advertised ICE-TCP candidate address, if ICE-TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// A packet from the ICE-TCP connection whose peer is `src`. Returns
    /// whether a session took it (the driver closes a connection whose
    /// first packet no session takes).
    pub fn handle_tcp_packet(&mut self, now: Instant, src: SocketAddr, buf: &[u8]) -> bool {
        self.now = now;
        if self.tcp_addr.is_none() {
            return false;
        }
        let key = match self.sessions.by_tcp(src) {
            Some(k) => k,
            None => match self.session_by_stun(buf) {
                Some(k) => k,
                None => return false,
            },
        };
        // Its own subscribers get the packet in `flush`, as for datagrams.
        self.receive(now, key, Protocol::Tcp, src, buf)
    }

    /// The driver closed the ICE-TCP connection from `src`.
    pub fn tcp_closed(&mut self, src: SocketAddr) {
        self.sessions.forget_tcp_addr(src);
    }

    /// A datagram from a source no session of this worker knows: handed
    /// over in single-port mode, or the first STUN request of a session.
    pub(super) fn route_unknown(
        &mut self,
        now: Instant,
        src: SocketAddr,
        buf: &[u8],
    ) -> Option<SessionKey> {
        if let Some(h) = self.handover.as_mut() {
            if let Decision::To(w) = h.decide(now, src, buf) {
                self.hand_over(w, src, buf);
                return None;
            }
        }
        self.session_by_stun(buf)
    }

    /// Adds a datagram to the batch for worker `w`: one `Datagrams`
    /// message per destination and batch of input.
    fn hand_over(&mut self, w: WorkerId, src: SocketAddr, buf: &[u8]) {
        let Some(batch) = self.out.bus.get_mut(w.index()) else {
            return;
        };
        let hint = self.handed_at.get(w.index()).copied().unwrap_or(usize::MAX);
        if let Some(BusMsg::Datagrams(h)) = batch.get_mut(hint) {
            h.push(src, buf);
            return;
        }
        let mut h = Box::new(Handed::new(self.id));
        h.push(src, buf);
        if let Some(at) = self.handed_at.get_mut(w.index()) {
            *at = batch.len();
        }
        batch.push(BusMsg::Datagrams(h));
    }

    /// Datagrams another worker read for this worker's sessions. A session
    /// that takes a STUN request tells that worker to hand over the rest
    /// of its source's datagrams.
    pub(super) fn handle_handed(&mut self, now: Instant, handed: &Handed) {
        for (src, buf) in handed.iter() {
            // No second hand-over: a datagram no session here knows is
            // dropped and counted, never sent round again.
            let key = match self.sessions.by_addr(src) {
                Some(k) => k,
                None => match self.session_by_stun(buf) {
                    Some(k) => k,
                    None => continue,
                },
            };
            let stun = buf.first().is_some_and(|b| *b <= 3);
            if self.receive(now, key, Protocol::Udp, src, buf) && stun {
                if let Some(b) = self.out.bus.get_mut(handed.from.index()) {
                    b.push(BusMsg::Route(Box::new(RouteNote {
                        src,
                        worker: self.id,
                    })));
                }
            }
        }
    }

    /// Another worker hosts the session of datagrams from `note.src`.
    pub(super) fn learn_route(&mut self, now: Instant, note: &RouteNote) {
        if let Some(h) = self.handover.as_mut() {
            h.learn(now, note.src, note.worker);
        }
    }
}
