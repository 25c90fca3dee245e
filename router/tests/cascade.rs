//! Cascading between real `kaskade` processes on loopback, linked through a
//! user-space impairment proxy: relay on demand, one copy per link, only the
//! layers wanted, loss repair, chains, residency, identity, restarts.

mod common;

use common::cascade::{
    certs, connect_all, direct_line, fra_and_ams, line_args, link, start_node, subscribe_one,
    video_packets, wait_remote_tracks,
};
use common::daemon::{client, drive, free_udp_port, Daemon};
use common::proxy::{Impairment, Proxy};
use kaskade_loadtest::{drive_until, UdpClient};
use kaskade_protocol::v1 as pb;
use std::time::{Duration, Instant};
use str0m::media::Mid;
use tonic::Code;

/// One media-carrying cascade test at a time: each starts up to three routers
/// with clients, and measures rates, loss or latency on a two-core machine.
/// Tests of the control path alone run beside them (the behaviour is carried
/// by the deterministic tests in `cascade_sim.rs`; these are end-to-end checks).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_track_crosses_a_link_on_demand_and_reaches_a_subscriber() {
    let _serial = serial();
    let rt = rt();
    let (mut a, mut b) = fra_and_ams(&rt);
    a.create_room(&rt, "r", &[]).unwrap();
    let peer = link(&rt, &mut a, "r", "ams").expect("link");
    assert_eq!(peer.region, "eu-nl-ams");

    let t0 = Instant::now();
    let mut publ = client(1, t0);
    publ.client.add_video(&["l", "m", "h"]);
    let (_ps, tracks) = a.join(&rt, "r", "alice", &mut publ);
    let remote = wait_remote_tracks(&rt, &mut b, "r", 1);
    assert_eq!(remote.len(), 1, "the track is visible on B");
    assert_eq!(remote[0].origin_node_id, "fra");
    assert_eq!(remote[0].rids, tracks[0].rids);

    let mut sub = client(2, t0);
    sub.client.add_data_channel("k");
    let (ss, _) = b.join(&rt, "r", "bob", &mut sub);
    assert!(drive_until(
        &mut [&mut publ, &mut sub],
        Duration::from_secs(10),
        |c| c.iter().all(|c| c.client.is_connected())
    ));
    let subs = b.subscribe(&rt, &ss, &mut sub, &[remote[0].track_id.clone()]);
    let mid: Mid = subs[0].mid.as_str().into();
    let got = drive_until(&mut [&mut publ, &mut sub], Duration::from_secs(10), |c| {
        video_packets(c[1], mid) > 100
    });
    if !got {
        eprintln!("A links: {:?}", a.links(&rt));
        eprintln!("B links: {:?}", b.links(&rt));
        eprintln!("sub got {}", video_packets(&sub, mid));
    }
    assert!(got, "video published on A arrives at a subscriber on B");
    let r = sub.client.received_on(mid).unwrap();
    assert_eq!(r.first_packet_keyframe, Some(true));
    let room_b = b.room(&rt, "r");
    assert!(room_b.reached.iter().any(|x| x.node_id == "fra"));
    let room_a = a.room(&rt, "r");
    assert!(room_a
        .linked
        .iter()
        .any(|x| x.node_id == "ams" && x.region == "eu-nl-ams"));
    let links = a.links(&rt);
    assert!(links[0].up && links[0].datagrams_sent > 100, "{links:?}");
    drive(&mut [&mut publ, &mut sub], Duration::from_millis(100));
}

