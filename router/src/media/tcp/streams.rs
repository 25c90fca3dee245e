//! A worker's ICE-TCP connections, driven in its own mio loop: the thin
//! driver around [`Conn`]. It takes the connections the listener hands over,
//! reads them (at most [`READ_BUDGET`] per connection and turn), gives every
//! packet to the core, queues the core's TCP transmits and writes them
//! without ever blocking, and closes what the machines say to close. No
//! locks: the only shared things are the hand-over channel and the metrics.

use super::conn::{Conn, READ_BUDGET};
use super::metrics::{DropCounters, TransportMetrics};
use super::outq::{Class, Queued};
use super::{CloseReason, Handoff};
use crate::media::core::WorkerCore;
use crate::media::drive::FOLD_EVERY;
use crate::media::timers::TimerQueue;
use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use prometheus::IntGauge;
use std::collections::HashMap;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

/// The first poll token of a connection (lower ones are the worker's
/// socket and waker).
pub const TOKEN_BASE: usize = 16;

struct Slot {
    stream: TcpStream,
    conn: Conn,
    /// The socket may hold more bytes (edge-triggered readiness).
    readable: bool,
    /// The socket may take more bytes.
    writable: bool,
    /// Closed at the next [`Streams::pump`] (an error seen while writing).
    broken: Option<CloseReason>,
}

/// A worker's ICE-TCP connections. See the [module docs](self).
pub struct Streams {
    registry: Registry,
    handoffs: Receiver<Handoff>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_peer: HashMap<SocketAddr, usize>,
    timers: TimerQueue,
    /// Connections with output queued since the last flush.
    dirty: Vec<usize>,
    metrics: TransportMetrics,
    active: IntGauge,
    drops: DropCounters,
    next_fold: Option<Instant>,
}

impl Streams {
    /// No connections yet; `registry` is the worker's poll's, `handoffs`
    /// where the listener sends connections.
    pub fn new(registry: Registry, handoffs: Receiver<Handoff>, metrics: TransportMetrics) -> Self {
        Self {
            registry,
            handoffs,
            slots: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            timers: TimerQueue::new(),
            dirty: Vec::new(),
            active: metrics.open("active"),
            drops: DropCounters::new(&metrics),
            metrics,
            next_fold: None,
        }
    }

    /// Records a readiness event of token `token` (not one of ours: false).
    pub fn on_event(&mut self, token: Token, readable: bool, writable: bool) -> bool {
        let Some(i) = token.0.checked_sub(TOKEN_BASE) else {
            return false;
        };
        if let Some(Some(s)) = self.slots.get_mut(i) {
            s.readable |= readable;
            s.writable |= writable;
            if writable && !s.conn.out().is_empty() {
                self.dirty.push(i);
            }
        }
        true
    }

    /// Whether a connection still has bytes to read (the loop must not sleep).
    pub fn wants_turn(&self) -> bool {
        !self.handoffs.is_empty() || self.slots.iter().flatten().any(|s| s.readable)
    }

    /// When a connection idles out next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Takes new connections, reads every readable one into the core,
    /// closes idle ones. Returns the packets and bytes read.
    pub fn pump(&mut self, core: &mut WorkerCore, now: Instant) -> (u64, u64) {
        let mut total = (0, 0);
        while let Ok(h) = self.handoffs.try_recv() {
            if let Some(i) = self.adopt(h, now) {
                let r = self.feed(i, core, now, false);
                total = (total.0 + r.0, total.1 + r.1);
            }
        }
        for i in 0..self.slots.len() {
            let Some(s) = self.slots[i].as_mut() else {
                continue;
            };
            if let Some(reason) = s.broken {
                self.close(i, reason, Some(core));
            } else if s.readable {
                let r = self.feed(i, core, now, true);
                total = (total.0 + r.0, total.1 + r.1);
            }
        }
        while let Some(slot) = self.timers.pop_due(now) {
            let i = slot as usize;
            match self.slots.get(i).and_then(Option::as_ref) {
                Some(s) if s.conn.idle(now) => self.close(i, CloseReason::Idle, Some(core)),
                Some(s) => self.timers.set(slot, s.conn.deadline()),
                None => {}
            }
        }
        if self.next_fold.is_none_or(|t| now >= t) {
            self.next_fold = Some(now + FOLD_EVERY);
            self.drops.fold();
        }
        total
    }

