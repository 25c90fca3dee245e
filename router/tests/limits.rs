//! Bounded resources: every limit a caller can run into refuses with
//! RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for a field too large), a short
//! reason naming the limit, and a count in `kaskade_limit_refusals_total`;
//! nothing a caller sends is echoed back at full size.

mod common;

use common::daemon::Daemon;
use common::{Sim, SimOptions};
use kaskade_protocol::v1 as pb;
use kaskade_router::control::{ApiError, Limits};
use tonic::Code;

fn sim_with(limits: Limits) -> Sim {
    Sim::with_options(
        1,
        7,
        SimOptions {
            limits,
            ..Default::default()
        },
    )
}

fn refusals(sim: &Sim, limit: &str) -> f64 {
    sim.metric(&format!(
        "kaskade_limit_refusals_total{{limit=\"{limit}\"}}"
    ))
}

fn create(sim: &mut Sim, room: &str, who: &str, offer: String) -> Result<(), ApiError> {
    let control = sim.control.clone();
    sim.api(control.create_session(pb::CreateSessionRequest {
        room_id: room.into(),
        participant_id: who.into(),
        sdp_offer: offer,
        metadata: String::new(),
    }))
    .map(|_| ())
}

/// An offer with `sending` video sections the browser sends on, and
/// `receiving` receive-only ones.
fn offer(sim: &mut Sim, sending: usize, receiving: usize) -> String {
    let c = sim.add_client(|c| c);
    for _ in 0..sending {
        sim.clients[c].client.add_video(&[]);
    }
    for _ in 0..receiving {
        sim.clients[c]
            .client
            .add_receiver(str0m::media::MediaKind::Audio);
    }
    sim.clients[c].client.create_offer().unwrap()
}

fn assert_exhausted(r: Result<(), ApiError>, key: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains(key), "{e}");
    assert!(e.to_string().len() < 200, "short: {e}");
}

#[test]
fn rooms_over_the_limit_are_refused_and_counted() {
    let sim = sim_with(Limits {
        max_rooms: 2,
        ..Limits::default()
    });
    sim.control.create_room("a", 0, &[]).unwrap();
    sim.control.create_room("b", 0, &[]).unwrap();
    let e = sim.control.create_room("c", 0, &[]).unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.to_string().contains("limits.max_rooms"), "{e}");
    assert_eq!(refusals(&sim, "rooms"), 1.0);
}

#[test]
fn sessions_beyond_the_router_and_pending_limits_are_refused() {
    let mut sim = sim_with(Limits {
        max_sessions: 3,
        max_pending_sessions: 2,
        ..Limits::default()
    });
    sim.create_room("r");
    for who in ["p0", "p1"] {
        let o = offer(&mut sim, 1, 0);
        create(&mut sim, "r", who, o).unwrap();
    }
    // Two sessions wait to connect: the third is refused by the pending limit.
    let o = offer(&mut sim, 1, 0);
    assert_exhausted(
        create(&mut sim, "r", "p2", o.clone()),
        "limits.max_pending_sessions",
    );
    assert_eq!(refusals(&sim, "pending_sessions"), 1.0);
    // A connected session is no longer pending: another may join.
    let mut s2 = sim_with(Limits {
        max_pending_sessions: 1,
        ..Limits::default()
    });
    s2.publisher_and_subscribers(0, |c| {
        c.add_video(&[]);
    });
    let o = offer(&mut s2, 0, 1);
    create(&mut s2, "r", "late", o).unwrap();
    // The router-wide session limit.
    let mut sim = sim_with(Limits {
        max_sessions: 2,
        ..Limits::default()
    });
    sim.create_room("r");
    for who in ["p0", "p1"] {
        let o = offer(&mut sim, 0, 1);
        create(&mut sim, "r", who, o).unwrap();
    }
    let o = offer(&mut sim, 0, 1);
    assert_exhausted(create(&mut sim, "r", "p2", o), "limits.max_sessions");
    assert_eq!(refusals(&sim, "sessions"), 1.0);
}

