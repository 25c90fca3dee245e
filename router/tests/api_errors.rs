//! The control API's errors: the right gRPC code and a reason a developer
//! can act on, through the real control plane and worker cores.

mod common;

use common::Sim;
use kaskade_protocol::v1 as pb;
use kaskade_router::control::ApiError;
use std::future::Future as _;
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> (Code, String) {
    let e = r.expect_err("an error");
    (e.code(), e.to_string())
}

fn create(
    sim: &mut Sim,
    room: &str,
    participant: &str,
    offer: &str,
) -> Result<pb::CreateSessionResponse, ApiError> {
    let control = sim.control.clone();
    sim.api(control.create_session(pb::CreateSessionRequest {
        room_id: room.into(),
        participant_id: participant.into(),
        sdp_offer: offer.into(),
        metadata: String::new(),
    }))
}

#[test]
fn rooms() {
    let sim = Sim::new(1, 1);
    sim.control.create_room("a", 0, &[]).unwrap();
    assert_eq!(
        code(sim.control.create_room("a", 0, &[])).0,
        Code::AlreadyExists
    );
    assert_eq!(
        code(sim.control.create_room("", 0, &[])).0,
        Code::InvalidArgument
    );
    let (c, msg) = code(sim.control.create_room("a b", 0, &[]));
    assert_eq!(c, Code::InvalidArgument);
    assert!(msg.contains("room_id"), "{msg}");
    assert_eq!(
        code(sim.control.create_room("big", 5000, &[])).0,
        Code::InvalidArgument
    );
    assert_eq!(code(sim.control.get_room("nope")).0, Code::NotFound);
    assert_eq!(sim.control.list_rooms(0, "").unwrap().rooms.len(), 1);
    // Residency: the simulated router is in eu-sim-1.
    let de = vec!["eu-de-".to_string()];
    let (c, msg) = code(sim.control.create_room("de-only", 0, &de));
    assert_eq!(c, Code::PermissionDenied);
    assert!(msg.contains("eu-sim-1"), "{msg}");
    let ok = sim
        .control
        .create_room("sim-ok", 0, &["eu-sim-".to_string()])
        .unwrap();
    assert_eq!(ok.allowed_regions, vec!["eu-sim-"]);
    assert_eq!(ok.reached[0].region, "eu-sim-1");
    let bad = vec!["EU".to_string()];
    assert_eq!(
        code(sim.control.create_room("x", 0, &bad)).0,
        Code::InvalidArgument
    );
}

#[test]
fn malformed_sdp_is_invalid_argument_with_str0ms_reason() {
    let mut sim = Sim::new(1, 2);
    sim.create_room("r");
    let (c, msg) = code(create(&mut sim, "r", "p", "v=0\r\nthis is not sdp"));
    assert_eq!(c, Code::InvalidArgument);
    assert!(msg.starts_with("invalid SDP:"), "{msg}");
    // The failed attempt left nothing behind: the participant can retry.
    let room = sim.control.get_room("r").unwrap();
    assert!(room.sessions.is_empty());
    assert_eq!(
        code(create(&mut sim, "r", "p", "")).0,
        Code::InvalidArgument
    );
    assert!(sim.metric("kaskade_sessions") == 0.0);
}

#[test]
fn unknown_things_are_not_found_and_duplicates_already_exist() {
    let mut sim = Sim::new(2, 3);
    let c = sim.add_client(|c| c);
    sim.clients[c].client.add_audio();
    let offer = sim.clients[c].client.create_offer().unwrap();
    assert_eq!(
        code(create(&mut sim, "missing", "p", &offer)).0,
        Code::NotFound
    );
    sim.create_room("r");
    let ok = create(&mut sim, "r", "p", &offer).unwrap();
    assert_eq!(ok.tracks.len(), 1);
    let (c2, msg) = code(create(&mut sim, "r", "p", &offer));
    assert_eq!(c2, Code::AlreadyExists);
    assert!(msg.contains("participant p"), "{msg}");

    let control = sim.control.clone();
    let unknown = "SE0000000000000001";
    let r = sim.api(control.subscribe(pb::SubscribeRequest {
        session_id: unknown.into(),
        track_ids: vec![ok.tracks[0].track_id.clone()],
    }));
    assert_eq!(code(r).0, Code::NotFound);
    let r = sim.api(control.subscribe(pb::SubscribeRequest {
        session_id: "garbage".into(),
        track_ids: vec![ok.tracks[0].track_id.clone()],
    }));
    assert_eq!(code(r).0, Code::InvalidArgument);
    let r = sim.api(control.subscribe(pb::SubscribeRequest {
        session_id: ok.session_id.clone(),
        track_ids: vec!["TR00000000000000ff".into()],
    }));
    assert_eq!(code(r).0, Code::NotFound);
    let r = sim.api(control.subscribe(pb::SubscribeRequest {
        session_id: ok.session_id.clone(),
        track_ids: vec![ok.tracks[0].track_id.clone()],
    }));
    assert_eq!(code(r).0, Code::InvalidArgument, "own track");
    assert_eq!(
        code(sim.api(control.close_session(unknown))).0,
        Code::NotFound
    );
}

