//! Runs `kaskade-loadtest` against a kaskade router it starts itself: 2 publishers
//! (audio + 3-layer VP8 simulcast) and 10 subscribers for a few seconds, then checks
//! the JSON report: every join worked, every subscription received media, figures in
//! range, and a threshold that must break makes the tool exit 1.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The workspace's debug `kaskade` binary, built if missing.
fn router_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("kaskade");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-p", "kaskade-router", "--bin", "kaskade"])
            .status()
            .expect("run cargo build")
            .success();
        assert!(ok, "cargo build -p kaskade-router failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} missing in report"))
}

#[test]
fn small_fan_out_against_a_started_kaskade() {
    let bin = router_bin();
    let out = std::env::temp_dir().join(format!("kaskade-lt-small-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_kaskade-loadtest"))
        .arg("--router-bin")
        .arg(&bin)
        .args([
            "--publishers",
            "2",
            "--subscribers",
            "10",
            "--subscriber-layer",
            "mid",
            "--duration",
            "5s",
            "--warmup",
            "1s",
            "--ramp-up",
            "40",
            "--quiet",
            "--max-join-failures",
            "0",
            "--min-receiving",
            "100%",
            "--max-loss",
            "5%",
            // Cannot hold: proves a broken threshold exits 1 (and is the only one).
            "--max-p99-latency",
            "1us",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run kaskade-loadtest");
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    let report: Value = serde_json::from_str(&text).expect("JSON report");
    assert_eq!(
        status.code(),
        Some(1),
        "exit 1 for the broken latency limit"
    );
    let violations = report["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0]["limit"]
        .as_str()
        .unwrap()
        .contains("p99 latency"));

    let run = &report["runs"][0];
    assert_eq!(f(run, "joins.attempted"), 12.0);
    assert_eq!(f(run, "joins.failed"), 0.0, "{}", run["joins"]["reasons"]);
    // 10 subscribers × 2 publishers × (audio + video).
    assert_eq!(f(run, "media.subscriptions"), 40.0);
    assert_eq!(f(run, "media.subscriptions_receiving"), 40.0);
    assert!(f(run, "media.loss.pct") < 5.0);
    assert!(f(run, "media.loss_audio.expected") > 1000.0, "audio flowed");
    assert!(f(run, "media.loss_video.expected") > 1000.0, "video flowed");
    // Opus at ~20 × 8 × 120 B/s ≈ 40 kbps per subscription: 20 subscriptions.
    let audio = f(run, "media.rx_bps_audio");
    assert!((400e3..1.5e6).contains(&audio), "audio {audio}");
    assert!(f(run, "media.rx_bps_per_video_subscription") > 100e3);
    let p50 = f(run, "media.latency_audio.p50_ms");
    assert!(p50 > 0.0 && p50 < 100.0, "audio p50 {p50} ms");
    assert!(f(run, "joins.join_time.p50_ms") < 5000.0);
    assert!(f(run, "joins.time_to_first_frame.count") >= 20.0);
    assert_eq!(f(run, "joins.no_first_frame"), 0.0);
    // Publishers received the router's keyframe requests (and answer them
    // like a browser: the ignored ones are counted, never more than received).
    assert!(f(run, "media.keyframe_requests") >= 1.0);
    assert!(f(run, "media.keyframe_requests_ignored") <= f(run, "media.keyframe_requests"));
    assert!(f(run, "cpu.router_cpu_secs") > 0.0);
    assert!(f(run, "cpu.router_forwarded") > 1000.0);
    assert!(f(run, "cpu.router_us_per_forwarded") > 0.0);
    let threads = run["cpu"]["router_threads"]
        .as_array()
        .expect("router threads");
    assert!(
        threads.iter().any(|t| t["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kaskade-media-"))
            && t["cpu_secs"].as_f64().is_some_and(|c| c > 0.0)),
        "the media workers' CPU is reported per thread: {threads:?}"
    );
    assert!(run["series"].as_array().unwrap().len() >= 5);
    assert!(
        run["series"][3]["router_rss_mb"].as_f64().unwrap_or(0.0) > 1.0,
        "router memory sampled"
    );
    assert!(html.contains("<svg") && html.contains("Received bitrate"));
    // The page names what ran: command, date, router version.
    let version = run["target_info"]["version"].as_str().expect("version");
    assert!(html.contains("--max-p99-latency 1us") && html.contains(version));
    assert!(html.contains(report["date"].as_str().expect("date")));
    assert!(html.contains("Router memory and descriptors"));
    let _ = std::fs::remove_dir_all(&out);
}

fn run_tool(args: &[&str], out: &Path) -> (Option<i32>, Value, String) {
    let status = Command::new(env!("CARGO_BIN_EXE_kaskade-loadtest"))
        .arg("--router-bin")
        .arg(router_bin())
        .args(args)
        .args(["--quiet", "--out"])
        .arg(out)
        .status()
        .expect("run kaskade-loadtest");
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    let _ = std::fs::remove_dir_all(out);
    (
        status.code(),
        serde_json::from_str(&text).expect("JSON report"),
        html,
    )
}

/// `--transport tcp`: every client's only candidate is an active ICE-TCP
/// one, the started router gets `--media-tcp-listen`; every subscription
/// receives, and the router counts one TCP connection per client.
#[test]
fn clients_over_ice_tcp_receive_everything() {
    let out = std::env::temp_dir().join(format!("kaskade-lt-tcp-{}", std::process::id()));
    let (code, report, _) = run_tool(
        &[
            "--transport",
            "tcp",
            "--publishers",
            "1",
            "--subscribers",
            "3",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--ramp-up",
            "40",
            "--max-join-failures",
            "0",
            "--min-receiving",
            "100%",
        ],
        &out,
    );
    assert_eq!(code, Some(0));
    assert_eq!(report["scenario"]["transport"], "tcp");
    let run = &report["runs"][0];
    assert_eq!(f(run, "joins.failed"), 0.0, "{}", run["joins"]["reasons"]);
    // 3 subscribers × (audio + video).
    assert_eq!(f(run, "media.subscriptions_receiving"), 6.0);
    assert!(f(run, "media.loss_video.expected") > 100.0, "video flowed");
    assert_eq!(f(run, "cpu.router_tcp_connections"), 4.0);
}

#[test]
fn subscribers_on_a_linked_router_receive_the_publishers_media() {
    let out = std::env::temp_dir().join(format!("kaskade-lt-cascade-{}", std::process::id()));
    let (code, report, html) = run_tool(
        &[
            "--edge-routers",
            "1",
            "--origin-share",
            "50%",
            "--subscribers",
            "4",
            "--subscriber-layer",
            "low",
            "--duration",
            "4s",
            "--warmup",
            "1s",
            "--ramp-up",
            "40",
        ],
        &out,
    );
    assert_eq!(code, Some(0));
    // No threshold set: no verdict either way.
    assert!(!html.contains("No threshold broken"));
    let run = &report["runs"][0];
    assert_eq!(f(run, "joins.failed"), 0.0, "{}", run["joins"]["reasons"]);
    assert_eq!(f(run, "media.subscriptions_receiving"), 8.0);
    let routers = run["routers"].as_array().expect("per-router figures");
    assert_eq!(routers.len(), 2);
    assert_eq!(routers[0]["role"], "origin");
    assert!(f(&routers[0], "link_datagrams_sent") > 100.0, "{routers:?}");
    assert!(f(&routers[1], "link_datagrams_received") > 100.0);
    assert!(
        f(&routers[1], "latency_video.count") > 100.0,
        "the edge's subscribers measured"
    );
}

#[test]
fn join_leave_cycles_end_with_the_router_back_at_its_sessions() {
    let out = std::env::temp_dir().join(format!("kaskade-lt-churn-{}", std::process::id()));
    let (code, report, _) = run_tool(
        &[
            "--preset",
            "churn",
            "--cycles",
            "60",
            "--warmup",
            "1s",
            "--max-join-failures",
            "0",
        ],
        &out,
    );
    assert_eq!(code, Some(0), "{}", report["violations"]);
    let c = &report["runs"][0]["churn"];
    assert_eq!(f(c, "cycles"), 60.0);
    assert_eq!(f(c, "failed"), 0.0);
    // Every cycle's session and socket is gone again.
    assert!(f(c, "fds_after") <= f(c, "fds_before") + 2.0, "{c}");
}

#[test]
fn a_started_router_gets_the_room_limit_the_scenario_needs() {
    // The environment says 3 sessions per room; the scenario needs 5.
    let out = std::env::temp_dir().join(format!("kaskade-lt-raise-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_kaskade-loadtest"))
        .env("KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM", "3")
        .arg("--router-bin")
        .arg(router_bin())
        .args(["--subscribers", "4", "--duration", "2s", "--warmup", "0s"])
        .args(["--no-video", "--max-join-failures", "0", "--quiet", "--out"])
        .arg(&out)
        .status()
        .expect("run kaskade-loadtest");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("JSON report");
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(status.code(), Some(0), "{}", report["violations"]);
    let notes = report["runs"][0]["notes"].to_string();
    assert!(
        notes.contains("limits.max_sessions_per_room = 5") && notes.contains("allows 3"),
        "{notes}"
    );
}

#[test]
fn a_router_it_did_not_start_is_named_as_the_limit_that_refuses_joins() {
    // A router at 3 sessions per room, started here, used through --control.
    let log = std::env::temp_dir().join(format!("kaskade-lt-limit-{}.log", std::process::id()));
    let mut router = Command::new(router_bin())
        .args([
            "serve",
            "--control-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--media-port-start", "0", "--workers", "1"])
        .env("KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM", "3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start kaskade");
    let stdout = router.stdout.take().expect("stdout");
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find(|l| l.starts_with("KASKADE_READY "))
        .expect("ready line");
    let ready: Value = serde_json::from_str(&ready["KASKADE_READY ".len()..]).expect("ready JSON");
    let control = ready["control"]
        .as_str()
        .expect("control address")
        .to_string();
    let out = std::env::temp_dir().join(format!("kaskade-lt-limit-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_kaskade-loadtest"))
        .args(["--control", &control, "--subscribers", "4", "--no-video"])
        .args(["--duration", "2s", "--warmup", "0s", "--join-timeout", "5s"])
        .args(["--quiet", "--out"])
        .arg(&out)
        .status()
        .expect("run kaskade-loadtest");
    let _ = router.kill();
    let _ = router.wait();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("JSON report");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&log);
    assert_eq!(status.code(), Some(0), "no threshold was set");
    let run = &report["runs"][0];
    let notes = run["notes"].to_string();
    // Said before the joins, with the limit's name and the refused count.
    assert!(
        notes.contains("takes at most 3 sessions")
            && notes.contains("limits.max_sessions_per_room")
            && notes.contains("2 joins will be refused"),
        "{notes}"
    );
    assert_eq!(f(run, "joins.failed"), 2.0, "{}", run["joins"]["reasons"]);
}
