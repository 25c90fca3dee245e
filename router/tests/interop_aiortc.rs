//! WHIP and WHEP with aiortc, the Python WebRTC stack (aioice, OpenSSL DTLS
//! with an ECDSA certificate, pylibsrtp, libvpx and Opus through PyAV): what
//! a Python bot or agent joining a room runs. A real router process; an
//! aiortc publisher (router/tests/interop/aiortc_whip.py) sends VP8 and Opus
//! through WHIP, an aiortc viewer plays them through WHEP and must decode
//! 640x480 frames and audio; both DELETE their resources (200) and the room
//! is empty after. `bash .ci/run` makes the virtualenv
//! (router/tests/interop/requirements.txt) and sets `AIORTC_PYTHON`.

mod common;

use common::daemon::Daemon;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/aiortc_whip.py");

/// A running aiortc client and its stdout lines.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn start(python: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {SCRIPT}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("  aiortc: {l}");
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Peer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now on) that `ok` accepts, within `limit`.
    fn wait_for(&mut self, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if ok(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no such line within {limit:?}; saw {:?}", self.seen),
            }
        }
    }

    /// SIGTERM, then its DELETE's status and its exit.
    fn leave(&mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let line = self.wait_for(Duration::from_secs(15), |l| l.starts_with("deleted "));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit {status}; saw {:?}", self.seen);
        line
    }
}

/// `decoded FRAMES WxH AUDIO` as numbers.
fn decoded(line: &str) -> Option<(u64, String, u64)> {
    let mut it = line.strip_prefix("decoded ")?.split(' ');
    let frames = it.next()?.parse().ok()?;
    let size = it.next()?.to_string();
    let audio = it.next()?.parse().ok()?;
    Some((frames, size, audio))
}

#[test]
fn aiortc_publishes_with_whip_and_plays_with_whep() {
    let python = std::env::var("AIORTC_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AIORTC_PYTHON is not set: `bash .ci/run` makes a virtualenv from \
             router/tests/interop/requirements.txt and sets it (or: python3 -m venv V && \
             V/bin/pip install -r router/tests/interop/requirements.txt && \
             AIORTC_PYTHON=V/bin/python cargo test --test interop_aiortc)"
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut d = Daemon::start(&rt, &[]);
    let http = d.http.expect("HTTP listener");

    let mut publ = Peer::start(&python, &[&format!("http://{http}/whip/bots")]);
    publ.wait_for(Duration::from_secs(15), |l| {
        l.starts_with("answer 201 /whip/bots/")
    });
    publ.wait_for(Duration::from_secs(25), |l| l == "connected");

    let mut view = Peer::start(&python, &[&format!("http://{http}/whep/bots"), "--play"]);
    view.wait_for(Duration::from_secs(15), |l| {
        l.starts_with("answer 201 /whep/bots/")
    });
    view.wait_for(Duration::from_secs(25), |l| l == "connected");
    let line = view.wait_for(Duration::from_secs(30), |l| {
        decoded(l).is_some_and(|(v, _, a)| v > 30 && a > 20)
    });
    let (_, size, _) = decoded(&line).unwrap();
    assert_eq!(size, "640x480", "the publisher's frames, decoded");

    assert_eq!(view.leave(), "deleted 200");
    assert_eq!(publ.leave(), "deleted 200");
    // Gone, or left empty (dev mode's WHIP made the room).
    match rt.block_on(d.rooms.get_room(kaskade_protocol::v1::GetRoomRequest {
        room_id: "bots".into(),
    })) {
        Ok(r) => {
            let room = r.into_inner().room.unwrap();
            assert!(room.sessions.is_empty(), "{room:?}");
        }
        Err(s) => assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}"),
    }
}
