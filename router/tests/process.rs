//! The `kaskade` binary, really started: configured from flags, driven
//! through the generated gRPC client, media over real UDP on loopback with
//! str0m clients, garbage on the media port, metrics scraped, SIGTERM.

mod common;

use common::daemon::{metric, scrape, Daemon};
use kaskade_loadtest::{drive_until, UdpClient};
use kaskade_protocol::v1 as pb;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[test]
fn binary_forwards_media_between_str0m_clients() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A short drain: the clients stop when the test ends. Every session on
    // the least loaded worker (a room of two would otherwise share one):
    // the path between workers, in the binary.
    let router = Daemon::start(
        &rt,
        &[
            "--shutdown-grace-period".into(),
            "1s".into(),
            "--media-room-share".into(),
            "0".into(),
        ],
    );
    assert_eq!(router.media.len(), 2);
    let (mut rooms, mut sessions) = (router.rooms.clone(), router.sessions.clone());
    rt.block_on(rooms.create_room(pb::CreateRoomRequest {
        room_id: "proc".into(),
        max_sessions: 0,
        allowed_regions: vec![],
    }))
    .unwrap();

    let t0 = Instant::now();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut publ = UdpClient::bind(lo, t0, |c| c.seed(1)).unwrap();
    publ.client.add_audio();
    publ.client.add_video(&[]);
    let offer = publ.client.create_offer().unwrap();
    let created = rt
        .block_on(sessions.create_session(pb::CreateSessionRequest {
            room_id: "proc".into(),
            participant_id: "alice".into(),
            sdp_offer: offer,
            metadata: "{\"display\":\"opaque\"}".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(created.tracks.len(), 2);
    publ.client.accept_answer(&created.sdp_answer).unwrap();

    let mut sub = UdpClient::bind(lo, t0, |c| c.seed(2).packet_log(10_000)).unwrap();
    sub.client.add_data_channel("kaskade");
    let offer = sub.client.create_offer().unwrap();
    let sub_created = rt
        .block_on(sessions.create_session(pb::CreateSessionRequest {
            room_id: "proc".into(),
            participant_id: "bob".into(),
            sdp_offer: offer,
            metadata: String::new(),
        }))
        .unwrap()
        .into_inner();
    sub.client.accept_answer(&sub_created.sdp_answer).unwrap();
    assert!(
        drive_until(&mut [&mut publ, &mut sub], Duration::from_secs(10), |c| {
            c.iter().all(|c| c.client.is_connected())
        }),
        "both clients connect over real UDP"
    );

    let subscribed = rt
        .block_on(sessions.subscribe(pb::SubscribeRequest {
            session_id: sub_created.session_id.clone(),
            track_ids: created.tracks.iter().map(|t| t.track_id.clone()).collect(),
        }))
        .unwrap()
        .into_inner();
    let answer = sub.client.accept_offer(&subscribed.sdp_offer).unwrap();
    rt.block_on(sessions.set_answer(pb::SetAnswerRequest {
        session_id: sub_created.session_id.clone(),
        sdp_answer: answer,
    }))
    .unwrap();

    let mids: Vec<str0m::media::Mid> = subscribed
        .subscriptions
        .iter()
        .map(|s| s.mid.as_str().into())
        .collect();
    let got = drive_until(&mut [&mut publ, &mut sub], Duration::from_secs(15), |c| {
        mids.iter()
            .all(|m| c[1].client.received_on(*m).is_some_and(|r| r.packets > 60))
    });
    assert!(got, "subscriber receives audio and video");
    let video = subscribed
        .subscriptions
        .iter()
        .find(|s| {
            created
                .tracks
                .iter()
                .any(|t| t.track_id == s.track_id && t.kind == pb::TrackKind::Video as i32)
        })
        .unwrap();
    let v = sub.client.received_on(video.mid.as_str().into()).unwrap();
    assert_eq!(v.first_packet_keyframe, Some(true));

    // GetRoom shows both sessions connected and the metadata echoed.
    let room = rt
        .block_on(rooms.get_room(pb::GetRoomRequest {
            room_id: "proc".into(),
        }))
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.sessions.len(), 2);
    assert!(room.sessions.iter().all(|s| s.connected));
    assert!(room.sessions.iter().any(|s| s.metadata.contains("opaque")));
    assert_ne!(
        room.sessions[0].worker, room.sessions[1].worker,
        "spread across workers"
    );

    // Garbage on every media port: dropped, counted, harmless.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let len = (i as usize * 37) % 1200;
        let buf: Vec<u8> = (0..len).map(|j| (j as u32 * 31 + i) as u8).collect();
        for m in &router.media {
            let _ = junk.send_to(&buf, m);
        }
    }
    let before = v.packets;
    drive_until(&mut [&mut publ, &mut sub], Duration::from_secs(1), |_| {
        false
    });
    let after = sub
        .client
        .received_on(video.mid.as_str().into())
        .unwrap()
        .packets;
    assert!(after > before + 10, "media still flows after garbage");
    let text = scrape(router.metrics);
    assert!(
        metric(&text, "kaskade_datagrams_dropped_total") >= 500.0,
        "{text}"
    );
    assert!(metric(&text, "kaskade_rtp_packets_forwarded_total") > 100.0);
    assert_eq!(metric(&text, "kaskade_sessions"), 2.0);
    assert!(!text.contains("127.0.0.1"), "no addresses in metrics");

    // Errors carry codes.
    let e = rt
        .block_on(sessions.create_session(pb::CreateSessionRequest {
            room_id: "proc".into(),
            participant_id: "carol".into(),
            sdp_offer: "v=0\r\nnonsense".into(),
            metadata: String::new(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // SIGTERM stops it cleanly.
    let mut router = router;
    unsafe_sigterm(router.child.id());
    let status =
        wait_timeout(&mut router.child, Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

fn unsafe_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn bad_config_is_rejected_before_binding_with_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args([
            "serve",
            "--media-bind",
            "0.0.0.0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("media.advertise"), "{err}");

    let dir = std::env::temp_dir().join(format!("kaskade-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[media]\nworkerz = 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workerz"));

    let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args(["serve", "--control-listen", "127.0.0.1:0"])
        .env("KASKADE_MEDIA_WORKERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("media.workers"));
}

/// Runs `kaskade serve` with `args` and `env` until it fails or prints its
/// ready line; returns the exit code (None: it started) and stderr.
fn serve_outcome(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kaskade"));
    cmd.args(["serve", "--control-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "", "--media-port-start", "0"])
        .args(["--http-listen", ""])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    );
    if line.starts_with("KASKADE_READY ") {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let code = (!line.starts_with("KASKADE_READY ")).then(|| out.status.code().unwrap_or(-1));
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn out_of_range_and_unknown_environment_variables_exit_64_naming_them() {
    // Issue 15, defect 5: this was truncated to 0 sessions per room.
    let (code, err) = serve_outcome(
        &[],
        &[("KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM", "4294967296")],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("limits.max_sessions_per_room"), "{err}");

    let (code, err) = serve_outcome(&[], &[("KASKADE_MEDIA_WORKRS", "2")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("KASKADE_MEDIA_WORKRS"), "{err}");
    assert!(err.contains("did you mean KASKADE_MEDIA_WORKERS"), "{err}");

    let (code, err) = serve_outcome(&["--limits-max-rooms", "0"], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("limits.max_rooms"), "{err}");

    let (code, err) = serve_outcome(&[], &[("RUST_LOG", "a=b=c")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("RUST_LOG"), "{err}");
}

#[test]
fn flags_override_environment_and_rust_log_is_honoured() {
    // KASKADE_MEDIA_WORKERS says 3, the flag says 1: one media address.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kaskade"));
    cmd.args([
        "serve",
        "--control-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
    ])
    .args([
        "--media-port-start",
        "0",
        "--workers",
        "1",
        "--http-listen",
        "",
    ])
    .env("KASKADE_MEDIA_WORKERS", "3")
    .env("RUST_LOG", "kaskade=debug,kaskade_router=debug")
    .env_remove("KASKADE_LOG_LEVEL")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("KASKADE_READY "), "{line}");
    let media = line.split("\"media\":[").nth(1).unwrap();
    let media = &media[..media.find(']').unwrap()];
    assert_eq!(media.split(',').count(), 1, "the flag wins: {line}");
    unsafe_sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DEBUG"),
        "RUST_LOG=debug shows debug lines: {err}"
    );
}

#[test]
fn a_secret_comes_from_the_environment_never_from_a_command_line() {
    // A command line is readable by every local user (/proc/PID/cmdline).
    let url = ["--webhooks-url", "http://127.0.0.1:9/hook"];
    let secret = "0123456789abcdef0123";
    let (code, err) = serve_outcome(&[url[0], url[1], "--webhooks-secret", secret], &[]);
    assert!(code.is_some_and(|c| c != 0), "refused: {err}");
    assert!(err.contains("--webhooks-secret"), "{err}");
    assert!(!err.contains(secret), "the refusal does not echo it: {err}");

    let (code, err) = serve_outcome(&url, &[("KASKADE_WEBHOOKS_SECRET", secret)]);
    assert_eq!(code, None, "the environment gives it: {err}");

    let (code, err) = serve_outcome(&url, &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("webhooks"), "{err}");
}
