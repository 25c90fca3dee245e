//! The cascade's machines on a virtual clock: several routers' link control and relay
//! machines joined by a simulated network with delay, jitter, loss and breaks
//! (`kaskade_router::cascade::sim`). No sockets, no sleeps; each test runs in milliseconds.
//!
//! Routers: fra (eu-de-fra), ams (eu-nl-ams), par (eu-fr-par). A "line" links fra–ams and
//! ams–par; a "triangle" adds fra–par.

use kaskade_protocol::cascade as cpb;
use kaskade_protocol::TrackId;
use kaskade_router::cascade::link::LinkConfig;
use kaskade_router::cascade::sim::{Cluster, HostEvent, Impairment};
use kaskade_router::control::ApiError;
use std::time::Duration;
use str0m::media::MediaKind;

const NODES: [(&str, &str); 3] = [
    ("fra", "eu-de-fra"),
    ("ams", "eu-nl-ams"),
    ("par", "eu-fr-par"),
];
const ALL: u32 = 0b111;

fn clean() -> Impairment {
    Impairment {
        delay: Duration::from_millis(15),
        ..Impairment::default()
    }
}

fn lossy(loss: f64) -> Impairment {
    Impairment {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(20),
        loss,
    }
}

fn line(imp: Impairment, cfg: LinkConfig) -> Cluster {
    Cluster::new(&NODES, &[("fra", "ams", imp), ("ams", "par", imp)], cfg, 7)
}

fn triangle(imp: Impairment) -> Cluster {
    Cluster::new(
        &NODES,
        &[
            ("fra", "ams", imp),
            ("ams", "par", imp),
            ("fra", "par", imp),
        ],
        LinkConfig::default(),
        11,
    )
}

/// Room "r" on every router; links and rooms settle.
fn room_everywhere(c: &mut Cluster) {
    for (n, _) in NODES {
        c.create_room(n, "r", &[]).unwrap();
    }
    c.run_for(Duration::from_secs(3));
}

/// A three-layer video track on fra, 100 packets per second per layer.
fn publish_on_fra(c: &mut Cluster) -> TrackId {
    c.publish("fra", "r", MediaKind::Video, 3, 100, 900)
}

/// Room "r" everywhere, a track published on fra, subscribers on ams and par wanting these
/// layers (0: none), one second to settle; the track's id on fra, ams and par.
fn relaying(c: &mut Cluster, ams: u32, par: u32) -> [TrackId; 3] {
    room_everywhere(c);
    let t = publish_on_fra(c);
    c.run_for(Duration::from_millis(300));
    let on_ams = c
        .node("ams")
        .remote_track(t)
        .expect("the track reaches ams");
    let on_par = c.node("par").remote_track(t).expect("and par");
    for (node, track, mask) in [("ams", on_ams, ams), ("par", on_par, par)] {
        if mask != 0 {
            c.subscribe(node, track, mask);
        }
    }
    c.run_for(Duration::from_secs(1));
    [t, on_ams, on_par]
}

fn rooms(c: &Cluster, node: &str, peer: &str) -> Vec<String> {
    c.link(node, peer)
        .rooms
        .iter()
        .map(|r| r.to_string())
        .collect()
}

/// Media packets from `from` to `to`, per layer (whole packets, retransmissions included).
fn per_layer(c: &Cluster, from: &str, to: &str) -> [u64; 3] {
    let p = c.carried(from, to).per_layer;
    [p[0], p[1], p[2]]
}

/// Packets of `track` (an id on `node`) that reached its home worker there, per layer.
fn received(c: &Cluster, node: &str, track: TrackId) -> [usize; 3] {
    let h = &c.node(node).host;
    [0u8, 1, 2].map(|l| h.received.get(&(track, l)).map_or(0, |s| s.len()))
}

/// Sequence numbers missing at `node`'s home worker within the range that arrived.
fn missing(c: &Cluster, node: &str, track: TrackId) -> u64 {
    let h = &c.node(node).host;
    (0u8..3)
        .filter_map(|l| h.received.get(&(track, l)))
        .map(|s| {
            let (lo, hi) = (s.first().unwrap(), s.last().unwrap());
            hi - lo + 1 - s.len() as u64
        })
        .sum()
}

