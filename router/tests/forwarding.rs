//! Forwarding through the real control plane and worker cores, with str0m
//! clients as browsers, on a virtual clock.

mod common;

use common::checks::{first_frame_at, mid_of, received, track};
use common::{Pair, Sim, SimOptions};
use kaskade_loadtest::{MediaRecv, VideoCodec};
use kaskade_protocol::v1 as pb;
use std::time::Duration;
use str0m::media::MediaKind;

/// Every payload from the first received one on arrives, in order, and the
/// subscriber's sequence numbers are continuous.
fn assert_complete_in_order(r: &MediaRecv, what: &str) {
    assert!(r.log.len() > 20, "{what}: only {} packets", r.log.len());
    let mut prev: Option<(u64, u64)> = None;
    for p in &r.log {
        let probe = p
            .probe
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: packet without probe"));
        if let Some((seq, idx)) = prev {
            assert_eq!(p.seq, seq + 1, "{what}: sequence numbers not continuous");
            assert_eq!(
                probe.packet_index,
                idx + 1,
                "{what}: payload missing or out of order"
            );
        }
        prev = Some((p.seq, probe.packet_index));
    }
}

#[test]
fn publisher_reaches_two_subscribers_on_other_workers() {
    let mut sim = Sim::new(3, 1);
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    sim.clients[publ].client.add_video(&[]);
    let tracks = sim.join("r", publ, "pub");
    assert_eq!(tracks.len(), 2, "audio and video published");

    let subs: Vec<usize> = (0..2).map(|_| sim.add_client(|c| c)).collect();
    for (i, s) in subs.iter().enumerate() {
        sim.clients[*s].client.add_data_channel("kaskade");
        sim.join("r", *s, &format!("sub{i}"));
    }
    // Placement: least loaded first, so each session is on its own worker.
    for (i, c) in [publ, subs[0], subs[1]].iter().enumerate() {
        let sid = sim.clients[*c].session.clone().unwrap();
        let info = sim.control.get_session(&sid).unwrap();
        assert_eq!(info.session.unwrap().worker, i as u32);
    }
    sim.connect(&[publ, subs[0], subs[1]]);
    let audio = track(&tracks, pb::TrackKind::Audio);
    let video = track(&tracks, pb::TrackKind::Video);
    let mut mids = Vec::new();
    for s in &subs {
        let subscriptions = sim.subscribe(*s, &tracks);
        mids.push((
            mid_of(&subscriptions, &audio),
            mid_of(&subscriptions, &video),
        ));
    }
    sim.run_for(Duration::from_secs(4));

    for (s, (amid, vmid)) in subs.iter().zip(mids) {
        let c = &sim.clients[*s].client;
        assert!(c.channel_open(), "subscriber's data channel opened");
        let a = c.received_on(amid).expect("audio received");
        assert_eq!(a.kind, Some(MediaKind::Audio));
        assert_complete_in_order(a, "audio");
        let v = c.received_on(vmid).expect("video received");
        assert_eq!(
            v.first_packet_keyframe,
            Some(true),
            "video starts on a keyframe"
        );
        assert_complete_in_order(v, "video");
        assert!(v.log.iter().filter(|p| p.is_keyframe_start).count() >= 1);
    }
    assert!(sim.metric("kaskade_rtp_packets_forwarded_total") > 0.0);
}

#[test]
fn late_subscriber_gets_a_keyframe_first_and_quickly() {
    let mut sim = Sim::new(2, 2);
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_video(&[]);
    let tracks = sim.join("r", publ, "pub");
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "sub");
    sim.connect(&[publ, sub]);
    // Join mid-stream, well away from the publisher's periodic keyframes.
    sim.run_for(Duration::from_millis(1500));
    let video = track(&tracks, pb::TrackKind::Video);
    let publisher_track = sim.clients[publ].client.receiving_mids();
    assert!(publisher_track.is_empty(), "publisher receives nothing");
    let kf_before: u64 = keyframe_requests(&sim, publ);
    let t_sub = sim.now;
    let subs = sim.subscribe(sub, &tracks);
    sim.run_for(Duration::from_secs(1));
    let r = sim.clients[sub]
        .client
        .received_on(mid_of(&subs, &video))
        .expect("video received");
    assert_eq!(
        r.first_packet_keyframe,
        Some(true),
        "first packet is a keyframe"
    );
    let first = r.first_frame_at.expect("a first frame");
    assert!(
        first - t_sub < Duration::from_millis(300),
        "first frame {:?} after subscribing: the join keyframe request works",
        first - t_sub
    );
    assert!(
        keyframe_requests(&sim, publ) > kf_before,
        "publisher was asked"
    );
    assert_complete_in_order(r, "video");
}

