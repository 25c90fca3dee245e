//! The hot path micro benchmark of issue 5: a kaskade worker core forwarding
//! one publisher's video packets to N subscribers, SRTP included, next to
//! the floor routine measured in the same run.
//!
//! `cargo bench -p kaskade-bench --bench hotpath` prints a table of CPU ns
//! per outgoing packet (medians of several runs, with min–max) and, when
//! valgrind is installed, user-space instructions per outgoing packet
//! counted by callgrind in a child process, plus the top functions of the
//! kaskade side at N = 10. Environment:
//!
//! * `KASKADE_BENCH_RUNS` (default 5): timed runs per N.
//! * `KASKADE_BENCH_SIZES` (default `1,10,50,100`; 50 is scenario S1's fan-out): subscriber counts.
//! * `KASKADE_BENCH_SUBSCRIBER=recvonly`: subscribers bootstrap with a
//!   receive-only video line instead of a data channel (no SCTP).
//! * `KASKADE_BENCH_CALLGRIND=0`: skip the instruction counts.

use kaskade_bench::fanout::FanOut;
use kaskade_bench::floor::Floor;
use kaskade_bench::measure::{callgrind, machine, measure, Cost, Summary};
use kaskade_bench::net::Sinks;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Video packets per second of the publisher (see `fanout::VIDEO`), roughly.
const PUBLISHER_PPS: f64 = 430.0;
/// Virtual time between two measured windows: everyone catches up.
const RESYNC: Duration = Duration::from_millis(1500);
/// Environment variable that makes the process the callgrind child.
const CHILD_ENV: &str = "KASKADE_BENCH_CALLGRIND_CHILD";

/// Measured window of virtual time for N subscribers: ~24k outgoing packets
/// (~6k under callgrind), at most 4 s (subscribers send no RTCP meanwhile).
fn window(n: usize, target_packets: f64) -> Duration {
    Duration::from_secs_f64((target_packets / (PUBLISHER_PPS * n as f64)).clamp(0.1, 4.0))
}

/// Incoming packets for the floor: ~32k outgoing packets per run.
fn floor_packets(n: usize, target_packets: usize) -> usize {
    (target_packets / n).max(64)
}

fn sizes() -> Vec<usize> {
    std::env::var("KASKADE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 50, 100])
}

#[derive(Default)]
struct Samples {
    kaskade_core: Vec<Cost>,
    kaskade_send: Vec<Cost>,
    floor_core: Vec<Cost>,
    floor_send: Vec<Cost>,
}

fn cpu_ns(v: &[Cost]) -> Summary {
    Summary::of(&v.iter().map(Cost::cpu_ns).collect::<Vec<_>>())
}

fn ratios(a: &[Cost], b: &[Cost]) -> Summary {
    Summary::of(
        &a.iter()
            .zip(b)
            .map(|(a, b)| a.cpu_ns() / b.cpu_ns())
            .collect::<Vec<_>>(),
    )
}

fn fmt_ns(s: Summary) -> String {
    format!("{:.0} [{:.0}–{:.0}]", s.median, s.min, s.max)
}

fn fmt_ratio(s: Summary) -> String {
    format!("{:.2}× [{:.2}–{:.2}]", s.median, s.min, s.max)
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        callgrind_child();
        return;
    }
    let runs: usize = std::env::var("KASKADE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    print_machine();
    let mut rows = Vec::new();
    for n in sizes() {
        let t = std::time::Instant::now();
        let mut f = FanOut::new(n, 7);
        let n_eff = f.subscribers.len();
        eprintln!(
            "N={n}: scenario with {n_eff} subscribers ready in {:.1} s (room limit {})",
            t.elapsed().as_secs_f64(),
            f.room_limit
        );
        let mut sinks = Sinks::new(n_eff + 1).expect("bind loopback sinks");
        let mut floor = Floor::new(n_eff);
        let fp = floor_packets(n_eff, 32 * 1024);
        // Warm-up: caches, sink queues filled to the point where the kernel drops.
        floor.run(fp, Some(&mut sinks));
        let w = window(n_eff, 24_000.0);
        let mut s = Samples::default();
        for _ in 0..runs {
            s.floor_send
                .push(measure(|| floor.run(fp, Some(&mut sinks))));
            let rec = f.record_publisher(w);
            let end = f.sim.now + w;
            s.kaskade_send
                .push(measure(|| f.replay(&rec, end, Some(&mut sinks))));
            f.run_for(RESYNC);
            s.floor_core.push(measure(|| floor.run(fp, None)));
            let rec = f.record_publisher(w);
            let end = f.sim.now + w;
            s.kaskade_core.push(measure(|| f.replay(&rec, end, None)));
            f.run_for(RESYNC);
        }
        assert_eq!(sinks.errors, 0, "sendmmsg refused datagrams");
        let ks = &s.kaskade_send;
        eprintln!(
            "N={n_eff}: kaskade {} packets/run ({:.0} ns wall/pkt), floor {} packets/run ({:.0} ns wall/pkt)",
            ks[0].packets,
            Summary::of(&ks.iter().map(Cost::wall_ns).collect::<Vec<_>>()).median,
            s.floor_send[0].packets,
            Summary::of(&s.floor_send.iter().map(Cost::wall_ns).collect::<Vec<_>>()).median,
        );
        rows.push((n_eff, s));
    }

    println!();
    println!("CPU time (CLOCK_THREAD_CPUTIME_ID) per outgoing packet, ns: median [min–max] of {runs} runs");
    println!("ratio = kaskade / floor, per run, same process; \"+ send\" includes sendmmsg (batches of 32) to loopback sinks");
    println!(
        "subscribers bootstrap with {}",
        if kaskade_bench::fanout::receive_only_bootstrap() {
            "a receive-only video line (KASKADE_BENCH_SUBSCRIBER=recvonly)"
        } else {
            "a data channel"
        }
    );
    println!();
    println!("| N | kaskade core+send | floor core+send | ratio (+send) | kaskade core only | floor core only | ratio (core) |");
    println!("|---|---|---|---|---|---|---|");
    for (n, s) in &rows {
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} |",
            fmt_ns(cpu_ns(&s.kaskade_send)),
            fmt_ns(cpu_ns(&s.floor_send)),
            fmt_ratio(ratios(&s.kaskade_send, &s.floor_send)),
            fmt_ns(cpu_ns(&s.kaskade_core)),
            fmt_ns(cpu_ns(&s.floor_core)),
            fmt_ratio(ratios(&s.kaskade_core, &s.floor_core)),
        );
    }

    srtp_profiles(runs);

    if std::env::var("KASKADE_BENCH_CALLGRIND").is_ok_and(|v| v == "0") {
        return;
    }
    instructions(&rows.iter().map(|(n, _)| *n).collect::<Vec<_>>());
}

