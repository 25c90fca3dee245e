//! systemd `Type=notify` (deploy/kaskade.service): the real binary tells the
//! service manager `READY=1` once its ready line is printed and `STOPPING=1`
//! when draining starts. The test plays systemd: it binds the notification
//! socket and passes it in `NOTIFY_SOCKET`, as systemd does.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The next notification on `sock`, or `None` after `limit`.
fn next_message(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_service_manager_hears_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args([
            "serve",
            "--control-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--media-port-start",
            "0",
            "--workers",
            "1",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env_remove("KASKADE_CONTROL_LISTEN")
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kaskade");

    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("KASKADE_READY "), "ready line: {line:?}");
    // READY comes after the ready line, never before: a unit ordered after
    // kaskade may rely on the ports being bound.
    let ready = next_message(&sock, Duration::from_secs(20));
    assert_eq!(
        ready.as_deref().map(|m| m.lines().any(|l| l == "READY=1")),
        Some(true),
        "first notification: {ready:?}"
    );

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let stopping = next_message(&sock, Duration::from_secs(20));
    assert_eq!(
        stopping
            .as_deref()
            .map(|m| m.lines().any(|l| l == "STOPPING=1")),
        Some(true),
        "notification after SIGTERM: {stopping:?}"
    );

    // With no session open the drain ends at once: exit 0.
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("kaskade did not exit after SIGTERM with no sessions");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}