#[test]
fn offers_with_too_many_media_lines_or_tracks_are_refused_before_the_worker() {
    let mut sim = sim_with(Limits {
        max_media_lines: 8,
        max_tracks_per_session: 3,
        max_tracks: 5,
        ..Limits::default()
    });
    sim.create_room("r");
    let o = offer(&mut sim, 0, 9);
    assert_exhausted(create(&mut sim, "r", "lines", o), "limits.max_media_lines");
    let o = offer(&mut sim, 4, 0);
    assert_exhausted(
        create(&mut sim, "r", "tracks", o),
        "limits.max_tracks_per_session",
    );
    // Nothing was created on the worker for either.
    assert_eq!(sim.workers[0].core.session_count(), 0);
    // The router-wide track limit: 3 + 2 fit, 1 more does not.
    let o = offer(&mut sim, 3, 0);
    create(&mut sim, "r", "a", o).unwrap();
    let o = offer(&mut sim, 2, 0);
    create(&mut sim, "r", "b", o).unwrap();
    let o = offer(&mut sim, 1, 0);
    assert_exhausted(create(&mut sim, "r", "c", o), "limits.max_tracks");
    assert_eq!(refusals(&sim, "media_lines"), 1.0);
    assert_eq!(refusals(&sim, "tracks_per_session"), 1.0);
    assert_eq!(refusals(&sim, "tracks"), 1.0);
}

#[test]
fn an_offer_with_more_simulcast_layers_than_a_track_may_have_is_refused() {
    let mut sim = sim_with(Limits::default());
    sim.create_room("r");
    let c = sim.add_client(|c| c);
    sim.clients[c].client.add_video(&["l", "m", "h"]);
    let three = sim.clients[c].client.create_offer().unwrap();
    assert_eq!(three.matches(" send\r\n").count(), 3, "{three}");
    // Six more rids on the same line: 9, one more than a track may have.
    let extra: String = (0..6).map(|i| format!("a=rid:x{i} send\r\n")).collect();
    let nine = three.replacen("a=rid:l send\r\n", &format!("a=rid:l send\r\n{extra}"), 1);
    let e = create(&mut sim, "r", "p", nine).expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.to_string().contains("9 simulcast layers; at most 8"),
        "{e}"
    );
    assert_eq!(refusals(&sim, "simulcast_layers"), 1.0);
    assert_eq!(sim.workers[0].core.session_count(), 0);
    create(&mut sim, "r", "p", three).unwrap();
}

