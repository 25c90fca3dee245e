//! WHIP and WHEP (`/whip/{room}`, `/whep/{room}`) through a whole router
//! started in-process, a real HTTP client and str0m clients on real UDP:
//! a WHIP publisher is played by WHEP viewers (with a layer cap), room
//! tokens gate both, and every bad request gets its status.

mod common;

use common::checks::layer;
use common::daemon::{client, drive};
use common::web::*;
use hyper::{Method, StatusCode};
use kaskade_loadtest::drive_until;
use std::time::{Duration, Instant};
use str0m::media::MediaKind;

/// A bad request: path, headers, body, the status and the refusal's reason.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, StatusCode, &'a str);

#[test]
fn whip_publishes_and_whep_plays_with_room_tokens() {
    let r = start(true);
    r.running.plane.create_room("live", 0, &[]).unwrap();
    let hour = Duration::from_secs(3600);
    let pub_tok = token("live", true, false, hour);
    let sub_tok = token("live", false, true, hour);
    let t0 = Instant::now();

    // A simulcast publisher, through WHIP.
    let mut publ = client(1, t0);
    publ.client.add_audio();
    publ.client
        .add_video_layers(&["l", "m", "h"], &light_layers());
    let offer = publ.client.create_offer().unwrap();
    let auth = bearer(&pub_tok);
    let a = r.send(
        Method::POST,
        "/whip/live",
        &[SDP, ("authorization", &auth)],
        &offer,
    );
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.header("content-type"), "application/sdp");
    let location = a.header("location").to_string();
    assert!(location.starts_with("/whip/live/SE"), "{location}");
    let etag = a.header("etag").to_string();
    assert!(!etag.is_empty());
    publ.client.accept_answer(&a.body).unwrap();
    let room = r.running.plane.get_room("live").unwrap();
    assert_eq!(room.sessions.len(), 1, "{room:?}");
    assert_eq!(room.tracks.len(), 2, "{room:?}");
    assert_eq!(
        room.tracks[0].participant_id,
        room.sessions[0].participant_id
    );
    assert!(room.sessions[0].participant_id.starts_with("whip-"));

    // Trickle ICE is taken (204); an ICE restart is not (422); a stale ETag
    // fails its precondition (412).
    let frag = "a=ice-ufrag:zzzz\r\na=ice-pwd:zzzzzzzzzzzzzzzzzzzzzzzz\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let ufrag = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim();
    let trickle = frag.replace("zzzz\r", &format!("{ufrag}\r"));
    let frag_ct = ("content-type", "application/trickle-ice-sdpfrag");
    let a = r.send(
        Method::PATCH,
        &location,
        &[frag_ct, ("authorization", &auth), ("if-match", &etag)],
        &trickle,
    );
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    // A list of tags matches when one does; the scheme's case does not matter.
    let list = format!("\"other\", {etag}");
    let shouted = auth.replacen("Bearer", "BEARER", 1);
    let a = r.send(
        Method::PATCH,
        &location,
        &[frag_ct, ("authorization", &shouted), ("if-match", &list)],
        &trickle,
    );
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    let a = r.send(
        Method::PATCH,
        &location,
        &[frag_ct, ("authorization", &auth), ("if-match", "*")],
        frag,
    );
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    // New ICE credentials are a restart too.
    let a = r.send(
        Method::PATCH,
        &location,
        &[frag_ct, ("authorization", &auth), ("if-match", &etag)],
        frag,
    );
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    let a = r.send(
        Method::PATCH,
        &location,
        &[frag_ct, ("authorization", &auth), ("if-match", "\"stale\"")],
        &trickle,
    );
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "{}", a.body);
    let a = r.send(
        Method::PATCH,
        &location,
        &[SDP, ("authorization", &auth)],
        &trickle,
    );
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A WHEP viewer capped at the low layer.
    let mut low = viewer(2, t0);
    let offer = low.client.create_offer().unwrap();
    let sauth = bearer(&sub_tok);
    let a = r.send(
        Method::POST,
        "/whep/live?layer=low",
        &[SDP, ("authorization", &sauth)],
        &offer,
    );
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let whep_location = a.header("location").to_string();
    assert!(
        whep_location.starts_with("/whep/live/SE"),
        "{whep_location}"
    );
    low.client.accept_answer(&a.body).unwrap();
    let got = drive_until(&mut [&mut publ, &mut low], Duration::from_secs(15), |c| {
        video_packets(c[1]) > 100
    });
    assert!(got, "the WHEP viewer receives the WHIP publisher's video");
    let audio: u64 = low
        .client
        .received()
        .iter()
        .filter(|x| x.kind == Some(MediaKind::Audio))
        .map(|x| x.packets)
        .sum();
    assert!(audio > 0, "and its audio");
    let video = low
        .client
        .received()
        .iter()
        .find(|x| x.kind == Some(MediaKind::Video))
        .unwrap();
    assert_eq!(video.first_packet_keyframe, Some(true));
    assert!(
        video.log.iter().all(|p| layer(p) == 0),
        "layer=low forwards the lowest simulcast layer only"
    );

    // Leaving: DELETE, and a second DELETE finds nothing.
    let a = r.send(
        Method::DELETE,
        &whep_location,
        &[("authorization", &sauth)],
        "",
    );
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = r.send(
        Method::DELETE,
        &whep_location,
        &[("authorization", &sauth)],
        "",
    );
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = r.send(Method::DELETE, &location, &[("authorization", &auth)], "");
    assert_eq!(a.status, StatusCode::OK);
    let a = r.send(Method::DELETE, &location, &[("authorization", &auth)], "");
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(r
        .running
        .plane
        .get_room("live")
        .unwrap()
        .sessions
        .is_empty());
    drive(&mut [&mut publ, &mut low], Duration::from_millis(100));
    r.rt.block_on(r.running.shutdown());
}

