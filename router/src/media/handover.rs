//! One UDP port for every worker (`media.single_port`): the workers' sockets
//! share it with `SO_REUSEPORT`, and the kernel gives each datagram to the
//! socket its 4-tuple hashes to, which is often not the worker that hosts
//! the datagram's session. This machine decides, on the worker that read a
//! datagram no session of its own knows the source of, where it goes:
//!
//! - a STUN binding request goes to the worker its USERNAME names
//!   (`media::ufrag`), whatever the source;
//! - anything else goes where datagrams from its source went before, once
//!   the worker that hosts their session has said so (a [`RouteNote`] on the
//!   bus, sent when one of its sessions took a handed-over request): an
//!   address gets a route only through a session that accepted it, so
//!   forged requests cannot fill the table;
//! - the rest stays here (and is dropped and counted as before).
//!
//! The kernel hashes a source to the same socket for as long as the sockets
//! stay, so one worker sees all of a source's datagrams and its routes are
//! the only ones needed. Routes idle for [`ROUTE_IDLE`] are forgotten when
//! the table is full ([`MAX_ROUTES`]); a browser's consent checks (every
//! few seconds) refresh its route.
//!
//! Sans-IO: `now` comes with every call; the core does the handing over.
//!
//! [`RouteNote`]: super::bus::RouteNote

use super::types::WorkerId;
use super::ufrag;
use prometheus::local::LocalIntCounter;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Routes kept per worker, at most.
pub const MAX_ROUTES: usize = 65_536;
/// A route unused for this long may be forgotten.
pub const ROUTE_IDLE: Duration = Duration::from_secs(60);

/// Where a datagram from an unknown source goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This worker handles it (its session, or nobody's).
    Here,
    /// Hand it to this worker.
    To(WorkerId),
}

#[derive(Debug, Clone, Copy)]
struct Route {
    worker: WorkerId,
    last: Instant,
}

/// A worker's routes. See the [module docs](self).
pub struct Handover {
    me: WorkerId,
    workers: usize,
    routes: HashMap<SocketAddr, Route>,
    handed: LocalIntCounter,
}

impl Handover {
    /// No routes yet, for worker `me` of `workers`; `handed` counts the
    /// datagrams handed over.
    pub fn new(me: WorkerId, workers: usize, handed: LocalIntCounter) -> Self {
        Self {
            me,
            workers,
            routes: HashMap::new(),
            handed,
        }
    }

    /// Where a datagram from `src`, a source no session here knows, goes.
    pub fn decide(&mut self, now: Instant, src: SocketAddr, buf: &[u8]) -> Decision {
        // RFC 7983: STUN starts with 0..=3.
        if buf.first().is_some_and(|b| *b <= 3) {
            if let Some(w) = ufrag::worker_of_binding_request(buf) {
                if w == self.me {
                    // A new session of this worker from a known source.
                    self.routes.remove(&src);
                    return Decision::Here;
                }
                return self.hand(w);
            }
        }
        match self.routes.get_mut(&src) {
            Some(r) => {
                r.last = now;
                let w = r.worker;
                self.hand(w)
            }
            None => Decision::Here,
        }
    }

    fn hand(&mut self, w: WorkerId) -> Decision {
        if w.index() >= self.workers {
            return Decision::Here;
        }
        self.handed.inc();
        Decision::To(w)
    }

    /// Worker `worker` hosts the session of datagrams from `src` (it said so
    /// in a route note).
    pub fn learn(&mut self, now: Instant, src: SocketAddr, worker: WorkerId) {
        if worker == self.me || worker.index() >= self.workers {
            return;
        }
        if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&src) {
            self.routes.retain(|_, r| now < r.last + ROUTE_IDLE);
            if self.routes.len() >= MAX_ROUTES {
                return;
            }
        }
        self.routes.insert(src, Route { worker, last: now });
    }

    /// Routes held.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Adds the count of datagrams handed over to the shared metric.
    pub fn fold(&self) {
        self.handed.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ufrag::tests::binding_request;
    use kaskade_protocol::SessionId;

    fn counter() -> LocalIntCounter {
        prometheus::IntCounter::new("handed", "test")
            .unwrap()
            .local()
    }

    fn src(i: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 1], 40_000 + i))
    }

    fn request_for(worker: u16) -> Vec<u8> {
        binding_request(&ufrag::make(WorkerId(worker), SessionId(7), 1))
    }

    #[test]
    fn binding_requests_go_to_the_worker_their_ufrag_names() {
        let t0 = Instant::now();
        let mut h = Handover::new(WorkerId(0), 4, counter());
        assert_eq!(
            h.decide(t0, src(1), &request_for(2)),
            Decision::To(WorkerId(2))
        );
        assert_eq!(h.decide(t0, src(1), &request_for(0)), Decision::Here);
        // A worker the router does not have: stays, to be dropped here.
        assert_eq!(h.decide(t0, src(1), &request_for(9)), Decision::Here);
        // Until the other worker confirms, the source's other datagrams stay.
        assert_eq!(h.decide(t0, src(1), &[0x80, 96, 0, 1]), Decision::Here);
        assert!(h.is_empty(), "a request alone makes no route");
    }

    #[test]
    fn a_confirmed_source_is_handed_over_until_a_request_names_this_worker() {
        let t0 = Instant::now();
        let mut h = Handover::new(WorkerId(0), 4, counter());
        h.learn(t0, src(1), WorkerId(3));
        for b in [&[22u8, 254, 253][..], &[0x80, 96, 0, 1], &[0x80, 200, 0, 1]] {
            assert_eq!(h.decide(t0, src(1), b), Decision::To(WorkerId(3)));
        }
        assert_eq!(
            h.decide(t0, src(2), &[22, 254]),
            Decision::Here,
            "another source"
        );
        // The source starts a session here: its route goes.
        assert_eq!(h.decide(t0, src(1), &request_for(0)), Decision::Here);
        assert_eq!(h.decide(t0, src(1), &[22, 254]), Decision::Here);
        // Notes naming this worker, or none of the router's, are ignored.
        h.learn(t0, src(4), WorkerId(0));
        h.learn(t0, src(5), WorkerId(4));
        assert!(h.is_empty());
    }

    #[test]
    fn a_full_table_forgets_idle_routes_first_and_never_grows_past_its_bound() {
        let t0 = Instant::now();
        let mut h = Handover::new(WorkerId(0), 2, counter());
        for i in 0..MAX_ROUTES {
            let a = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1));
            h.learn(t0, a, WorkerId(1));
        }
        assert_eq!(h.len(), MAX_ROUTES);
        // Full of fresh routes: a new one is not taken.
        h.learn(t0 + Duration::from_secs(1), src(1), WorkerId(1));
        assert_eq!(h.decide(t0, src(1), &[22]), Decision::Here);
        // Once they have idled, they make room.
        h.learn(
            t0 + ROUTE_IDLE + Duration::from_secs(1),
            src(1),
            WorkerId(1),
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h.decide(t0, src(1), &[22]), Decision::To(WorkerId(1)));
    }
}
