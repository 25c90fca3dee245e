//! Simulcast on the virtual clock: per-subscriber layer selection by
//! preference and bandwidth, keyframe-gated switching, layers that stop.

mod common;

use common::checks::{assert_clean_switches, layer};
use common::{client_addr, Room};
use kaskade_loadtest::Link;
use kaskade_protocol::v1 as pb;
use std::time::Duration;

fn room(subscribers: usize, seed: u64) -> Room {
    let r = Room::video(2, &["l", "m", "h"], subscribers, seed);
    assert_eq!(r.video.rids, vec!["l", "m", "h"]);
    r
}

fn update(
    r: &mut Room,
    sub: usize,
    f: impl FnOnce(&mut pb::UpdateSubscriptionRequest),
) -> pb::SubscriptionState {
    r.update(sub, f)
}

fn wait_layer(r: &mut Room, sub: usize, want: u8, limit: Duration) -> Option<Duration> {
    r.wait_layer(sub, limit, |l| l == want)
}

fn wait_layer_below(r: &mut Room, sub: usize, below: u8, limit: Duration) -> Option<Duration> {
    r.wait_layer(sub, limit, |l| l < below)
}

#[test]
fn bandwidth_cap_moves_one_subscriber_down_and_back_up() {
    let mut r = room(2, 21);
    // Both climb to the top layer as their estimates grow.
    assert!(
        wait_layer(&mut r, 0, 2, Duration::from_secs(20)).is_some(),
        "A reaches the top"
    );
    assert!(
        wait_layer(&mut r, 1, 2, Duration::from_secs(5)).is_some(),
        "B reaches the top"
    );
    let b_before = r.sim.clients[r.subs[1]]
        .client
        .received_on(r.mids[1])
        .unwrap()
        .log
        .len();

    // Steady state first, then cap A's downlink below the top layer's rate.
    r.sim.run_for(Duration::from_secs(3));
    let a = client_addr(r.subs[0]);
    r.sim.net.set_to(
        a,
        Link::with_delay(Duration::from_millis(10)).rate(900_000, 40_000),
    );
    let t_down = wait_layer_below(&mut r, 0, 2, Duration::from_secs(2));
    assert!(t_down.is_some(), "A moves down within 2 s of the cap");

    // B, uncapped, never leaves the top layer.
    r.sim.run_for(Duration::from_secs(3));
    let b = r.sim.clients[r.subs[1]]
        .client
        .received_on(r.mids[1])
        .unwrap();
    assert!(
        b.log[b_before..].iter().all(|p| layer(p) == 2),
        "B stays on the top layer"
    );

    // Lift the cap: A climbs back.
    r.sim.net.clear(kaskade_loadtest::LinkKey::To(a));
    assert!(
        wait_layer(&mut r, 0, 2, Duration::from_secs(25)).is_some(),
        "A climbs back to the top"
    );

    for (i, s) in r.subs.iter().enumerate() {
        let rec = r.sim.clients[*s].client.received_on(r.mids[i]).unwrap();
        assert_eq!(rec.first_packet_keyframe, Some(true));
        assert_clean_switches(rec);
    }
    // Watchers saw A's layer changes with their reasons.
    let a_sid = r.sim.clients[r.subs[0]].session.clone().unwrap();
    let mut reasons = Vec::new();
    while let Ok(e) = r.events.try_recv() {
        if let Some(pb::event::Kind::LayerChanged(c)) = e.kind {
            if c.session_id == a_sid {
                reasons.push(c.reason);
            }
        }
    }
    assert!(reasons.iter().any(|x| x == "bandwidth"), "{reasons:?}");
}

#[test]
fn publisher_dropping_the_top_layer_moves_subscribers_to_the_middle() {
    let mut r = room(2, 22);
    assert!(wait_layer(&mut r, 0, 2, Duration::from_secs(20)).is_some());
    assert!(wait_layer(&mut r, 1, 2, Duration::from_secs(5)).is_some());
    let track = kaskade_loadtest::TrackId(0);
    assert!(r.sim.clients[r.publ]
        .client
        .set_layer_paused(track, Some("h"), true));
    for s in 0..2 {
        let t = wait_layer(&mut r, s, 1, Duration::from_secs(3));
        assert!(t.is_some(), "subscriber {s} falls to the middle layer");
    }
    // The top layer comes back: they return to it.
    assert!(r.sim.clients[r.publ]
        .client
        .set_layer_paused(track, Some("h"), false));
    for s in 0..2 {
        assert!(wait_layer(&mut r, s, 2, Duration::from_secs(5)).is_some());
        let rec = r.sim.clients[r.subs[s]]
            .client
            .received_on(r.mids[s])
            .unwrap();
        assert_clean_switches(rec);
    }
    let mut gone = false;
    while let Ok(e) = r.events.try_recv() {
        if let Some(pb::event::Kind::LayerChanged(c)) = e.kind {
            gone |= c.reason == "layer_gone" && c.old_layer == 2 && c.new_layer == 1;
        }
    }
    assert!(gone, "reported as layer_gone");
}

