//! WHIP and WHEP (`/whip/{room}`, `/whep/{room}`) through a whole router
//! started in-process, a real HTTP client and str0m clients on real UDP:
//! a WHIP publisher is played by WHEP viewers (with a layer cap), room
//! tokens gate both, every bad request gets its status, and WHIP meets the
//! gRPC API in one room.

mod common;

use common::checks::layer;
use common::daemon::{client, drive};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaskade_loadtest::{drive_until, UdpClient, VideoLayer};
use kaskade_protocol::v1 as pb;
use kaskade_router::auth::token::{mint, Claims};
use kaskade_router::auth::KeySet;
use kaskade_router::config::Resolved;
use kaskade_router::metrics::Metrics;
use kaskade_router::server::{self, Running};
use pb::session_service_client::SessionServiceClient;
use std::time::{Duration, Instant, SystemTime};
use str0m::media::MediaKind;
use tokio::runtime::Runtime;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

const KEY: &str = "backend";
const SECRET: &str = "whip-test-secret-0123456789";

struct Router {
    rt: Runtime,
    running: Running,
    metrics: Metrics,
    http: HttpClient,
}

fn start(keys: bool) -> Router {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = Resolved::ephemeral(2);
    cfg.http_listen = Some("127.0.0.1:0".parse().unwrap());
    if keys {
        cfg.api_keys = KeySet::build(&[], Some(&format!("{KEY}:{SECRET}"))).unwrap();
    }
    let metrics = Metrics::new();
    let running = rt.block_on(server::start(&cfg, metrics.clone())).unwrap();
    let http = {
        let _g = rt.enter();
        Client::builder(TokioExecutor::new()).build_http()
    };
    Router {
        rt,
        running,
        metrics,
        http,
    }
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Router {
    fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.running.http.unwrap()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        self.rt.block_on(async {
            let resp = self.http.request(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        })
    }

    fn refusals(&self, endpoint: &str, reason: &str) -> String {
        let text = self.metrics.render();
        let series =
            format!("kaskade_whip_refusals_total{{endpoint=\"{endpoint}\",reason=\"{reason}\"}}");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0")
            .to_string()
    }
}

fn token(room: &str, publish: bool, subscribe: bool, ttl: Duration) -> String {
    let mut c = Claims::new(room, SystemTime::now(), ttl);
    c.publish = publish;
    c.subscribe = subscribe;
    mint(KEY, SECRET.as_bytes(), &c)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

const SDP: (&str, &str) = ("content-type", "application/sdp");

/// A bad request: path, headers, body, the status and the refusal's reason.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, StatusCode, &'a str);

fn video_packets(c: &UdpClient) -> u64 {
    c.client
        .received()
        .iter()
        .filter(|r| r.kind == Some(MediaKind::Video))
        .map(|r| r.packets)
        .sum()
}

fn light_layers() -> Vec<VideoLayer> {
    vec![
        VideoLayer::new(320, 180, 60_000),
        VideoLayer::new(640, 360, 150_000),
        VideoLayer::new(1280, 720, 400_000),
    ]
}

/// A viewer with receive-only audio and video lines (what a WHEP player offers).
fn viewer(seed: u64, t0: Instant) -> UdpClient {
    let mut v = client(seed, t0);
    v.client.add_receiver(MediaKind::Audio);
    v.client.add_receiver(MediaKind::Video);
    v
}

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
