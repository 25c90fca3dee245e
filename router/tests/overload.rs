//! The fan-out bus under overload, on the virtual clock: a worker that falls
//! behind loses video (counted, resumed at a keyframe, one layer lower for a
//! while) and keeps every audio packet; with every inbox full nothing stalls.

mod common;

use common::checks::{assert_clean_switches, layer, mid_of, track};
use common::Sim;
use kaskade_loadtest::MediaRecv;
use kaskade_protocol::v1 as pb;
use std::time::{Duration, Instant};
use str0m::media::Mid;

/// Bus inboxes this small fill within a few milliseconds of media.
const CAPACITY: usize = 4;

fn worker_of(sim: &Sim, client: usize) -> u32 {
    let sid = sim.clients[client].session.clone().expect("joined");
    let info = sim.control.get_session(&sid).expect("session");
    info.session.expect("session info").worker
}

/// Every audio payload from the first one on, in order, with continuous
/// sequence numbers: nothing was dropped.
fn assert_audio_complete(r: &MediaRecv, what: &str) {
    assert!(r.log.len() > 100, "{what}: only {} packets", r.log.len());
    for w in r.log.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert_eq!(b.seq, a.seq + 1, "{what}: audio sequence continuous");
        let (pa, pb) = (a.probe.as_ref().unwrap(), b.probe.as_ref().unwrap());
        assert_eq!(
            pb.packet_index,
            pa.packet_index + 1,
            "{what}: no audio payload lost"
        );
    }
}

/// Where the subscriber's video resumed after packets were lost on the
/// way: every packet that follows a gap in the publisher's packets of the
/// same layer (by probe index) must start a keyframe. Returns those packets.
fn resumptions(r: &MediaRecv) -> Vec<&kaskade_loadtest::RecvPacket> {
    let mut log: Vec<&kaskade_loadtest::RecvPacket> = r.log.iter().collect();
    log.sort_by_key(|p| p.seq);
    log.dedup_by_key(|p| p.seq);
    let mut out = Vec::new();
    for w in log.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (pa, pb) = (a.probe.as_ref().unwrap(), b.probe.as_ref().unwrap());
        let gap = layer(a) == layer(b) && pb.packet_index != pa.packet_index + 1;
        let switch = layer(a) != layer(b);
        if gap || switch {
            assert!(
                b.is_keyframe_start,
                "after lost packets the stream resumes on a keyframe"
            );
            out.push(b);
        }
    }
    out
}

/// The first resumption that arrived after `t`.
fn resumed_after(r: &MediaRecv, t: Instant) -> Option<&kaskade_loadtest::RecvPacket> {
    resumptions(r).into_iter().find(|p| p.at > t)
}

struct Call {
    sim: Sim,
    publ: usize,
    /// (client, audio mid, video mid)
    subs: Vec<(usize, Mid, Mid)>,
    events: tokio::sync::broadcast::Receiver<pb::Event>,
}

/// One publisher of audio and three-layer simulcast video on worker 0 and
/// `subscribers` subscribers placed by the router (alternately on worker 1
/// and worker 0), all subscribed to both tracks.
fn call(subscribers: usize, seed: u64) -> Call {
    let mut sim = Sim::with_bus_capacity(2, seed, CAPACITY);
    let (publ, tracks, clients) = sim.publisher_and_subscribers(subscribers, |c| {
        c.add_audio();
        c.add_video(&["l", "m", "h"]);
    });
    let events = sim.control.watch("r").expect("room exists").events;
    let (audio, video) = (
        track(&tracks, pb::TrackKind::Audio),
        track(&tracks, pb::TrackKind::Video),
    );
    let subs = clients
        .iter()
        .map(|c| {
            let s = sim.subscribe(*c, &tracks);
            (*c, mid_of(&s, &audio), mid_of(&s, &video))
        })
        .collect();
    Call {
        sim,
        publ,
        subs,
        events,
    }
}