/// What the SRTP profile costs per 1200-byte packet: the floor seals with
/// AES-128-GCM, kaskade (str0m/dimpl, and Chrome with it) with AES-256-GCM.
fn srtp_profiles(runs: usize) {
    use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM};
    const PACKETS: u64 = 200_000;
    let mut r128 = Vec::new();
    let mut r256 = Vec::new();
    for _ in 0..runs {
        r128.push(measure(|| kaskade_bench::floor::seal_packets(&AES_128_GCM, PACKETS)).cpu_ns());
        r256.push(measure(|| kaskade_bench::floor::seal_packets(&AES_256_GCM, PACKETS)).cpu_ns());
    }
    let (a, b) = (Summary::of(&r128).median, Summary::of(&r256).median);
    println!();
    println!(
        "SRTP seal of a 1200-byte packet (aws-lc, median of {runs}): AEAD_AES_128_GCM {a:.0} ns, \
         AEAD_AES_256_GCM {b:.0} ns (+{:.0} ns per outgoing packet)",
        b - a
    );
}

fn print_machine() {
    println!("kaskade hot path micro benchmark — {}", machine());
}

// ----- instructions (callgrind) ------------------------------------------------

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kaskade-bench-callgrind")
}

/// Runs this binary under callgrind (instrumenting only the measured
/// regions), then reads each region's instruction total.
fn instructions(sizes: &[usize]) {
    let dir = out_dir();
    let sizes_arg = sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let env = [
        (CHILD_ENV, "1".to_string()),
        ("KASKADE_BENCH_SIZES", sizes_arg),
    ];
    if !kaskade_bench::measure::callgrind_child(&dir, &env, false) {
        return;
    }
    let regions = kaskade_bench::measure::callgrind_dumps(&dir);
    // Labels: "<side> n=<N> packets=<P>".
    let per_packet = |side: &str, n: usize| -> Option<(f64, PathBuf)> {
        regions.iter().find_map(|(label, total, path)| {
            let mut it = label.split_whitespace();
            let (s, nn, p) = (it.next()?, it.next()?, it.next()?);
            let nn: usize = nn.strip_prefix("n=")?.parse().ok()?;
            let p: u64 = p.strip_prefix("packets=")?.parse().ok()?;
            (s == side && nn == n).then(|| (*total as f64 / p.max(1) as f64, path.clone()))
        })
    };
    println!();
    println!("User-space instructions per outgoing packet (callgrind; kernel send path not counted; deterministic, one run)");
    println!();
    println!("| N | kaskade core+send | floor core+send | ratio |");
    println!("|---|---|---|---|");
    for n in sizes {
        let (Some((k, _)), Some((fl, _))) = (per_packet("kaskade", *n), per_packet("floor", *n))
        else {
            println!("| {n} | – | – | – |");
            continue;
        };
        println!("| {n} | {k:.0} | {fl:.0} | {:.1}× |", k / fl);
    }
    let profile_n = if sizes.contains(&10) { 10 } else { sizes[0] };
    if let Some((_, path)) = per_packet("kaskade", profile_n) {
        profile(&path, profile_n);
    }
}

