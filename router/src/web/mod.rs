//! The HTTP face (`http.listen`): the demo app at `/`, the browser helper
//! at `/kaskade.js`, the demo signalling (`/demo/...`) that calls the same
//! control plane as the gRPC API, and WHIP (`/whip/{room}`) and WHEP
//! (`/whep/{room}`) over that control plane too (see `resource` for who may
//! call them); over https with `http.tls_cert` and `http.tls_key` (`tls`).
//!
//! Every asset is compiled into the binary; nothing is fetched from
//! elsewhere. Without API keys (dev mode, loopback only) requests must name
//! a loopback host (`Host`), so a web page elsewhere cannot reach the
//! listener through DNS rebinding, and a cross-site page cannot post to the
//! demo signalling (an `Origin` of another site is refused, and bodies are
//! JSON only, which browsers never send cross-site without a CORS preflight
//! this server never grants). With API keys (the listener may then be
//! public, or behind a TLS proxy that rewrites `Host`) the assets are served
//! to any host name and every signalling, WHIP and WHEP request needs a
//! room token instead: a credential no other page can borrow.

pub mod demo;
pub mod json;
pub mod owner;
pub mod resource;
pub mod whep;
pub mod whip;

use crate::auth::KeySet;
use crate::control::Control;
use crate::listener::Incoming;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, post};
use axum::Router;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// The demo app's page.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// The demo app's script.
const DEMO_JS: &str = include_str!("assets/demo.js");
/// The demo app's style sheet.
const DEMO_CSS: &str = include_str!("assets/demo.css");
/// The browser helper (an ES module without dependencies).
pub const KASKADE_JS: &str = include_str!("assets/kaskade.js");

/// Event streams (`/demo/events`) open at once; more are refused (503).
pub const MAX_EVENT_STREAMS: usize = 256;
/// Longest pause between two keep-alive comments of an event stream.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Longest a request body may take to arrive, at most: the largest body
/// read (a demo call with an SDP offer, under 300 kB) needs under 3 s at
/// 1 Mbit/s, less than any link that sends video.
const MAX_BODY_DEADLINE: Duration = Duration::from_secs(30);

/// How long the handlers wait for a request body (demo calls, WHIP and
/// WHEP offers, trickle ICE) before refusing it (408, `reason="timeout"`):
/// `http.idle_timeout`, at most 30 s. The body's bytes move the connection's
/// idle moment on, so without this a body trickled in held its connection
/// and its handler for ever.
pub fn body_deadline(idle_timeout: Duration) -> Duration {
    idle_timeout.min(MAX_BODY_DEADLINE)
}

/// The keep-alive interval of event streams: a third of the listener's idle
/// timeout (so an open stream is never cut as idle), at most 15 s.
pub fn sse_keep_alive(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).min(SSE_KEEP_ALIVE)
}

/// Shared by the handlers.
#[derive(Debug)]
pub struct Web {
    plane: Arc<Control>,
    metrics: Metrics,
    streams: Arc<Semaphore>,
    /// API keys: their secrets verify WHIP/WHEP tokens; none is dev mode.
    keys: Arc<KeySet>,
    /// The live WHIP and WHEP resources.
    resources: resource::Resources,
    /// Keep-alive interval of event streams ([`sse_keep_alive`]).
    keep_alive: Duration,
    /// Longest a request body may take to arrive ([`body_deadline`]).
    body_deadline: Duration,
}

impl Web {
    /// Counts a request by route and status and passes the response on.
    fn done(&self, route: &'static str, mut resp: Response) -> Response {
        let code = resp.status().as_u16().to_string();
        self.metrics
            .http_requests
            .with_label_values(&[route, code.as_str()])
            .inc();
        resp.extensions_mut().insert(Counted);
        resp
    }
}

