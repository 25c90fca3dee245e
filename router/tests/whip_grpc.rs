//! A WHIP publisher and a participant of the gRPC API in one room, in dev
//! mode (no API keys): the gRPC side receives the WHIP publisher's media,
//! and a WHEP viewer plays the gRPC participant's.

mod common;

use common::daemon::{client, drive};
use common::web::*;
use hyper::{Method, StatusCode};
use kaskade_loadtest::drive_until;
use kaskade_protocol::v1 as pb;
use pb::session_service_client::SessionServiceClient;
use std::time::{Duration, Instant};

/// Dev mode (no API keys): no token, the room is created by WHIP, and the
/// WHIP publisher meets a participant of the gRPC API: the gRPC side
/// receives the WHIP publisher's media, and a WHEP viewer plays the gRPC
/// participant's.
#[test]
fn a_whip_publisher_and_a_grpc_participant_see_each_other() {
    let r = start(false);
    let t0 = Instant::now();
    let mut whip = client(4, t0);
    whip.client.add_audio();
    whip.client.add_video(&[]);
    let offer = whip.client.create_offer().unwrap();
    let a = r.send(Method::POST, "/whip/mixed", &[SDP], &offer);
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    whip.client.accept_answer(&a.body).unwrap();
    // Dev mode serves loopback host names only (DNS rebinding).
    let a = r.send(
        Method::POST,
        "/whip/mixed",
        &[SDP, ("host", "rebound.example")],
        &offer,
    );
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(r.refusals("whip", "host"), "1");
    // A cross-site page gets no CORS grant in dev mode; a loopback one does.
    let a = r.send(
        Method::OPTIONS,
        "/whip/mixed",
        &[("origin", "http://evil.example")],
        "",
    );
    assert_eq!(a.header("access-control-allow-origin"), "");
    let a = r.send(
        Method::OPTIONS,
        "/whip/mixed",
        &[("origin", "http://127.0.0.1:9999")],
        "",
    );
    assert_eq!(
        a.header("access-control-allow-origin"),
        "http://127.0.0.1:9999"
    );

    // The gRPC participant publishes too, and subscribes to the WHIP tracks.
    let mut grpc = client(5, t0);
    grpc.client.add_audio();
    grpc.client.add_video(&[]);
    let offer = grpc.client.create_offer().unwrap();
    let mut sessions =
        r.rt.block_on(SessionServiceClient::connect(format!(
            "http://{}",
            r.running.control
        )))
        .unwrap();
    let created =
        r.rt.block_on(sessions.create_session(pb::CreateSessionRequest {
            room_id: "mixed".into(),
            participant_id: "grpc-user".into(),
            sdp_offer: offer,
            metadata: String::new(),
        }))
        .unwrap()
        .into_inner();
    grpc.client.accept_answer(&created.sdp_answer).unwrap();
    let room = r.running.plane.get_room("mixed").unwrap();
    let whip_tracks: Vec<String> = room
        .tracks
        .iter()
        .filter(|t| t.participant_id.starts_with("whip-"))
        .map(|t| t.track_id.clone())
        .collect();
    assert_eq!(
        whip_tracks.len(),
        2,
        "the WHIP publisher is visible: {room:?}"
    );
    assert!(drive_until(
        &mut [&mut whip, &mut grpc],
        Duration::from_secs(10),
        |c| c.iter().all(|c| c.client.is_connected())
    ));
    let sub =
        r.rt.block_on(sessions.subscribe(pb::SubscribeRequest {
            session_id: created.session_id.clone(),
            track_ids: whip_tracks,
        }))
        .unwrap()
        .into_inner();
    let answer = grpc.client.accept_offer(&sub.sdp_offer).unwrap();
    r.rt.block_on(sessions.set_answer(pb::SetAnswerRequest {
        session_id: created.session_id.clone(),
        sdp_answer: answer,
    }))
    .unwrap();

    // A WHEP viewer plays the gRPC participant.
    let mut v = viewer(6, t0);
    let offer = v.client.create_offer().unwrap();
    let a = r.send(
        Method::POST,
        "/whep/mixed?publisher=grpc-user",
        &[SDP],
        &offer,
    );
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    v.client.accept_answer(&a.body).unwrap();
    let got = drive_until(
        &mut [&mut whip, &mut grpc, &mut v],
        Duration::from_secs(15),
        |c| video_packets(c[1]) > 100 && video_packets(c[2]) > 100,
    );
    assert!(
        got,
        "gRPC subscriber got {} video packets from WHIP, WHEP viewer {} from gRPC",
        video_packets(&grpc),
        video_packets(&v)
    );
    // Unknown publisher: 404.
    let mut v2 = viewer(7, t0);
    let offer = v2.client.create_offer().unwrap();
    let a = r.send(Method::POST, "/whep/mixed?publisher=nobody", &[SDP], &offer);
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    let a = r.send(Method::POST, "/whep/empty", &[SDP], &offer);
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    drive(
        &mut [&mut whip, &mut grpc, &mut v],
        Duration::from_millis(100),
    );
    r.rt.block_on(r.running.shutdown());
}
