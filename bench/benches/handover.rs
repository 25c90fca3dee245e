//! What the single UDP port (`media.single_port`) costs per datagram the
//! kernel gives to a worker that does not host its session: the reading
//! worker's decision (`media::handover`: the route table look-up), the copy
//! into the batch for the hosting worker (`media::bus::Handed`, one bus
//! message per destination and turn) and the hosting worker's walk over the
//! batch. That is the work a hand-over adds; the hosting worker then does
//! for the datagram what it would have done had it read it itself.
//!
//! Not in it: the reading worker's miss in its own session table (one hash
//! look-up, which every datagram from an unknown source costs anyway), and
//! the bus itself (a channel send and a wake-up per batch, shared with the
//! fan-out's messages that the batch travels with).
//!
//! `cargo bench -p kaskade-bench --bench handover` prints CPU ns per
//! handed-over datagram (median [min–max] of `KASKADE_BENCH_RUNS`, default
//! 5) and, when valgrind is installed, user-space instructions per
//! datagram counted by callgrind (deterministic). `KASKADE_BENCH_BATCH`
//! (default 16): datagrams handed over per turn; `KASKADE_BENCH_SOURCES`
//! (default 1000): sources with a route.

use kaskade_bench::measure::{callgrind, machine, measure, Summary};
use kaskade_router::media::bus::Handed;
use kaskade_router::media::handover::{Decision, Handover};
use kaskade_router::media::types::WorkerId;
use kaskade_router::metrics::{Metrics, WorkerMetrics};
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

const CHILD_ENV: &str = "KASKADE_BENCH_CALLGRIND_CHILD";
/// A video packet's size on the wire (SRTP, 1200-byte payload).
const LEN: usize = 1232;
/// Datagrams per timed run.
const DATAGRAMS: usize = 400_000;
/// Datagrams under callgrind (its count is exact: fewer suffice).
const DATAGRAMS_CALLGRIND: usize = 40_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn source(i: usize) -> SocketAddr {
    SocketAddr::from((
        [198, 51, (i >> 8) as u8, i as u8],
        40_000 + (i % 1000) as u16,
    ))
}

/// Worker 0 of 2, with a route to worker 1 for each of `sources`.
fn handover(sources: usize) -> Handover {
    let metrics = Metrics::new();
    let wm = WorkerMetrics::new(&metrics);
    let mut h = Handover::new(WorkerId(0), 2, wm.transport.handovers.local());
    let t0 = Instant::now();
    for i in 0..sources {
        h.learn(t0, source(i), WorkerId(1));
    }
    h
}

/// Hands `n` datagrams over, `batch` per turn, from the sources in turn;
/// returns how many the hosting worker walked (all of them).
fn run(h: &mut Handover, n: usize, batch: usize, sources: usize) -> u64 {
    let mut packet = vec![0u8; LEN];
    packet[0] = 0x80; // RTP
    packet[1] = 96;
    let now = Instant::now();
    let mut walked = 0u64;
    let mut next = 0;
    for _ in 0..n.div_ceil(batch) {
        // The reading worker: one message per destination and turn.
        let mut msg: Option<Box<Handed>> = None;
        for _ in 0..batch {
            let src = source(next % sources);
            next += 1;
            packet[2] = next as u8;
            if let Decision::To(_) = h.decide(now, src, black_box(&packet)) {
                msg.get_or_insert_with(|| Box::new(Handed::new(WorkerId(0))))
                    .push(src, &packet);
            }
        }
        // The hosting worker walks the batch.
        if let Some(m) = black_box(msg) {
            for (src, d) in m.iter() {
                black_box((src, d[0]));
                walked += 1;
            }
        }
    }
    walked
}

fn main() {
    let batch = env_usize("KASKADE_BENCH_BATCH", 16).max(1);
    let sources = env_usize("KASKADE_BENCH_SOURCES", 1000).max(1);
    if std::env::var_os(CHILD_ENV).is_some() {
        let mut h = handover(sources);
        run(&mut h, batch * 64, batch, sources); // warm
        callgrind::region(
            || run(&mut h, DATAGRAMS_CALLGRIND, batch, sources),
            |n| format!("handover datagrams={n}"),
        );
        return;
    }
    let runs = env_usize("KASKADE_BENCH_RUNS", 5).max(1);
    println!("single-port hand-over — {}", machine());
    println!("{LEN}-byte datagrams, {batch} per turn, {sources} routed sources, 2 workers");
    let mut h = handover(sources);
    run(&mut h, DATAGRAMS / 10, batch, sources); // warm
    let ns: Vec<f64> = (0..runs)
        .map(|_| measure(|| run(&mut h, DATAGRAMS, batch, sources)).cpu_ns())
        .collect();
    let s = Summary::of(&ns);
    println!(
        "CPU ns per handed-over datagram: {:.0} [{:.0}–{:.0}] (median [min–max] of {runs} runs of {DATAGRAMS})",
        s.median, s.min, s.max
    );
    if std::env::var("KASKADE_BENCH_CALLGRIND").is_ok_and(|v| v == "0") {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kaskade-bench-handover");
    if !kaskade_bench::measure::callgrind_child(&dir, &[(CHILD_ENV, "1".to_string())], false) {
        return;
    }
    for (label, total, path) in kaskade_bench::measure::callgrind_dumps(&dir) {
        let n = label
            .split_whitespace()
            .find_map(|f| f.strip_prefix("datagrams="))
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        println!(
            "instructions per handed-over datagram (callgrind, user space): {:.0} ({total} for {n}; {})",
            total as f64 / n.max(1) as f64,
            path.display()
        );
    }
}