#[test]
fn rooms_link_themselves_in_a_line_and_in_a_triangle() {
    let mut c = line(clean(), LinkConfig::default());
    room_everywhere(&mut c);
    c.create_room("fra", "solo", &[]).unwrap();
    c.run_for(Duration::from_secs(1));
    assert_eq!(rooms(&c, "fra", "ams"), ["r"], "no LinkRoom call");
    assert_eq!(rooms(&c, "ams", "fra"), ["r"]);
    assert_eq!(rooms(&c, "ams", "par"), ["r"]);
    assert_eq!(rooms(&c, "par", "ams"), ["r"]);
    assert!(
        c.links("fra").iter().all(|l| l.peer.as_str() != "par"),
        "fra and par are not peers: the room chains through ams"
    );
    // A room hosted on one router only is linked nowhere (but its peers know it exists).
    assert_eq!(c.link("ams", "fra").hosted, 2);
    assert!(c.node("ams").host.replies.is_empty());

    let mut t = triangle(clean());
    room_everywhere(&mut t);
    for (a, b) in [("fra", "ams"), ("ams", "par"), ("fra", "par")] {
        assert_eq!(rooms(&t, a, b), ["r"], "{a}–{b}");
        assert_eq!(rooms(&t, b, a), ["r"], "{b}–{a}");
    }
    // Only the smaller node id of each pair asked.
    for (from, to) in [("fra", "ams"), ("par", "ams"), ("par", "fra")] {
        let asked = t
            .carried(from, to)
            .frames
            .iter()
            .filter(|m| matches!(m, cpb::frame::Msg::LinkRoom(_)))
            .count();
        assert_eq!(asked, 0, "{from} asked {to}");
    }
}

#[test]
fn a_chain_relays_each_track_once_per_link() {
    let mut c = line(clean(), LinkConfig::default());
    let [t, _, on_par] = relaying(&mut c, ALL, ALL);
    assert_eq!(c.node("par").host.tracks[&on_par].path, ["fra", "ams"]);
    c.net.reset_carried();
    let before = c.sent(t);
    c.run_for(Duration::from_secs(5));
    let sent = c.sent(t) - before;
    assert_eq!(sent, 500);
    // Two routers want every layer: fra sends each packet once, ams passes it on once.
    for (from, to) in [("fra", "ams"), ("ams", "par")] {
        for (layer, n) in per_layer(&c, from, to).into_iter().enumerate() {
            assert!(
                n.abs_diff(sent) <= 2,
                "{from}→{to} layer {layer}: {n} of {sent}"
            );
        }
        assert_eq!(c.carried(from, to).repairs, 0);
    }
    assert_eq!(per_layer(&c, "par", "ams"), [0, 0, 0]);
    assert_eq!(per_layer(&c, "ams", "fra"), [0, 0, 0]);
    assert_eq!(missing(&c, "par", on_par), 0);
    assert_eq!(c.node("par").host.duplicates, 0);
    assert_eq!(c.link("fra", "ams").tracks_sent, 1);
}

#[test]
fn only_the_wanted_layers_cross() {
    let mut c = line(clean(), LinkConfig::default());
    let [_, on_ams, on_par] = relaying(&mut c, 0, 0);
    let window = |c: &mut Cluster| {
        c.run_for(Duration::from_millis(500));
        c.net.reset_carried();
        c.run_for(Duration::from_secs(1));
        (per_layer(c, "fra", "ams"), per_layer(c, "ams", "par"))
    };
    assert_eq!(
        window(&mut c),
        ([0; 3], [0; 3]),
        "nobody wants it: nothing crosses"
    );

    c.subscribe("ams", on_ams, 0b001);
    let (fa, ap) = window(&mut c);
    assert!(
        fa[0] >= 99 && fa[1] == 0 && fa[2] == 0,
        "low layer only: {fa:?}"
    );
    assert_eq!(ap, [0; 3]);

    // ams wants the top layer, par the middle one: fra sends both, ams passes on the middle.
    c.subscribe("ams", on_ams, 0b100);
    c.subscribe("par", on_par, 0b010);
    let (fa, ap) = window(&mut c);
    assert!(fa[0] == 0 && fa[1] >= 99 && fa[2] >= 99, "{fa:?}");
    assert!(ap[0] == 0 && ap[1] >= 99 && ap[2] == 0, "{ap:?}");

    c.subscribe("ams", on_ams, 0);
    c.subscribe("par", on_par, 0);
    assert_eq!(window(&mut c), ([0; 3], [0; 3]));
}