/// The example of docs/cascade.md: fra–ams–par as peers in a line, the room
/// created on all three and never linked by hand; fra's video reaches par
/// through ams.
#[test]
fn three_regions_link_themselves() {
    let _serial = serial();
    let rt = rt();
    let dir = certs(&["fra:eu-de-fra", "ams:eu-nl-ams", "par:eu-fr-par"]);
    let (_, [mut a, mut b, mut c]) = direct_line(&rt, &dir);
    for d in [&mut a, &mut b, &mut c] {
        d.create_room(&rt, "demo", &["eu-"]).unwrap();
    }
    let t0 = Instant::now();
    let mut publ = client(1, t0);
    publ.client
        .add_video_layers(&["l", "m", "h"], &light_layers());
    a.join(&rt, "demo", "alice", &mut publ);
    let on_c = wait_remote_tracks(&rt, &mut c, "demo", 1);
    assert_eq!(on_c.len(), 1, "the track reaches par through ams");
    let mut sub = client(2, t0);
    sub.client.add_data_channel("k");
    let (ss, _) = c.join(&rt, "demo", "carol", &mut sub);
    connect_all(&mut [&mut publ, &mut sub], Duration::from_secs(10));
    let mid = subscribe_one(&rt, &mut c, &ss, &mut sub, on_c[0].track_id.clone());
    assert!(drive_until(
        &mut [&mut publ, &mut sub],
        Duration::from_secs(10),
        |x| video_packets(x[1], mid) > 50
    ));
    let links = b.links(&rt);
    assert_eq!(links.len(), 2);
    assert!(
        links.iter().all(|l| l.up && l.rooms == ["demo"]),
        "{links:?}"
    );
    let room = c.room(&rt, "demo");
    assert!(room.reached.iter().any(|r| r.node_id == "fra"));
}

/// Layers light enough for 20 debug-build subscribers on one machine.
fn light_layers() -> Vec<kaskade_loadtest::VideoLayer> {
    use kaskade_loadtest::VideoLayer;
    vec![
        VideoLayer::new(320, 180, 60_000),
        VideoLayer::new(640, 360, 150_000),
        VideoLayer::new(1280, 720, 400_000),
    ]
}

fn imp() -> Impairment {
    // 20–40 ms one way, 2% random loss, on every link.
    Impairment {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(20),
        loss: 0.02,
    }
}

/// Bits per second through the proxies of one link (both ways, whichever
/// side dialled) over `d`, while driving the clients.
fn link_rate(ps: &[&Proxy], clients: &mut [&mut UdpClient], d: Duration) -> f64 {
    use std::sync::atomic::Ordering;
    let total = || -> u64 {
        ps.iter()
            .map(|p| p.up_bytes.load(Ordering::Relaxed) + p.down_bytes.load(Ordering::Relaxed))
            .sum()
    };
    let b0 = total();
    drive(clients, d);
    (total() - b0) as f64 * 8.0 / d.as_secs_f64()
}

fn join_sub(
    rt: &tokio::runtime::Runtime,
    d: &mut Daemon,
    name: &str,
    seed: u64,
    t0: Instant,
) -> (UdpClient, String) {
    let mut c = client(seed, t0);
    c.client.add_data_channel("k");
    let (s, _) = d.join(rt, "r", name, &mut c);
    (c, s)
}

