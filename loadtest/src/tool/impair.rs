//! Network impairment in user space (the kernel here has no netem): the driver hands
//! an impaired client's datagrams to an [`Impairer`] instead of the socket or the
//! client, and takes them back when they are due. The model is the client library's
//! [`SimNet`]/[`Link`], run on the wall clock: loss, a bottleneck with a drop-tail
//! queue, then delay plus jitter (order kept).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use kaskade_loadtest::{Datagram, Link, SimNet};

use super::scenario::ImpairSpec;

/// The link of an impairment spec (the same in both directions).
pub(crate) fn link_of(spec: &ImpairSpec) -> Link {
    let mut link = Link::with_delay(spec.delay.0)
        .jitter(spec.jitter.0)
        .loss(spec.loss.0);
    if spec.rate.0 > 0 {
        let queue = (spec.rate.0 as f64 / 8.0 * spec.queue.0.as_secs_f64()) as usize;
        // At least two full-size datagrams fit, whatever the rate.
        link = link.rate(spec.rate.0, queue.max(3000));
    }
    link
}

/// Whether client `i` of `n` of a role is impaired: `fraction` of them, spread evenly.
pub(crate) fn selected(spec: &ImpairSpec, i: u32, n: u32) -> bool {
    if !spec.is_active() || n == 0 {
        return false;
    }
    let f = spec.fraction.0;
    let before = (f64::from(i) * f).floor();
    let after = (f64::from(i + 1) * f).floor();
    after > before
}

/// Where an impaired datagram goes once it is due.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// To the network (the client sent it): send it from the client's socket.
    Out(Datagram),
    /// To the client (the network delivered it): hand it to the client.
    In(Datagram),
}

/// Impairment of a group of clients, on the wall clock.
#[derive(Debug)]
pub(crate) struct Impairer {
    net: SimNet,
    local: HashSet<SocketAddr>,
}

impl Impairer {
    /// An impairer whose randomness derives from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Impairer {
            net: SimNet::new(seed),
            local: HashSet::new(),
        }
    }

    /// Impairs a client's traffic in both directions (each direction is its own
    /// bottleneck).
    pub(crate) fn add_client(&mut self, addr: SocketAddr, link: Link) {
        self.local.insert(addr);
        self.net.set_from(addr, link);
        self.net.set_to(addr, link);
    }

    /// Stops impairing a client that left (datagrams in flight are still delivered).
    pub(crate) fn remove_client(&mut self, addr: SocketAddr) {
        self.local.remove(&addr);
    }

    /// A datagram sent by an impaired client (or arrived for one) at `now`.
    pub(crate) fn push(&mut self, now: Instant, d: Datagram) {
        self.net.send(now, d);
    }

    /// The next datagram due by `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Due> {
        let d = self.net.poll_deliver(now)?;
        Some(if self.local.contains(&d.dst) {
            Due::In(d)
        } else {
            Due::Out(d)
        })
    }

    /// When the next datagram is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.net.next_delivery()
    }

    /// Datagrams dropped (loss or a full queue) so far for a client, both directions.
    #[cfg(test)]
    pub(crate) fn dropped(&self, addr: SocketAddr) -> u64 {
        let to = self.net.stats_to(addr);
        let from = self.net.stats_from(addr);
        to.lost + to.queue_dropped + from.lost + from.queue_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::units::{Dur, Frac, Rate};
    use std::time::Duration;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn dg(src: SocketAddr, dst: SocketAddr, n: usize) -> Datagram {
        Datagram {
            src,
            dst,
            data: vec![0; n],
        }
    }

    #[test]
    fn selection_spreads_the_fraction() {
        let spec = ImpairSpec {
            loss: Frac(0.1),
            fraction: Frac(0.25),
            ..Default::default()
        };
        let picked: Vec<u32> = (0..20).filter(|i| selected(&spec, *i, 20)).collect();
        assert_eq!(picked.len(), 5);
        assert_eq!(picked, vec![3, 7, 11, 15, 19]);
        let all = ImpairSpec {
            fraction: Frac(1.0),
            ..spec.clone()
        };
        assert!((0..7).all(|i| selected(&all, i, 7)));
        let inactive = ImpairSpec::default();
        assert!(!(0..7).any(|i| selected(&inactive, i, 7)));
    }

    #[test]
    fn link_queue_is_time_at_rate() {
        let spec = ImpairSpec {
            rate: Rate(1_000_000),
            queue: Dur(Duration::from_millis(200)),
            delay: Dur(Duration::from_millis(30)),
            ..Default::default()
        };
        let l = link_of(&spec);
        assert_eq!(l.rate_bps, Some(1_000_000));
        assert_eq!(l.queue_bytes, 25_000);
        assert_eq!(l.delay, Duration::from_millis(30));
        assert_eq!(link_of(&ImpairSpec::default()).rate_bps, None);
    }

    #[test]
    fn both_directions_are_delayed_and_routed() {
        let t0 = Instant::now();
        let (client, router) = (addr(1000), addr(2000));
        let mut imp = Impairer::new(1);
        imp.add_client(client, Link::with_delay(Duration::from_millis(20)));
        imp.push(t0, dg(client, router, 100));
        imp.push(t0, dg(router, client, 100));
        assert_eq!(imp.poll(t0 + Duration::from_millis(19)), None);
        assert_eq!(imp.next_due(), Some(t0 + Duration::from_millis(20)));
        let later = t0 + Duration::from_millis(20);
        let mut got = [imp.poll(later).unwrap(), imp.poll(later).unwrap()];
        got.sort_by_key(|d| matches!(d, Due::In(_)));
        assert!(matches!(&got[0], Due::Out(d) if d.dst == router));
        assert!(matches!(&got[1], Due::In(d) if d.dst == client));
        assert_eq!(imp.poll(later), None);
    }

    #[test]
    fn loss_and_cap_drop_and_are_counted() {
        let t0 = Instant::now();
        let (client, router) = (addr(1000), addr(2000));
        let mut imp = Impairer::new(9);
        let spec = ImpairSpec {
            loss: Frac(0.1),
            rate: Rate(800_000),
            queue: Dur(Duration::from_millis(100)),
            ..Default::default()
        };
        imp.add_client(client, link_of(&spec));
        // 1000-byte datagrams every 5 ms = 1.6 Mbps offered into 0.8 Mbps for 2 s.
        for i in 0..400u64 {
            imp.push(t0 + Duration::from_millis(i * 5), dg(router, client, 1000));
        }
        let mut delivered = 0u64;
        let mut last = t0;
        while let Some(t) = imp.next_due() {
            while let Some(Due::In(_)) = imp.poll(t) {
                delivered += 1;
                last = t;
            }
        }
        let dropped = imp.dropped(client);
        assert_eq!(delivered + dropped, 400);
        // Loss takes ~40, the cap roughly half of the rest.
        assert!((150..=250).contains(&delivered), "delivered {delivered}");
        let bps = delivered as f64 * 8000.0 / (last - t0).as_secs_f64();
        assert!(bps < 850_000.0, "{bps}");
    }
}