/// A video publisher and `n` subscribers (not subscribed), run to a point
/// away from the publisher's periodic keyframes (every 3 s). Returns the
/// publisher, its tracks, the subscribers and the keyframe requests it has
/// had so far.
fn quiet_video_room(sim: &mut Sim, n: usize) -> (usize, Vec<pb::Track>, Vec<usize>, u64) {
    let (publ, tracks, subs) = sim.publisher_and_subscribers(n, |c| {
        c.add_video(&[]);
    });
    sim.run_for(Duration::from_millis(1200));
    let before = keyframe_requests(sim, publ);
    (publ, tracks, subs, before)
}

fn keyframe_requests(sim: &Sim, client: usize) -> u64 {
    let c = &sim.clients[client].client;
    (0..4)
        .map(|t| c.keyframe_requests(kaskade_loadtest::TrackId(t), None))
        .sum()
}

#[test]
fn nack_and_rtx_repair_loss_on_the_subscriber_path() {
    let (mut sim, p) = Sim::pair(2, 3, |c| {
        c.add_video(&[]);
    });
    let Pair {
        sub, tracks, subs, ..
    } = p;
    sim.run_for(Duration::from_millis(500));
    // 5% random loss from the router to the subscriber, 20 ms each way.
    let link = kaskade_loadtest::Link::with_delay(Duration::from_millis(20)).loss(0.05);
    sim.net.set_to(common::client_addr(sub), link);
    sim.run_for(Duration::from_secs(12));
    let stats = sim.net.stats_to(common::client_addr(sub));
    assert!(stats.lost > 20, "loss was injected: {stats:?}");
    let video = track(&tracks, pb::TrackKind::Video);
    let r = sim.clients[sub]
        .client
        .received_on(mid_of(&subs, &video))
        .expect("video");
    let expected: u64 = r.sources.iter().map(|s| s.expected()).sum();
    let lost: u64 = r.sources.iter().map(|s| s.lost()).sum();
    let residual = lost as f64 / expected as f64;
    assert!(expected > 500, "enough packets: {expected}");
    assert!(
        residual < 0.01,
        "residual loss {residual:.4} after NACK/RTX with 5% injected ({lost}/{expected})"
    );
}

#[test]
fn subscriber_keyframe_request_reaches_publisher_throttled() {
    let (mut sim, p) = Sim::pair(2, 4, |c| {
        c.add_video(&[]);
    });
    let Pair {
        publ,
        sub,
        tracks,
        subs,
    } = p;
    sim.run_for(Duration::from_millis(1000));
    let video = track(&tracks, pb::TrackKind::Video);
    let mid = mid_of(&subs, &video);
    let before = keyframe_requests(&sim, publ);
    // A burst of ten PLIs within 100 ms ...
    for _ in 0..10 {
        assert!(sim.clients[sub].client.request_keyframe(mid, None));
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_millis(200));
    let after = keyframe_requests(&sim, publ);
    // ... reaches the publisher, but at most once per throttle interval.
    assert!(after > before, "PLI forwarded");
    assert!(
        after - before <= 2,
        "throttled: {} requests",
        after - before
    );
}

#[test]
fn h264_is_forwarded_keyframe_first() {
    let mut sim = Sim::new(2, 5);
    sim.create_room("r");
    let publ = sim.add_client(|c| c.video_codec(VideoCodec::H264));
    sim.clients[publ].client.add_video(&[]);
    let tracks = sim.join("r", publ, "pub");
    let sub = sim.add_client(|c| c.video_codec(VideoCodec::H264));
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "sub");
    sim.connect(&[publ, sub]);
    sim.run_for(Duration::from_millis(700));
    let subs = sim.subscribe(sub, &tracks);
    sim.run_for(Duration::from_secs(2));
    let r = received(&sim, sub, &subs, &track(&tracks, pb::TrackKind::Video));
    assert_eq!(r.first_packet_keyframe, Some(true));
    assert_complete_in_order(r, "h264");
}

