//! Several whole routers on one virtual clock: each a testkit [`Sim`] (its real worker cores
//! and control plane, str0m clients as browsers on its own simulated network) with its
//! cascade's real link-control and relay machines, the routers joined by the cascade's
//! simulated network ([`crate::cascade::sim::Net`]: delay, jitter, loss, breaks). No sockets,
//! no sleeps, no tokio; a seed fixes every random choice.
//!
//! The cascade of each router is driven the way the production driver drives it
//! (`cascade::manager`): the control plane's hooks go to the link machine, the machine's
//! outputs go to the control plane (remote tracks, link demand, keyframe requests) and the
//! network, packets the workers relay go through the link's `RelayTx`, and datagrams that
//! arrive go through the connection's `RelayRx` into the home workers with
//! `Control::ingest_batch`; each link sends within its budget (`cascade.link_rate_mbps`).
//! What the production driver adds and this does not: QUIC itself (congestion control,
//! TLS), the metrics of the cascade (`kaskade_cascade_*`; [`Side::counts`] has the link
//! figures instead).

mod hooks;
mod side;

pub use side::{LinkCounts, Side};

use super::{Sim, SimOptions};
use crate::cascade::link::{
    Admission, LinkConfig, LinkControl, LinkView, NodeId, RequestId, RouterRef,
};
use crate::cascade::relay::LinkRate;
use crate::cascade::sim::{Carried, Delivery, Impairment, Net};
use crate::cascade::NodeIdentity;
use crate::config::CascadeConfig;
use crate::control::{ApiError, Identity};
use hooks::HookQueue;
use kaskade_protocol::RoomId;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use side::Env;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One router of the cluster.
pub struct Router {
    /// Its workers, control plane and clients.
    pub sim: Sim,
    /// Its cascade.
    pub side: Side,
    /// Who it is.
    pub identity: NodeIdentity,
}

/// Several routers and the network between them. See the [module docs](self).
pub struct Cluster {
    /// When the simulation started.
    pub start: Instant,
    /// The virtual clock.
    pub now: Instant,
    /// The routers, in the order given.
    pub routers: Vec<Router>,
    /// The network between routers.
    pub net: Net,
    rng: StdRng,
    ids: BTreeMap<NodeId, usize>,
    next_req: u64,
}

