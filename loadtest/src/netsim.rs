//! A seeded simulated network for deterministic tests on a virtual clock.
//!
//! [`SimNet`] carries [`Datagram`]s between addresses. Impairments are configured per
//! direction with [`Link`] rules, matched in this order: the exact `(src, dst)` pair,
//! then the destination, then the source, then the default. Each rule applies, in order:
//!
//! 1. random loss (`loss`, 0.0–1.0),
//! 2. a bottleneck: packets are serialised at `rate_bps` through a drop-tail queue of
//!    `queue_bytes` (a rule matched by destination or source is one shared bottleneck for
//!    all traffic it matches, like an access link; the default rule has one per pair),
//! 3. a fixed `delay` plus uniform `jitter` in `[0, jitter]` (packets are kept in order
//!    unless `reorder` is set).
//!
//! Randomness comes from one generator per bottleneck, seeded from the net's seed and
//! the rule key, so traffic on one link does not change the loss pattern of another.
//! Results are deterministic for a seed and a sequence of calls.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::Datagram;

/// Impairments of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per packet.
    pub jitter: Duration,
    /// Probability of losing a packet, 0.0–1.0.
    pub loss: f64,
    /// Bottleneck rate in bits per second (`None`: unlimited).
    pub rate_bps: Option<u64>,
    /// Drop-tail queue limit of the bottleneck in bytes.
    pub queue_bytes: usize,
    /// Let jitter reorder packets (otherwise delivery order = send order).
    pub reorder: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            queue_bytes: 64 * 1024,
            reorder: false,
        }
    }
}

impl Link {
    /// A perfect link with a fixed delay.
    pub fn with_delay(delay: Duration) -> Self {
        Link {
            delay,
            ..Default::default()
        }
    }

    /// Sets the loss probability.
    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = loss.clamp(0.0, 1.0);
        self
    }

    /// Sets the jitter.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets a bottleneck rate and queue size.
    pub fn rate(mut self, rate_bps: u64, queue_bytes: usize) -> Self {
        self.rate_bps = Some(rate_bps.max(1));
        self.queue_bytes = queue_bytes;
        self
    }

    /// Allows reordering through jitter.
    pub fn reorder(mut self, reorder: bool) -> Self {
        self.reorder = reorder;
        self
    }
}

/// Which traffic a rule (and its bottleneck) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKey {
    /// Traffic from `.0` to `.1`.
    Pair(SocketAddr, SocketAddr),
    /// Traffic to an address.
    To(SocketAddr),
    /// Traffic from an address.
    From(SocketAddr),
}

/// Counters of one `(src, dst)` direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams handed to [`SimNet::send`].
    pub sent: u64,
    /// Bytes handed to [`SimNet::send`].
    pub sent_bytes: u64,
    /// Datagrams dropped by random loss.
    pub lost: u64,
    /// Datagrams dropped because the bottleneck queue was full.
    pub queue_dropped: u64,
    /// Datagrams delivered by [`SimNet::poll_deliver`].
    pub delivered: u64,
    /// Bytes delivered.
    pub delivered_bytes: u64,
}

impl LinkStats {
    fn add(&mut self, o: &LinkStats) {
        self.sent += o.sent;
        self.sent_bytes += o.sent_bytes;
        self.lost += o.lost;
        self.queue_dropped += o.queue_dropped;
        self.delivered += o.delivered;
        self.delivered_bytes += o.delivered_bytes;
    }
}

#[derive(Debug)]
struct LinkState {
    rng: SmallRng,
    /// When the bottleneck has sent everything queued so far.
    busy_until: Option<Instant>,
    /// Latest scheduled delivery, to keep order without `reorder`.
    last_delivery: Option<Instant>,
}