#[test]
fn closing_the_publisher_stops_forwarding_and_tells_subscribers() {
    let mut sim = Sim::new(2, 6);
    sim.create_room("r");
    let mut events = sim.control.watch("r").unwrap().events;
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    let tracks = sim.join("r", publ, "pub");
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "sub");
    sim.connect(&[publ, sub]);
    let subs = sim.subscribe(sub, &tracks);
    sim.run_for(Duration::from_millis(500));
    let sid = sim.clients[publ].session.clone().unwrap();
    let control = sim.control.clone();
    sim.api(control.close_session(&sid)).unwrap();
    let n = sim.clients[sub]
        .client
        .received_on(mid_of(&subs, &tracks[0]))
        .unwrap()
        .packets;
    sim.run_for(Duration::from_millis(500));
    let m = sim.clients[sub]
        .client
        .received_on(mid_of(&subs, &tracks[0]))
        .unwrap()
        .packets;
    assert!(m <= n + 1, "nothing forwarded after close ({n} -> {m})");
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e.kind.unwrap());
    }
    use pb::event::Kind;
    assert!(kinds.iter().any(|k| matches!(k, Kind::TrackPublished(_))));
    assert!(kinds.iter().any(|k| matches!(k, Kind::SessionConnected(_))));
    assert!(kinds.iter().any(|k| matches!(k, Kind::TrackUnpublished(_))));
    assert!(kinds.iter().any(|k| matches!(k, Kind::RenegotiationNeeded(r) if r.track_ids == vec![tracks[0].track_id.clone()])));
    assert!(kinds
        .iter()
        .any(|k| matches!(k, Kind::SessionClosed(c) if c.session_id == sid)));
    // The subscriber can unsubscribe from the gone track to tidy its SDP.
    let sub_sid = sim.clients[sub].session.clone().unwrap();
    let resp = sim
        .api(control.unsubscribe(pb::UnsubscribeRequest {
            session_id: sub_sid.clone(),
            track_ids: vec![tracks[0].track_id.clone()],
        }))
        .unwrap();
    let answer = sim.clients[sub]
        .client
        .accept_offer(&resp.sdp_offer)
        .unwrap();
    sim.api(control.set_answer(pb::SetAnswerRequest {
        session_id: sub_sid,
        sdp_answer: answer,
    }))
    .unwrap();
}

#[test]
fn renegotiate_adds_a_track_that_subscribers_then_receive() {
    let mut sim = Sim::new(2, 7);
    sim.create_room("r");
    let mut events = sim.control.watch("r").unwrap().events;
    let publ = sim.add_client(|c| c);
    sim.clients[publ].client.add_audio();
    let tracks = sim.join("r", publ, "pub");
    assert_eq!(tracks.len(), 1);
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "sub");
    sim.connect(&[publ, sub]);

    // The publisher adds a camera: a new offer through Renegotiate.
    sim.clients[publ].client.add_video(&[]);
    let offer = sim.clients[publ].client.create_offer().unwrap();
    let control = sim.control.clone();
    let resp = sim
        .api(control.renegotiate(pb::RenegotiateRequest {
            session_id: sim.clients[publ].session.clone().unwrap(),
            sdp_offer: offer,
        }))
        .unwrap();
    sim.clients[publ]
        .client
        .accept_answer(&resp.sdp_answer)
        .unwrap();
    assert_eq!(resp.added_tracks.len(), 1, "the video track is new");
    assert!(resp.removed_track_ids.is_empty());
    let video = resp.added_tracks[0].clone();
    assert_eq!(video.kind, pb::TrackKind::Video as i32);
    let room = sim.control.get_room("r").unwrap();
    assert_eq!(room.tracks.len(), 2);

    let subs = sim.subscribe(sub, std::slice::from_ref(&video));
    sim.run_for(Duration::from_secs(2));
    let r = sim.clients[sub]
        .client
        .received_on(mid_of(&subs, &video))
        .expect("video after renegotiation");
    assert_eq!(r.first_packet_keyframe, Some(true));
    assert_complete_in_order(r, "renegotiated video");
    let mut published = 0;
    while let Ok(e) = events.try_recv() {
        if let Some(pb::event::Kind::TrackPublished(_)) = e.kind {
            published += 1;
        }
    }
    assert_eq!(published, 2, "both tracks announced");
}