#[test]
fn bad_whip_and_whep_requests_get_a_precise_status() {
    let r = start(true);
    r.running.plane.create_room("live", 0, &[]).unwrap();
    let hour = Duration::from_secs(3600);
    let t0 = Instant::now();
    let mut publ = client(3, t0);
    publ.client.add_audio();
    let offer = publ.client.create_offer().unwrap();
    let voffer = viewer(8, t0).client.create_offer().unwrap();
    let pub_auth = bearer(&token("live", true, false, hour));
    let cases: Vec<Case> = vec![
        (
            "/whip/live",
            vec![],
            offer.clone(),
            StatusCode::UNAUTHORIZED,
            "no_token",
        ),
        (
            "/whip/live",
            vec![("authorization", "Bearer not.a.token".into())],
            offer.clone(),
            StatusCode::UNAUTHORIZED,
            "bad_token",
        ),
        (
            "/whip/live",
            vec![(
                "authorization",
                bearer(&token("live", true, false, Duration::ZERO)),
            )],
            offer.clone(),
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (
            "/whip/live",
            vec![("authorization", bearer(&token("other", true, true, hour)))],
            offer.clone(),
            StatusCode::FORBIDDEN,
            "wrong_room",
        ),
        (
            "/whip/live",
            vec![("authorization", bearer(&token("live", false, true, hour)))],
            offer.clone(),
            StatusCode::FORBIDDEN,
            "not_granted",
        ),
        (
            "/whip/nosuch",
            vec![("authorization", bearer(&token("nosuch", true, false, hour)))],
            offer.clone(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/whip/live",
            vec![("authorization", pub_auth.clone())],
            "v=0\r\nthis is no SDP\r\n".into(),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/live",
            vec![("authorization", pub_auth.clone())],
            "hello".into(),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whep/live",
            vec![("authorization", bearer(&token("live", false, true, hour)))],
            voffer.clone(),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "/whep/live",
            vec![("authorization", bearer(&token("live", false, true, hour)))],
            offer.clone(),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/live",
            vec![("authorization", pub_auth.clone())],
            voffer.clone(),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whep/live?layer=huge",
            vec![("authorization", bearer(&token("live", false, true, hour)))],
            offer.clone(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (path, headers, body, status, reason) in &cases {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(SDP);
        let a = r.send(Method::POST, path, &h, body);
        assert_eq!(a.status, *status, "{path} {reason}: {}", a.body);
        let ep = &path[1..5];
        assert_ne!(r.refusals(ep, reason), "0", "{path} {reason} counted");
        if *status == StatusCode::UNAUTHORIZED {
            assert_eq!(a.header("www-authenticate"), "Bearer");
        }
    }
    // Not application/sdp.
    let a = r.send(
        Method::POST,
        "/whip/live",
        &[
            ("content-type", "text/plain"),
            ("authorization", pub_auth.as_str()),
        ],
        &offer,
    );
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Too large.
    let big = format!("v=0\r\n{}", "a".repeat(300 * 1024));
    let a = r.send(
        Method::POST,
        "/whip/live",
        &[SDP, ("authorization", pub_auth.as_str())],
        &big,
    );
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Methods a resource or an endpoint does not take.
    let a = r.send(Method::GET, "/whip/live", &[], "");
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = r.send(Method::POST, "/whep/live/SE0000000000000001", &[SDP], "v=0");
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    // axum answers these itself: counted as route "other".
    let counted = r
        .metrics
        .render()
        .lines()
        .any(|l| l.starts_with("kaskade_http_requests_total{code=\"405\",route=\"other\"} 2"));
    assert!(counted, "{}", r.metrics.render());
    // A resource that never was.
    let a = r.send(
        Method::DELETE,
        "/whip/live/SE0000000000000001",
        &[("authorization", pub_auth.as_str())],
        "",
    );
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // A browser's preflight: any origin may call with a token.
    let a = r.send(
        Method::OPTIONS,
        "/whip/live",
        &[
            ("origin", "https://studio.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    );
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("access-control-allow-origin"), "*");
    assert!(a
        .header("access-control-allow-headers")
        .contains("authorization"));
    assert!(a
        .header("access-control-expose-headers")
        .contains("location"));
    // Draining: 503.
    r.running.plane.start_draining(0);
    let a = r.send(
        Method::POST,
        "/whip/live",
        &[SDP, ("authorization", pub_auth.as_str())],
        &offer,
    );
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(r.refusals("whip", "draining"), "1");
    r.rt.block_on(r.running.shutdown());
}

#[test]
fn a_browsers_audio_only_offer_is_taken_and_one_without_a_common_codec_is_refused() {
    let r = start(true);
    r.running.plane.create_room("live", 0, &[]).unwrap();
    let auth = bearer(&token("live", true, false, Duration::from_secs(3600)));
    let t0 = Instant::now();
    let mut publ = client(4, t0);
    publ.client.add_audio();
    let offer = publ.client.create_offer().unwrap();
    assert!(
        offer.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
        "{offer}"
    );

    // As Chromium and Firefox list it: PCMU (payload type 0) among the formats.
    let browser = offer.replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8\r\n",
    );
    let a = r.send(
        Method::POST,
        "/whip/live",
        &[SDP, ("authorization", &auth)],
        &browser,
    );
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let location = a.header("location").to_string();
    let a = r.send(Method::DELETE, &location, &[("authorization", &auth)], "");
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Speex only: nothing the router takes. Refused, and no session is left.
    let speex = offer.replace("opus/48000/2", "speex/16000");
    let a = r.send(
        Method::POST,
        "/whip/live",
        &[SDP, ("authorization", &auth)],
        &speex,
    );
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains("codec"), "{}", a.body);
    assert_eq!(r.refusals("whip", "bad_sdp"), "1");
    let room = r.running.plane.get_room("live").unwrap();
    assert!(room.sessions.is_empty(), "{room:?}");
    r.rt.block_on(r.running.shutdown());
}
