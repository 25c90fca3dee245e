//! The Janus target: Janus 1.1 (Debian's `janus` package) started here with a
//! minimal configuration (VideoRoom plugin, HTTP transport on loopback, ICE-lite),
//! driven through its HTTP API.
//!
//! Janus's ICE skips loopback interfaces, so on a loopback-only setup it would offer
//! no candidate. A tiny `LD_PRELOAD` shim (compiled here with `cc`) clears the
//! loopback flag that `getifaddrs` reports, and `ice_enforce_list = "lo"` keeps Janus
//! on 127.0.0.1: every packet stays on this machine.
//!
//! Flow per publisher: create session → attach VideoRoom → `join` (publisher) →
//! `publish` with the offer → answer → wait for `webrtcup`. Per subscriber: new
//! session and handle → `join` (subscriber, every stream of the room's feeds) → Janus
//! offers → answer with `start` → optional `configure` of the substream per video mid.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::driver::ClientId;
use super::http::HttpApi;
use super::session::{step, JanusFeed, JoinRecord, Joins, Publisher, Role};

/// How to start Janus.
#[derive(Debug, Clone)]
pub(crate) struct JanusSpec {
    /// The janus binary.
    pub bin: PathBuf,
}

const PLUGIN_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus/plugins";
const TRANSPORT_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus/transports";

const SHIM_C: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
/* Report every interface without IFF_LOOPBACK so Janus gathers 127.0.0.1. */
int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **);
    if (!real) real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int r = real(ifap);
    if (r == 0)
        for (struct ifaddrs *i = *ifap; i; i = i->ifa_next) i->ifa_flags &= ~IFF_LOOPBACK;
    return r;
}
"#;

/// A Janus process this tool started; killed when dropped.
#[derive(Debug)]
pub(crate) struct JanusProcess {
    child: Child,
    /// HTTP API address.
    pub http: SocketAddr,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Compiles the getifaddrs shim into `dir` (once).
fn build_shim(dir: &Path) -> Result<PathBuf, String> {
    let so = dir.join("janus-getifaddrs-shim.so");
    if so.is_file() {
        return Ok(so);
    }
    let c = dir.join("janus-getifaddrs-shim.c");
    write(&c, SHIM_C)?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&c)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cc (needed for the Janus loopback shim): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed building the Janus loopback shim: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(so)
}