/// The layer changes reported since the last call.
fn changes(events: &mut tokio::sync::broadcast::Receiver<pb::Event>) -> Vec<pb::LayerChanged> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Some(pb::event::Kind::LayerChanged(c)) = e.kind {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_slow_worker_loses_video_keeps_audio_and_recovers() {
    let mut c = call(2, 61);
    assert_eq!(worker_of(&c.sim, c.publ), 0);
    let (far, far_audio, far_video) = c.subs[0];
    let (near, near_audio, near_video) = c.subs[1];
    assert_eq!(
        worker_of(&c.sim, far),
        1,
        "one subscriber on the other worker"
    );
    assert_eq!(worker_of(&c.sim, near), 0, "one next to the publisher");
    // Both reach the top layer.
    c.sim.run_for(Duration::from_secs(8));
    for (s, _, v) in &c.subs {
        let r = c.sim.clients[*s].client.received_on(*v).expect("video");
        assert_eq!(r.log.last().map(layer), Some(2), "subscriber on top");
    }
    let sessions = |sim: &Sim, cl: usize| sim.clients[cl].session.clone().unwrap();
    let far_session = sessions(&c.sim, far);
    changes(&mut c.events);

    // Worker 1 stops reading its inbox for 800 ms.
    let stall_start = c.sim.now;
    c.sim.stall(1, Duration::from_millis(800));
    c.sim.run_for(Duration::from_millis(790));
    assert_eq!(c.sim.inbox_len(1), CAPACITY, "its inbox filled up");
    c.sim.run_for(Duration::from_millis(10));
    let stall_end = c.sim.now;
    let shed_video = c.sim.metric("kaskade_bus_dropped_total{kind=\"video\"}");
    assert!(shed_video > 50.0, "video was shed: {shed_video}");
    assert_eq!(
        c.sim.metric("kaskade_bus_dropped_total{kind=\"other\"}"),
        0.0,
        "no audio or control was dropped"
    );
    c.sim.run_for(Duration::from_secs(2));

    // The far subscriber: resumed at a keyframe, one layer lower, told why.
    let r = c.sim.clients[far]
        .client
        .received_on(far_video)
        .expect("video");
    let resumed = resumed_after(r, stall_start).expect("video resumed after the stall");
    assert!(
        resumed.at - stall_end < Duration::from_millis(500),
        "resumed {:?} after the stall",
        resumed.at - stall_end
    );
    assert_eq!(layer(resumed), 1, "stepped down a layer");
    println!(
        "overload: {shed_video} video packets shed in 800 ms; resumed on a layer-1 keyframe {:?} after the stall",
        resumed.at - stall_end
    );
    assert!(c.sim.metric("kaskade_overload_resyncs_total") >= 1.0);
    let told: Vec<_> = changes(&mut c.events)
        .into_iter()
        .filter(|e| e.reason == "overload")
        .collect();
    assert!(
        told.iter()
            .any(|e| e.session_id == far_session && e.old_layer == 2 && e.new_layer == 1),
        "layer_changed reports the overload: {told:?}"
    );
    assert!(
        told.iter().all(|e| e.session_id == far_session),
        "only the subscriber behind the slow worker was affected"
    );
    // Nothing forwarded during the stall is missing at the far subscriber
    // except whole frames before the keyframe: the stream stays continuous.
    assert_clean_switches(r);
    let during = r
        .log
        .iter()
        .filter(|p| p.at > stall_start && p.at <= stall_end)
        .count();
    assert!(during < 20, "{during} video packets got through the stall");

    // Audio: every packet, on both subscribers.
    for (s, a, what) in [(far, far_audio, "far"), (near, near_audio, "near")] {
        let r = c.sim.clients[s].client.received_on(a).expect("audio");
        assert_audio_complete(r, what);
    }
    // The subscriber on the publisher's worker never noticed.
    let r = c.sim.clients[near]
        .client
        .received_on(near_video)
        .expect("video");
    assert!(r.log.iter().rev().take(50).all(|p| layer(p) == 2));
    let gap = r
        .log
        .windows(2)
        .filter(|w| w[0].at > stall_start)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    assert!(
        gap < Duration::from_millis(100),
        "near subscriber gap {gap:?}"
    );

    // After the hold, the far subscriber climbs back to the top.
    let mut back = false;
    for _ in 0..200 {
        c.sim.run_for(Duration::from_millis(100));
        let r = c.sim.clients[far].client.received_on(far_video).unwrap();
        if r.log.last().map(layer) == Some(2) {
            back = true;
            break;
        }
    }
    assert!(back, "back on the top layer after the overload hold");
    assert_clean_switches(c.sim.clients[far].client.received_on(far_video).unwrap());
}

#[test]
fn with_every_inbox_full_nothing_stalls_and_everything_recovers() {
    // Three publishers, one per worker, each receiving the other two: every
    // worker sends to every other.
    let mut sim = Sim::with_bus_capacity(3, 62, 2);
    sim.create_room("r");
    let clients: Vec<usize> = (0..3)
        .map(|_| {
            let c = sim.add_client(|c| c);
            sim.clients[c].client.add_audio();
            sim.clients[c].client.add_video(&[]);
            c
        })
        .collect();
    let mut tracks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        tracks.push(sim.join("r", *c, &format!("p{i}")));
    }
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(worker_of(&sim, *c), i as u32);
    }
    sim.connect(&clients);
    let mut mids = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let others: Vec<pb::Track> = tracks
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, t)| t.clone())
            .collect();
        let subs = sim.subscribe(*c, &others);
        let pairs: Vec<(Mid, Mid)> = tracks
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| {
                (
                    mid_of(&subs, &track(t, pb::TrackKind::Audio)),
                    mid_of(&subs, &track(t, pb::TrackKind::Video)),
                )
            })
            .collect();
        mids.push(pairs);
    }
    sim.run_for(Duration::from_secs(3));

    // Every worker falls behind at once, for a second.
    for w in 0..3 {
        sim.stall(w, Duration::from_secs(1));
    }
    sim.run_for(Duration::from_millis(990));
    for w in 0..3 {
        assert_eq!(sim.inbox_len(w), 2, "worker {w}'s inbox is full");
    }
    sim.run_for(Duration::from_millis(10));
    let end = sim.now;
    sim.run_for(Duration::from_secs(3));
    assert!(sim.metric("kaskade_bus_dropped_total{kind=\"video\"}") > 0.0);
    assert_eq!(sim.metric("kaskade_bus_dropped_total{kind=\"other\"}"), 0.0);
    for (i, c) in clients.iter().enumerate() {
        for (a, v) in &mids[i] {
            let client = &sim.clients[*c].client;
            assert_audio_complete(client.received_on(*a).expect("audio"), "audio");
            let r = client.received_on(*v).expect("video");
            let resumed = resumed_after(r, end - Duration::from_secs(1));
            assert!(resumed.is_some(), "video resumed on a keyframe");
            assert!(r
                .log
                .last()
                .is_some_and(|p| p.at > end + Duration::from_secs(2)));
        }
    }
}
