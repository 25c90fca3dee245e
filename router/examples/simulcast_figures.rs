//! Measures simulcast switching on the deterministic simulation (virtual
//! clock, real control plane and worker cores, str0m clients), over several
//! seeds, and prints the medians for docs/simulcast.md:
//!
//! - time from a preference change to the first packet of the new layer,
//! - time to move down after a downlink cap,
//! - the longest gap between frames the subscriber receives across a switch.
//!
//! `cargo run --release -p kaskade-router --features testkit --example simulcast_figures`

use kaskade_loadtest::{Link, LinkKey};
use kaskade_router::testkit::Room;
use std::time::Duration;

const SEEDS: u64 = 9;
const ONE_WAY_MS: u64 = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The longest gap between the first packets of consecutive frames the
/// subscriber received (in sequence order) within `window` after `from`.
fn longest_frame_gap(r: &Room, sub: usize, from: std::time::Instant, window: Duration) -> Duration {
    let rec = r.sim.clients[r.subs[sub]]
        .client
        .received_on(r.mids[sub])
        .expect("receiving");
    let mut starts: Vec<std::time::Instant> = rec
        .log
        .iter()
        .filter(|p| p.vp8.is_some_and(|d| d.start && d.partition == 0))
        .map(|p| p.at)
        .filter(|t| *t >= from && *t <= from + window)
        .collect();
    starts.sort();
    starts
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

fn main() {
    let mut pref_ms = Vec::new();
    let mut down_ms = Vec::new();
    let mut gap_pref_ms = Vec::new();
    let mut gap_bw_ms = Vec::new();
    for seed in 1..=SEEDS {
        let mut r = Room::video(2, &["l", "m", "h"], 1, 100 + seed);
        // 20 ms each way between every client and the router.
        r.sim
            .net
            .set_default(Link::with_delay(Duration::from_millis(ONE_WAY_MS)));
        r.wait_layer(0, Duration::from_secs(30), |l| l == 2)
            .expect("reaches the top layer");
        r.sim.run_for(Duration::from_secs(2));
        for want in [0u8, 2, 1, 2] {
            let t0 = r.sim.now;
            r.update(0, |q| q.max_spatial_layer = Some(u32::from(want)));
            let t = r
                .wait_layer(0, Duration::from_secs(10), |l| l == want)
                .expect("preference honoured");
            pref_ms.push(ms(t));
            r.sim.run_for(Duration::from_secs(1));
            gap_pref_ms.push(ms(longest_frame_gap(&r, 0, t0, Duration::from_secs(1))));
        }
        // Cap the downlink below the top layer's rate.
        let addr = r.sim.clients[r.subs[0]].client.local_addr();
        let t0 = r.sim.now;
        r.sim.net.set_to(
            addr,
            Link::with_delay(Duration::from_millis(ONE_WAY_MS)).rate(900_000, 40_000),
        );
        let t = r
            .wait_layer(0, Duration::from_secs(10), |l| l < 2)
            .expect("moves down");
        down_ms.push(ms(t));
        r.sim.run_for(Duration::from_secs(1));
        gap_bw_ms.push(ms(longest_frame_gap(&r, 0, t0, Duration::from_secs(3))));
        r.sim.net.clear(LinkKey::To(addr));
    }
    let row = |name: &str, v: &mut Vec<f64>| {
        let (min, max) = (
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        );
        println!(
            "| {name} | {:.0} ms | {:.0}–{:.0} ms | {} |",
            median(v),
            min,
            max,
            v.len()
        );
    };
    println!("{SEEDS} seeds, {ONE_WAY_MS} ms one-way delay on every path\n");
    println!("| figure | median | range | samples |");
    println!("|---|---|---|---|");
    row(
        "preference change → first packet of the new layer",
        &mut pref_ms,
    );
    row(
        "longest frame gap across a preference switch",
        &mut gap_pref_ms,
    );
    row(
        "downlink capped to 900 kbps → first packet of a lower layer",
        &mut down_ms,
    );
    row(
        "longest frame gap while capped and switching down (3 s)",
        &mut gap_bw_ms,
    );
}
