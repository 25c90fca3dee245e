//! One room on several worker cores at once, each on its own thread, the
//! way the daemon runs them, each driven by the router's drive loop
//! (`kaskade_router::media::drive`): the publisher's worker decrypts, hands
//! each packet to the other workers over a channel (one message per turn's
//! batch) and then writes to its own subscribers; the others write to
//! theirs. Measured in wall time, since the point is how the fan-out of one
//! room spreads over cores.

use crate::fanout::{FanOut, Outflow, Recorded, ReplayPort};
use crate::measure::thread_cpu;
use crate::net::Sinks;
use kaskade_router::media::drive::{Drive, Port};
use kaskade_router::media::types::{LinkId, MediaPacket};
use kaskade_router::media::udp::RecvBatch;
use kaskade_router::media::{BusBatch, Command, Datagram, WorkerEvent};
use kaskade_router::metrics::WorkerMetrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker fed only by the bus, on its own thread.
struct BusPort<'a> {
    now: Instant,
    pending: Option<BusBatch>,
    out: Outflow,
    sinks: &'a mut Sinks,
}

impl Port for BusPort<'_> {
    fn now(&mut self) -> Instant {
        self.now
    }

    fn recv(&mut self, _buf: &mut RecvBatch) -> usize {
        0
    }

    fn command(&mut self) -> Option<Command> {
        None
    }

    fn bus(&mut self) -> Option<BusBatch> {
        self.pending.take()
    }

    fn send(&mut self, out: &mut Vec<Datagram>) -> usize {
        self.out.take(out, Some(&mut *self.sinks));
        0
    }

    fn offer(&self, _dst: usize, _batch: BusBatch) -> Result<(), BusBatch> {
        // Keyframe requests and demand back to the publisher's worker are
        // not needed within a window.
        Ok(())
    }

    fn event(&mut self, _ev: WorkerEvent) {}

    fn relay(&mut self, _link: LinkId, _pkt: Arc<MediaPacket>) -> bool {
        true
    }
}

/// What one parallel replay cost.
#[derive(Debug, Clone)]
pub struct Replay {
    /// RTP packets sent to subscribers.
    pub packets: u64,
    /// Wall time until every worker was done.
    pub wall: Duration,
    /// Thread CPU time of each worker (index = worker; 0 = the publisher's).
    pub cpu: Vec<Duration>,
    /// RTP packets each worker sent.
    pub per_worker: Vec<u64>,
}

/// Replays `rec` into worker 0 (the publisher's) on this thread while every
/// other worker runs on a thread of its own, fed through channels. Each
/// worker sends to its own `sinks[i]`.
pub fn replay(
    f: &mut FanOut,
    rec: &[Recorded],
    window_end: Instant,
    sinks: &mut [Sinks],
) -> Replay {
    let publisher = f.publisher;
    let n = f.sim.workers.len();
    assert!(sinks.len() >= n, "one set of sinks per worker");
    let metrics = WorkerMetrics::new(&f.sim.metrics);
    let (first, rest) = f.sim.workers.split_at_mut(1);
    let core0 = &mut first[0].core;
    let mut peers = vec![None];
    let mut rxs = Vec::new();
    for _ in 1..n {
        let (tx, rx) = crossbeam_channel::unbounded::<(Instant, BusBatch)>();
        peers.push(Some(tx));
        rxs.push(rx);
    }
    let (sinks0, sinks_rest) = sinks.split_at_mut(1);
    let start = Instant::now();
    let (mine, theirs) = std::thread::scope(|s| {
        let mut others = Vec::new();
        for (i, ((w, rx), sinks)) in rest
            .iter_mut()
            .zip(rxs)
            .zip(sinks_rest.iter_mut())
            .enumerate()
        {
            let core = &mut w.core;
            let mut drive = Drive::new(i as u16 + 1, n, &metrics);
            others.push(s.spawn(move || {
                let cpu0 = thread_cpu();
                let mut port = BusPort {
                    now: Instant::now(),
                    pending: None,
                    out: Outflow::new(publisher),
                    sinks,
                };
                for (at, batch) in rx.iter() {
                    port.now = at;
                    port.pending = Some(batch);
                    drive.turn(core, &mut port, true);
                }
                port.out.finish(Some(port.sinks));
                (port.out.rtp, thread_cpu() - cpu0)
            }));
        }
        let cpu0 = thread_cpu();
        let mut drive = Drive::new(0, n, &metrics);
        let mut port = ReplayPort::new(rec, publisher, Some(&mut sinks0[0])).with_peers(peers);
        while port.next < rec.len() {
            // The hand-over first, as in the daemon, then the local writes.
            drive.turn(core0, &mut port, true);
        }
        let (rtp, _events) = port.finish();
        let mine = (rtp, thread_cpu() - cpu0);
        let theirs: Vec<(u64, Duration)> = others
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect();
        (mine, theirs)
    });
    let wall = start.elapsed();
    f.sim.now = window_end;
    let all: Vec<(u64, Duration)> = std::iter::once(mine).chain(theirs).collect();
    Replay {
        packets: all.iter().map(|(p, _)| p).sum(),
        wall,
        cpu: all.iter().map(|(_, c)| *c).collect(),
        per_worker: all.iter().map(|(p, _)| *p).collect(),
    }
}