/// A short plain-text error.
pub(crate) fn error(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// The value of `name` in a URI's query string, percent-decoded (what
/// `encodeURIComponent` and `URLSearchParams` make of `team:alpha`); a
/// value that does not decode to UTF-8 is given as it came, for the id
/// check to refuse.
pub(crate) fn query<'a>(uri: &'a Uri, name: &str) -> Option<Cow<'a, str>> {
    let raw = uri
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)?;
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .unwrap_or(Cow::Borrowed(raw)),
    )
}

/// Whether `Host` names this machine's loopback: `localhost`, `127.x.x.x`
/// or `[::1]`, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Web {
    /// Without API keys, refuses requests that do not come from a page of
    /// this listener itself: a `Host` that is not loopback (DNS rebinding),
    /// an `Origin` of another site. With API keys tokens guard the calls.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), Forbidden> {
        if !self.keys.is_empty() {
            return Ok(());
        }
        origin_problem(headers).map_or(Ok(()), |reason| Err(Forbidden(reason)))
    }
}

/// A request refused by [`Web::check_origin`] (403 with the reason).
#[derive(Debug)]
pub(crate) struct Forbidden(&'static str);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        error(StatusCode::FORBIDDEN, self.0)
    }
}

/// Why a request to a router without API keys is refused, if it is.
fn origin_problem(headers: &HeaderMap) -> Option<&'static str> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !loopback_host(host) {
        return Some(
            "the demo is served to loopback host names only (127.0.0.1, [::1], localhost) \
             while the router has no API keys",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // Either scheme: one port serves one of them, so the host is enough.
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Some("cross-origin requests are refused");
        }
    }
    None
}

/// The embedded assets: path, body, content type.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", INDEX_HTML, "text/html; charset=utf-8"),
    ("/kaskade.js", KASKADE_JS, "text/javascript; charset=utf-8"),
    ("/demo.js", DEMO_JS, "text/javascript; charset=utf-8"),
    ("/demo.css", DEMO_CSS, "text/css; charset=utf-8"),
];

/// `GET` of an embedded asset.
async fn asset(State(web): State<Arc<Web>>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(&(route, body, ty)) = ASSETS.iter().find(|(p, _, _)| *p == uri.path()) else {
        return web.done("other", error(StatusCode::NOT_FOUND, "not found"));
    };
    if let Err(r) = web.check_origin(&headers) {
        return web.done(route, r.into_response());
    }
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page's address may carry a room token (`?token=`): never sent on.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; media-src 'self' blob: mediastream:; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    web.done(route, resp)
}

async fn not_found(State(web): State<Arc<Web>>) -> Response {
    web.done(
        "other",
        error(StatusCode::NOT_FOUND, "not found: the demo is at /"),
    )
}

/// The routes, over one control plane; `keys` verify room tokens; event
/// streams send a keep-alive every `keep_alive`; bodies must arrive within
/// `body_deadline`.
pub fn router(
    plane: Arc<Control>,
    metrics: Metrics,
    keys: Arc<KeySet>,
    keep_alive: Duration,
    body_deadline: Duration,
) -> Router {
    let web = Arc::new(Web {
        plane,
        metrics,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        keys,
        resources: resource::Resources::default(),
        keep_alive,
        body_deadline,
    });
    let mut r = Router::new();
    for (path, _, _) in ASSETS {
        r = r.route(path, get(asset));
    }
    r.route("/demo/api/{method}", post(demo::api))
        .route("/demo/events", get(demo::events))
        .route("/whip/{room}", post(whip::post).options(whip::options))
        .route(
            "/whip/{room}/{id}",
            options(whip::options_resource)
                .patch(whip::patch)
                .delete(whip::delete),
        )
        .route("/whep/{room}", post(whep::post).options(whep::options))
        .route(
            "/whep/{room}/{id}",
            options(whep::options_resource)
                .patch(whep::patch)
                .delete(whep::delete),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            count_the_rest,
        ))
        .with_state(web)
}

/// Marks a response [`Web::done`] counted.
#[derive(Debug, Clone, Copy)]
struct Counted;