#[test]
fn offer_answer_out_of_order_is_failed_precondition() {
    let mut sim = Sim::new(1, 4);
    sim.create_room("r");
    let p = sim.add_client(|c| c);
    sim.clients[p].client.add_audio();
    let tracks = sim.join("r", p, "pub");
    let s = sim.add_client(|c| c);
    sim.clients[s].client.add_data_channel("k");
    sim.join("r", s, "sub");
    let sid = sim.clients[s].session.clone().unwrap();
    let control = sim.control.clone();

    // SetAnswer with no router offer pending.
    let r = sim.api(control.set_answer(pb::SetAnswerRequest {
        session_id: sid.clone(),
        sdp_answer: "v=0".into(),
    }));
    assert_eq!(code(r).0, Code::FailedPrecondition);

    // Subscribe twice without answering the first offer.
    let first = sim
        .api(control.subscribe(pb::SubscribeRequest {
            session_id: sid.clone(),
            track_ids: vec![tracks[0].track_id.clone()],
        }))
        .unwrap();
    let r = sim.api(control.unsubscribe(pb::UnsubscribeRequest {
        session_id: sid.clone(),
        track_ids: vec![tracks[0].track_id.clone()],
    }));
    assert_eq!(code(r).0, Code::FailedPrecondition);

    // A browser offer while the router's offer is pending (glare).
    let r = sim.api(control.renegotiate(pb::RenegotiateRequest {
        session_id: sid.clone(),
        sdp_offer: "v=0".into(),
    }));
    let (c, msg) = code(r);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(msg.contains("SetAnswer"), "{msg}");

    // A garbage answer is INVALID_ARGUMENT and keeps the offer pending, so
    // the right answer still completes it.
    let r = sim.api(control.set_answer(pb::SetAnswerRequest {
        session_id: sid.clone(),
        sdp_answer: "garbage".into(),
    }));
    assert_eq!(code(r).0, Code::InvalidArgument);
    let answer = sim.clients[s]
        .client
        .accept_offer(&first.sdp_offer)
        .unwrap();
    sim.api(control.set_answer(pb::SetAnswerRequest {
        session_id: sid.clone(),
        sdp_answer: answer,
    }))
    .unwrap();
    // Subscribing to the same track twice is ALREADY_EXISTS.
    let r = sim.api(control.subscribe(pb::SubscribeRequest {
        session_id: sid.clone(),
        track_ids: vec![tracks[0].track_id.clone()],
    }));
    assert_eq!(code(r).0, Code::AlreadyExists);
}

#[test]
fn room_limits_are_resource_exhausted() {
    let mut sim = Sim::new(1, 5);
    sim.control.create_room("small", 1, &[]).unwrap();
    let a = sim.add_client(|c| c);
    sim.clients[a].client.add_data_channel("k");
    sim.join("small", a, "a");
    let b = sim.add_client(|c| c);
    sim.clients[b].client.add_data_channel("k");
    let offer = sim.clients[b].client.create_offer().unwrap();
    assert_eq!(
        code(create(&mut sim, "small", "b", &offer)).0,
        Code::ResourceExhausted
    );
}

#[test]
fn delete_room_closes_its_sessions() {
    let mut sim = Sim::new(2, 6);
    sim.create_room("r");
    let a = sim.add_client(|c| c);
    sim.clients[a].client.add_audio();
    sim.join("r", a, "a");
    assert_eq!(sim.metric("kaskade_sessions"), 1.0);
    let control = sim.control.clone();
    sim.api(control.delete_room("r")).unwrap();
    assert_eq!(sim.metric("kaskade_sessions"), 0.0);
    assert_eq!(sim.metric("kaskade_rooms"), 0.0);
    assert_eq!(code(sim.control.get_room("r")).0, Code::NotFound);
    let sid = sim.clients[a].session.clone().unwrap();
    assert_eq!(code(sim.control.get_session(&sid)).0, Code::NotFound);
}

#[test]
fn a_session_cannot_join_a_room_being_deleted() {
    let mut sim = Sim::new(1, 6);
    sim.create_room("r");
    let a = sim.add_client(|c| c);
    sim.clients[a].client.add_audio();
    sim.join("r", a, "a");
    let control = sim.control.clone();
    // DeleteRoom starts closing alice's session and waits for the worker.
    let mut delete = Box::pin(control.delete_room("r"));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(delete.as_mut().poll(&mut cx).is_pending());
    // Meanwhile bob's CreateSession is refused: joining would outlive the room.
    let b = sim.add_client(|c| c);
    sim.clients[b].client.add_audio();
    let offer = sim.clients[b].client.create_offer().unwrap();
    let joined = sim.api(control.create_session(pb::CreateSessionRequest {
        room_id: "r".into(),
        participant_id: "b".into(),
        sdp_offer: offer,
        metadata: String::new(),
    }));
    let (c, msg) = code(joined);
    assert_eq!(c, Code::NotFound, "{msg}");
    assert!(msg.contains("being deleted"), "{msg}");
    sim.api(delete).unwrap();
    assert_eq!(
        sim.metric("kaskade_sessions"),
        0.0,
        "no session outlives its room"
    );
    assert_eq!(code(sim.control.get_room("r")).0, Code::NotFound);
}

