//! Webhooks: each event of every room (or the kinds `webhooks.events`
//! names) is POSTed as JSON to each `webhooks.urls` entry, signed (see
//! [`sign`]). The delivery policy (queue, order, retries) is the sans-IO
//! [`policy::Policy`]; this module is its thin driver: one task per
//! receiver, fed by the router-wide event channel, with one HTTP/1.1 client
//! (`https://` receivers over rustls, see [`tls`]).
//!
//! Bodies carry no participant ids or metadata unless
//! `webhooks.participant_data` is on.

pub mod policy;
pub mod sign;
pub mod tls;

use crate::config::WebhooksResolved;
use crate::control::events::EventFilter;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::web::json::{self, Participants};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaskade_protocol::v1 as pb;
use pb::event::Kind;
use policy::{Attempt, Outcome, Policy};
use prometheus::IntCounter;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The header naming the signing key.
pub const KEY_ID_HEADER: &str = "webhook-key-id";

/// Counters one receiver's driver updates.
#[derive(Clone)]
struct Counters {
    delivered: IntCounter,
    retried: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
}

impl Counters {
    fn new(m: &Metrics) -> Self {
        let o = |s: &str| m.webhook_deliveries.with_label_values(&[s]);
        Self {
            delivered: o("delivered"),
            retried: o("retried"),
            failed: o("failed"),
            dropped: m.webhook_dropped.clone(),
        }
    }
}

/// The TLS client configuration the receivers need: `None` when every URL
/// is `http://`. Called before any port is bound, so a bad
/// `webhooks.ca_file` (or a system without CA certificates) stops the start.
pub fn tls_for(cfg: &WebhooksResolved) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !cfg.urls.iter().any(|u| u.scheme_str() == Some("https")) {
        return Ok(None);
    }
    tls::client_config(cfg.ca_file.as_deref()).map(Some)
}

/// Starts one delivery task per configured URL, `tls` from [`tls_for`].
/// They end when `stop` turns true (what is queued then is not delivered).
pub fn start(
    cfg: &WebhooksResolved,
    tls: Option<Arc<rustls::ClientConfig>>,
    plane: &Arc<Control>,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
) {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match tls {
        Some(t) => builder.with_tls_config((*t).clone()).https_or_http(),
        // Only http:// receivers: a configuration that trusts nothing, never used.
        None => builder.with_tls_config(empty_tls_config()).https_or_http(),
    }
    .enable_http1()
    .build();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    // Checked when the configuration was resolved.
    let filter = EventFilter::parse(&cfg.events).unwrap_or(EventFilter::ALL);
    let cfg = Arc::new(cfg.clone());
    // A random prefix keeps delivery ids unique across restarts.
    let boot: u32 = rand::random();
    for (i, uri) in cfg.urls.iter().enumerate() {
        // Each receiver holds one of limits.max_watchers for the router's life.
        let Ok(watch) = plane.watch("") else {
            return;
        };
        let d = Driver {
            uri: uri.clone(),
            cfg: cfg.clone(),
            client: client.clone(),
            filter,
            counters: Counters::new(metrics),
            id_prefix: format!("msg_{boot:08x}_{i}_"),
            policy: Policy::new(cfg.queue),
            _slot: watch.slot,
        };
        tokio::spawn(d.run(watch.events, stop.clone()));
    }
}

fn empty_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    // The provider's defaults are valid by construction.
    .expect("aws-lc-rs supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

struct Driver {
    uri: Uri,
    cfg: Arc<WebhooksResolved>,
    client: HttpClient,
    filter: EventFilter,
    counters: Counters,
    id_prefix: String,
    policy: Policy,
    /// This receiver's slot of `limits.max_watchers`.
    _slot: crate::control::watch::WatchSlot,
}

type InFlight = Pin<Box<dyn Future<Output = bool> + Send>>;

impl Driver {
    fn body(&self, ev: &pb::Event) -> Option<Bytes> {
        if !self.filter.matches(ev) || matches!(ev.kind, Some(Kind::Watching(_))) {
            return None;
        }
        let who = if self.cfg.participant_data {
            Participants::Include
        } else {
            Participants::Omit
        };
        Some(Bytes::from(json::event(ev, who).to_string()))
    }

    fn offer(&mut self, ev: Result<pb::Event, u64>) {
        match ev {
            Ok(ev) => {
                if let Some(b) = self.body(&ev) {
                    if self.policy.push(b).is_err() {
                        self.counters.dropped.inc();
                    }
                }
            }
            // Fell behind the router-wide channel: those are dropped too.
            Err(missed) => self.counters.dropped.inc_by(missed),
        }
    }

    fn request(&self, a: &Attempt) -> InFlight {
        let id = format!("{}{}", self.id_prefix, a.id);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sig = sign::sign(self.cfg.secret.as_bytes(), &id, ts, &a.body);
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, concat!("kaskade/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .header(KEY_ID_HEADER, self.cfg.key_id.clone())
            .body(Full::new(a.body.clone()));
        let client = self.client.clone();
        let timeout = self.cfg.timeout;
        Box::pin(async move {
            let Ok(req) = req else {
                return false;
            };
            match tokio::time::timeout(timeout, client.request(req)).await {
                Ok(Ok(resp)) => resp.status().is_success(),
                _ => false,
            }
        })
    }

    fn settle(&mut self, now: std::time::Instant, delivered: bool) {
        match self.policy.on_result(now, delivered) {
            Outcome::Delivered => self.counters.delivered.inc(),
            Outcome::Retry(_) => self.counters.retried.inc(),
            Outcome::GaveUp => self.counters.failed.inc(),
        }
    }

    async fn run(
        mut self,
        mut rx: broadcast::Receiver<pb::Event>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut in_flight: Option<InFlight> = None;
        loop {
            // Take in everything already there.
            loop {
                match rx.try_recv() {
                    Ok(ev) => self.offer(Ok(ev)),
                    Err(TryRecvError::Lagged(n)) => self.offer(Err(n)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return,
                }
            }
            if in_flight.is_none() {
                if let Some(a) = self.policy.poll_send(Instant::now().into_std()) {
                    in_flight = Some(self.request(&a));
                }
            }
            let retry = self.policy.poll_timeout().map(Instant::from_std);
            tokio::select! {
                delivered = async { in_flight.as_mut().expect("guarded by the branch condition").await }, if in_flight.is_some() => {
                    in_flight = None;
                    self.settle(Instant::now().into_std(), delivered);
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => self.offer(Ok(ev)),
                    Err(RecvError::Lagged(n)) => self.offer(Err(n)),
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(retry.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if retry.is_some() => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }
}