#[test]
fn loss_is_repaired_and_the_residual_counted() {
    // Loss each way on both links, 20–40 ms one way (so reordering too). At 2 % repair leaves
    // next to nothing; at 20 % some packets lose every NACK or retransmission, and exactly
    // those are counted.
    for (loss, bound) in [(0.02, 0.001), (0.2, 0.02)] {
        let mut c = line(lossy(loss), LinkConfig::default());
        c.net.record_frames = false;
        let [t, on_ams, on_par] = relaying(&mut c, ALL, ALL);
        c.run_for(Duration::from_secs(19));
        // Stop, and let every repair settle (each missing packet ends repaired or lost).
        c.pause(t);
        c.run_for(Duration::from_secs(2));
        for (node, track) in [("ams", on_ams), ("par", on_par)] {
            let got: u64 = received(&c, node, track).iter().sum::<usize>() as u64;
            let s = c.rx_stats(node);
            let gone = missing(&c, node, track);
            eprintln!(
                "{:.0} % loss, {node}: {got} received, {} repaired, {gone} lost",
                loss * 100.0,
                s.repaired
            );
            assert!(got > 5_000, "{node}: {got}");
            assert!(s.repaired as f64 > got as f64 * loss, "{node}: {s:?}");
            assert_eq!(
                gone, s.lost,
                "{node}: the residual is what was counted lost"
            );
            assert!(
                (gone as f64) < got as f64 * bound,
                "{node}: {gone} of {got}"
            );
            assert_eq!(c.node(node).host.duplicates, 0, "{node}: nothing twice");
            if loss > 0.1 {
                assert!(gone > 0, "{node}: some loss is beyond repair at {loss}");
            }
        }
        assert!(c.carried("fra", "ams").repairs > 100);
    }
}

#[test]
fn reconnect_restores_the_subscriptions() {
    let mut c = line(clean(), LinkConfig::default());
    let [t, _, on_par] = relaying(&mut c, 0, ALL);
    c.break_link("ams", "par");
    c.run_for(Duration::from_secs(5));
    let during = received(&c, "par", on_par);
    c.run_for(Duration::from_secs(2));
    assert_eq!(received(&c, "par", on_par), during, "paused while down");
    assert!(
        c.node("par").host.tracks.contains_key(&on_par),
        "still published"
    );
    c.heal("ams", "par");
    c.run_for(Duration::from_secs(8));
    let after = received(&c, "par", on_par);
    assert!(after[2] > during[2] + 100, "{during:?} → {after:?}");
    assert_eq!(c.link("par", "ams").reconnects, 1);
    assert_eq!(c.node("par").remote_track(t), Some(on_par), "same local id");
    let removed = c
        .node("par")
        .host
        .events
        .iter()
        .any(|e| matches!(e, HostEvent::TrackRemoved(_)));
    assert!(!removed, "the subscriber never saw its track go");
}

#[test]
fn tracks_are_withdrawn_after_30_s_down() {
    let mut c = line(clean(), LinkConfig::default());
    let [_, _, on_par] = relaying(&mut c, 0, 0);
    c.break_link("ams", "par");
    c.run_for(Duration::from_millis(29_900));
    assert!(c.node("par").host.tracks.contains_key(&on_par));
    c.run_for(Duration::from_millis(200));
    assert!(
        !c.node("par").host.tracks.contains_key(&on_par),
        "withdrawn after 30 s"
    );
    let events = &c.node("par").host.events;
    assert!(events.contains(&HostEvent::TrackRemoved(on_par)));
}