/// Counts, as route `other`, the responses no handler counted: those axum
/// answers itself (a method a route does not take, 405; a path parameter
/// that is not UTF-8, 400).
async fn count_the_rest(
    State(web): State<Arc<Web>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    if resp.extensions().get::<Counted>().is_some() {
        return resp;
    }
    web.done("other", resp)
}

/// Serves the HTTP listener's connections until `stop` turns true, each
/// request head within `idle_timeout` ([`crate::listener::serve_http`]);
/// `idle_timeout` is `http.idle_timeout`, `https` whether they are TLS.
pub async fn serve(
    listener: Incoming,
    idle_timeout: Duration,
    plane: Arc<Control>,
    metrics: Metrics,
    keys: Arc<KeySet>,
    https: bool,
    mut stop: watch::Receiver<bool>,
) {
    log_urls(listener.local_addr(), !keys.is_empty(), https);
    if !keys.is_empty() && !keys.can_verify_tokens() {
        tracing::warn!(
            "no API key has its secret here ({}; api.keys holds digests only): every room \
             token is refused, so the demo signalling, WHIP and WHEP refuse every request",
            crate::auth::API_KEYS_ENV
        );
    }
    let app = router(
        plane,
        metrics,
        keys,
        sse_keep_alive(idle_timeout),
        body_deadline(idle_timeout),
    );
    let shutdown = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    crate::listener::serve_http("http", listener, app, shutdown).await;
}

/// The scheme and address of the listener's URLs (`https://127.0.0.1:8443`).
pub fn base_url(addr: std::net::SocketAddr, https: bool) -> String {
    format!("{}://{addr}", if https { "https" } else { "http" })
}

/// The start-up lines: where the demo, WHIP and WHEP are, who may call.
fn log_urls(a: std::net::SocketAddr, keys: bool, https: bool) {
    let base = base_url(a, https);
    if keys {
        tracing::info!(
            "demo app: open {base}/?room=ROOM&token=TOKEN (a room token with publish and \
             subscribe: `kaskade token`)"
        );
    } else {
        tracing::info!("demo app: open {base}/?room=test in two browser tabs");
    }
    let auth = if keys {
        "room tokens required"
    } else {
        "no token needed (no API keys: loopback dev mode)"
    };
    tracing::info!("WHIP: POST {base}/whip/ROOM, WHEP: POST {base}/whep/ROOM; {auth}");
    if !a.ip().is_loopback() && !https {
        tracing::warn!(
            "the HTTP listener is reachable from other hosts over plain http: browsers allow \
             the camera only on https pages (set http.tls_cert and http.tls_key, or put a TLS \
             proxy in front), and tokens travel in clear text"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: Uri = "/demo/events?room=team%3Aalpha&kinds=a,b&x=%FF"
            .parse()
            .expect("a valid URI");
        assert_eq!(query(&uri, "room").as_deref(), Some("team:alpha"));
        assert_eq!(query(&uri, "kinds").as_deref(), Some("a,b"));
        assert_eq!(
            query(&uri, "x").as_deref(),
            Some("%FF"),
            "not UTF-8: as it came"
        );
        assert_eq!(query(&uri, "none"), None);
    }

    #[test]
    fn event_streams_keep_alive_within_a_third_of_the_idle_timeout() {
        assert_eq!(sse_keep_alive(Duration::from_secs(60)), SSE_KEEP_ALIVE);
        assert_eq!(
            sse_keep_alive(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "[::1]",
            "127.1.2.3:1",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "",
            "[::2]:80",
            "localhost.evil:80",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn cross_origin_requests_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(origin_problem(&h).is_none());
        for same in ["http://127.0.0.1:8080", "https://127.0.0.1:8080"] {
            h.insert(header::ORIGIN, HeaderValue::from_static(same));
            assert!(origin_problem(&h).is_none(), "{same}");
        }
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(origin_problem(&h).is_some());
        h.remove(header::ORIGIN);
        h.insert(
            header::HOST,
            HeaderValue::from_static("rebound.example:8080"),
        );
        assert!(origin_problem(&h).is_some());
    }
}