#[test]
fn subscriptions_per_session_are_bounded() {
    let mut sim = sim_with(Limits {
        max_subscriptions_per_session: 1,
        ..Limits::default()
    });
    let (_publ, tracks, subs) = sim.publisher_and_subscribers(1, |c| {
        c.add_audio();
        c.add_video(&[]);
    });
    let control = sim.control.clone();
    let session = sim.clients[subs[0]].session.clone().unwrap();
    let e = sim
        .api(control.subscribe(pb::SubscribeRequest {
            session_id: session,
            track_ids: tracks.iter().map(|t| t.track_id.clone()).collect(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.to_string()
            .contains("limits.max_subscriptions_per_session"),
        "{e}"
    );
    assert_eq!(refusals(&sim, "subscriptions_per_session"), 1.0);
}

#[test]
fn event_streams_are_bounded_and_their_slots_freed() {
    let sim = sim_with(Limits {
        max_watchers: 2,
        ..Limits::default()
    });
    sim.control.create_room("r", 0, &[]).unwrap();
    let a = sim.control.watch("r").unwrap();
    let _b = sim.control.watch("r").unwrap();
    let e = sim.control.watch("r").unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.to_string().contains("limits.max_watchers"), "{e}");
    drop(a);
    sim.control.watch("r").expect("a slot was freed");
    assert_eq!(refusals(&sim, "watchers"), 1.0);
    // The demo's streams (room-token holders) take none of these slots.
    let demo: Vec<_> = (0..5)
        .map(|_| sim.control.watch_demo("r").unwrap())
        .collect();
    assert_eq!(demo.len(), 5);
    assert_eq!(refusals(&sim, "watchers"), 1.0);
}

#[test]
fn huge_ids_and_region_lists_get_short_errors() {
    let sim = Sim::new(1, 3);
    let huge = "r".repeat(3 << 20);
    let e = sim.control.create_room(&huge, 0, &[]).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.to_string().len() < 200, "{} bytes", e.to_string().len());
    assert!(e.to_string().contains("room_id"), "{e}");

    let many: Vec<String> = (0..100_000).map(|i| format!("eu-x-{i}")).collect();
    let e = sim.control.create_room("ok", 0, &many).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.to_string().len() < 200, "{e}");
    assert!(e.to_string().contains("allowed_regions"), "{e}");
    assert!(sim.metric("kaskade_limit_refusals_total{limit=\"field_size\"}") >= 1.0);

    let long_region = vec![format!("{}-", "e".repeat(1 << 20))];
    let e = sim.control.create_room("ok", 0, &long_region).unwrap_err();
    assert!(e.to_string().len() < 200, "{e}");
    // A policy that excludes this router is refused without echoing it.
    let e = sim
        .control
        .create_room("ok", 0, &vec!["eu-de-fra".to_string(); 32])
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.to_string().len() < 200, "{e}");
}

#[test]
fn rooms_are_listed_a_page_at_a_time() {
    let sim = sim_with(Limits {
        max_rooms: 2000,
        ..Limits::default()
    });
    for i in 0..250 {
        sim.control
            .create_room(&format!("room-{i:04}"), 0, &[])
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = sim.control.list_rooms(0, &token).unwrap();
        pages += 1;
        seen.extend(page.rooms.into_iter().map(|r| r.room_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3, "100 + 100 + 50");
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    let small = sim.control.list_rooms(7, "").unwrap();
    assert_eq!(small.rooms.len(), 7);
    assert_eq!(small.next_page_token, "room-0006");
    let e = sim.control.list_rooms(0, "not a room id").unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Large rooms: a page stops before 1 MiB, whatever page_size says.
    let regions: Vec<String> = std::iter::once("eu-sim-1".to_string())
        .chain((0..31).map(|i| format!("eu-{}-{i:02}", "x".repeat(56))))
        .collect();
    for i in 0..700 {
        sim.control
            .create_room(&format!("wide-{i:04}"), 0, &regions)
            .unwrap();
    }
    let page = sim.control.list_rooms(1000, "room-0249").unwrap();
    let bytes: usize = page
        .rooms
        .iter()
        .map(|r| prost::Message::encoded_len(r) + 8)
        .sum();
    assert!(page.rooms.len() < 700, "{} rooms", page.rooms.len());
    assert!(bytes <= 1 << 20, "{bytes} bytes");
    assert!(!page.next_page_token.is_empty());
}

/// The defect a probe found: a 3 MB room id made the call never return
/// and every later call on that HTTP/2 connection (health checks too) time
/// out, because the error echoed the whole value.
#[test]
fn a_huge_room_id_leaves_the_connection_usable() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = Daemon::start(&rt, &[]);
    let url = format!("http://{}", router.control);
    rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut rooms = pb::room_service_client::RoomServiceClient::new(ch.clone());
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let call = rooms.create_room(pb::CreateRoomRequest {
            room_id: "r".repeat(3 << 20),
            max_sessions: 0,
            allowed_regions: vec![],
        });
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), call)
            .await
            .expect("answered")
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 200, "{} bytes", e.message().len());
        let ok = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            health.check(tonic_health::pb::HealthCheckRequest::default()),
        )
        .await
        .expect("health answers on the same connection")
        .unwrap();
        assert_eq!(
            ok.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    });
}
