//! One room whose subscribers sit on 1 or 2 worker cores, each core on its
//! own thread as in the daemon: wall time per outgoing packet and the
//! speed-up. `cargo bench -p kaskade-bench --bench parallel`;
//! `KASKADE_BENCH_SIZES` (default 100,400) and `KASKADE_BENCH_RUNS`
//! (default 3). On a machine with fewer free cores than workers the
//! speed-up cannot show.

use kaskade_bench::fanout::FanOut;
use kaskade_bench::measure::{machine, Summary};
use kaskade_bench::net::Sinks;
use kaskade_bench::parallel;
use std::time::Duration;

/// Video packets per second of the publisher (see `fanout::VIDEO`), roughly.
const PUBLISHER_PPS: f64 = 430.0;
/// Virtual time between two measured windows: everyone catches up.
const RESYNC: Duration = Duration::from_millis(1500);

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Wall ns per outgoing packet, one value per run; and per worker, CPU ns
/// per packet it sent (medians over the runs).
fn run(workers: usize, n: usize, runs: usize) -> (usize, Vec<f64>, Vec<f64>) {
    let mut f = FanOut::new_on(workers, n, 7);
    let n_eff = f.subscribers.len();
    let mut sinks: Vec<Sinks> = (0..workers)
        .map(|_| Sinks::new(n_eff + 2).expect("bind loopback sinks"))
        .collect();
    let window =
        Duration::from_secs_f64((24_000.0 / (PUBLISHER_PPS * n_eff as f64)).clamp(0.1, 4.0));
    // Warm-up run, not counted.
    let rec = f.record_publisher(window);
    let end = f.sim.now + window;
    parallel::replay(&mut f, &rec, end, &mut sinks);
    f.run_for(RESYNC);
    let mut out = Vec::new();
    let mut per_worker: Vec<Vec<f64>> = vec![Vec::new(); workers];
    for _ in 0..runs {
        let rec = f.record_publisher(window);
        let end = f.sim.now + window;
        let r = parallel::replay(&mut f, &rec, end, &mut sinks);
        out.push(r.wall.as_nanos() as f64 / r.packets.max(1) as f64);
        for (w, v) in per_worker.iter_mut().enumerate() {
            v.push(r.cpu[w].as_nanos() as f64 / r.per_worker[w].max(1) as f64);
        }
        f.run_for(RESYNC);
    }
    let cpu = per_worker.iter().map(|v| Summary::of(v).median).collect();
    (n_eff, out, cpu)
}

fn main() {
    let sizes = env_list("KASKADE_BENCH_SIZES", &[100, 400]);
    let runs = env_list("KASKADE_BENCH_RUNS", &[3])[0].max(1);
    println!("kaskade parallel fan-out — {}", machine());
    println!();
    println!("Wall ns per outgoing packet, median [min–max] of {runs} runs; one room, the");
    println!("publisher on worker 0, subscribers spread by the router; core + sendmmsg to loopback sinks");
    println!();
    println!("| N | 1 worker | 2 workers | speed-up | one packet to all N, 1 worker | 2 workers | 2 workers: CPU ns per own packet, publisher's worker / other |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let (n1, one, _) = run(1, n, runs);
        let (n2, two, cpu) = run(2, n, runs);
        assert_eq!(n1, n2);
        let (a, b) = (Summary::of(&one), Summary::of(&two));
        let speedup: Vec<f64> = one.iter().zip(&two).map(|(x, y)| x / y).collect();
        let s = Summary::of(&speedup);
        println!(
            "| {n1} | {:.0} [{:.0}–{:.0}] | {:.0} [{:.0}–{:.0}] | {:.2}× [{:.2}–{:.2}] | {:.2} ms | {:.2} ms | {:.0} / {:.0} |",
            a.median,
            a.min,
            a.max,
            b.median,
            b.min,
            b.max,
            s.median,
            s.min,
            s.max,
            a.median * n1 as f64 / 1e6,
            b.median * n1 as f64 / 1e6,
            cpu[0],
            cpu[1],
        );
    }
}
