//! Real-browser end-to-end tests: headless Chromium publishes its fake camera
//! and microphone through the `kaskade` daemon to a second page, which must
//! decode the video, receive the audio and open a data channel; in a second
//! scenario, publishes the camera as three simulcast layers whose switching
//! the subscriber must see follow `UpdateSubscription`; and in a third,
//! publishes on one router while the subscriber decodes it on another,
//! linked to the first over QUIC (cascading); in a fourth, publishes
//! with plain-fetch WHIP while another page plays it with WHEP; and, in a
//! network namespace that drops UDP, connects both pages over ICE-TCP.
//!
//! The scenarios live in `tests/browser/run.mjs` (Node.js, Playwright,
//! gRPC); these tests only prepare their environment and run them. They need
//! Node.js, npm (the first time, to install `tests/browser/node_modules`) and
//! Chromium at `/usr/bin/chromium` (or `$KASKADE_CHROMIUM`): `bash .ci/run`
//! installs all of that. They never skip themselves silently.
//!
//! Run them with `cargo test -p kaskade-router --test browser -- --test-threads=1`
//! (they take a lock so that only one browser runs at a time anyway); set
//! `KASKADE_E2E_VERBOSE=1` to see the page consoles and the daemon's log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Outer safety net; run.mjs has its own watchdog (120 s by default) that
/// cleans up the daemon and the browser before this fires.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(240);
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("KASKADE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A scratch directory removed on drop (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child`, asking it to stop (SIGTERM, so run.mjs cleans up its
/// daemon and browser) and then killing it when it runs past `timeout`.
fn wait_with_timeout(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
        if start.elapsed() > timeout {
            eprintln!("{what} still running after {timeout:?}: sending SIGTERM");
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn require_tool(name: &str, hint: &str) {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "`{name}` is not available: {hint}");
}

/// The example backend integrators copy (docs/examples/node-backend).
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("examples")
        .join("node-backend")
}

/// Installs `dir`'s npm packages (from its lock file) unless they are there.
fn npm_ci(dir: &Path, node_hint: &str) {
    if dir.join("node_modules").is_dir() {
        return;
    }
    require_tool("npm", node_hint);
    eprintln!("browser test: installing npm packages in {}", dir.display());
    let mut npm = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot run `npm ci`");
    let status = wait_with_timeout(&mut npm, "npm ci", NPM_CI_TIMEOUT);
    assert!(
        status.success(),
        "`npm ci` in {} failed ({status})",
        dir.display()
    );
}

/// The scenarios share the machine's cores with a browser each: never run
/// them at once, even without `--test-threads=1`.
static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `node run.mjs <args>` in `tests/browser` (installing its npm
/// packages first if needed) against the daemon cargo built for this test.
fn run_scenario(args: &[&str]) {
    run_scenario_full(&[], args, &[]);
}

/// [`run_scenario`] with extra environment variables for node (and the daemon it starts).
fn run_scenario_with(args: &[&str], env: &[(&str, &str)]) {
    run_scenario_full(&[], args, env);
}

/// Shell steps that drop every UDP packet leaving the namespace (nft, or
/// iptables if nft is missing).
macro_rules! drop_udp {
    () => {
        "nft 'add table inet kaskade_e2e; \
             add chain inet kaskade_e2e out { type filter hook output priority 0; policy accept; }; \
             add rule inet kaskade_e2e out meta l4proto udp drop' \
        || { iptables -w -A OUTPUT -p udp -j DROP && ip6tables -w -A OUTPUT -p udp -j DROP; } \
        || exit 1; "
    };
}

/// Shell steps that bring up `lo` and a veth pair, one end at [`VETH_IP`] and
/// a default route through it.
macro_rules! veth_up {
    () => {
        "ip link set lo up \
        && ip link add kv0 type veth peer name kv1 \
        && ip addr add 10.99.0.1/24 dev kv0 && ip link set kv0 up && ip link set kv1 up \
        && ip route add default via 10.99.0.2 dev kv0 || exit 1; "
    };
}

/// Runs the rest of the namespace script's arguments.
macro_rules! exec_args {
    () => {
        "exec \"$@\""
    };
}

/// Sets up a network namespace in which only `lo` is up and every UDP
/// packet is dropped (nft, or iptables if nft is missing), then runs the
/// rest of its arguments there: `sh -c NO_UDP_NAMESPACE sh COMMAND ARGS...`
/// inside `unshare --net`.
const NO_UDP_NAMESPACE: &str = concat!("ip link set lo up || exit 1; ", drop_udp!(), exec_args!());

/// The command prefix that runs a program in a fresh network namespace
/// without UDP, or why there can be none here (not root, no `unshare`,
/// `ip`, `nft` or `iptables`).
fn no_udp_namespace() -> Result<Vec<&'static str>, String> {
    namespace(NO_UDP_NAMESPACE, "with `lo` up and UDP dropped")
}

/// The address of [`VETH_NAMESPACE`]'s interface.
const VETH_IP: &str = "10.99.0.1";

/// Sets up a network namespace with `lo` and a veth pair, one end at
/// [`VETH_IP`] and a default route through it (Firefox gathers no loopback
/// candidates, and none at all without a default route; nothing leaves the
/// namespace), then runs the rest of its arguments there.
const VETH_NAMESPACE: &str = concat!(veth_up!(), exec_args!());

/// [`VETH_NAMESPACE`] with every UDP packet dropped (as [`NO_UDP_NAMESPACE`]).
const VETH_NO_UDP_NAMESPACE: &str = concat!(veth_up!(), drop_udp!(), exec_args!());

/// The command prefix that runs a program in a fresh network namespace set
/// up by the shell script `setup`, or why there can be none here.
fn namespace(setup: &'static str, what: &str) -> Result<Vec<&'static str>, String> {
    let prefix = vec!["unshare", "--net", "--", "sh", "-c", setup, "sh"];
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `unshare`: {e}"))?;
    if out.status.success() {
        Ok(prefix)
    } else {
        Err(format!(
            "`unshare --net` {what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `node run.mjs <args>` as [`run_scenario`] does, behind the command
/// prefix `wrapper` (empty: none).
fn run_scenario_in(wrapper: &[&str], args: &[&str]) {
    run_scenario_full(wrapper, args, &[]);
}

/// Runs `node run.mjs <args>` behind the command prefix `wrapper` (empty:
/// none) with extra environment variables `env`.
fn run_scenario_full(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) {
    let _one = ONE_BROWSER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = browser_dir();
    let chromium = chromium_path();
    assert!(
        chromium.exists(),
        "Chromium not found at {}: the browser end-to-end test needs it. \
         Run `bash .ci/run` (installs everything) or `apt-get install chromium`, \
         or point KASKADE_CHROMIUM at a Chromium binary.",
        chromium.display()
    );
    let node_hint = "install Node.js and npm (`apt-get install nodejs npm`) or run `bash .ci/run`";
    require_tool("node", node_hint);

    npm_ci(&dir, node_hint);
    if args.contains(&"example") {
        npm_ci(&example_dir(), node_hint);
    }

    let what = format!("node run.mjs {}", args.join(" "));
    let what = what.trim_end();
    let home = TempDir::new("kaskade-browser-home");
    let start = Instant::now();
    // Output is inherited: the scenario's progress and, on failure, the
    // daemon's stderr tail, the page consoles and the last stats show live.
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg("node");
            c
        }
        None => Command::new("node"),
    };
    let mut node = command
        .arg("run.mjs")
        .args(args)
        .current_dir(&dir)
        .env("KASKADE_BIN", env!("CARGO_BIN_EXE_kaskade"))
        .env("KASKADE_CHROMIUM", &chromium)
        .env("HOME", &home.0)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let status = wait_with_timeout(&mut node, what, OVERALL_TIMEOUT);
    assert!(
        status.success(),
        "browser end-to-end test `{what}` failed ({status}) after {:.1} s; see its output above",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn browser_publishes_and_subscribes() {
    run_scenario(&[]);
}

/// The publisher sends its fake camera as three simulcast layers
/// (320x180, 640x360, 1280x720); `UpdateSubscription(max_spatial_layer)` to
/// the lowest, the highest and the middle layer must each change the width
/// of the frames the subscriber decodes, and `WatchEvents` must report a
/// `LayerChanged` for a preference. Prints how long each switch took. The
/// subscriber bootstraps with a receive-only transceiver, not a data channel.
#[test]
fn browser_simulcast_layers_follow_update_subscription() {
    run_scenario(&["--scenario", "simulcast"]);
}

/// Two routers, fra and ams, linked over QUIC with certificates from
/// `kaskade cert dev-cluster`: the publisher joins fra, the room is linked to
/// ams (`LinkRoom`), and a subscriber on ams subscribes to the remote tracks;
/// it must decode the video and receive the audio. `GetRoom` on ams must list
/// fra in `reached`, `ListLinks` on fra the link up with datagrams sent.
/// Prints the time to the first decoded frame on ams and how much later the
/// same frames reach ams than a second subscriber on fra.
#[test]
fn browser_subscriber_on_another_router_decodes_video() {
    run_scenario(&["--scenario", "cascade"]);
}

/// End-to-end encryption passes through: the publisher encrypts every
/// frame of its simulcast camera and its microphone with a frame transform
/// (AES-GCM, the first bytes of each frame left clear the way LiveKit and
/// Jitsi do it); the subscriber decrypts and must decode the video, play
/// the audio and follow `UpdateSubscription` to the lowest and the highest
/// layer (switches need keyframe requests). Every frame must arrive
/// encrypted and decrypt: the router forwards what it cannot read and
/// changes nothing in it.
#[test]
fn browser_end_to_end_encrypted_media_passes_through() {
    run_scenario(&["--scenario", "e2ee"]);
}

/// The demo app the daemon serves on `http.listen` (demo signalling,
/// kaskade.js): two pages open `/?room=NAME`, which joins at once; each
/// must decode the other's camera (the second joins late and finds the
/// first's tracks, the first is told of the second's); picking "low" in
/// one page's layer picker must bring the decoded width down to the lowest
/// simulcast layer and the tile must show the router's layer 0 (from
/// `layer_changed` over the demo's event stream); a tile must be
/// highlighted as speaking (Chromium's fake microphone beeps; the
/// audio-level extension, the router's speaker detection and
/// `active_speakers_changed` end to end); the leaver's tile must go from
/// the other page.
#[test]
fn browser_demo_app_pages_see_each_other_and_pick_a_layer() {
    run_scenario(&["--scenario", "demo"]);
}

/// The demo app in public (issue 13): the router has API keys and serves
/// https with a certificate from a test CA (Chromium runs with
/// `--ignore-certificate-errors`); two pages open
/// `/?room=NAME&token=JWT`, must take the token out of the address bar and
/// decode each other's camera through the token-guarded demo signalling;
/// a page with another room's token is refused.
#[test]
fn browser_demo_app_over_https_with_a_room_token() {
    use kaskade_router::auth::token::{mint, Claims};
    use rcgen::{CertificateParams, KeyPair, SanType};
    let dir = TempDir::new("kaskade-browser-tls");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.0.join("http.pem"), dir.0.join("http.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let secret = "browser-test-secret-0123456789";
    let room = format!("public-{}", std::process::id());
    let token = |room: &str| {
        let mut c = Claims::new(room, std::time::SystemTime::now(), Duration::from_secs(600));
        c.publish = true;
        c.subscribe = true;
        mint("backend", secret.as_bytes(), &c)
    };
    let keys = format!("backend:{secret}");
    let (cert_file, key_file) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let (mine, other) = (token(&room), token("another-room"));
    run_scenario_with(
        &["--scenario", "demo-tls"],
        &[
            ("KASKADE_API_KEYS", &keys),
            ("KASKADE_TEST_HTTP_CERT", &cert_file),
            ("KASKADE_TEST_HTTP_KEY", &key_file),
            ("KASKADE_TEST_DEMO_ROOM", &room),
            ("KASKADE_TEST_DEMO_TOKEN", &mine),
            ("KASKADE_TEST_OTHER_TOKEN", &other),
        ],
    );
}

/// ICE-TCP for a browser whose UDP is dropped: the daemon, Node.js and
/// Chromium run in a network namespace of their own with only `lo` up and
/// an nft rule dropping every UDP packet (the scenario checks that UDP
/// really is dropped). The router (`--media-tcp-listen`) offers a passive
/// TCP candidate beside its UDP one; both pages must select a TCP pair
/// (getStats), the subscriber decode the video, receive the audio and open
/// its data channel, and the router count both connections as active.
/// Skips, saying why, where no such namespace can be made (it needs root).
#[test]
fn browser_connects_over_ice_tcp_when_udp_is_dropped() {
    let wrapper = match no_udp_namespace() {
        Ok(w) => w,
        Err(why) => {
            eprintln!(
                "SKIPPED browser_connects_over_ice_tcp_when_udp_is_dropped: no network namespace \
                 without UDP here ({why}); run it as root with unshare, ip and nft (or iptables)"
            );
            return;
        }
    };
    run_scenario_in(&wrapper, &["--scenario", "tcp"]);
}

/// The example backend of docs/examples/node-backend (no browser): it
/// serves its page and kaskade.js (fetched from the daemon's HTTP
/// listener), relays a session's signalling from its WebSocket to the
/// gRPC API, refuses a page's call on another's session, and pushes the
/// room's events (the session_closed of the closed session).
#[test]
fn example_backend_relays_signalling_and_events() {
    run_scenario(&["--scenario", "example"]);
}

/// WHIP and WHEP with plain `fetch` (router/tests/browser/whip.mjs,
/// whip-page.js): one page publishes its fake camera (three simulcast
/// layers) and microphone to `/whip/{room}`, another plays it from
/// `/whep/{room}` and must decode frames and receive audio, a third plays
/// it from `/whep/{room}?layer=low` and must decode the lowest layer's
/// width (the router's layer selection for a WHIP publisher); the pages come
/// from another origin than the router's HTTP listener (CORS preflights).
/// Then each page sends a trickle ICE `PATCH` (204) and `DELETE`s its
/// resource twice (200, then 404).
#[test]
fn browser_whip_publisher_is_played_with_whep() {
    run_scenario(&["--scenario", "whip"]);
}

/// WHIP and WHEP with Firefox (Debian's `firefox-esr`, driven by Puppeteer
/// over WebDriver BiDi; tests/browser/firefox-whip.mjs): a page publishes its
/// fake camera as three simulcast layers and its microphone, a second page
/// plays it and must decode frames and receive audio, a third plays it with
/// `?layer=low` and must decode the lowest layer's width; every resource is
/// deleted (200, then 404). Runs in a network namespace with a veth address
/// for the media sockets (Firefox gathers no loopback candidates); skips,
/// saying why, where no namespace can be made (it needs root).
#[test]
fn firefox_whip_publisher_with_simulcast_is_played_with_whep() {
    run_firefox_scenario("firefox-whip");
}

/// The basic scenario with Firefox pages (tests/browser/firefox.mjs): a
/// Firefox page publishes its fake camera and microphone with kaskade.js
/// through the gRPC signalling, a second one subscribes (data channel, then
/// the router's offer) and must decode video, receive audio and open its
/// data channel. In the same namespace as the WHIP test above.
#[test]
fn firefox_pages_publish_and_subscribe_with_kaskade_js() {
    run_firefox_scenario("firefox");
}

/// A mixed room (tests/browser/firefox.mjs, `firefox-chromium`): Firefox
/// publishes three simulcast layers and its microphone with kaskade.js, a
/// Chromium page decodes them; Chromium publishes, a Firefox page decodes.
#[test]
fn firefox_and_chromium_pages_receive_each_other() {
    run_firefox_scenario("firefox-chromium");
}

/// The ICE-TCP scenario with Firefox pages (tests/browser/tcp.mjs,
/// `firefox-tcp`): UDP is dropped in the namespace, both Firefox pages must
/// select a TCP pair to the router's passive candidate, and the subscriber
/// decode the video, receive the audio and open its data channel.
#[test]
fn firefox_connects_over_ice_tcp_when_udp_is_dropped() {
    run_firefox_scenario_in("firefox-tcp", VETH_NO_UDP_NAMESPACE);
}

/// Runs a Firefox scenario in [`VETH_NAMESPACE`], or skips it, saying why,
/// where no namespace can be made (it needs root).
fn run_firefox_scenario(scenario: &str) {
    run_firefox_scenario_in(scenario, VETH_NAMESPACE);
}

/// Runs a Firefox scenario in the namespace `setup` makes (with a veth at
/// [`VETH_IP`]), or skips it, saying why, where none can be made.
fn run_firefox_scenario_in(scenario: &str, setup: &'static str) {
    let firefox = Path::new("/usr/bin/firefox-esr");
    assert!(
        firefox.exists(),
        "Firefox not found at {}: `bash .ci/run` installs it (apt-get install firefox-esr)",
        firefox.display()
    );
    let wrapper = match namespace(setup, "with a veth address") {
        Ok(w) => w,
        Err(why) => {
            eprintln!(
                "SKIPPED the Firefox scenario {scenario}: no network namespace here ({why}); \
                 run it as root with unshare and ip"
            );
            return;
        }
    };
    run_scenario_full(
        &wrapper,
        &["--scenario", scenario],
        &[("KASKADE_TEST_MEDIA_IP", VETH_IP)],
    );
}

/// WHIP from a WebRTC stack that is neither a browser nor str0m: GStreamer's
/// webrtcbin (libnice, OpenSSL DTLS, libsrtp; router/tests/interop/gst_whip.py,
/// driven by tests/browser/gst-whip.mjs). With GStreamer's own RSA DTLS
/// certificate the handshake is refused (kaskade takes ECDSA client
/// certificates only; docs/whip.md); with an ECDSA one, its H.264
/// (openh264, as OBS sends) and Opus reach a Chromium WHEP page, which must
/// decode 640x360 frames and receive audio, and a GStreamer WHEP viewer
/// (webrtcbin, decodebin), which must decode them too; the abandoned RSA
/// session closes as `dtls failed`; the viewer's and the publisher's DELETEs
/// are answered 200.
#[test]
fn gstreamer_whip_publisher_h264_is_played_in_chromium() {
    let ok = Command::new("/usr/bin/python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/gst_whip.py"),
            "--check",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the GStreamer WHIP publisher cannot run here: `bash .ci/run` installs its Debian \
         packages (python3-gi, gir1.2-gst-plugins-bad-1.0, gir1.2-nice-0.1, \
         gstreamer1.0-plugins-{{base,good,bad}}, gstreamer1.0-nice)"
    );
    run_scenario(&["--scenario", "gst-whip"]);
}