#[test]
fn a_payload_type_its_media_line_does_not_list_is_refused_not_a_panic() {
    let mut sim = Sim::new(1, 8);
    sim.create_room("r");
    let p = sim.add_client(|c| c);
    sim.clients[p].client.add_audio();
    sim.clients[p].client.add_video(&[]);
    sim.join("r", p, "pub");
    let v = sim.add_client(|c| c);
    sim.clients[v]
        .client
        .add_receiver(str0m::media::MediaKind::Audio);
    sim.clients[v]
        .client
        .add_receiver(str0m::media::MediaKind::Video);
    let offer = sim.clients[v].client.create_offer().unwrap();
    assert!(offer.contains("a=rtpmap:111 opus/48000/2\r\n"), "{offer}");
    let vp8 = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:")?.strip_suffix(" VP8/90000"))
        .expect("the offer has VP8")
        .to_string();
    // VP8 on payload type 96 in the video line (as Chromium offers it), and
    // 96 mapped to H.264 in the audio line, which does not list it: str0m
    // 0.25 panics on it ("Pt locked multiple times: 96").
    let offer = offer
        .replace(&format!(":{vp8} "), ":96 ")
        .replace(&format!("apt={vp8}"), "apt=96")
        .replace(&format!("SAVPF {vp8} "), "SAVPF 96 ");
    assert!(offer.contains("a=rtpmap:96 VP8/90000"), "{offer}");
    let vp8 = "96";
    let bad = offer.replacen(
        "a=rtpmap:111 opus/48000/2\r\n",
        &format!("a=rtpmap:{vp8} H264/90000\r\na=rtpmap:111 opus/48000/2\r\n"),
        1,
    );
    let control = sim.control.clone();
    let r = sim.api(control.create_session(pb::CreateSessionRequest {
        room_id: "r".into(),
        participant_id: "v".into(),
        sdp_offer: bad,
        metadata: String::new(),
    }));
    let (c, msg) = code(r);
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    assert!(msg.contains(&format!("payload type {vp8}")), "{msg}");
    assert_eq!(sim.metric("kaskade_session_failures_total"), 0.0);
}

/// An SDP error says where the SDP went wrong and nothing more: str0m's
/// parser positions are heap addresses (`PointerOffset(0x7f…)`), which
/// would reveal the daemon's memory layout.
#[test]
fn sdp_errors_name_the_line_and_reveal_no_address() {
    let mut sim = Sim::new(1, 7);
    sim.create_room("r");
    let (c, msg) = code(create(&mut sim, "r", "p", "v=0\r\nthis is not sdp"));
    assert_eq!(c, Code::InvalidArgument);
    assert!(
        !msg.contains("0x") && !msg.contains("PointerOffset"),
        "no address in {msg:?}"
    );
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.len() < 100, "short: {msg:?}");
}

/// A `SetAnswer` the router refuses leaves its offer pending: the corrected
/// answer completes the subscription and media flows.
#[test]
fn a_refused_answer_keeps_the_offer_for_a_corrected_one() {
    let mut sim = Sim::new(1, 8);
    let (_publ, tracks, subs) = sim.publisher_and_subscribers(1, |c| {
        c.add_audio();
        c.add_video(&[]);
    });
    let s = subs[0];
    let sid = sim.clients[s].session.clone().unwrap();
    let control = sim.control.clone();
    let offer = sim
        .api(control.subscribe(pb::SubscribeRequest {
            session_id: sid.clone(),
            track_ids: tracks.iter().map(|t| t.track_id.clone()).collect(),
        }))
        .unwrap();
    let good = sim.clients[s]
        .client
        .accept_offer(&offer.sdp_offer)
        .unwrap();
    let without_fingerprint: String = good
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("a=fingerprint"))
        .collect();
    let last_section_cut = good[..good.rfind("m=").unwrap()].to_string();
    for (bad, what) in [
        (offer.sdp_offer.clone(), "the router's own offer"),
        (without_fingerprint, "no fingerprint"),
        (last_section_cut, "an m-line missing"),
    ] {
        let r = sim.api(control.set_answer(pb::SetAnswerRequest {
            session_id: sid.clone(),
            sdp_answer: bad,
        }));
        let (c, msg) = code(r);
        assert_eq!(c, Code::InvalidArgument, "{what}: {msg}");
        assert!(!msg.contains("0x"), "{what}: {msg}");
    }
    sim.api(control.set_answer(pb::SetAnswerRequest {
        session_id: sid,
        sdp_answer: good,
    }))
    .expect("the corrected answer completes the offer");
    sim.run_for(std::time::Duration::from_secs(2));
    let received: u64 = sim.clients[s]
        .client
        .received()
        .iter()
        .map(|r| r.packets)
        .sum();
    assert!(received > 50, "media flows: {received} packets");
}
