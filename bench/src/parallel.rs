//! One room on several worker cores at once, each on its own thread, the
//! way the daemon runs them: the publisher's worker decrypts, hands each
//! packet to the other workers over a channel (one message per packet's
//! batch) and then writes to its own subscribers; the others write to
//! theirs. Measured in wall time, since the point is how the fan-out of one
//! room spreads over cores.

use crate::fanout::{FanOut, Outflow, Recorded};
use crate::net::Sinks;
use kaskade_router::media::BusBatch;
use std::time::{Duration, Instant};

/// Replays `rec` into worker 0 (the publisher's) on this thread while every
/// other worker runs on a thread of its own, fed through channels. Each
/// worker sends to its own `sinks[i]`. Returns the RTP packets sent to
/// subscribers and the wall time until every worker was done.
pub fn replay(
    f: &mut FanOut,
    rec: &[Recorded],
    window_end: Instant,
    sinks: &mut [Sinks],
) -> (u64, Duration) {
    let publisher = f.publisher;
    let n = f.sim.workers.len();
    assert!(sinks.len() >= n, "one set of sinks per worker");
    let (first, rest) = f.sim.workers.split_at_mut(1);
    let core0 = &mut first[0].core;
    let (mut txs, mut rxs) = (Vec::new(), Vec::new());
    for _ in 1..n {
        let (tx, rx) = crossbeam_channel::unbounded::<(Instant, BusBatch)>();
        txs.push(tx);
        rxs.push(rx);
    }
    let (sinks0, sinks_rest) = sinks.split_at_mut(1);
    let start = Instant::now();
    let total = std::thread::scope(|s| {
        let mut others = Vec::new();
        for ((w, rx), sinks) in rest.iter_mut().zip(rxs).zip(sinks_rest.iter_mut()) {
            let core = &mut w.core;
            others.push(s.spawn(move || {
                let mut out = Outflow::new(publisher);
                let mut rtp = 0;
                for (at, batch) in rx.iter() {
                    if core.poll_timeout().is_some_and(|t| t <= at) {
                        core.handle_timeout(at);
                    }
                    core.handle_bus(at, batch);
                    core.flush(at);
                    rtp += out.take(core, Some(&mut *sinks));
                }
                out.finish(Some(sinks));
                rtp
            }));
        }
        let sinks = &mut sinks0[0];
        let mut out = Outflow::new(publisher);
        let mut rtp = 0;
        for (at, d) in rec {
            if core0.poll_timeout().is_some_and(|t| t <= *at) {
                core0.handle_timeout(*at);
            }
            core0.handle_datagram(*at, d.src, &d.data);
            // The hand-over first, as the driver does, then the local writes.
            for (i, tx) in txs.iter().enumerate() {
                let batch = std::mem::take(&mut core0.outputs().bus[i + 1]);
                if !batch.is_empty() {
                    // The receiver lives until all senders are dropped.
                    let _ = tx.send((*at, batch));
                }
            }
            core0.flush(*at);
            rtp += out.take(core0, Some(&mut *sinks));
        }
        out.finish(Some(sinks));
        drop(txs);
        rtp + others
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .sum::<u64>()
    });
    let wall = start.elapsed();
    f.sim.now = window_end;
    (total, wall)
}