#[test]
fn preferences_select_layers_and_unwanted_layers_are_reported() {
    let mut r = room(1, 23);
    // Let the downlink estimate grow first, so preferences alone decide.
    assert!(wait_layer(&mut r, 0, 2, Duration::from_secs(20)).is_some());
    r.sim.run_for(Duration::from_secs(1));
    let st = update(&mut r, 0, |q| q.max_spatial_layer = Some(0));
    assert_eq!(st.max_spatial_layer, 0);
    let mut times = Vec::new();
    let t = wait_layer(&mut r, 0, 0, Duration::from_secs(5)).expect("lowest layer");
    times.push(t);
    r.sim.run_for(Duration::from_secs(1));
    // Only layer 0 is wanted now: layers 1 and 2 are reported unused.
    let mut unused = Vec::new();
    while let Ok(e) = r.events.try_recv() {
        if let Some(pb::event::Kind::LayerDemand(d)) = e.kind {
            if !d.wanted {
                unused.push(d.rid);
            }
        }
    }
    assert!(
        unused.contains(&"m".to_string()) && unused.contains(&"h".to_string()),
        "{unused:?}"
    );

    for want in [2u8, 1, 0, 2] {
        r.sim.run_for(Duration::from_millis(300));
        update(&mut r, 0, |q| q.max_spatial_layer = Some(u32::from(want)));
        let t = wait_layer(&mut r, 0, want, Duration::from_secs(5));
        times.push(t.unwrap_or_else(|| panic!("reached layer {want}")));
    }
    // By resolution: 700x400 fits the middle layer (640x360).
    update(&mut r, 0, |q| {
        q.max_width = Some(700);
        q.max_height = Some(400);
    });
    times.push(wait_layer(&mut r, 0, 1, Duration::from_secs(5)).expect("middle by size"));
    for t in &times {
        // A PLI round trip on the simulated network, not a keyframe interval.
        assert!(*t < Duration::from_millis(400), "switch took {t:?}");
    }
    // Paused: nothing arrives.
    update(&mut r, 0, |q| q.paused = Some(true));
    r.sim.run_for(Duration::from_millis(200));
    let n = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap()
        .packets;
    r.sim.run_for(Duration::from_secs(1));
    let m = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap()
        .packets;
    assert!(m <= n + 2, "paused ({n} -> {m})");
    let st = update(&mut r, 0, |q| q.paused = Some(false));
    assert!(!st.paused);
    assert!(
        wait_layer(&mut r, 0, 1, Duration::from_secs(3)).is_some(),
        "resumed"
    );
    let rec = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap();
    assert!(assert_clean_switches(rec) >= 5);
}

#[test]
fn temporal_cap_lowers_the_frame_rate_without_a_keyframe() {
    let mut r = room(1, 24);
    update(&mut r, 0, |q| q.max_spatial_layer = Some(1));
    assert!(wait_layer(&mut r, 0, 1, Duration::from_secs(5)).is_some());
    r.sim.run_for(Duration::from_secs(1));
    let before = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap()
        .log
        .len();
    update(&mut r, 0, |q| q.max_temporal_layer = Some(0));
    r.sim.run_for(Duration::from_secs(2));
    let rec = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap();
    let after: Vec<_> = rec.log[before..].iter().skip(10).collect();
    assert!(after.len() > 30);
    assert!(
        after.iter().all(|p| p.vp8.unwrap().tid == Some(0)),
        "only the base temporal layer"
    );
    assert!(!after.iter().any(|p| p.is_keyframe_start && layer(p) != 1));
    // Still one continuous stream: no sequence or picture id gaps.
    for w in rec.log.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq + 1,
            "no gaps from dropped temporal layers"
        );
    }
    assert_clean_switches(rec);
    // Back to every temporal layer.
    update(&mut r, 0, |q| q.max_temporal_layer = Some(2));
    r.sim.run_for(Duration::from_secs(1));
    let rec = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap();
    assert!(rec
        .log
        .iter()
        .rev()
        .take(20)
        .any(|p| p.vp8.unwrap().tid != Some(0)));
    assert_clean_switches(rec);
}

#[test]
fn h264_simulcast_switches_on_keyframes_in_one_continuous_stream() {
    let mut r = Room::video_with(
        2,
        &["l", "m", "h"],
        1,
        25,
        kaskade_loadtest::VideoCodec::H264,
    );
    assert!(
        wait_layer(&mut r, 0, 2, Duration::from_secs(20)).is_some(),
        "climbs to the top"
    );
    for want in [0u8, 2, 1] {
        r.sim.run_for(Duration::from_millis(500));
        update(&mut r, 0, |q| q.max_spatial_layer = Some(u32::from(want)));
        assert!(
            wait_layer(&mut r, 0, want, Duration::from_secs(3)).is_some(),
            "layer {want}"
        );
    }
    r.sim.run_for(Duration::from_millis(500));
    let rec = r.sim.clients[r.subs[0]]
        .client
        .received_on(r.mids[0])
        .unwrap();
    // Each switch starts with SPS/IDR, one continuous stream.
    let switches = assert_clean_switches(rec);
    assert!(switches >= 4, "{switches} switches");
}