impl Cluster {
    /// Routers `(node_id, region)`, each with `workers` worker cores, and the pairs that list
    /// each other in `cascade.peers`, with what their path does to datagrams.
    pub fn new(
        nodes: &[(&str, &str)],
        links: &[(&str, &str, Impairment)],
        workers: usize,
        cfg: LinkConfig,
        seed: u64,
    ) -> Self {
        let start = Instant::now();
        let mut net = Net::new();
        let ids: BTreeMap<NodeId, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (NodeId::from(*id), i))
            .collect();
        let mut peers = vec![Vec::new(); nodes.len()];
        for (a, b, imp) in links {
            let (ia, ib) = (ids[&NodeId::from(*a)], ids[&NodeId::from(*b)]);
            net.add_pair(ia, ib, *imp);
            peers[ia].push(NodeId::from(*b));
            peers[ib].push(NodeId::from(*a));
        }
        let default_rate = LinkRate::from_mbps(CascadeConfig::default().link_rate_mbps);
        let mut routers = Vec::new();
        for (i, (id, region)) in nodes.iter().enumerate() {
            net.names.push(id.to_string());
            net.running.push(true);
            let identity = NodeIdentity {
                node_id: id.to_string(),
                region: region.to_string(),
            };
            let mut sim = Sim::with_identity(
                workers,
                seed.wrapping_mul(31).wrapping_add(i as u64),
                SimOptions::default(),
                Identity {
                    node_id: id.to_string(),
                    region: region.to_string(),
                },
                start,
            );
            sim.relayed = Some(Vec::new());
            let hooks = Arc::new(HookQueue::default());
            sim.control.set_cascade(hooks.clone());
            let machine = LinkControl::new(identity.clone(), peers[i].clone(), cfg.clone(), start);
            routers.push(Router {
                sim,
                side: Side::new(machine, hooks, default_rate),
                identity,
            });
        }
        Self {
            start,
            now: start,
            routers,
            net,
            rng: StdRng::seed_from_u64(seed),
            ids,
            next_req: 0,
        }
    }

    /// Every router's links may send `mbps` (`cascade.link_rate_mbps`; its default unless
    /// set). For links that come up afterwards: call it before any does.
    pub fn set_link_rate(&mut self, mbps: u64) {
        for r in &mut self.routers {
            r.side.rate = LinkRate::from_mbps(mbps);
        }
    }

    /// A router's index.
    pub fn idx(&self, id: &str) -> usize {
        self.ids[&NodeId::from(id)]
    }

    /// A router.
    pub fn router(&mut self, id: &str) -> &mut Router {
        let i = self.idx(id);
        &mut self.routers[i]
    }

    /// A router's simulation (its control plane, workers and clients).
    pub fn sim(&mut self, id: &str) -> &mut Sim {
        &mut self.router(id).sim
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The links of a router, as its machine sees them.
    pub fn links(&self, node: &str) -> Vec<LinkView> {
        self.routers[self.idx(node)].side.machine.links()
    }

    /// The link of `node` to `peer`.
    pub fn link(&self, node: &str, peer: &str) -> LinkView {
        self.links(node)
            .into_iter()
            .find(|l| l.peer.as_str() == peer)
            .unwrap_or_else(|| panic!("{node} has no link to {peer}"))
    }

    /// The relay figures of `node`'s link to `peer`.
    pub fn counts(&self, node: &str, peer: &str) -> LinkCounts {
        let l = self.link(node, peer);
        self.routers[self.idx(node)].side.counts(l.link)
    }

    /// A router's relay receive figures over all its connections, past and present.
    pub fn rx_stats(&self, node: &str) -> crate::cascade::relay::RxStats {
        self.routers[self.idx(node)].side.rx_stats()
    }

    /// What `from` sent to `to` over the network.
    pub fn carried(&self, from: &str, to: &str) -> Carried {
        self.net.carried(self.idx(from), self.idx(to))
    }

    /// `CascadeService.LinkRoom` on `node`; the answer comes in [`Self::reply`].
    pub fn link_room(&mut self, node: &str, room: &str, peer: &str) -> RequestId {
        let i = self.idx(node);
        self.next_req += 1;
        let req = RequestId(self.next_req);
        let room = RoomId::parse(room).unwrap_or_else(|e| panic!("room id {room:?}: {e}"));
        let now = self.now;
        self.routers[i]
            .side
            .machine
            .link_room(now, room, NodeId::from(peer), req);
        self.settle();
        req
    }

    /// The answer to a `LinkRoom` call on `node`, once there is one.
    pub fn reply(&self, node: &str, req: RequestId) -> Option<&Result<RouterRef, ApiError>> {
        self.routers[self.idx(node)].side.replies.get(&req)
    }

    // ----- what the network does --------------------------------------------

    /// The path between two routers breaks: their connection ends (noticed at once) and
    /// dials fail until [`Self::heal`].
    pub fn break_link(&mut self, a: &str, b: &str) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        if let Some(p) = self.net.pair_mut(ia, ib) {
            p.up = false;
        }
        let now = self.now;
        for ends in self.net.conns_between(ia, ib) {
            self.net.mark_closed(ends);
            for (k, (node, conn)) in ends.iter().enumerate() {
                let other = NodeId::new(self.routers[ends[1 - k].0].identity.node_id.clone());
                self.routers[*node]
                    .side
                    .machine
                    .handle_disconnected(now, &other, *conn);
            }
        }
        self.settle();
    }

    /// The path between two routers works again.
    pub fn heal(&mut self, a: &str, b: &str) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        if let Some(p) = self.net.pair_mut(ia, ib) {
            p.up = true;
        }
    }

    /// Changes what a path does to datagrams.
    pub fn impair(&mut self, a: &str, b: &str, imp: Impairment) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        if let Some(p) = self.net.pair_mut(ia, ib) {
            p.imp = imp;
        }
    }

    // ----- the clock --------------------------------------------------------

    /// Runs every router, its clients and the networks for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
            let next = self.next_event().min(end);
            // Keep the clock moving even if something asks to be woken "now".
            self.now = next.max(self.now + Duration::from_micros(200)).min(end);
        }
        self.step();
    }

    /// Runs until `cond` holds or `limit` passes; returns whether it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&mut Cluster) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if cond(self) {
                return true;
            }
            self.run_for(Duration::from_millis(10));
        }
        cond(self)
    }

    fn next_event(&self) -> Instant {
        let mut next = self.now + Duration::from_secs(3600);
        if let Some(t) = self.net.next_time() {
            next = next.min(t);
        }
        for r in &self.routers {
            next = next.min(r.sim.next_timeout());
            if let Some(t) = r.side.next_timeout() {
                next = next.min(t);
            }
        }
        next
    }

    /// Everything due now: each router's workers and clients, the cascade's timers, the
    /// network's deliveries; then the cascade settles.
    fn step(&mut self) {
        let now = self.now;
        for r in &mut self.routers {
            r.sim.now = now;
            r.sim.step();
        }
        self.settle();
        for i in 0..self.routers.len() {
            self.with_env(i, |side, env| side.handle_timeout(env));
        }
        self.settle();
        while let Some(d) = self.net.pop_due(now) {
            self.deliver(d);
            self.settle();
        }
    }

    /// Runs `f` on router `i`'s cascade with what it works with.
    fn with_env<R>(&mut self, i: usize, f: impl FnOnce(&mut Side, &mut Env<'_>) -> R) -> R {
        let me = NodeId::new(self.routers[i].identity.node_id.clone());
        let r = &mut self.routers[i];
        let mut env = Env {
            now: self.now,
            me: &me,
            idx: i,
            control: &r.sim.control,
            net: &mut self.net,
            rng: &mut self.rng,
            ids: &self.ids,
        };
        f(&mut r.side, &mut env)
    }

    /// Hands hook calls and relayed packets to the machines, carries out their outputs and
    /// lets the workers act on them, until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            for i in 0..self.routers.len() {
                let mut relayed = self.routers[i].sim.relayed.take().unwrap_or_default();
                progressed |= self.with_env(i, |side, env| side.settle(env, &mut relayed));
                self.routers[i].sim.relayed = Some(relayed);
                self.routers[i].sim.pump();
                let r = &self.routers[i];
                progressed |= r.sim.relayed.as_ref().is_some_and(|v| !v.is_empty());
            }
            if !progressed {
                return;
            }
        }
        panic!("the cascade did not settle at {:?}", self.elapsed());
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::Established { dialer, acceptor } => {
                let dialer_id = self.routers[dialer].identity.clone();
                let acceptor_id = self.routers[acceptor].identity.clone();
                let a = self.routers[acceptor]
                    .side
                    .machine
                    .handle_connected(now, &dialer_id, false);
                let d = self.routers[dialer]
                    .side
                    .machine
                    .handle_connected(now, &acceptor_id, true);
                let delay = self.net.delay(dialer, acceptor);
                match (a, d) {
                    (Admission::Accept(ca), Admission::Accept(cd)) => {
                        self.net.open(now, (acceptor, ca), (dialer, cd));
                    }
                    (Admission::Accept(conn), Admission::Refuse(_)) => self.net.at(
                        now + delay,
                        Delivery::Closed {
                            to: acceptor,
                            conn,
                            from: NodeId::new(dialer_id.node_id),
                        },
                    ),
                    (Admission::Refuse(_), Admission::Accept(conn)) => self.net.at(
                        now + delay,
                        Delivery::Closed {
                            to: dialer,
                            conn,
                            from: NodeId::new(acceptor_id.node_id),
                        },
                    ),
                    (Admission::Refuse(_), Admission::Refuse(_)) => {}
                }
            }
            Delivery::DialFailed { node, peer } => {
                self.routers[node]
                    .side
                    .machine
                    .handle_dial_failed(now, &peer);
            }
            Delivery::Frame {
                to,
                conn,
                from,
                msg,
            } => {
                self.routers[to]
                    .side
                    .machine
                    .handle_frame(now, &from, conn, msg);
            }
            Delivery::Datagram { to, conn, data } => {
                self.with_env(to, |side, env| side.handle_datagram(env, conn, data));
                self.routers[to].sim.pump();
            }
            Delivery::Closed { to, conn, from } => {
                self.routers[to]
                    .side
                    .machine
                    .handle_disconnected(now, &from, conn);
            }
        }
    }
}