#[derive(Debug)]
struct InFlight {
    at: Instant,
    seq: u64,
    dgram: Datagram,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulated network.
#[derive(Debug)]
pub struct SimNet {
    seed: u64,
    default: Link,
    rules: HashMap<LinkKey, Link>,
    states: HashMap<LinkKey, LinkState>,
    stats: HashMap<(SocketAddr, SocketAddr), LinkStats>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
}

impl SimNet {
    /// A perfect network (no delay, no loss) whose randomness derives from `seed`.
    pub fn new(seed: u64) -> Self {
        SimNet {
            seed,
            default: Link::default(),
            rules: HashMap::new(),
            states: HashMap::new(),
            stats: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Impairments for traffic no other rule matches.
    pub fn set_default(&mut self, link: Link) {
        self.default = link;
    }

    /// Impairments for traffic from `src` to `dst`.
    pub fn set_pair(&mut self, src: SocketAddr, dst: SocketAddr, link: Link) {
        self.rules.insert(LinkKey::Pair(src, dst), link);
    }

    /// Impairments for all traffic to `dst` (one shared bottleneck).
    pub fn set_to(&mut self, dst: SocketAddr, link: Link) {
        self.rules.insert(LinkKey::To(dst), link);
    }

    /// Impairments for all traffic from `src` (one shared bottleneck).
    pub fn set_from(&mut self, src: SocketAddr, link: Link) {
        self.rules.insert(LinkKey::From(src), link);
    }

    /// Removes a rule (its bottleneck state is kept for packets in flight).
    pub fn clear(&mut self, key: LinkKey) {
        self.rules.remove(&key);
    }

    fn rule_for(&self, src: SocketAddr, dst: SocketAddr) -> (LinkKey, Link) {
        for key in [
            LinkKey::Pair(src, dst),
            LinkKey::To(dst),
            LinkKey::From(src),
        ] {
            if let Some(l) = self.rules.get(&key) {
                return (key, *l);
            }
        }
        (LinkKey::Pair(src, dst), self.default)
    }

    /// Sends a datagram at `now`. It is lost, dropped or scheduled for delivery.
    pub fn send(&mut self, now: Instant, dgram: Datagram) {
        let (key, link) = self.rule_for(dgram.src, dgram.dst);
        let len = dgram.data.len();
        let stats = self.stats.entry((dgram.src, dgram.dst)).or_default();
        stats.sent += 1;
        stats.sent_bytes += len as u64;

        let seed = self.seed;
        let state = self.states.entry(key).or_insert_with(|| LinkState {
            rng: SmallRng::seed_from_u64(seed ^ key_hash(&key)),
            busy_until: None,
            last_delivery: None,
        });

        // Draw every random number for each packet, so the loss pattern does not
        // depend on which other impairments are configured.
        let loss_draw: f64 = state.rng.random();
        let jitter_draw: f64 = state.rng.random();

        if loss_draw < link.loss {
            stats.lost += 1;
            return;
        }

        let mut depart = now;
        if let Some(rate) = link.rate_bps {
            let busy = state.busy_until.filter(|b| *b > now).unwrap_or(now);
            let backlog_bytes = (busy - now).as_secs_f64() * rate as f64 / 8.0;
            if backlog_bytes + len as f64 > link.queue_bytes as f64 + 0.5 {
                stats.queue_dropped += 1;
                return;
            }
            let tx = Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
            depart = busy + tx;
            state.busy_until = Some(depart);
        }

        let jitter = link.jitter.mul_f64(jitter_draw);
        let mut at = depart + link.delay + jitter;
        if !link.reorder {
            if let Some(last) = state.last_delivery {
                at = at.max(last);
            }
            state.last_delivery = Some(at);
        }

        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at,
            seq: self.seq,
            dgram,
        }));
    }

    /// The next datagram due by `now`, in delivery order.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Datagram> {
        if self.queue.peek()?.0.at > now {
            return None;
        }
        let Reverse(f) = self.queue.pop()?;
        let stats = self.stats.entry((f.dgram.src, f.dgram.dst)).or_default();
        stats.delivered += 1;
        stats.delivered_bytes += f.dgram.data.len() as u64;
        Some(f.dgram)
    }

    /// When the next datagram is delivered.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.peek().map(|f| f.0.at)
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Counters of the `src → dst` direction.
    pub fn stats(&self, src: SocketAddr, dst: SocketAddr) -> LinkStats {
        self.stats.get(&(src, dst)).copied().unwrap_or_default()
    }

    /// Counters of all traffic to `dst`.
    pub fn stats_to(&self, dst: SocketAddr) -> LinkStats {
        let mut s = LinkStats::default();
        for (_, v) in self.stats.iter().filter(|((_, d), _)| *d == dst) {
            s.add(v);
        }
        s
    }

    /// Counters of all traffic from `src`.
    pub fn stats_from(&self, src: SocketAddr) -> LinkStats {
        let mut s = LinkStats::default();
        for (_, v) in self.stats.iter().filter(|((s0, _), _)| *s0 == src) {
            s.add(v);
        }
        s
    }
}

