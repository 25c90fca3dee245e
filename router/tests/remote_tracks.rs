//! Tracks published on another router (announced over a link) in the
//! simulation: what the router asks the link for, and in which order.

mod common;

use common::Sim;
use kaskade_protocol::v1 as pb;
use kaskade_router::control::RemoteTrack;
use kaskade_router::media::WorkerEvent;
use std::time::Duration;
use str0m::media::MediaKind;

/// Room "r" with alice's video relayed from router "fra" (with these rids).
fn remote_video(
    sim: &mut Sim,
    origin_track_id: &str,
    rids: &[&str],
) -> std::sync::Arc<kaskade_router::media::TrackInfo> {
    sim.create_room("r");
    let info = sim
        .control
        .add_remote_track(RemoteTrack {
            room: kaskade_protocol::RoomId::parse("r").unwrap(),
            path: vec!["fra".into()],
            origin_track_id: origin_track_id.into(),
            participant: "alice".into(),
            kind: MediaKind::Video,
            rids: rids.iter().map(|r| (*r).into()).collect(),
        })
        .expect("room exists");
    sim.pump();
    info
}

/// Connects `sub`, forgets the events so far and subscribes it to `info`.
fn connect_and_subscribe(sim: &mut Sim, sub: usize, info: &kaskade_router::media::TrackInfo) {
    sim.connect(&[sub]);
    sim.events.clear();
    let track = pb::Track {
        track_id: info.id.to_string(),
        ..Default::default()
    };
    sim.subscribe(sub, &[track]);
}

/// A subscriber's first keyframe request for a remote track goes out after
/// a demand that includes the requested layer. The origin relays only
/// demanded layers: a keyframe it sent before the demand arrived would be
/// lost, and the subscriber would wait for its retry (~350 ms). Demand alone
/// would only follow at the next 100 ms tick.
#[test]
fn a_remote_keyframe_request_follows_a_demand_for_its_layer() {
    let mut sim = Sim::new(2, 21);
    let info = remote_video(&mut sim, "TR0000000000000001", &["l", "m", "h"]);
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "bob");
    connect_and_subscribe(&mut sim, sub, &info);
    sim.run_for(Duration::from_millis(50));

    let mut demanded = 0u32;
    let mut requests = 0;
    for ev in &sim.events {
        match ev {
            WorkerEvent::RemoteDemand { track, mask } if *track == info.id => demanded = *mask,
            WorkerEvent::RemoteKeyframe { track, layer } if *track == info.id => {
                requests += 1;
                assert!(
                    demanded & (1 << layer) != 0,
                    "keyframe request for layer {layer} before a demand for it (demand {demanded:#b})"
                );
            }
            _ => {}
        }
    }
    assert!(
        requests >= 1,
        "the subscriber's keyframe was asked for over the link"
    );
}

/// A subscriber waiting for a keyframe of a remote track asks again every
/// 350 ms while delta frames arrive, also from a worker other than the
/// track's home worker: each retry reaches the origin router. (A remote
/// track's id is a hash of its origin; no worker can be read from it.)
#[test]
fn keyframe_retries_for_a_remote_track_reach_its_origin_from_any_worker() {
    use kaskade_router::media::{BusMsg, MediaPacket, Outbox};
    use std::sync::Arc;
    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::Frequency;

    let mut sim = Sim::new(2, 23);
    let info = remote_video(&mut sim, "TR0000000000000002", &[]);
    // Another room's session takes a worker, so the subscriber lands on the
    // one that is not the track's home.
    sim.create_room("x");
    let filler = sim.add_client(|c| c);
    sim.clients[filler].client.add_data_channel("k");
    sim.join("x", filler, "filler");
    let sub = sim.add_client(|c| c);
    sim.clients[sub].client.add_data_channel("k");
    sim.join("r", sub, "bob");
    let sid = sim.clients[sub].session.clone().unwrap();
    let sub_worker = sim
        .control
        .get_session(&sid)
        .unwrap()
        .session
        .unwrap()
        .worker;
    assert_ne!(
        sub_worker,
        u32::from(info.worker.0),
        "the subscriber is not on the track's home worker"
    );
    connect_and_subscribe(&mut sim, sub, &info);

    // Delta frames only (the origin never answers), 30 a second, for 2 s.
    let mut outbox = Outbox::new(sim.control.worker_count());
    let params = PayloadParams::new(
        96.into(),
        None,
        CodecSpec {
            codec: Codec::Vp8,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams::default(),
        },
    );
    for i in 0..60u32 {
        let pkt = MediaPacket {
            track: info.id,
            kind: MediaKind::Video,
            layer: 0,
            params,
            seq: u64::from(i) + 1,
            rtp_time: i * 3000,
            marker: true,
            keyframe: false,
            resync: false,
            audio_level: None,
            voice_activity: None,
            arrival: sim.now,
            vp8: None,
            payload: Arc::from(vec![0x90u8, 0x80, 0x00, 0x01, 0x01, 0x02, 0x03]),
        };
        let mut batch = vec![BusMsg::Ingest(Arc::new(pkt))];
        sim.control
            .ingest_batch(&mut outbox, info.worker, &mut batch);
        sim.run_for(Duration::from_millis(33));
    }
    let requests = sim
        .events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::RemoteKeyframe { track, .. } if *track == info.id))
        .count();
    assert!(
        requests >= 4,
        "the first request and the retries every ~350 ms reached the origin: {requests}"
    );
}

