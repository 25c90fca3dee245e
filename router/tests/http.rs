//! The HTTP listener (`http.listen`): the embedded assets, the demo
//! signalling's answers to bad requests, the loopback-only rule of dev
//! mode, through a whole router started in-process and a real HTTP client
//! (the listener in public, with tokens and TLS: tests/public_http.rs).

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaskade_router::config::Resolved;
use kaskade_router::metrics::Metrics;
use kaskade_router::server::{self, Running};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

async fn start() -> (Running, Metrics, HttpClient) {
    let mut cfg = Resolved::ephemeral(1);
    cfg.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let metrics = Metrics::new();
    let running = server::start(&cfg, metrics.clone()).await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    (running, metrics, client)
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

async fn send(
    c: &HttpClient,
    r: &Running,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", r.http.unwrap()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(
            req.body(Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_app_and_kaskade_js_are_served_from_the_binary() {
    let (r, metrics, c) = start().await;
    assert!(r
        .ready_line()
        .contains(&format!("\"http\":\"{}\"", r.http.unwrap())));
    let page = send(&c, &r, Method::GET, "/", &[], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("/demo.js"), "{}", page.body);
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let js = send(&c, &r, Method::GET, "/kaskade.js", &[], "").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.body.contains("export class KaskadeSession"));
    for p in ["/demo.js", "/demo.css"] {
        assert_eq!(
            send(&c, &r, Method::GET, p, &[], "").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&c, &r, Method::GET, "/nope", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    let text = metrics.render();
    assert!(
        text.contains("kaskade_http_requests_total{code=\"200\",route=\"/kaskade.js\"} 1"),
        "{text}"
    );
    assert!(text.contains("kaskade_http_requests_total{code=\"404\",route=\"other\"} 1"));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_demo_requests_get_a_precise_status() {
    let (r, _metrics, c) = start().await;
    let api = "/demo/api/CreateSession";
    // Not JSON: a cross-site form could send that without a preflight.
    let a = send(
        &c,
        &r,
        Method::POST,
        api,
        &[("content-type", "text/plain")],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Another site's page, or a rebound host name.
    let a = send(
        &c,
        &r,
        Method::POST,
        api,
        &[JSON, ("origin", "http://evil.example")],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(&c, &r, Method::GET, "/", &[("host", "evil.example")], "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Broken JSON, an unknown method, a bad id, an unknown session.
    let a = send(&c, &r, Method::POST, api, &[JSON], "{").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = send(&c, &r, Method::POST, "/demo/api/DeleteRoom", &[JSON], "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("CreateSession"), "{}", a.body);
    let a = send(&c, &r, Method::POST, api, &[JSON], r#"{"roomId":"a b"}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let err: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert!(err["message"].as_str().unwrap().contains("room_id"));
    let a = send(
        &c,
        &r,
        Method::POST,
        "/demo/api/SetAnswer",
        &[JSON],
        r#"{"sessionId":"SE0000000000000001","sdpAnswer":"v=0"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Larger than an SDP may be.
    let big = format!(r#"{{"sdpOffer":"{}"}}"#, "a".repeat(300 * 1024));
    let a = send(&c, &r, Method::POST, api, &[JSON], &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Events need a room name.
    let a = send(&c, &r, Method::GET, "/demo/events", &[], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_watch_events_without_a_room_streams_every_room_through_its_filter() {
    use kaskade_protocol::v1 as pb;
    use pb::session_service_client::SessionServiceClient;
    let (r, _metrics, _c) = start().await;
    let mut api = SessionServiceClient::connect(format!("http://{}", r.control))
        .await
        .unwrap();
    let bad = api
        .watch_events(pb::WatchEventsRequest {
            room_id: String::new(),
            kinds: vec!["session_conected".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("session_conected"),
        "{}",
        bad.message()
    );
    let mut stream = api
        .watch_events(pb::WatchEventsRequest {
            room_id: String::new(),
            kinds: vec!["track_published".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(pb::event::Kind::Watching(_))));
    for room in ["one", "two"] {
        r.plane.create_room(room, 0, &[]).unwrap();
        let now = std::time::Instant::now();
        let mut c = kaskade_loadtest::Client::new(
            kaskade_loadtest::ClientConfig::new("127.0.0.1:9".parse().unwrap(), now),
            now,
        )
        .unwrap();
        c.add_audio();
        let s = r
            .plane
            .create_session(pb::CreateSessionRequest {
                room_id: room.into(),
                participant_id: "p".into(),
                sdp_offer: c.create_offer().unwrap(),
                metadata: String::new(),
            })
            .await
            .unwrap();
        r.plane.close_session(&s.session_id).await.unwrap();
    }
    // Only the two track_published (the unpublish and close events are filtered out).
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        assert!(
            matches!(ev.kind, Some(pb::event::Kind::TrackPublished(_))),
            "{ev:?}"
        );
        rooms.push(ev.room_id);
    }
    assert_eq!(rooms, ["one", "two"]);
    drop((stream, api));
    r.shutdown().await;
}
