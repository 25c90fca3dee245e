//! The simulated network between routers: which pairs can reach each other, connections on
//! them, and what each carries. Control frames are reliable and ordered (a QUIC stream);
//! datagrams are lost, delayed and reordered as the pair's impairment says.

use super::super::link::{ConnId, NodeId};
use bytes::Bytes;
use kaskade_protocol::cascade as cpb;
use kaskade_protocol::cascade::close::CloseCode;
use kaskade_protocol::cascade::datagram;
use rand::rngs::StdRng;
use rand::Rng as _;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

/// The datagram limit of every simulated connection.
pub const MAX_DATAGRAM: usize = 1200;
/// How long a dial to an unreachable router takes to fail.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// What a pair's path does to datagrams (one way; both ways alike).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter` per datagram (reorders them).
    pub jitter: Duration,
    /// Chance that a datagram is lost.
    pub loss: f64,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

/// What one direction of a pair carried.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// Media datagrams sent (before loss).
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, retransmissions.
    pub repairs: u64,
    /// Media datagrams per simulcast layer (first fragment or whole packet only).
    pub per_layer: [u64; 8],
    /// Control frames.
    pub frames: Vec<cpb::frame::Msg>,
}

#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) up: bool,
    pub(crate) imp: Impairment,
}

#[derive(Debug)]
pub(crate) struct Conn {
    /// (node index, its connection id) for both ends.
    pub(crate) ends: [(usize, ConnId); 2],
    pub(crate) open: bool,
    /// Per direction (from end 0, from end 1): when its last frame lands (frames stay ordered).
    last_frame: [Instant; 2],
}

/// Something that happens at a node at a given time.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A dial completes (both routers learn of the connection).
    Established { dialer: usize, acceptor: usize },
    /// A dial failed.
    DialFailed { node: usize, peer: NodeId },
    /// A control frame arrives.
    Frame {
        to: usize,
        conn: ConnId,
        from: NodeId,
        msg: cpb::frame::Msg,
    },
    /// A datagram arrives.
    Datagram {
        to: usize,
        conn: ConnId,
        data: Bytes,
    },
    /// The connection is gone at this end.
    Closed {
        to: usize,
        conn: ConnId,
        from: NodeId,
    },
}

/// The network.
#[derive(Debug)]
pub struct Net {
    pub(crate) pairs: BTreeMap<(usize, usize), Pair>,
    pub(crate) conns: Vec<Conn>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    seq: u64,
    carried: BTreeMap<(usize, usize), Carried>,
    /// Record control frames per direction (off for long runs).
    pub record_frames: bool,
    /// Node ids by index, and which nodes run.
    pub(crate) names: Vec<String>,
    pub(crate) running: Vec<bool>,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Net {
    pub(crate) fn new() -> Self {
        Self {
            pairs: BTreeMap::new(),
            conns: Vec::new(),
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            carried: BTreeMap::new(),
            record_frames: true,
            names: Vec::new(),
            running: Vec::new(),
        }
    }

    pub(crate) fn index_of(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| unreachable!("every node is registered with the network"))
    }

    pub(crate) fn alive(&self, node: usize) -> bool {
        self.running.get(node).copied().unwrap_or(false)
    }

    pub(crate) fn add_pair(&mut self, a: usize, b: usize, imp: Impairment) {
        self.pairs.insert(key(a, b), Pair { up: true, imp });
    }

    pub(crate) fn pair_mut(&mut self, a: usize, b: usize) -> Option<&mut Pair> {
        self.pairs.get_mut(&key(a, b))
    }

    /// The one-way delay between two routers (zero if they are no pair).
    pub(crate) fn delay(&self, a: usize, b: usize) -> Duration {
        self.pairs
            .get(&key(a, b))
            .map_or(Duration::ZERO, |p| p.imp.delay)
    }

    fn reachable(&self, a: usize, b: usize) -> Option<Impairment> {
        self.pairs.get(&key(a, b)).filter(|p| p.up).map(|p| p.imp)
    }

    pub(crate) fn at(&mut self, when: Instant, d: Delivery) {
        self.seq += 1;
        self.queue.push(Reverse((when, self.seq)));
        self.pending.insert(self.seq, d);
    }