    fn adopt(&mut self, h: Handoff, now: Instant) -> Option<usize> {
        if let Some(old) = self.by_peer.get(&h.peer).copied() {
            // A new connection cannot have a live one's address: that one
            // is gone without our noticing.
            self.close(old, CloseReason::Error, None);
        }
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut stream = TcpStream::from_std(h.stream);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .registry
            .register(&mut stream, Token(TOKEN_BASE + i), interest)
            .is_err()
        {
            self.free.push(i);
            self.metrics.closed(CloseReason::Error);
            return None;
        }
        let conn = Conn::new(h.peer, now, &h.bytes);
        self.timers.set(i as u32, conn.deadline());
        self.by_peer.insert(h.peer, i);
        self.slots[i] = Some(Slot {
            stream,
            conn,
            readable: true,
            writable: true,
            broken: None,
        });
        self.active.inc();
        Some(i)
    }

    /// Gives connection `i`'s buffered packets to the core, reading first
    /// (up to the budget) if `read`; closes it when a machine says so.
    fn feed(&mut self, i: usize, core: &mut WorkerCore, now: Instant, read: bool) -> (u64, u64) {
        let Some(s) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return (0, 0);
        };
        let peer = s.conn.peer();
        let (mut packets, mut bytes, mut budget) = (0u64, 0u64, READ_BUDGET);
        let mut closing = None;
        loop {
            // Every complete packet goes to the core before more is read.
            loop {
                match s.conn.next_packet() {
                    Ok(Some(p)) => {
                        let len = p.len() as u64;
                        let taken = core.handle_tcp_packet(now, peer, p);
                        packets += 1;
                        bytes += len;
                        if let Some(r) = s.conn.on_packet(now, taken) {
                            closing = Some(r);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(r) => {
                        closing = Some(r);
                        break;
                    }
                }
            }
            if closing.is_some() || !read || !s.readable {
                break;
            }
            if budget == 0 {
                // More next turn; `readable` stays set.
                break;
            }
            let spare = s.conn.spare();
            let want = spare.len().min(budget);
            match s.stream.read(&mut spare[..want]) {
                Ok(0) => closing = Some(CloseReason::Eof),
                Ok(n) => {
                    s.conn.filled(n);
                    budget -= n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => s.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => closing = Some(CloseReason::Error),
            }
        }
        let deadline = s.conn.deadline();
        match closing {
            Some(r) => self.close(i, r, Some(core)),
            None => self.timers.set(i as u32, deadline),
        }
        (packets, bytes)
    }

    /// Queues a packet for the connection from `peer`; false if there is
    /// none or its queue dropped the packet (counted).
    pub fn queue(&mut self, peer: SocketAddr, class: Class, packet: &[u8]) -> bool {
        let Some(i) = self.by_peer.get(&peer).copied() else {
            self.drops.other.inc();
            return false;
        };
        let Some(s) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return false;
        };
        let was_empty = s.conn.out().is_empty();
        match s.conn.queue(class, packet) {
            Queued::Yes => {
                if was_empty {
                    self.dirty.push(i);
                }
                true
            }
            Queued::Dropped(Class::Video) => {
                self.drops.video.inc();
                false
            }
            Queued::Dropped(Class::Keep) => {
                self.drops.other.inc();
                false
            }
        }
    }

    /// Writes what was queued to every connection that can take it,
    /// without blocking; what the socket does not take waits for its
    /// next writable event.
    pub fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for i in dirty.drain(..) {
            let Some(s) = self.slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            while s.writable && s.broken.is_none() && !s.conn.out().is_empty() {
                let out = s.conn.out();
                let (a, b) = out.slices();
                match s.stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
                    Ok(0) => s.broken = Some(CloseReason::Error),
                    Ok(n) => out.consume(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => s.writable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => s.broken = Some(CloseReason::Error),
                }
            }
            if s.broken.is_some() {
                // Closed in the next pump, where the core is at hand.
                s.readable = true;
            }
        }
        self.dirty = dirty;
    }

    /// Closes the connection from `peer` (its session closed).
    pub fn close_peer(&mut self, peer: SocketAddr) {
        if let Some(i) = self.by_peer.get(&peer).copied() {
            self.close(i, CloseReason::SessionClosed, None);
        }
    }

    /// Closes every connection (the worker stops).
    pub fn close_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                self.close(i, CloseReason::Shutdown, None);
            }
        }
    }

    fn close(&mut self, i: usize, reason: CloseReason, core: Option<&mut WorkerCore>) {
        let Some(mut s) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        let _ = self.registry.deregister(&mut s.stream);
        let peer = s.conn.peer();
        if self.by_peer.get(&peer) == Some(&i) {
            self.by_peer.remove(&peer);
        }
        if let Some(core) = core {
            core.tcp_closed(peer);
        }
        self.timers.remove(i as u32);
        self.free.push(i);
        self.active.dec();
        self.metrics.closed(reason);
        tracing::debug!(reason = reason.label(), "ICE-TCP connection closed");
    }
}