#[test]
fn chain_over_lossy_links_relays_once_with_only_the_layers_wanted() {
    let _serial = serial();
    let rt = rt();
    let dir = certs(&["fra:eu-de-fra", "ams:eu-nl-ams", "par:eu-fr-par"]);
    let (pa, pb_, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    // Every router reaches the others only through impairment proxies.
    let p_ab = Proxy::start(format!("127.0.0.1:{pb_}").parse().unwrap(), imp(), 1);
    let p_ba = Proxy::start(format!("127.0.0.1:{pa}").parse().unwrap(), imp(), 2);
    let p_bc = Proxy::start(format!("127.0.0.1:{pc}").parse().unwrap(), imp(), 3);
    let p_cb = Proxy::start(format!("127.0.0.1:{pb_}").parse().unwrap(), imp(), 4);
    let args = line_args(
        &dir,
        [pa, pb_, pc],
        [&p_ab, &p_ba, &p_bc, &p_cb].map(|p| p.addr.to_string()),
    );
    let [mut a, mut b, mut c] = [0, 1, 2].map(|i| Daemon::start(&rt, &args[i]));
    a.create_room(&rt, "r", &["eu-"]).unwrap();
    link(&rt, &mut a, "r", "ams").expect("A links to B");
    c.create_room(&rt, "r", &[]).unwrap();
    link(&rt, &mut c, "r", "ams").expect("C links to B (chain A → B → C)");

    let t0 = Instant::now();
    let mut publ = client(1, t0);
    publ.client
        .add_video_layers(&["l", "m", "h"], &light_layers());
    a.join(&rt, "r", "alice", &mut publ);
    let on_b = wait_remote_tracks(&rt, &mut b, "r", 1);
    let on_c = wait_remote_tracks(&rt, &mut c, "r", 1);
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_c.len(), 1, "the track reaches C through B");

    // One subscriber on B, one on C.
    let (mut b0, b0s) = join_sub(&rt, &mut b, "b0", 10, t0);
    let (mut c0, c0s) = join_sub(&rt, &mut c, "c0", 11, t0);
    connect_all(&mut [&mut publ, &mut b0, &mut c0], Duration::from_secs(10));
    let mb0: Mid = subscribe_one(&rt, &mut b, &b0s, &mut b0, on_b[0].track_id.clone());
    let mc0: Mid = subscribe_one(&rt, &mut c, &c0s, &mut c0, on_c[0].track_id.clone());
    let got = drive_until(
        &mut [&mut publ, &mut b0, &mut c0],
        Duration::from_secs(15),
        |x| video_packets(x[1], mb0) > 100 && video_packets(x[2], mc0) > 100,
    );
    assert!(
        got,
        "B and C subscribers receive A's video ({} / {})",
        video_packets(&b0, mb0),
        video_packets(&c0, mc0)
    );
    // Let layer selection settle on the top layer.
    drive(&mut [&mut publ, &mut b0, &mut c0], Duration::from_secs(4));
    let one = link_rate(
        &[&p_ab, &p_ba],
        &mut [&mut publ, &mut b0, &mut c0],
        Duration::from_secs(3),
    );

    // 19 more subscribers on B: the A–B link still carries one copy.
    let mut more = Vec::new();
    let mut more_sessions = Vec::new();
    for i in 0..19 {
        let (s, sid) = join_sub(&rt, &mut b, &format!("b{}", i + 1), 20 + i, t0);
        more.push(s);
        more_sessions.push(sid);
        // Keep everyone's media and ICE going between API calls.
        let mut all: Vec<&mut UdpClient> = vec![&mut publ, &mut b0, &mut c0];
        all.extend(more.iter_mut());
        drive(&mut all, Duration::from_millis(30));
    }
    let mut all: Vec<&mut UdpClient> = vec![&mut publ, &mut b0, &mut c0];
    all.extend(more.iter_mut());
    assert!(drive_until(&mut all, Duration::from_secs(15), |x| x
        .iter()
        .all(|c| c.client.is_connected())));
    let mut more_mids = Vec::new();
    for (i, sid) in more_sessions.iter().enumerate() {
        let subs = b.subscribe(&rt, sid, all[3 + i], &[on_b[0].track_id.clone()]);
        more_mids.push(Mid::from(subs[0].mid.as_str()));
        drive(&mut all, Duration::from_millis(20));
    }
    drive(&mut all, Duration::from_secs(2));
    let window = Instant::now();
    drive(&mut all, Duration::from_secs(2));
    let twenty = link_rate(&[&p_ab, &p_ba], &mut all, Duration::from_secs(3));
    // Packets lost near the window's end are still being repaired (a NACK
    // and its retransmission take a round trip per link, more if either is
    // lost too): give them time to land before counting.
    let window_end = Instant::now();
    drive(&mut all, Duration::from_millis(1500));
    eprintln!(
        "A–B link: {:.0} kbit/s with 1 remote subscriber, {:.0} kbit/s with 20",
        one / 1e3,
        twenty / 1e3
    );
    // With one remote subscriber per router only the top layer (400 kbit/s)
    // crosses; new subscribers start lower, so with 20 all three layers may
    // cross (610 kbit/s), still once each: with QUIC and repair overhead that
    // is about 850 kbit/s. A second copy of the track would be at least
    // 1.22 Mbit/s before overhead, 20 copies about 12 Mbit/s.
    assert!(
        twenty < 1_200_000.0,
        "one copy per link: {one:.0} → {twenty:.0} bit/s"
    );
    let sent = a.links(&rt);
    assert_eq!(sent[0].tracks_sent, 1, "one track over A–B: {sent:?}");
    for (s, m) in all[3..].iter().zip(&more_mids) {
        assert!(
            video_packets(s, *m) > 30,
            "every remote subscriber receives"
        );
    }

    // Loss on the links (2% each way) is repaired: residual loss at the far
    // subscribers over the last 5 s stays well below it.
    for (who, i, m) in [("B", 1, mb0), ("C", 2, mc0)] {
        // Gaps in the subscriber's own sequence numbers (the router closes
        // the gaps of layer switches, so what remains is real loss).
        let r = all[i].client.received_on(m).unwrap();
        // The window's sequence range comes from what arrived in it; a
        // packet counts as received whenever it arrived (a retransmission
        // can land after packets sent later).
        let in_window = r
            .log
            .iter()
            .filter(|p| p.at >= window && p.at < window_end)
            .map(|p| p.seq);
        let (lo, hi) = (in_window.clone().min().unwrap(), in_window.max().unwrap());
        let mut seqs: Vec<u64> = r
            .log
            .iter()
            .map(|p| p.seq)
            .filter(|s| (lo..=hi).contains(s))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        let expected = seqs.last().unwrap() - seqs[0] + 1;
        let lost = expected - seqs.len() as u64;
        let residual = lost as f64 / expected.max(1) as f64;
        eprintln!(
            "{who}: residual loss {lost}/{expected} = {:.3}%",
            residual * 100.0
        );
        if residual >= 0.005 {
            eprintln!("A links {:?}", a.links(&rt));
            eprintln!("B links {:?}", b.links(&rt));
            let mut missing = Vec::new();
            for w in seqs.windows(2) {
                if w[1] != w[0] + 1 {
                    missing.push((w[0] + 1, w[1] - 1));
                }
            }
            eprintln!(
                "missing ranges {missing:?} of {}..{}",
                seqs[0],
                seqs.last().unwrap()
            );
        }
        assert!(
            residual < 0.005,
            "{who}: residual loss {residual:.4} with 2% injected per link"
        );
    }
    let links = a.links(&rt);
    assert!(
        links[0].retransmitted > 0,
        "retransmissions repaired the link: {links:?}"
    );

    // Every remote subscriber capped to the low layer: only it crosses.
    let cap = |d: &mut Daemon, sid: &str, track: &str| {
        rt.block_on(
            d.sessions
                .update_subscription(pb::UpdateSubscriptionRequest {
                    session_id: sid.into(),
                    track_id: track.into(),
                    max_spatial_layer: Some(0),
                    ..Default::default()
                }),
        )
        .unwrap();
    };
    cap(&mut b, &b0s, &on_b[0].track_id);
    cap(&mut c, &c0s, &on_c[0].track_id);
    let room_b = b.room(&rt, "r");
    for s in room_b
        .sessions
        .iter()
        .filter(|s| s.participant_id.starts_with('b'))
    {
        cap(&mut b, &s.session_id, &on_b[0].track_id);
    }
    drive(&mut all, Duration::from_secs(3));
    let low = link_rate(&[&p_ab, &p_ba], &mut all, Duration::from_secs(3));
    eprintln!(
        "A–B link with every remote subscriber on the low layer: {:.0} kbit/s",
        low / 1e3
    );
    assert!(
        low < twenty * 0.5,
        "only the low layer crosses: {twenty:.0} → {low:.0} bit/s"
    );
    let r = all[1].client.received_on(mb0).unwrap();
    let last = r.log.iter().rev().take(20).max_by_key(|p| p.seq).unwrap();
    assert_eq!(
        kaskade_loadtest::media::split_source_tag(last.probe.unwrap().source_tag).2,
        0
    );

    let room_a = a.room(&rt, "r");
    let reached: Vec<&str> = room_a.reached.iter().map(|r| r.node_id.as_str()).collect();
    assert!(
        reached.contains(&"fra") && reached.contains(&"ams"),
        "{reached:?}"
    );
    let room_c = c.room(&rt, "r");
    assert!(room_c.tracks.iter().any(|t| t.origin_node_id == "fra"));
}