/// Forwarded video bypasses str0m's pacer: a keyframe burst (about 40 packets
/// of a 1.5 Mbit/s layer) reaches the subscriber as it came, instead of
/// being released at 1.1 × the downlink estimate (which held the tail of
/// every keyframe back by up to 100 ms).
#[test]
fn keyframes_are_not_held_back_by_a_pacer() {
    let mut sim = Sim::new(2, 8);
    sim.create_room("r");
    let publ = sim.add_client(|c| c);
    sim.clients[publ]
        .client
        .add_video_layers(&[], &[kaskade_loadtest::VideoLayer::HIGH]);
    let tracks = sim.join("r", publ, "pub");
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "sub");
    sim.connect(&[publ, sub]);
    let subs = sim.subscribe(sub, &tracks);
    // Two keyframe intervals (3 s) after the join keyframe.
    sim.run_for(Duration::from_secs(7));
    let r = sim.clients[sub]
        .client
        .received_on(mid_of(&subs, &track(&tracks, pb::TrackKind::Video)))
        .expect("video received");
    let keyframes = r.log.iter().filter(|p| p.is_keyframe_start).count();
    assert!(keyframes >= 3, "{keyframes} keyframes");
    let max = Duration::from_micros(r.latency.max_micros);
    println!(
        "keyframe latency: max {max:?}, mean {:?} over {} packets",
        r.latency.mean().unwrap_or_default(),
        r.latency.count
    );
    assert!(
        max < Duration::from_millis(20),
        "largest publisher-to-subscriber latency {max:?} on a zero-delay network"
    );
}

/// A large fan-out runs on every worker at once: the publisher's worker
/// hands a packet to the other workers before it writes it to its own
/// subscribers (which it does in `flush`, after the driver's hand-over).
#[test]
fn other_workers_get_a_packet_before_the_publishers_own_subscribers() {
    use kaskade_router::media::BusMsg;
    let mut sim = Sim::new(2, 9);
    let (publ, tracks, subs) = sim.publisher_and_subscribers(2, |c| {
        c.add_video(&[]);
    });
    // Placement: publisher on worker 0, then worker 1, then worker 0.
    let (far, near) = (subs[0], subs[1]);
    let worker = |sim: &Sim, c: usize| {
        let sid = sim.clients[c].session.clone().unwrap();
        sim.control
            .get_session(&sid)
            .unwrap()
            .session
            .unwrap()
            .worker
    };
    assert_eq!((worker(&sim, far), worker(&sim, near)), (1, 0));
    for s in &subs {
        sim.subscribe(*s, &tracks);
    }
    sim.run_for(Duration::from_secs(2));
    let near_addr = sim.clients[near].client.local_addr();

    // The publisher's next 40 ms of datagrams, straight into worker 0's core.
    let now = sim.now + Duration::from_millis(40);
    sim.now = now;
    let c = &mut sim.clients[publ].client;
    c.handle_timeout(now);
    c.tick(now);
    let mut sent = Vec::new();
    while let Some(d) = c.poll_transmit() {
        sent.push(d);
    }
    let core = &mut sim.workers[0].core;
    for d in &sent {
        core.handle_datagram(now, d.src, &d.data);
    }
    let out = core.outputs();
    let handed = out.bus[1]
        .iter()
        .filter(|m| matches!(m, BusMsg::Media(_)))
        .count();
    assert!(handed > 0, "media for worker 1 is ready to hand over");
    assert!(
        out.transmits.iter().all(|d| d.dst != near_addr),
        "nothing written to the local subscriber before the hand-over"
    );
    core.flush(now);
    let local = core
        .outputs()
        .transmits
        .iter()
        .filter(|d| d.dst == near_addr)
        .count();
    assert!(
        local >= handed,
        "flush writes them locally: {local} of {handed}"
    );
    // Everything flows on as usual.
    sim.run_for(Duration::from_secs(1));
}

