//! Whole simulated rooms: router CPU and user-space instructions per
//! forwarded packet, with everything the router does for the room (see
//! `kaskade_bench::scenario`).
//!
//! `cargo bench -p kaskade-bench --bench scenario`. Environment:
//!
//! * `KASKADE_BENCH_SHAPES` (default `fanout6,meet5x5w1,meet5x5w2,meet5x5w2s,fanout50`):
//!   `fanout<N>[w<W>][s]` (1 publisher → N subscribers on the top layer) or
//!   `meet<R>x<S>[w<W>][s]` (R meetings of S participants, middle layer), on
//!   W workers (default 1); a trailing `s` spreads every session over the
//!   least loaded worker (the placement before rooms were kept together); a
//!   trailing `p` puts every worker on one UDP port (`media.single_port`):
//!   datagrams reach the worker their source hashes to and are handed over
//!   from there. With both `X` and `Xp` in the list, the instruction counts
//!   also give the cost of one hand-over.
//! * `KASKADE_BENCH_RUNS` (default 5): timed windows per shape.
//! * `KASKADE_BENCH_WINDOW_MS` (default 3000): virtual time per window.
//! * `KASKADE_BENCH_CALLGRIND=0`: skip the instruction counts (one window per
//!   shape under callgrind, in a child process; deterministic).

use kaskade_bench::measure::{callgrind, machine, Summary};
use kaskade_bench::scenario::{Scenario, Shape};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHILD_ENV: &str = "KASKADE_BENCH_CALLGRIND_CHILD";
const WARMUP: Duration = Duration::from_secs(8);
const SEED: u64 = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn parse_shape(name: &str) -> Option<(String, Shape)> {
    let (name, single_port) = match name.strip_suffix('p') {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let (s, spread) = match name.strip_suffix('s') {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let (mut name, mut shape) = parse_plain(s)?;
    if spread {
        shape.placement = kaskade_router::media::placement::Policy::LeastLoaded;
        name.push('s');
    }
    if single_port {
        shape.single_port = true;
        name.push('p');
    }
    Some((name, shape))
}

fn parse_plain(s: &str) -> Option<(String, Shape)> {
    let (body, workers) = match s.rsplit_once('w') {
        Some((b, w)) if !b.is_empty() && w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() => {
            (b, w.parse().ok()?)
        }
        _ => (s, 1),
    };
    if let Some(n) = body.strip_prefix("fanout") {
        return Some((s.to_string(), Shape::fan_out(n.parse().ok()?, workers)));
    }
    let (r, size) = body.strip_prefix("meet")?.split_once('x')?;
    Some((
        s.to_string(),
        Shape::meetings(r.parse().ok()?, size.parse().ok()?, workers),
    ))
}

fn shapes() -> Vec<(String, Shape)> {
    std::env::var("KASKADE_BENCH_SHAPES")
        .unwrap_or_else(|_| "fanout6,meet5x5w1,meet5x5w2,meet5x5w2s,fanout50".into())
        .split(',')
        .filter_map(|s| parse_shape(s.trim()))
        .collect()
}

fn window() -> Duration {
    Duration::from_millis(env_usize("KASKADE_BENCH_WINDOW_MS", 3000) as u64)
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        callgrind_child();
        return;
    }
    let runs = env_usize("KASKADE_BENCH_RUNS", 5).max(1);
    println!("kaskade whole-room scenarios — {}", machine());
    println!();
    println!(
        "Router thread CPU per forwarded packet (simulated clients and network excluded, no kernel send), \
         ns: median [min–max] of {runs} windows of {:?} virtual time",
        window()
    );
    println!();
    println!("| shape | forwarded per window | handed over per window | router CPU ns / forwarded packet |");
    println!("|---|---|---|---|");
    for (name, shape) in shapes() {
        let mut s = Scenario::new(shape, SEED, WARMUP);
        let mut ns = Vec::new();
        let (mut fwd, mut handed) = (0, 0);
        for _ in 0..runs {
            let w = s.measure(window());
            (fwd, handed) = (w.forwarded, w.handovers);
            ns.push(w.cpu_ns());
        }
        let m = Summary::of(&ns);
        println!(
            "| {name} | {fwd} | {handed} | {:.0} [{:.0}–{:.0}] |",
            m.median, m.min, m.max
        );
    }
    if std::env::var("KASKADE_BENCH_CALLGRIND").is_ok_and(|v| v == "0") {
        return;
    }
    instructions();
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kaskade-bench-scenario")
}

/// Runs this binary under callgrind, collecting only router code in the
/// measured windows, and prints instructions per forwarded packet.
fn instructions() {
    let dir = out_dir();
    if !kaskade_bench::measure::callgrind_child(&dir, &[(CHILD_ENV, "1".to_string())], true) {
        return;
    }
    println!();
    println!("Router user-space instructions per forwarded packet (callgrind, one window, deterministic)");
    println!();
    println!("| shape | forwarded | handed over | instructions / forwarded packet | dump |");
    println!("|---|---|---|---|---|");
    let rows = kaskade_bench::measure::callgrind_dumps(&dir);
    // name -> (forwarded, handed over, instructions)
    let mut counts: Vec<(String, u64, u64, u64)> = Vec::new();
    for (label, total, path) in rows {
        let mut it = label.split_whitespace();
        let field = |f: Option<&str>, key: &str| {
            f.and_then(|f| f.strip_prefix(key))
                .and_then(|f| f.parse::<u64>().ok())
        };
        let (Some(name), Some(fwd)) = (it.next(), field(it.next(), "forwarded=")) else {
            continue;
        };
        let handed = field(it.next(), "handovers=").unwrap_or(0);
        println!(
            "| {name} | {fwd} | {handed} | {:.0} | {} |",
            total as f64 / fwd.max(1) as f64,
            path.display()
        );
        counts.push((name.to_string(), fwd, handed, total));
    }
    // Single port next to the same shape on a port per worker: what the
    // hand-overs added, per datagram handed over (at the same forwarded count).
    for (name, fwd, handed, total) in &counts {
        let Some(base) = name.strip_suffix('p') else {
            continue;
        };
        let Some((_, bfwd, _, btotal)) = counts.iter().find(|c| c.0 == base) else {
            continue;
        };
        if *handed == 0 {
            continue;
        }
        let per_fwd = *total as f64 / (*fwd).max(1) as f64;
        let base_per_fwd = *btotal as f64 / (*bfwd).max(1) as f64;
        println!();
        println!(
            "{name} vs {base}: {:+.0} instructions per forwarded packet, \
             {:+.0} per datagram handed over ({handed} handed over, {fwd} forwarded)",
            per_fwd - base_per_fwd,
            (per_fwd - base_per_fwd) * *fwd as f64 / *handed as f64
        );
    }
}

fn callgrind_child() {
    assert!(
        callgrind::running_on_valgrind(),
        "the child runs under callgrind"
    );
    for (name, shape) in shapes() {
        let mut s = Scenario::new(shape, SEED, WARMUP);
        let w = s.measure(window());
        callgrind::dump(&format!(
            "{name} forwarded={} handovers={}",
            w.forwarded, w.handovers
        ));
    }
}
