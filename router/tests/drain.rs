//! Graceful drain of the real binary: SIGTERM (or `RouterService.Drain`)
//! refuses new sessions while live str0m sessions keep their media; health
//! and `/readyz` turn to not serving; the process exits 0 when the last
//! session leaves, or when the grace period ends (the sessions told why).

mod common;

use common::daemon::{client, Daemon};
use kaskade_loadtest::{drive_until, UdpClient};
use kaskade_protocol::v1 as pb;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use str0m::media::Mid;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `GET path` on the metrics listener: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn health(rt: &tokio::runtime::Runtime, d: &Daemon, service: &str) -> i32 {
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", d.control))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = HealthClient::new(ch);
        h.check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
    })
}

/// Collects the room's events in the background.
fn watch(rt: &tokio::runtime::Runtime, d: &mut Daemon, room: &str) -> Arc<Mutex<Vec<pb::Event>>> {
    let mut stream = rt
        .block_on(d.sessions.watch_events(pb::WatchEventsRequest {
            room_id: room.into(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    rt.spawn(async move {
        while let Ok(Some(ev)) = stream.message().await {
            out.lock().unwrap().push(ev);
        }
    });
    seen
}

/// A publisher and a subscriber to its tracks, media flowing.
fn call(
    rt: &tokio::runtime::Runtime,
    d: &mut Daemon,
    room: &str,
) -> (UdpClient, UdpClient, String, String, Vec<Mid>) {
    let t0 = Instant::now();
    let mut publ = client(1, t0);
    publ.client.add_audio();
    publ.client.add_video(&[]);
    let (pub_sid, tracks) = d.join(rt, room, "alice", &mut publ);
    let mut sub = client(2, t0);
    sub.client.add_data_channel("kaskade");
    let (sub_sid, _) = d.join(rt, room, "bob", &mut sub);
    assert!(drive_until(
        &mut [&mut publ, &mut sub],
        Duration::from_secs(10),
        |c| { c.iter().all(|c| c.client.is_connected()) }
    ));
    let ids: Vec<String> = tracks.iter().map(|t| t.track_id.clone()).collect();
    let subs = d.subscribe(rt, &sub_sid, &mut sub, &ids);
    let mids: Vec<Mid> = subs.iter().map(|s| s.mid.as_str().into()).collect();
    assert!(
        drive_until(&mut [&mut publ, &mut sub], Duration::from_secs(15), |c| {
            mids.iter()
                .all(|m| c[1].client.received_on(*m).is_some_and(|r| r.packets > 20))
        }),
        "media flows before the drain"
    );
    (publ, sub, pub_sid, sub_sid, mids)
}

fn packets(c: &UdpClient, mids: &[Mid]) -> u64 {
    mids.iter()
        .filter_map(|m| c.client.received_on(*m))
        .map(|r| r.packets)
        .sum()
}

#[test]
fn sigterm_keeps_live_sessions_refuses_new_ones_and_exits_0_when_they_leave() {
    let rt = rt();
    let mut d = Daemon::start(&rt, &[]);
    d.create_room(&rt, "r", &[]).unwrap();
    let events = watch(&rt, &mut d, "r");
    let (mut publ, mut sub, pub_sid, sub_sid, mids) = call(&rt, &mut d, "r");
    assert_eq!(http_get(d.metrics, "/readyz").0, 200);
    assert_eq!(health(&rt, &d, ""), ServingStatus::Serving as i32);

    sigterm(&d.child);
    // Wait until the router says it drains.
    let end = Instant::now() + Duration::from_secs(10);
    while http_get(d.metrics, "/readyz").0 != 503 {
        assert!(Instant::now() < end, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get(d.metrics, "/healthz").0, 200, "still alive");
    assert_eq!(health(&rt, &d, ""), ServingStatus::NotServing as i32);
    assert_eq!(
        health(&rt, &d, "kaskade.v1.SessionService"),
        ServingStatus::NotServing as i32
    );
    let (_, text) = http_get(d.metrics, "/metrics");
    assert!(text.contains("kaskade_draining 1"), "{text}");

    // New work is refused with a reason an integrator can act on.
    let mut late = client(3, Instant::now());
    late.client.add_audio();
    let e = rt
        .block_on(d.sessions.create_session(pb::CreateSessionRequest {
            room_id: "r".into(),
            participant_id: "carol".into(),
            sdp_offer: late.client.create_offer().unwrap(),
            metadata: String::new(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("draining"), "{}", e.message());
    let e = d.create_room(&rt, "other", &[]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    // The live call goes on.
    let before = packets(&sub, &mids);
    drive_until(&mut [&mut publ, &mut sub], Duration::from_secs(2), |_| {
        false
    });
    assert!(
        packets(&sub, &mids) > before + 20,
        "media still flows while draining"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "still running with sessions"
    );

    // The sessions leave: the router exits 0.
    for sid in [&sub_sid, &pub_sid] {
        rt.block_on(d.sessions.close_session(pb::CloseSessionRequest {
            session_id: sid.to_string(),
        }))
        .unwrap();
    }
    let status = wait_exit(&mut d.child, Duration::from_secs(15)).expect("exits once empty");
    assert!(status.success(), "{status:?}");
    let ev = events.lock().unwrap();
    assert!(
        ev.iter()
            .any(|e| matches!(e.kind, Some(pb::event::Kind::Draining(_)))),
        "watchers hear about the drain: {ev:?}"
    );
}

#[test]
fn grace_period_end_closes_sessions_with_a_reason_then_exits_0() {
    let rt = rt();
    let mut d = Daemon::start(&rt, &["--shutdown-grace-period".into(), "2s".into()]);
    d.create_room(&rt, "r", &[]).unwrap();
    let events = watch(&rt, &mut d, "r");
    let (mut publ, mut sub, pub_sid, sub_sid, _) = call(&rt, &mut d, "r");

    // The control API's Drain starts it this time.
    let started = rt
        .block_on(async {
            let mut c = pb::router_service_client::RouterServiceClient::connect(format!(
                "http://{}",
                d.control
            ))
            .await
            .unwrap();
            c.drain(pb::DrainRequest {}).await
        })
        .unwrap()
        .into_inner();
    assert_eq!(started.sessions, 2);
    assert!(started.deadline_unix_ms > 0);

    // Keep the clients alive: only the grace period can end the sessions.
    let mut status = None;
    let end = Instant::now() + Duration::from_secs(20);
    while status.is_none() && Instant::now() < end {
        drive_until(
            &mut [&mut publ, &mut sub],
            Duration::from_millis(200),
            |_| false,
        );
        status = d.child.try_wait().unwrap();
    }
    let status = status.expect("exits when the grace period ends");
    assert!(status.success(), "{status:?}");
    let ev = events.lock().unwrap();
    for sid in [&pub_sid, &sub_sid] {
        assert!(
            ev.iter().any(|e| matches!(&e.kind,
                Some(pb::event::Kind::SessionClosed(c))
                    if &c.session_id == sid && c.reason == "router drained: grace period over")),
            "{sid} got its session_closed: {ev:?}"
        );
    }
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let rt = rt();
    let mut d = Daemon::start(&rt, &[]);
    d.create_room(&rt, "r", &[]).unwrap();
    let (_publ, _sub, _, _, _) = call(&rt, &mut d, "r");
    sigterm(&d.child);
    let end = Instant::now() + Duration::from_secs(10);
    while http_get(d.metrics, "/readyz").0 != 503 {
        assert!(Instant::now() < end, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "draining, sessions open"
    );
    sigterm(&d.child);
    let status = wait_exit(&mut d.child, Duration::from_secs(10)).expect("second SIGTERM stops it");
    assert!(status.success(), "{status:?}");
}