/// Relayed media enters its home worker under the bus's overload policy,
/// like media from another worker: while the worker's inbox is full, video
/// is shed (counted) and audio is kept and handed over first once there is
/// room again.
#[test]
fn relayed_media_into_a_full_inbox_sheds_video_and_keeps_audio() {
    use kaskade_router::media::{BusMsg, MediaPacket, Outbox};
    use std::sync::Arc;
    use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
    use str0m::media::Frequency;

    // One worker with an inbox of 4 batches.
    let mut sim = Sim::with_bus_capacity(1, 24, 4);
    let video = remote_video(&mut sim, "TR0000000000000003", &[]);
    let audio = sim
        .control
        .add_remote_track(RemoteTrack {
            room: kaskade_protocol::RoomId::parse("r").unwrap(),
            path: vec!["fra".into()],
            origin_track_id: "TR0000000000000004".into(),
            participant: "alice".into(),
            kind: MediaKind::Audio,
            rids: Vec::new(),
        })
        .expect("room exists");
    sim.pump();
    assert_eq!(video.worker, audio.worker);
    let w = video.worker;
    let pkt = |info: &kaskade_router::media::TrackInfo, seq: u64| {
        let (codec, clock_rate) = match info.kind {
            MediaKind::Audio => (Codec::Opus, Frequency::FORTY_EIGHT_KHZ),
            MediaKind::Video => (Codec::Vp8, Frequency::NINETY_KHZ),
        };
        let params = PayloadParams::new(
            96.into(),
            None,
            CodecSpec {
                codec,
                clock_rate,
                channels: None,
                format: FormatParams::default(),
            },
        );
        BusMsg::Ingest(Arc::new(MediaPacket {
            track: info.id,
            kind: info.kind,
            layer: 0,
            params,
            seq,
            rtp_time: seq as u32 * 960,
            marker: true,
            keyframe: false,
            resync: false,
            audio_level: None,
            voice_activity: None,
            arrival: sim.now,
            vp8: None,
            payload: Arc::from(vec![0u8; 32]),
        }))
    };
    let dropped = |sim: &Sim| {
        sim.control
            .metrics()
            .bus_dropped
            .with_label_values(&["link"])
            .get()
    };
    let mut outbox = Outbox::new(sim.control.worker_count());

    // The worker does not run: its inbox fills with 4 batches.
    for seq in 1..=4 {
        let mut b = vec![pkt(&video, seq)];
        assert!(sim.control.ingest_batch(&mut outbox, w, &mut b));
        assert!(b.is_empty());
    }
    // Full: the video of the next batches is shed, the audio kept.
    let mut b = vec![pkt(&video, 5), pkt(&audio, 1), pkt(&video, 6)];
    assert!(!sim.control.ingest_batch(&mut outbox, w, &mut b));
    let mut b = vec![pkt(&audio, 2)];
    assert!(!sim.control.ingest_batch(&mut outbox, w, &mut b));
    assert_eq!(dropped(&sim), 2, "two video packets shed");
    // Two audio packets and one overload note for the video track wait.
    assert_eq!(outbox.waiting(w.index()), 3);

    // The worker drains its inbox; the next (empty) offer hands over what waited.
    sim.pump();
    let mut empty = Vec::new();
    assert!(sim.control.ingest_batch(&mut outbox, w, &mut empty));
    assert_eq!(outbox.waiting(w.index()), 0);
    assert_eq!(dropped(&sim), 2, "no audio lost");
    sim.pump();
}

#[test]
fn a_room_records_a_bounded_set_of_reached_routers_and_keeps_known_regions() {
    let mut sim = Sim::new(1, 5);
    sim.create_room("r");
    let room = kaskade_protocol::RoomId::parse("r").unwrap();
    sim.control.link_changed(&room, "ams", "eu-nl-ams", true);
    // A path names routers without their regions: ams keeps its own.
    sim.control.reached(&room, "ams", "");
    // A peer that announces ever new names cannot grow the room without bound.
    for i in 0..1000 {
        sim.control.reached(&room, &format!("n{i}"), "");
    }
    let reached = sim.control.get_room("r").unwrap().reached;
    assert!(reached.len() <= 256, "{}", reached.len());
    let ams = reached.iter().find(|r| r.node_id == "ams").expect("ams");
    assert_eq!(ams.region, "eu-nl-ams");
}