#[test]
fn residency_refuses_links_on_both_sides() {
    let rt = rt();
    let (mut a, mut b) = fra_and_ams(&rt);
    a.create_room(&rt, "de", &["eu-de-"]).unwrap();
    let mut events = rt
        .block_on(a.sessions.watch_events(pb::WatchEventsRequest {
            room_id: "de".into(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    // B cannot even hold the room.
    let e = b.create_room(&rt, "de", &["eu-de-"]).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A initiates: A refuses on its own.
    let e = link(&rt, &mut a, "de", "ams").unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("eu-nl-ams"), "{}", e.message());

    // B asks (its own room of that name has no policy): A refuses.
    b.create_room(&rt, "de", &[]).unwrap();
    let e = link(&rt, &mut b, "de", "fra").unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("refused"), "{}", e.message());

    // Audit events on A for both refusals; the room reached only A.
    let mut refusals = Vec::new();
    rt.block_on(async {
        while let Ok(Ok(Some(ev))) =
            tokio::time::timeout(Duration::from_millis(500), events.message()).await
        {
            if let Some(pb::event::Kind::LinkRefused(r)) = ev.kind {
                refusals.push(r.decided_by);
            }
        }
    });
    assert_eq!(
        refusals,
        vec!["local".to_string(), "local".to_string()],
        "A decided both"
    );
    let room = a.room(&rt, "de");
    assert_eq!(room.reached.len(), 1);
    assert!(room.linked.is_empty());
    assert!(b.room(&rt, "de").tracks.is_empty());
}

#[test]
fn a_router_with_a_certificate_from_another_ca_gets_no_link() {
    let rt = rt();
    let dir = certs(&["fra:eu-de-fra"]);
    let other = certs(&["ber:eu-de-ber"]);
    let (pa, pd) = (free_udp_port(), free_udp_port());
    let mut a = start_node(
        &rt,
        &dir,
        "fra",
        "eu-de-fra",
        pa,
        &[("ber".into(), format!("127.0.0.1:{pd}"))],
    );
    // D trusts its own CA and dials A too.
    let mut d = start_node(
        &rt,
        &other,
        "ber",
        "eu-de-ber",
        pd,
        &[("fra".into(), format!("127.0.0.1:{pa}"))],
    );
    a.create_room(&rt, "r", &[]).unwrap();
    let e = link(&rt, &mut a, "r", "ber").unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(a.links(&rt).iter().all(|l| !l.up), "no link up on A");
    d.create_room(&rt, "r", &[]).unwrap();
    assert!(link(&rt, &mut d, "r", "fra").is_err());
    assert!(d.links(&rt).iter().all(|l| !l.up), "no link up on D");
}

#[test]
fn restarting_the_middle_router_restores_the_relay() {
    let _serial = serial();
    let rt = rt();
    let dir = certs(&["fra:eu-de-fra", "ams:eu-nl-ams", "par:eu-fr-par"]);
    let ([_, b_args, _], [mut a, b, mut c]) = direct_line(&rt, &dir);
    a.create_room(&rt, "r", &[]).unwrap();
    c.create_room(&rt, "r", &[]).unwrap();
    link(&rt, &mut a, "r", "ams").unwrap();
    link(&rt, &mut c, "r", "ams").unwrap();
    let t0 = Instant::now();
    let mut publ = client(1, t0);
    publ.client
        .add_video_layers(&["l", "m", "h"], &light_layers());
    let (_, tracks) = a.join(&rt, "r", "alice", &mut publ);
    // A local subscriber on A, a remote one on C.
    let (mut la, las) = join_sub(&rt, &mut a, "local", 5, t0);
    let on_c = wait_remote_tracks(&rt, &mut c, "r", 1);
    let (mut rc, rcs) = join_sub(&rt, &mut c, "far", 6, t0);
    connect_all(&mut [&mut publ, &mut la, &mut rc], Duration::from_secs(10));
    let ml: Mid = subscribe_one(&rt, &mut a, &las, &mut la, tracks[0].track_id.clone());
    let mc: Mid = subscribe_one(&rt, &mut c, &rcs, &mut rc, on_c[0].track_id.clone());
    assert!(drive_until(
        &mut [&mut publ, &mut la, &mut rc],
        Duration::from_secs(15),
        |x| video_packets(x[1], ml) > 50 && video_packets(x[2], mc) > 50
    ));

    // B dies: A's local subscriber never stalls.
    drop(b);
    let before = video_packets(&la, ml);
    drive(&mut [&mut publ, &mut la, &mut rc], Duration::from_secs(2));
    assert!(
        video_packets(&la, ml) > before + 20,
        "A keeps forwarding locally"
    );
    let far_before = video_packets(&rc, mc);
    // The remote track stays on C (paused), no error for its subscriber.
    assert_eq!(wait_remote_tracks(&rt, &mut c, "r", 1).len(), 1);

    // B comes back on the same address: links and relays are restored.
    let _b = Daemon::start(&rt, &b_args);
    let back = drive_until(
        &mut [&mut publ, &mut la, &mut rc],
        Duration::from_secs(20),
        |x| video_packets(x[2], mc) > far_before + 50,
    );
    assert!(back, "C's subscriber gets media again after B restarts");
    assert!(c.links(&rt).iter().any(|l| l.up && l.reconnects >= 1));
}

/// End-to-end latency (p50, p99, in ms) of the video packets `c` received on
/// `mid`, from the probes' send times (all clients share the epoch `t0`).
fn latency(c: &UdpClient, mid: Mid, t0: Instant, since: Instant) -> (f64, f64) {
    let r = c.client.received_on(mid).unwrap();
    let mut v: Vec<f64> = r
        .log
        .iter()
        .filter(|p| p.at >= since)
        .filter_map(|p| {
            let sent = t0 + Duration::from_micros(p.probe?.sent_micros);
            Some(p.at.saturating_duration_since(sent).as_secs_f64() * 1000.0)
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
    (q(0.5), q(0.99))
}

/// Prints what a link adds to end-to-end latency: a subscriber on the
/// publisher's router next to one on a linked router, directly and through
/// the impairment proxy (figures for docs/cascade.md; no timing asserts).
#[test]
fn link_latency_figures() {
    let _serial = serial();
    let rt = rt();
    for proxied in [false, true] {
        let dir = certs(&["fra:eu-de-fra", "ams:eu-nl-ams"]);
        let (pa, pb_) = (free_udp_port(), free_udp_port());
        let lossless = Impairment {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(20),
            loss: 0.0,
        };
        let p1 = Proxy::start(format!("127.0.0.1:{pb_}").parse().unwrap(), lossless, 7);
        let p2 = Proxy::start(format!("127.0.0.1:{pa}").parse().unwrap(), lossless, 8);
        let (to_b, to_a) = if proxied {
            (p1.addr.to_string(), p2.addr.to_string())
        } else {
            (format!("127.0.0.1:{pb_}"), format!("127.0.0.1:{pa}"))
        };
        let mut a = start_node(&rt, &dir, "fra", "eu-de-fra", pa, &[("ams".into(), to_b)]);
        let mut b = start_node(&rt, &dir, "ams", "eu-nl-ams", pb_, &[("fra".into(), to_a)]);
        a.create_room(&rt, "r", &[]).unwrap();
        link(&rt, &mut a, "r", "ams").unwrap();
        let t0 = Instant::now();
        let mut publ = client(1, t0);
        publ.client
            .add_video_layers(&["l", "m", "h"], &light_layers());
        let (_, tracks) = a.join(&rt, "r", "alice", &mut publ);
        let remote = wait_remote_tracks(&rt, &mut b, "r", 1);
        let (mut la, las) = join_sub(&rt, &mut a, "local", 5, t0);
        let (mut rb, rbs) = join_sub(&rt, &mut b, "far", 6, t0);
        connect_all(&mut [&mut publ, &mut la, &mut rb], Duration::from_secs(10));
        let ml: Mid = subscribe_one(&rt, &mut a, &las, &mut la, tracks[0].track_id.clone());
        let mr: Mid = subscribe_one(&rt, &mut b, &rbs, &mut rb, remote[0].track_id.clone());
        drive(&mut [&mut publ, &mut la, &mut rb], Duration::from_secs(4));
        let since = Instant::now();
        drive(&mut [&mut publ, &mut la, &mut rb], Duration::from_secs(4));
        let (l50, l99) = latency(&la, ml, t0, since);
        let (r50, r99) = latency(&rb, mr, t0, since);
        eprintln!(
            "LATENCY {}: local p50 {l50:.1} ms p99 {l99:.1} ms | across the link p50 {r50:.1} ms p99 {r99:.1} ms | added p50 {:.1} ms",
            if proxied { "link through a 20–40 ms proxy" } else { "direct loopback link" },
            r50 - l50
        );
        assert!(video_packets(&rb, mr) > 50 && video_packets(&la, ml) > 50);
    }
}