/// A stable hash of a rule key (FNV-1a over the addresses), for per-link seeds.
fn key_hash(key: &LinkKey) -> u64 {
    fn addr(h: &mut u64, a: &SocketAddr) {
        let mut feed = |b: u8| {
            *h ^= u64::from(b);
            *h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        match a.ip() {
            std::net::IpAddr::V4(v) => v.octets().into_iter().for_each(&mut feed),
            std::net::IpAddr::V6(v) => v.octets().into_iter().for_each(&mut feed),
        }
        a.port().to_be_bytes().into_iter().for_each(feed);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    match key {
        LinkKey::Pair(s, d) => {
            h ^= 1;
            addr(&mut h, s);
            addr(&mut h, d);
        }
        LinkKey::To(d) => {
            h ^= 2;
            addr(&mut h, d);
        }
        LinkKey::From(s) => {
            h ^= 3;
            addr(&mut h, s);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn dg(src: SocketAddr, dst: SocketAddr, n: usize, tag: u8) -> Datagram {
        Datagram {
            src,
            dst,
            data: vec![tag; n],
        }
    }

    /// Delivers everything, advancing a virtual clock; returns (time, datagram).
    fn drain(net: &mut SimNet) -> Vec<(Instant, Datagram)> {
        let mut out = vec![];
        while let Some(t) = net.next_delivery() {
            while let Some(d) = net.poll_deliver(t) {
                out.push((t, d));
            }
        }
        out
    }

    #[test]
    fn delay_and_order() {
        let t0 = Instant::now();
        let mut net = SimNet::new(1);
        net.set_to(a(2), Link::with_delay(Duration::from_millis(50)));
        net.send(t0, dg(a(1), a(2), 100, 1));
        net.send(t0 + Duration::from_millis(1), dg(a(1), a(2), 100, 2));
        // Unimpaired direction: immediate.
        net.send(t0, dg(a(2), a(1), 100, 3));
        assert_eq!(net.poll_deliver(t0).unwrap().data[0], 3);
        assert_eq!(net.poll_deliver(t0 + Duration::from_millis(49)), None);
        assert_eq!(net.next_delivery(), Some(t0 + Duration::from_millis(50)));
        let out = drain(&mut net);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.data[0], 1);
        assert_eq!(out[0].0, t0 + Duration::from_millis(50));
        assert_eq!(out[1].1.data[0], 2);
        assert_eq!(out[1].0, t0 + Duration::from_millis(51));
        let s = net.stats(a(1), a(2));
        assert_eq!((s.sent, s.delivered, s.lost), (2, 2, 0));
    }

    #[test]
    fn jitter_keeps_order_unless_reorder() {
        let t0 = Instant::now();
        for reorder in [false, true] {
            let mut net = SimNet::new(7);
            let link = Link::with_delay(Duration::from_millis(20))
                .jitter(Duration::from_millis(30))
                .reorder(reorder);
            net.set_pair(a(1), a(2), link);
            for i in 0..200u32 {
                net.send(
                    t0 + Duration::from_millis(u64::from(i)),
                    dg(a(1), a(2), 10, i as u8),
                );
            }
            let out = drain(&mut net);
            assert_eq!(out.len(), 200);
            let in_order = out.windows(2).all(|w| w[0].1.data[0] < w[1].1.data[0]);
            assert_eq!(in_order, !reorder, "reorder={reorder}");
            for (t, _) in &out {
                assert!(*t >= t0 + Duration::from_millis(20));
            }
        }
    }

    #[test]
    fn loss_rate_within_bounds_and_deterministic() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut net = SimNet::new(seed);
            net.set_to(a(2), Link::default().loss(0.05));
            for i in 0..10_000u64 {
                net.send(t0 + Duration::from_micros(i * 100), dg(a(1), a(2), 50, 0));
            }
            let delivered: Vec<Instant> = drain(&mut net).into_iter().map(|(t, _)| t).collect();
            (net.stats(a(1), a(2)), delivered)
        };
        let (s, d1) = run(3);
        assert_eq!(s.sent, 10_000);
        assert_eq!(s.lost + s.delivered, 10_000);
        assert!((400..=600).contains(&s.lost), "lost {}", s.lost);
        let (s2, d2) = run(3);
        assert_eq!(s, s2);
        assert_eq!(d1, d2);
        let (s3, _) = run(4);
        assert_ne!(s.lost, s3.lost);
    }

    #[test]
    fn rate_cap_throughput_and_drop_tail() {
        let t0 = Instant::now();
        let mut net = SimNet::new(1);
        // 1 Mbps bottleneck with a 20 kB queue, offered 2 Mbps for 2 s.
        net.set_to(a(2), Link::default().rate(1_000_000, 20_000));
        for i in 0..2000u64 {
            // 250 bytes every 1 ms = 2 Mbps.
            net.send(t0 + Duration::from_millis(i), dg(a(1), a(2), 250, 0));
        }
        let out = drain(&mut net);
        let s = net.stats(a(1), a(2));
        assert!(s.queue_dropped > 0);
        assert_eq!(s.delivered + s.queue_dropped, 2000);
        let last = out.last().unwrap().0;
        let secs = (last - t0).as_secs_f64();
        let bps = s.delivered_bytes as f64 * 8.0 / secs;
        assert!((950_000.0..1_050_000.0).contains(&bps), "throughput {bps}");
        // Queueing delay is bounded by the queue: 20 kB at 1 Mbps = 160 ms.
        assert!(last - t0 <= Duration::from_millis(2000 + 161));
    }

    #[test]
    fn shared_bottleneck_by_destination() {
        let t0 = Instant::now();
        let mut net = SimNet::new(1);
        net.set_to(a(9), Link::default().rate(800_000, 1_000_000));
        // Two senders, 100 packets of 1000 bytes each at t0: 200 × 10 ms serialisation.
        for i in 0..100 {
            net.send(t0, dg(a(1), a(9), 1000, i));
            net.send(t0, dg(a(2), a(9), 1000, i));
        }
        let out = drain(&mut net);
        assert_eq!(out.len(), 200);
        assert_eq!(out.last().unwrap().0, t0 + Duration::from_secs(2));
        assert_eq!(net.stats_to(a(9)).delivered, 200);
    }
}
