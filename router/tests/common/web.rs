//! WHIP and WHEP tests' kit: a router started in-process with its HTTP
//! listener (and API keys, or none: dev mode), a real HTTP client, room
//! tokens, and str0m viewers with receive-only lines.

use super::daemon::client;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaskade_loadtest::{UdpClient, VideoLayer};
use kaskade_router::auth::token::{mint, Claims};
use kaskade_router::auth::KeySet;
use kaskade_router::config::Resolved;
use kaskade_router::metrics::Metrics;
use kaskade_router::server::{self, Running};
use std::time::{Duration, Instant, SystemTime};
use str0m::media::MediaKind;
use tokio::runtime::Runtime;

pub(crate) type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

pub(crate) const KEY: &str = "backend";
pub(crate) const SECRET: &str = "whip-test-secret-0123456789";

pub(crate) struct Router {
    pub rt: Runtime,
    pub running: Running,
    pub metrics: Metrics,
    pub http: HttpClient,
}

pub(crate) fn start(keys: bool) -> Router {
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

pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Router {
    pub(crate) fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
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

    pub(crate) fn refusals(&self, endpoint: &str, reason: &str) -> String {
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

pub(crate) fn token(room: &str, publish: bool, subscribe: bool, ttl: Duration) -> String {
    let mut c = Claims::new(room, SystemTime::now(), ttl);
    c.publish = publish;
    c.subscribe = subscribe;
    mint(KEY, SECRET.as_bytes(), &c)
}

pub(crate) fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

pub(crate) const SDP: (&str, &str) = ("content-type", "application/sdp");

pub(crate) fn video_packets(c: &UdpClient) -> u64 {
    c.client
        .received()
        .iter()
        .filter(|r| r.kind == Some(MediaKind::Video))
        .map(|r| r.packets)
        .sum()
}

pub(crate) fn light_layers() -> Vec<VideoLayer> {
    vec![
        VideoLayer::new(320, 180, 60_000),
        VideoLayer::new(640, 360, 150_000),
        VideoLayer::new(1280, 720, 400_000),
    ]
}

/// A viewer with receive-only audio and video lines (what a WHEP player offers).
pub(crate) fn viewer(seed: u64, t0: Instant) -> UdpClient {
    let mut v = client(seed, t0);
    v.client.add_receiver(MediaKind::Audio);
    v.client.add_receiver(MediaKind::Video);
    v
}
