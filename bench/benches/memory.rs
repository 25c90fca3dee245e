//! Router memory per subscribed video track at steady state, and router
//! heap allocations per outgoing packet.
//!
//! `cargo bench -p kaskade-bench --bench memory`. The tagging allocator
//! (`kaskade_bench::alloc`) attributes every block to the router or to the
//! rest of the process (simulated browsers, network, bench), so the
//! browsers' own memory is not counted. Method: a publisher (one 4 Mbps VP8
//! track) and N data-channel subscribers joined and connected; router bytes
//! live before subscribing (A); every subscriber subscribes, media flows for
//! 6 s of virtual time (str0m's RTX cache holds at most 3 s or 1000 packets
//! per stream, so it is full); router bytes live (B); (B - A) / N.
//! `KASKADE_BENCH_MEMORY_SUBS` (default 100) sets N;
//! `KASKADE_BENCH_RTX_CACHE` the router's `media.rtx_cache` (default: the
//! router's default).

use kaskade_bench::alloc::{
    allocated_bytes, allocations, live_bytes, router_classes, with_router, TaggingAlloc, ROUTER,
};
use kaskade_bench::fanout::{self, FanOut};
use std::time::Duration;

#[global_allocator]
static ALLOC: TaggingAlloc = TaggingAlloc;

fn main() {
    let n: usize = std::env::var("KASKADE_BENCH_MEMORY_SUBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let options = fanout::options_from_env();
    let mut f = FanOut::connect_with(n, 11, options);
    let n_eff = f.subscribers.len();
    f.run_for(Duration::from_secs(1));
    let a = live_bytes(ROUTER);
    let classes_a = router_classes();
    f.subscribe_all();
    f.wait_media();
    let mut samples = Vec::new();
    for _ in 0..4 {
        f.run_for(Duration::from_millis(1500));
        samples.push(live_bytes(ROUTER));
    }
    let b = *samples.last().expect("samples");
    let classes_b = router_classes();
    let per_track = (b - a) as f64 / n_eff as f64;

    // Router allocations while forwarding at steady state.
    let (c0, bytes0, p0) = (allocations(ROUTER), allocated_bytes(ROUTER), f.forwarded());
    f.run_for(Duration::from_secs(2));
    let (c1, bytes1, p1) = (allocations(ROUTER), allocated_bytes(ROUTER), f.forwarded());
    let packets = (p1 - p0).max(1);

    let cfg = with_router(str0m::RtcConfig::new);
    let rtp_packet = std::mem::size_of::<str0m::rtp::RtpPacket>();
    println!(
        "kaskade router memory per subscribed video track ({n_eff} subscribers, 1 publisher, VP8 at 4 Mbps) — {}",
        kaskade_bench::measure::machine()
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| router bytes live before subscribing (A) | {a} |");
    println!(
        "| router bytes live at steady state, every 1.5 s (B) | {} |",
        samples
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| **bytes per subscribed video track**, (B - A) / N | **{per_track:.0}** |");
    println!(
        "| router heap allocations per outgoing RTP packet | {:.2} |",
        (c1 - c0) as f64 / packets as f64
    );
    println!(
        "| router bytes allocated per outgoing RTP packet | {:.0} |",
        (bytes1 - bytes0) as f64 / packets as f64
    );
    println!(
        "| router RTX cache, `media.rtx_cache` (video packets per stream) | {} |",
        options.rtx_cache
    );
    println!(
        "| str0m defaults (video / audio packets per stream) | {} / {} |",
        cfg.send_buffer_video(),
        cfg.send_buffer_audio()
    );
    println!(
        "| size_of::<str0m::rtp::RtpPacket>() (payload `Arc` shared, not copied) | {rtp_packet} |"
    );

    println!();
    println!("Where the bytes per track are, by block size (router blocks live at B minus at A, per track):");
    println!();
    println!("| block size | bytes per track | share |");
    println!("|---|---|---|");
    let mut classes: Vec<(usize, i64)> = classes_b
        .iter()
        .zip(&classes_a)
        .map(|(b, a)| b - a)
        .enumerate()
        .filter(|(_, d)| *d != 0)
        .collect();
    classes.sort_by_key(|(_, d)| -d.abs());
    for (c, d) in classes.into_iter().take(8) {
        let lo = if c == 0 { 0 } else { 1u64 << (c - 1) };
        let hi = (1u64 << c) - 1;
        println!(
            "| {lo}–{hi} B | {:.0} | {:.1}% |",
            d as f64 / n_eff as f64,
            100.0 * d as f64 / (b - a) as f64
        );
    }
}