#[test]
fn residency_is_refused_and_audited_on_both_sides() {
    let mut c = Cluster::new(
        &NODES[..2],
        &[("fra", "ams", clean())],
        LinkConfig::default(),
        3,
    );
    c.create_room("fra", "de", &["eu-de-"]).unwrap();
    assert!(
        c.create_room("ams", "de", &["eu-de-"]).is_err(),
        "ams may not hold it"
    );
    c.create_room("ams", "de", &[]).unwrap();
    c.run_for(Duration::from_secs(3));
    assert!(rooms(&c, "fra", "ams").is_empty(), "no automatic link");

    // fra asks: fra refuses on its own.
    let req = c.link_room("fra", "de", "ams");
    c.run_for(Duration::from_millis(100));
    match c.reply("fra", req) {
        Some(Err(ApiError::PermissionDenied(m))) => assert!(m.contains("eu-nl-ams"), "{m}"),
        r => panic!("{r:?}"),
    }
    // ams asks: fra refuses, ams hears it.
    let req = c.link_room("ams", "de", "fra");
    c.run_for(Duration::from_millis(100));
    match c.reply("ams", req) {
        Some(Err(ApiError::PermissionDenied(m))) => assert!(m.contains("refused"), "{m}"),
        r => panic!("{r:?}"),
    }
    let refusals = |node: &str| -> Vec<&'static str> {
        c.node(node)
            .host
            .events
            .iter()
            .filter_map(|e| match e {
                HostEvent::LinkRefused { decided_by, .. } => Some(*decided_by),
                _ => None,
            })
            .collect()
    };
    assert_eq!(refusals("fra"), ["local", "local"], "fra decided both");
    assert_eq!(
        refusals("ams"),
        ["peer"],
        "ams audits the refusal it was given"
    );
    // The room's existence never crossed from fra to ams except to answer ams's own question.
    for m in &c.carried("fra", "ams").frames {
        let mentions = match m {
            cpb::frame::Msg::HostedRooms(h) => h.added.iter().any(|r| r == "de"),
            cpb::frame::Msg::LinkRoom(l) => l.room_id == "de",
            cpb::frame::Msg::TrackAnnounce(a) => a.room_id == "de",
            _ => false,
        };
        assert!(!mentions, "{m:?}");
    }
    assert_eq!(c.link("ams", "fra").hosted, 0);
}

#[test]
fn keyframe_requests_travel_upstream_and_are_throttled() {
    let mut c = line(clean(), LinkConfig::default());
    let [t, _, on_par] = relaying(&mut c, 0, ALL);
    c.request_keyframe("par", on_par, 2);
    c.run_for(Duration::from_millis(200));
    let asked = |c: &Cluster| c.node("fra").host.keyframe_requests.clone();
    assert_eq!(asked(&c).len(), 1, "par → ams → fra's publisher");
    assert_eq!((asked(&c)[0].0, asked(&c)[0].1), (t, 2));
    // A burst of 50 requests in 50 ms reaches the publisher once.
    for _ in 0..50 {
        c.request_keyframe("par", on_par, 2);
        c.run_for(Duration::from_millis(1));
    }
    c.run_for(Duration::from_millis(200));
    assert_eq!(asked(&c).len(), 2, "{:?}", asked(&c));
    assert!(c.link("ams", "par").ignored >= 49);
}

#[test]
fn no_loops_in_a_triangle_and_each_track_comes_the_shortest_way() {
    let mut c = triangle(clean());
    let [t, _, on_par] = relaying(&mut c, ALL, ALL);
    assert_eq!(c.node("par").host.tracks[&on_par].path, ["fra"]);
    c.net.reset_carried();
    c.run_for(Duration::from_secs(3));
    for (from, to) in [("fra", "ams"), ("fra", "par")] {
        assert!(
            per_layer(&c, from, to).iter().all(|n| n.abs_diff(300) <= 2),
            "{from}→{to}"
        );
    }
    for (from, to) in [
        ("ams", "par"),
        ("par", "ams"),
        ("ams", "fra"),
        ("par", "fra"),
    ] {
        assert_eq!(
            per_layer(&c, from, to),
            [0; 3],
            "{from}→{to} carries nothing"
        );
    }
    // No announcement ever went to a router on the track's path.
    c.net.record_frames = true;
    for (from, to) in [
        ("ams", "fra"),
        ("par", "fra"),
        ("ams", "par"),
        ("par", "ams"),
    ] {
        for m in c.carried(from, to).frames {
            if let cpb::frame::Msg::TrackAnnounce(a) = m {
                assert!(!a.path.iter().any(|n| n == to), "{from}→{to}: {:?}", a.path);
            }
        }
    }

    // fra–par breaks: par pulls through ams at once, with no change for its subscribers.
    let before = received(&c, "par", on_par);
    c.break_link("fra", "par");
    c.run_for(Duration::from_secs(2));
    c.net.reset_carried();
    c.run_for(Duration::from_secs(2));
    assert!(per_layer(&c, "ams", "par")
        .iter()
        .all(|n| n.abs_diff(200) <= 2));
    assert_eq!(
        per_layer(&c, "fra", "ams")
            .iter()
            .sum::<u64>()
            .abs_diff(600),
        0
    );
    let after = received(&c, "par", on_par);
    assert!(after[0] >= before[0] + 390, "{before:?} → {after:?}");
    assert_eq!(c.node("par").remote_track(t), Some(on_par));
    assert_eq!(c.node("par").host.duplicates, 0);

    // Back: the direct path wins again.
    c.heal("fra", "par");
    c.run_for(Duration::from_secs(10));
    c.net.reset_carried();
    c.run_for(Duration::from_secs(1));
    assert_eq!(per_layer(&c, "ams", "par"), [0; 3]);
    assert!(per_layer(&c, "fra", "par")
        .iter()
        .all(|n| n.abs_diff(100) <= 2));
}