/// Prints the top functions (self cost) of a callgrind dump.
fn profile(path: &Path, n: usize) {
    let Ok(out) = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100"])
        .arg(path)
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let total: f64 = text
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.replace(',', "").parse().ok())
        .unwrap_or(0.0);
    println!();
    println!(
        "Kaskade side at N={n}, top 10 functions by self instructions ({})",
        path.display()
    );
    println!();
    println!("| share | instructions | function |");
    println!("|---|---|---|");
    let mut shown = 0;
    let mut in_table = false;
    for l in text.lines() {
        if l.contains("file:function") {
            in_table = true;
            continue;
        }
        if !in_table || l.trim().is_empty() || l.starts_with("--") {
            continue;
        }
        let mut it = l.split_whitespace();
        let Some(ir) = it
            .next()
            .and_then(|v| v.replace(',', "").parse::<f64>().ok())
        else {
            continue;
        };
        let rest: Vec<&str> = it.collect();
        // Skip the "(xx.x%)" column of newer callgrind_annotate versions.
        let func = rest
            .iter()
            .skip_while(|s| s.starts_with('('))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let func = func.split(" [").next().unwrap_or_default();
        let func = func.split_once(':').map_or(func, |(_, f)| f);
        let func: String = func.chars().take(110).collect();
        println!(
            "| {:.1}% | {:.0} | `{}` |",
            100.0 * ir / total.max(1.0),
            ir,
            func
        );
        shown += 1;
        if shown == 10 {
            break;
        }
    }
    inclusive(path, total);
}

/// Prints the inclusive share of the functions that structure the hot path.
fn inclusive(path: &Path, total: f64) {
    const PARTS: [(&str, &str); 15] = [
        (
            "WorkerCore::handle_datagram",
            "the publisher's packet in: decrypt, meter, hand to the bus",
        ),
        (
            "WorkerCore::flush",
            "writing it to this worker's subscribers and draining them",
        ),
        (
            "WorkerCore::deliver_local",
            "fan-out to the local subscribers",
        ),
        (
            "OutStream::forward",
            "kaskade's per-subscriber rewrite + write_rtp",
        ),
        (
            "media::session::Session::drain",
            "poll_output loop + Input::Timeout(now) rounds",
        ),
        ("str0m::Rtc::poll_output", "str0m: packetize, encrypt, emit"),
        (
            "str0m::Rtc::handle_input",
            "str0m: the publisher's packet and the timeout rounds",
        ),
        (
            "str0m::sctp::RtcSctp::poll",
            "SCTP (data channel) polled on every poll_output",
        ),
        (
            "StreamTx::poll_packet",
            "str0m: next packet of an outgoing stream",
        ),
        (
            "srtp::AwsLcRsAeadAes256GcmCipher",
            "SRTP AEAD (AES-GCM) encrypt",
        ),
        ("EvictingBuffer<T>::push", "RTX cache insert"),
        ("RtpHeader::write_to", "RTP header + extensions"),
        ("LeakyBucketPacer", "pacer"),
        ("ProbeControl::handle_timeout", "BWE probe control"),
        (
            "__rust_alloc_zeroed",
            "zeroed allocations (transmit buffers)",
        ),
    ];
    let Ok(out) = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(path)
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    println!();
    println!("Inclusive shares of the pieces of the hot path (same dump)");
    println!();
    println!("| inclusive share | function | what |");
    println!("|---|---|---|");
    for (needle, what) in PARTS {
        let found = text.lines().find_map(|l| {
            if !l.contains(needle) {
                return None;
            }
            l.split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<f64>()
                .ok()
        });
        if let Some(ir) = found {
            println!(
                "| {:.1}% | `{needle}` | {what} |",
                100.0 * ir / total.max(1.0)
            );
        }
    }
}

/// In the callgrind child: each N once, smaller windows, only the measured
/// regions instrumented. Labels carry the packet counts.
fn callgrind_child() {
    assert!(
        callgrind::running_on_valgrind(),
        "the child runs under callgrind"
    );
    for n in sizes() {
        let mut f = FanOut::new(n, 7);
        let n_eff = f.subscribers.len();
        let mut sinks = Sinks::new(n_eff + 1).expect("bind loopback sinks");
        let mut floor = Floor::new(n_eff);
        let fp = floor_packets(n_eff, 6 * 1024);
        floor.run(fp / 4, Some(&mut sinks));
        callgrind::region(
            || floor.run(fp, Some(&mut sinks)),
            |p| format!("floor n={n_eff} packets={p}"),
        );
        let w = window(n_eff, 6_000.0);
        let rec = f.record_publisher(w);
        let end = f.sim.now + w;
        callgrind::region(
            || f.replay(&rec, end, Some(&mut sinks)),
            |p| format!("kaskade n={n_eff} packets={p}"),
        );
        f.run_for(RESYNC);
    }
}