/// The configuration folder for one Janus run.
fn write_config(dir: &Path, http_port: u16, rtp_base: u16) -> Result<(), String> {
    for sub in ["plugins", "transports", "events", "loggers"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    for (sub, src, name) in [
        ("plugins", PLUGIN_DIR, "libjanus_videoroom.so"),
        ("transports", TRANSPORT_DIR, "libjanus_http.so"),
    ] {
        let link = dir.join(sub).join(name);
        let _ = std::fs::remove_file(&link);
        let target = Path::new(src).join(name);
        if !target.is_file() {
            return Err(format!(
                "{} missing: install Debian's janus package (apt-get install -y janus)",
                target.display()
            ));
        }
        std::os::unix::fs::symlink(&target, &link).map_err(|e| e.to_string())?;
    }
    let d = dir.display();
    write(
        &dir.join("janus.jcfg"),
        &format!(
            r#"general: {{
	configs_folder = "{d}"
	plugins_folder = "{d}/plugins"
	transports_folder = "{d}/transports"
	events_folder = "{d}/events"
	loggers_folder = "{d}/loggers"
	debug_level = 3
	session_timeout = 0
	server_name = "kaskade-loadtest"
}}
media: {{
	rtp_port_range = "{rtp_base}-{}"
}}
nat: {{
	ice_lite = true
	ice_enforce_list = "lo"
	ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
"#,
            rtp_base + 9999
        ),
    )?;
    write(
        &dir.join("janus.transport.http.jcfg"),
        &format!(
            r#"general: {{
	json = "compact"
	base_path = "/janus"
	http = true
	port = {http_port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
}}
"#
        ),
    )?;
    write(&dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")
}

impl JanusProcess {
    /// Starts Janus with a fresh configuration under `log_dir`.
    pub(crate) async fn start(
        s: &JanusSpec,
        log_dir: &Path,
        tag: &str,
    ) -> Result<JanusProcess, String> {
        if !s.bin.is_file() {
            return Err(format!(
                "{} not found: install Debian's janus package (apt-get install -y janus)",
                s.bin.display()
            ));
        }
        let log_dir = std::fs::canonicalize(log_dir).map_err(|e| e.to_string())?;
        let dir = log_dir.join(format!("{tag}-conf"));
        let port = free_port()?;
        write_config(&dir, port, 30000)?;
        let shim = build_shim(&log_dir)?;
        let log = log_dir.join(format!("{tag}.log"));
        let child = Command::new(&s.bin)
            .arg("-F")
            .arg(&dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .args(["-o", "-N", "-L"])
            .arg(&log)
            .env("LD_PRELOAD", &shim)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", s.bin.display()))?;
        let mut p = JanusProcess {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let end = Instant::now() + Duration::from_secs(20);
        let api = HttpApi::new(p.http);
        loop {
            if let Ok(v) = api.request("GET", "/janus/info", None).await {
                if v["janus"] == "server_info" {
                    return Ok(p);
                }
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(format!("janus exited ({st}); see {}", log.display()));
            }
            if Instant::now() > end {
                p.stop();
                return Err(format!(
                    "janus did not answer within 20 s; see {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        super::router::terminate(&mut self.child);
    }
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new Janus transaction id: random, so no counter is shared between
/// sessions (Janus matches answers to requests within one session).
fn transaction() -> String {
    format!("lt{:016x}", rand::random::<u64>())
}

/// One Janus session with one VideoRoom handle, and its queued events.
struct JSession {
    http: HttpApi,
    session: u64,
    handle: u64,
    events: Vec<Value>,
}

fn janus_error(v: &Value) -> Option<String> {
    if v["janus"] == "error" {
        return Some(format!(
            "janus error {}: {}",
            v["error"]["code"], v["error"]["reason"]
        ));
    }
    let d = &v["plugindata"]["data"];
    if d["videoroom"] == "event" && !d["error_code"].is_null() {
        return Some(format!(
            "videoroom error {}: {}",
            d["error_code"], d["error"]
        ));
    }
    None
}

impl JSession {
    async fn open(http: HttpApi) -> Result<JSession, String> {
        let v = http
            .request(
                "POST",
                "/janus",
                Some(&json!({"janus": "create", "transaction": transaction()})),
            )
            .await?;
        let session = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| format!("create: {v}"))?;
        let v = http
            .request(
                "POST",
                &format!("/janus/{session}"),
                Some(
                    &json!({"janus": "attach", "plugin": "janus.plugin.videoroom",
                         "transaction": transaction()}),
                ),
            )
            .await?;
        let handle = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| format!("attach: {v}"))?;
        Ok(JSession {
            http,
            session,
            handle,
            events: vec![],
        })
    }

    /// Sends a plugin message (with an optional JSEP); returns the transaction and the
    /// synchronous answer.
    async fn message(&self, body: Value, jsep: Option<Value>) -> Result<(String, Value), String> {
        let tx = transaction();
        let mut msg = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let v = self
            .http
            .request(
                "POST",
                &format!("/janus/{}/{}", self.session, self.handle),
                Some(&msg),
            )
            .await?;
        if let Some(e) = janus_error(&v) {
            return Err(e);
        }
        Ok((tx, v))
    }

    /// Waits for an event matching `want` (long-polling the session); an error event
    /// for transaction `tx` ends the wait.
    async fn event(
        &mut self,
        tx: Option<&str>,
        want: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| tx.is_some_and(|t| e["transaction"] == t) && janus_error(e).is_some())
            {
                let e = self.events.remove(i);
                return Err(janus_error(&e).unwrap_or_default());
            }
            if let Some(i) = self.events.iter().position(&want) {
                return Ok(self.events.remove(i));
            }
            let v = self
                .http
                .request("GET", &format!("/janus/{}?maxev=10", self.session), None)
                .await?;
            match v {
                Value::Array(a) => self.events.extend(a),
                v if v["janus"] == "keepalive" => {}
                v => self.events.push(v),
            }
        }
    }
}

/// Janus VideoRoom client.
#[derive(Debug, Clone)]
pub(crate) struct Janus {
    http: HttpApi,
    room_base: u64,
}

impl Janus {
    /// A client of the Janus at `http`; room numbers derive from `tag`.
    pub(crate) fn new(http: SocketAddr, tag: &str) -> Janus {
        let h = tag
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Janus {
            http: HttpApi::new(http),
            room_base: 1_000_000 + (h % 1_000_000) * 1000,
        }
    }

    fn room(&self, r: u32) -> u64 {
        self.room_base + u64::from(r)
    }

    /// Creates room `r` for `publishers` publishers.
    pub(crate) async fn create_room(&self, r: u32, publishers: u32) -> Result<(), String> {
        let s = JSession::open(self.http.clone()).await?;
        let (_, v) = s
            .message(
                json!({"request": "create", "room": self.room(r), "publishers": publishers.max(1),
                       "videocodec": "vp8", "audiocodec": "opus", "bitrate": 0,
                       "notify_joining": false, "audiolevel_ext": true}),
                None,
            )
            .await?;
        if v["plugindata"]["data"]["videoroom"] == "created" {
            Ok(())
        } else {
            Err(format!("create room: {v}"))
        }
    }

    /// A publisher joins room `r` and publishes.
    pub(crate) async fn publish(
        &self,
        joins: &Arc<Joins>,
        r: u32,
        index: u32,
        role: Role,
    ) -> Result<Publisher, String> {
        let (id, mut rec) = joins.new_publisher(role, r, index).await?;
        let limit = joins.scenario.join_timeout.0;
        let res = step(
            limit,
            "janus publish",
            self.publish_steps(joins, id, r, index, &mut rec),
        )
        .await;
        if let Err(e) = &res {
            rec.error = Some(e.clone());
        }
        joins.record(rec);
        res
    }

    async fn publish_steps(
        &self,
        joins: &Arc<Joins>,
        id: ClientId,
        r: u32,
        index: u32,
        rec: &mut JoinRecord,
    ) -> Result<Publisher, String> {
        let mut s = JSession::open(self.http.clone()).await?;
        let (tx, _) = s
            .message(
                json!({"request": "join", "ptype": "publisher", "room": self.room(r),
                       "display": format!("pub-{index}")}),
                None,
            )
            .await?;
        let joined = s
            .event(Some(&tx), |e| {
                e["transaction"] == tx && e["plugindata"]["data"]["videoroom"] == "joined"
            })
            .await?;
        let feed = joined["plugindata"]["data"]["id"]
            .as_u64()
            .ok_or("joined without a feed id")?;
        let offer = joins
            .driver
            .call(id, |s| s.client.create_offer())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("create_offer: nothing to offer")?;
        rec.started = Instant::now();
        let (tx, _) = s
            .message(
                json!({"request": "publish", "audio": joins.scenario.audio,
                       "video": joins.scenario.video}),
                Some(json!({"type": "offer", "sdp": offer, "rid_order": "lmh"})),
            )
            .await?;
        let ev = s
            .event(Some(&tx), |e| {
                e["transaction"] == tx && e["jsep"]["type"] == "answer"
            })
            .await?;
        let answer = ev["jsep"]["sdp"].as_str().unwrap_or_default().to_string();
        joins
            .driver
            .call(id, move |s| s.client.accept_answer(&answer))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("accept_answer: {e}"))?;
        rec.connected = Some(joins.connected(id, "connect").await?);
        // Subscribing before Janus saw the PeerConnection up fails with "No such feed".
        let handle = s.handle;
        s.event(None, |e| e["janus"] == "webrtcup" && e["sender"] == handle)
            .await?;
        Ok(Publisher {
            id,
            session_id: String::new(),
            janus: Some(JanusFeed { feed }),
            tracks: vec![],
        })
    }

    /// A subscriber (new connection) joins room `r` and receives every stream of `pubs`.
    pub(crate) async fn subscriber(
        &self,
        joins: &Arc<Joins>,
        r: u32,
        index: u32,
        pubs: &[Publisher],
        role: Role,
    ) -> Result<(), String> {
        let (id, mut rec) = joins.new_client(role, r, index, 0, |_| {}).await?;
        let limit = joins.scenario.join_timeout.0;
        let res = step(
            limit,
            "janus subscribe",
            self.subscribe_steps(joins, id, r, pubs, &mut rec),
        )
        .await;
        if let Err(e) = &res {
            rec.error = Some(e.clone());
        }
        joins.record(rec);
        res
    }

    async fn subscribe_steps(
        &self,
        joins: &Arc<Joins>,
        id: ClientId,
        r: u32,
        pubs: &[Publisher],
        rec: &mut JoinRecord,
    ) -> Result<(), String> {
        let streams: Vec<Value> = pubs
            .iter()
            .filter_map(|p| p.janus)
            .map(|f| json!({"feed": f.feed}))
            .collect();
        if streams.is_empty() {
            return Err("subscribe: no publishers in the room".into());
        }
        let mut s = JSession::open(self.http.clone()).await?;
        rec.started = Instant::now();
        let (tx, _) = s
            .message(
                json!({"request": "join", "ptype": "subscriber", "room": self.room(r),
                       "streams": streams}),
                None,
            )
            .await?;
        let ev = s
            .event(Some(&tx), |e| {
                e["transaction"] == tx && e["jsep"]["type"] == "offer"
            })
            .await?;
        joins.media_requested(id, rec.started).await;
        let offer = ev["jsep"]["sdp"].as_str().unwrap_or_default().to_string();
        let video_mids: Vec<String> = ev["plugindata"]["data"]["streams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["type"] == "video")
                    .filter_map(|s| s["mid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let answer = joins
            .driver
            .call(id, move |s| s.client.accept_offer(&offer))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("accept_offer: {e}"))?;
        let (tx, _) = s
            .message(
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
            )
            .await?;
        s.event(Some(&tx), |e| {
            e["transaction"] == tx && e["plugindata"]["data"]["started"] == "ok"
        })
        .await?;
        rec.connected = Some(joins.connected(id, "connect").await?);
        rec.subscribed = Some(Instant::now());
        let layers = joins.scenario.layers.len();
        if let Some(layer) = joins.scenario.subscriber_layer.index(layers) {
            if !video_mids.is_empty() {
                let streams: Vec<Value> = video_mids
                    .iter()
                    .map(|m| json!({"mid": m, "substream": layer, "temporal": 2}))
                    .collect();
                s.message(json!({"request": "configure", "streams": streams}), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Nothing to clean: the Janus process goes away with the run.
    pub(crate) async fn cleanup(&self) {}
}