/// Keyframe requests to one publisher are throttled (one per 300 ms per
/// layer), but a request inside the interval is held, not dropped: a
/// subscriber joining 100 ms after another gets its first frame when the
/// interval ends, not only at its own retry 350 ms later.
#[test]
fn a_throttled_keyframe_request_is_sent_when_the_interval_ends() {
    let mut sim = Sim::new(1, 12);
    let (publ, tracks, subs, before) = quiet_video_room(&mut sim, 2);
    let first = sim.subscribe(subs[0], &tracks);
    sim.run_for(Duration::from_millis(100));
    let t_second = sim.now;
    let second = sim.subscribe(subs[1], &tracks);
    sim.run_for(Duration::from_millis(600));
    let video = track(&tracks, pb::TrackKind::Video);
    let waited = first_frame_at(&sim, subs[1], &second, &video) - t_second;
    assert!(
        first_frame_at(&sim, subs[0], &first, &video) < t_second,
        "the first is served at once"
    );
    assert!(
        waited < Duration::from_millis(260),
        "the second waited {waited:?}: its request was held for the interval, not dropped"
    );
    assert_eq!(
        keyframe_requests(&sim, publ) - before,
        2,
        "two requests reached the publisher, one interval apart"
    );
}

#[test]
fn keyframe_requests_while_one_is_answered_are_coalesced() {
    let mut sim = Sim::new(1, 13);
    let (publ, tracks, subs, before) = quiet_video_room(&mut sim, 3);
    // Three subscribers at once: each asks for a keyframe before the
    // publisher has answered the first request.
    let all: Vec<Vec<pb::Subscription>> = subs.iter().map(|s| sim.subscribe(*s, &tracks)).collect();
    let t0 = sim.now;
    sim.run_for(Duration::from_millis(800));
    let video = track(&tracks, pb::TrackKind::Video);
    for (c, s) in subs.iter().zip(&all) {
        let at = first_frame_at(&sim, *c, s, &video);
        assert!(
            at - t0 < Duration::from_millis(150),
            "served by the one keyframe: {:?}",
            at - t0
        );
    }
    assert_eq!(
        keyframe_requests(&sim, publ) - before,
        1,
        "one request reached the publisher; the others waited for its keyframe"
    );
    assert!(sim.metric("kaskade_keyframe_requests_total{origin=\"coalesced\"}") >= 2.0);
}

#[test]
fn a_shorter_keyframe_interval_serves_a_later_subscriber_sooner() {
    let mut sim = Sim::with_options(
        1,
        12,
        SimOptions {
            keyframe_interval: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let (publ, tracks, subs, before) = quiet_video_room(&mut sim, 2);
    sim.subscribe(subs[0], &tracks);
    sim.run_for(Duration::from_millis(150));
    let t_second = sim.now;
    let second = sim.subscribe(subs[1], &tracks);
    sim.run_for(Duration::from_millis(600));
    let video = track(&tracks, pb::TrackKind::Video);
    let waited = first_frame_at(&sim, subs[1], &second, &video) - t_second;
    // With the default 300 ms interval this subscriber waits ~150 ms more.
    assert!(
        waited < Duration::from_millis(100),
        "the second waited {waited:?} with a 100 ms interval"
    );
    assert_eq!(keyframe_requests(&sim, publ) - before, 2);
}

/// A subscriber's first offer may carry a receive-only media line instead of
/// a data channel (no SCTP association for the router to poll).
#[test]
fn a_subscriber_can_bootstrap_with_a_receive_only_line() {
    let mut sim = Sim::new(1, 14);
    let (publ, tracks) = sim.publisher(|c| {
        c.add_audio();
        c.add_video(&[]);
    });
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_receiver(MediaKind::Video);
    let published = sim.join("r", sub, "sub");
    assert!(
        published.is_empty(),
        "a receive-only line publishes nothing"
    );
    sim.connect(&[publ, sub]);
    let subs = sim.subscribe(sub, &tracks);
    sim.run_for(Duration::from_secs(2));
    let r = received(&sim, sub, &subs, &track(&tracks, pb::TrackKind::Video));
    assert!(r.packets > 30, "{} video packets", r.packets);
    assert_eq!(r.first_packet_keyframe, Some(true));
    let a = received(&sim, sub, &subs, &track(&tracks, pb::TrackKind::Audio));
    assert!(a.packets > 50, "{} audio packets", a.packets);
    assert_eq!(sim.metric("kaskade_session_failures_total"), 0.0);
}
