//! Webhooks against a real HTTP receiver: a whole router started
//! in-process posts its events to a small axum server on loopback, which
//! checks the signature, answers 200 or (when told to) 503. The retry
//! schedule itself is tested on a virtual clock (webhooks::policy).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use kaskade_loadtest::{Client, ClientConfig};
use kaskade_protocol::v1 as pb;
use kaskade_router::config::{Resolved, WebhooksResolved};
use kaskade_router::metrics::Metrics;
use kaskade_router::server::{self, Running};
use kaskade_router::webhooks::sign;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "test-secret-of-an-api-key";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: u64,
    signature: String,
    key_id: String,
    body: String,
    answered: u16,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Got>>,
    /// Requests still to fail with 503.
    fail_next: AtomicUsize,
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let fail = r
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    r.got.lock().unwrap().push(Got {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp").parse().unwrap_or(0),
        signature: h("webhook-signature"),
        key_id: h("webhook-key-id"),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: status.as_u16(),
    });
    status
}

async fn receiver() -> (SocketAddr, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, r)
}

async fn router(hook: SocketAddr, queue: usize, participant_data: bool) -> (Running, Metrics) {
    let mut cfg = Resolved::ephemeral(1);
    cfg.webhooks = Some(WebhooksResolved {
        urls: vec![format!("http://{hook}/hook").parse().unwrap()],
        events: Vec::new(),
        key_id: "key-1".into(),
        secret: SECRET.into(),
        queue,
        timeout: Duration::from_secs(2),
        participant_data,
        ca_file: None,
    });
    let metrics = Metrics::new();
    let running = server::start(&cfg, metrics.clone()).await.unwrap();
    (running, metrics)
}

/// Joins a participant publishing audio to `room` and closes the session:
/// track_published, track_unpublished, session_closed.
async fn join_and_leave(running: &Running, room: &str, who: &str) {
    let now = Instant::now();
    let mut c = Client::new(ClientConfig::new("127.0.0.1:9".parse().unwrap(), now), now).unwrap();
    c.add_audio();
    let resp = running
        .plane
        .create_session(pb::CreateSessionRequest {
            room_id: room.into(),
            participant_id: who.into(),
            sdp_offer: c.create_offer().unwrap(),
            metadata: "{\"name\":\"secret name\"}".into(),
        })
        .await
        .unwrap();
    running.plane.close_session(&resp.session_id).await.unwrap();
}

/// What the receiver got, once `enough` says so (or after 20 s, as it is).
async fn wait_until(r: &Receiver, enough: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = r.got.lock().unwrap().clone();
        if enough(&got) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(r: &Receiver, n: usize) -> Vec<Got> {
    wait_until(r, |g| g.len() >= n).await
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_posted_signed_and_without_participant_data() {
    let (addr, rx) = receiver().await;
    let (running, metrics) = router(addr, 100, false).await;
    running.plane.create_room("room-a", 0, &[]).unwrap();
    join_and_leave(&running, "room-a", "alice").await;
    let got = wait_for(&rx, 3).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let kinds: Vec<&str> = got
        .iter()
        .map(|g| {
            ["trackPublished", "trackUnpublished", "sessionClosed"]
                .into_iter()
                .find(|k| g.body.contains(&format!("\"{k}\"")))
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        kinds,
        ["trackPublished", "trackUnpublished", "sessionClosed"],
        "in order"
    );
    for g in &got {
        assert!(
            sign::verify(
                SECRET.as_bytes(),
                &g.id,
                g.timestamp,
                g.body.as_bytes(),
                &g.signature
            ),
            "signature of {g:?}"
        );
        assert!(!sign::verify(
            b"another secret",
            &g.id,
            g.timestamp,
            g.body.as_bytes(),
            &g.signature
        ));
        assert_eq!(g.key_id, "key-1");
        assert!(g.body.contains("\"roomId\":\"room-a\""), "{}", g.body);
        assert!(!g.body.contains("alice"), "no participant id: {}", g.body);
        assert!(!g.body.contains("secret name"), "no metadata: {}", g.body);
        let age = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .abs_diff(g.timestamp);
        assert!(age < 60, "timestamp is now-ish: {g:?}");
    }
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each event its own id");
    assert_eq!(
        metric(
            &metrics,
            "kaskade_webhook_deliveries_total{outcome=\"delivered\"}"
        ),
        3.0
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_retried_with_the_same_id_and_participants_opt_in() {
    let (addr, rx) = receiver().await;
    let (running, metrics) = router(addr, 100, true).await;
    rx.fail_next.store(1, Ordering::SeqCst);
    running.plane.create_room("room-b", 0, &[]).unwrap();
    join_and_leave(&running, "room-b", "bob").await;
    // 503 for the first, then (after the first backoff step, 1 s) all three.
    let got = wait_for(&rx, 4).await;
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[0].answered, 503);
    assert_eq!(got[1].id, got[0].id, "the retry is the same event");
    assert_eq!(got[1].body, got[0].body);
    assert_eq!(got[1].answered, 200);
    assert!(
        got[1].body.contains("\"participantId\":\"bob\""),
        "opted in: {}",
        got[1].body
    );
    assert!(
        got[3].body.contains("secret name"),
        "metadata opted in: {}",
        got[3].body
    );
    assert_eq!(
        metric(
            &metrics,
            "kaskade_webhook_deliveries_total{outcome=\"retried\"}"
        ),
        1.0
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_costs_a_bounded_queue_and_counted_drops() {
    let (addr, rx) = receiver().await;
    // Queue of 2 events; the receiver fails everything for now.
    let (running, metrics) = router(addr, 2, false).await;
    rx.fail_next.store(usize::MAX, Ordering::SeqCst);
    running.plane.create_room("room-c", 0, &[]).unwrap();
    for who in ["a", "b", "c"] {
        join_and_leave(&running, "room-c", who).await;
    }
    // 9 events: the head is being retried, one more waits, the rest are dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&metrics, "kaskade_webhook_dropped_total") < 7.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&metrics, "kaskade_webhook_dropped_total"), 7.0);
    // Back up: the two held events arrive, in order, and nothing else.
    rx.fail_next.store(0, Ordering::SeqCst);
    let got = wait_for(&rx, 1).await;
    let first = got[0].id.clone();
    let ok = |g: &[Got]| {
        g.iter()
            .filter(|g| g.answered == 200)
            .cloned()
            .collect::<Vec<_>>()
    };
    let delivered = ok(&wait_until(&rx, |g| ok(g).len() >= 2).await);
    assert_eq!(delivered.len(), 2, "{delivered:#?}");
    assert_eq!(delivered[0].id, first);
    assert!(delivered[0].body.contains("trackPublished"));
    assert!(delivered[1].body.contains("trackUnpublished"));
    running.shutdown().await;
}