#[test]
fn restarting_the_middle_router_restores_the_relay() {
    let mut c = line(clean(), LinkConfig::default());
    let [t, _, on_par] = relaying(&mut c, 0, ALL);
    c.stop("ams");
    c.run_for(Duration::from_secs(3));
    let during = received(&c, "par", on_par);
    assert!(
        c.node("par").host.tracks.contains_key(&on_par),
        "paused, not gone"
    );
    c.restart("ams");
    c.create_room("ams", "r", &[]).unwrap();
    c.run_for(Duration::from_secs(8));
    let after = received(&c, "par", on_par);
    assert!(after[2] > during[2] + 200, "{during:?} → {after:?}");
    assert_eq!(c.node("par").remote_track(t), Some(on_par));
}

#[test]
fn link_room_builds_an_explicit_chain_without_auto_linking() {
    let cfg = LinkConfig {
        auto_link: false,
        ..LinkConfig::default()
    };
    let mut c = line(clean(), cfg);
    c.create_room("fra", "r", &["eu-"]).unwrap();
    c.create_room("par", "r", &[]).unwrap();
    c.run_for(Duration::from_secs(3));
    assert!(
        c.links("ams").iter().all(|l| l.rooms.is_empty()),
        "nothing links by itself"
    );
    assert!(c
        .carried("fra", "ams")
        .frames
        .iter()
        .all(|m| !matches!(m, cpb::frame::Msg::HostedRooms(_))));
    let a = c.link_room("fra", "r", "ams");
    let b = c.link_room("par", "r", "ams");
    c.run_for(Duration::from_millis(200));
    assert_eq!(
        c.reply("fra", a).unwrap().as_ref().unwrap().region,
        "eu-nl-ams"
    );
    assert!(c.reply("par", b).unwrap().is_ok());
    let r = kaskade_protocol::RoomId::parse("r").unwrap();
    assert_eq!(
        c.node("ams").host.rooms[&r],
        ["eu-"],
        "ams holds the room with fra's policy"
    );
    let t = publish_on_fra(&mut c);
    c.run_for(Duration::from_millis(200));
    let on_par = c.node("par").remote_track(t).expect("fra → ams → par");
    c.subscribe("par", on_par, 0b001);
    c.run_for(Duration::from_secs(1));
    assert!(received(&c, "par", on_par)[0] > 90);
    assert_eq!(c.carried("par", "ams").datagrams, 0);
}

#[test]
fn a_link_room_call_waits_for_the_connection_then_times_out() {
    let mut c = Cluster::new(
        &NODES[..2],
        &[("fra", "ams", clean())],
        LinkConfig::default(),
        5,
    );
    c.create_room("fra", "r", &[]).unwrap();
    c.break_link("fra", "ams");
    c.run_for(Duration::from_secs(3));
    let req = c.link_room("fra", "r", "ams");
    c.run_for(Duration::from_millis(7_900));
    assert!(c.reply("fra", req).is_none(), "still waiting");
    c.run_for(Duration::from_millis(200));
    assert!(matches!(
        c.reply("fra", req),
        Some(Err(ApiError::Unavailable(_)))
    ));
    // With the path back, the same call links at once.
    c.heal("fra", "ams");
    c.run_for(Duration::from_secs(6));
    let req = c.link_room("fra", "r", "ams");
    c.run_for(Duration::from_millis(200));
    assert!(
        matches!(c.reply("fra", req), Some(Ok(_))),
        "{:?}",
        c.reply("fra", req)
    );
}