    /// When the next delivery is due.
    pub(crate) fn next_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// The next delivery due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Delivery> {
        let Reverse((t, s)) = *self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.pending.remove(&s)
    }

    /// `from` dials `to`: established after a round trip if `to` is reachable and alive.
    pub(crate) fn dial(
        &mut self,
        now: Instant,
        from: usize,
        to: Option<usize>,
        peer: NodeId,
        alive: bool,
    ) {
        match to.and_then(|t| self.reachable(from, t).map(|imp| (t, imp))) {
            Some((t, imp)) if alive => self.at(
                now + imp.delay * 2,
                Delivery::Established {
                    dialer: from,
                    acceptor: t,
                },
            ),
            _ => self.at(
                now + DIAL_TIMEOUT,
                Delivery::DialFailed { node: from, peer },
            ),
        }
    }

    /// A connection between two nodes, both having accepted it.
    pub(crate) fn open(&mut self, now: Instant, a: (usize, ConnId), b: (usize, ConnId)) {
        self.conns.push(Conn {
            ends: [a, b],
            open: true,
            last_frame: [now, now],
        });
    }

    /// The open connection with this end, and which end it is.
    fn find(&self, node: usize, conn: ConnId) -> Option<(usize, usize)> {
        self.conns.iter().enumerate().rev().find_map(|(i, c)| {
            if !c.open {
                return None;
            }
            c.ends
                .iter()
                .position(|e| *e == (node, conn))
                .map(|side| (i, side))
        })
    }

    pub(crate) fn send_frame(
        &mut self,
        now: Instant,
        from: (usize, &NodeId),
        conn: ConnId,
        msg: cpb::frame::Msg,
    ) {
        let Some((i, side)) = self.find(from.0, conn) else {
            return;
        };
        let (to, to_conn) = self.conns[i].ends[1 - side];
        let Some(imp) = self.reachable(from.0, to) else {
            return;
        };
        let when = (now + imp.delay).max(self.conns[i].last_frame[side]);
        self.conns[i].last_frame[side] = when;
        if self.record_frames {
            self.carried
                .entry((from.0, to))
                .or_default()
                .frames
                .push(msg.clone());
        }
        self.at(
            when,
            Delivery::Frame {
                to,
                conn: to_conn,
                from: from.1.clone(),
                msg,
            },
        );
    }

    pub(crate) fn send_datagram(
        &mut self,
        now: Instant,
        rng: &mut StdRng,
        from: usize,
        conn: ConnId,
        data: Bytes,
        repair: bool,
    ) {
        let Some((i, side)) = self.find(from, conn) else {
            return;
        };
        let (to, to_conn) = self.conns[i].ends[1 - side];
        let Some(imp) = self.reachable(from, to) else {
            return;
        };
        let c = self.carried.entry((from, to)).or_default();
        c.datagrams += 1;
        c.bytes += data.len() as u64;
        c.repairs += u64::from(repair);
        if let Ok((h, f, _)) = datagram::decode_header(&data) {
            if f.is_none_or(|f| f.index == 0) {
                c.per_layer[usize::from(h.layer.min(7))] += 1;
            }
        }
        if rng.random_bool(imp.loss.clamp(0.0, 1.0)) {
            return;
        }
        let jitter = if imp.jitter.is_zero() {
            Duration::ZERO
        } else {
            imp.jitter.mul_f64(rng.random::<f64>())
        };
        self.at(
            now + imp.delay + jitter,
            Delivery::Datagram {
                to,
                conn: to_conn,
                data,
            },
        );
    }

    /// `node` closes its connection `conn` (or it dies): the other end learns it a one-way
    /// delay later (at once when the path is broken: its idle timeout, shortened).
    pub(crate) fn close(
        &mut self,
        now: Instant,
        node: usize,
        conn: ConnId,
        from: &NodeId,
        _code: CloseCode,
    ) {
        let Some((i, side)) = self.find(node, conn) else {
            return;
        };
        self.conns[i].open = false;
        let (to, to_conn) = self.conns[i].ends[1 - side];
        let delay = self
            .reachable(node, to)
            .map_or(Duration::ZERO, |imp| imp.delay);
        self.at(
            now + delay,
            Delivery::Closed {
                to,
                conn: to_conn,
                from: from.clone(),
            },
        );
    }

    /// Every open connection between `a` and `b`.
    pub(crate) fn conns_between(&self, a: usize, b: usize) -> Vec<[(usize, ConnId); 2]> {
        self.conns
            .iter()
            .filter(|c| c.open && key(c.ends[0].0, c.ends[1].0) == key(a, b))
            .map(|c| c.ends)
            .collect()
    }

    /// Every open connection of `node`.
    pub(crate) fn conns_of(&self, node: usize) -> Vec<[(usize, ConnId); 2]> {
        self.conns
            .iter()
            .filter(|c| c.open && c.ends.iter().any(|e| e.0 == node))
            .map(|c| c.ends)
            .collect()
    }

    pub(crate) fn mark_closed(&mut self, ends: [(usize, ConnId); 2]) {
        for c in &mut self.conns {
            if c.ends == ends {
                c.open = false;
            }
        }
    }

    /// What `from` sent to `to`.
    pub fn carried(&self, from: usize, to: usize) -> Carried {
        self.carried.get(&(from, to)).cloned().unwrap_or_default()
    }

    /// Forgets what was carried (to measure a window).
    pub fn reset_carried(&mut self) {
        self.carried.clear();
    }
}
