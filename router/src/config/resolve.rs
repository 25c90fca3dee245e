//! [`Config::validate`]: every key against its rule, then the checks that
//! span keys, giving the [`Resolved`] configuration the daemon runs with.

use super::{Config, ConfigError, KEYS};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The validated configuration the daemon runs with: the keys as given
/// ([`Resolved::config`]) plus the values parsed or derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// gRPC listen address.
    pub control_listen: SocketAddr,
    /// Metrics listen address, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Media bind IP.
    pub media_bind: IpAddr,
    /// First media port (0 = ephemeral).
    pub media_port_start: u16,
    /// Number of media workers.
    pub workers: usize,
    /// IP advertised in ICE candidates.
    pub advertise: IpAddr,
    /// Minimum time between two keyframe requests to one publisher layer.
    pub keyframe_interval: Duration,
    /// The ICE-TCP listener's address, if ICE-TCP is on.
    pub tcp_listen: Option<SocketAddr>,
    /// Tracing filter: `log.level`, with str0m quiet below errors unless it
    /// names str0m (`log_filter`).
    pub log_level: String,
    /// Cascade settings, if cascading is enabled.
    pub cascade: Option<CascadeResolved>,
    /// How sessions are placed on workers.
    pub placement: crate::media::placement::Policy,
    /// HTTP listen address (demo app, kaskade.js), if enabled.
    pub http_listen: Option<SocketAddr>,
    /// Webhooks, if configured.
    pub webhooks: Option<WebhooksResolved>,
    /// API keys (`api.keys` and `KASKADE_API_KEYS`); empty: the API is open.
    pub api_keys: crate::auth::KeySet,
    /// Every key as validated: read keys without a field above here.
    pub config: Config,
}

/// The tracing filter of `log.level`. str0m warns about what peers send
/// (an SDP it cannot parse, with fragments of it; a missing attribute),
/// once per request and unthrottled: at the default level that would put
/// callers' SDP in the logs and let them flood the logs. So str0m logs
/// errors only, unless the filter names str0m itself (`str0m=warn`).
pub(crate) fn log_filter(level: &str) -> String {
    if level.contains("str0m") {
        level.to_string()
    } else if level.trim().is_empty() {
        "str0m=error".to_string()
    } else {
        format!("{level},str0m=error")
    }
}

/// A peer router from `cascade.peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its node id.
    pub node_id: String,
    /// Where it listens.
    pub addr: String,
}

/// Validated `[cascade]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CascadeResolved {
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// CA certificate file.
    pub ca: PathBuf,
    /// Node certificate file.
    pub cert: PathBuf,
    /// Node key file.
    pub key: PathBuf,
    /// Known peers.
    pub peers: Vec<PeerAddr>,
    /// Link rooms hosted on both ends of a link without `LinkRoom`.
    pub auto_link: bool,
    /// What each link may send.
    pub link_rate: crate::cascade::relay::LinkRate,
}

fn value(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key,
        reason: reason.into(),
    }
}

fn sock(key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| value(key, format!("{v:?} is not an address like 127.0.0.1:50051")))
}

fn ip(key: &'static str, v: &str) -> Result<IpAddr, ConfigError> {
    v.parse()
        .map_err(|_| value(key, format!("{v:?} is not an IP address")))
}

impl Config {
    /// Checks every key against its rule, then the keys that depend on
    /// each other, and resolves what depends on the machine (`cores`).
    pub fn validate(&self, cores: usize) -> Result<Resolved, ConfigError> {
        for k in KEYS {
            (k.get)(self)
                .check(&k.rule)
                .map_err(|reason| value(k.name, reason))?;
        }
        let control_listen = sock("control.listen", &self.control.listen)?;
        let metrics_listen = match self.metrics.listen.as_str() {
            "" => None,
            v => Some(sock("metrics.listen", v)?),
        };
        let media_bind = ip("media.bind", &self.media.bind)?;
        let advertise = if self.media.advertise.is_empty() {
            if media_bind.is_unspecified() {
                return Err(value(
                    "media.advertise",
                    format!("must be set when media.bind is {media_bind}: browsers need a concrete address"),
                ));
            }
            media_bind
        } else {
            let a = ip("media.advertise", &self.media.advertise)?;
            if a.is_unspecified() {
                return Err(value(
                    "media.advertise",
                    "must be a concrete address, not 0.0.0.0 or ::",
                ));
            }
            a
        };
        let workers = match self.media.workers {
            0 => cores.clamp(1, 1024),
            n => n,
        };
        if !self.media.single_port
            && self.media.port_start != 0
            && usize::from(self.media.port_start) + workers > 65536
        {
            return Err(value(
                "media.port_start",
                format!(
                    "{} + {workers} workers runs past port 65535",
                    self.media.port_start
                ),
            ));
        }
        let tcp_listen = match self.media.tcp_listen.as_str() {
            "" => None,
            v => Some(sock("media.tcp_listen", v)?),
        };
        let cascade = self.resolve_cascade()?;
        let http_listen = match self.http.listen.as_str() {
            "" => None,
            // Off loopback it needs API keys: checked by `with_api_keys`.
            v => Some(sock("http.listen", v)?),
        };
        let webhooks = self.resolve_webhooks()?;
        Ok(Resolved {
            control_listen,
            metrics_listen,
            media_bind,
            media_port_start: self.media.port_start,
            workers,
            advertise,
            keyframe_interval: Duration::from_millis(self.media.keyframe_interval_ms),
            tcp_listen,
            log_level: log_filter(&self.log.level),
            cascade,
            placement: match self.media.room_share {
                0 => crate::media::placement::Policy::LeastLoaded,
                share => crate::media::placement::Policy::Rooms { share },
            },
            http_listen,
            webhooks,
            api_keys: crate::auth::KeySet::build(&self.api.keys, None)
                .map_err(|e| value("api.keys", e.to_string()))?,
            config: self.clone(),
        })
    }

    fn resolve_cascade(&self) -> Result<Option<CascadeResolved>, ConfigError> {
        let c = &self.cascade;
        if c.listen.is_empty() {
            if !c.peers.is_empty() {
                return Err(value(
                    "cascade.peers",
                    "needs cascade.listen (cascading is off)",
                ));
            }
            return Ok(None);
        }
        let listen = sock("cascade.listen", &c.listen)?;
        let file = |key: &'static str, v: &str| {
            if v.is_empty() {
                return Err(value(key, "is required when cascade.listen is set"));
            }
            Ok(PathBuf::from(v))
        };
        let mut peers = Vec::new();
        for p in &c.peers {
            let bad = || value("cascade.peers", format!("{p:?} is not node_id=host:port"));
            let (id, addr) = p.split_once('=').ok_or_else(bad)?;
            if !super::valid_name(id) || addr.rsplit_once(':').is_none() {
                return Err(bad());
            }
            peers.push(PeerAddr {
                node_id: id.to_string(),
                addr: addr.to_string(),
            });
        }
        Ok(Some(CascadeResolved {
            listen,
            ca: file("cascade.ca", &c.ca)?,
            cert: file("cascade.cert", &c.cert)?,
            key: file("cascade.key", &c.key)?,
            peers,
            auto_link: c.auto_link,
            link_rate: crate::cascade::relay::LinkRate::from_mbps(c.link_rate_mbps),
        }))
    }
}

/// Validated `[webhooks]`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhooksResolved {
    /// Where each event goes.
    pub urls: Vec<hyper::Uri>,
    /// Event kinds sent (empty: all).
    pub events: Vec<String>,
    /// Signing key id.
    pub key_id: String,
    /// Signing secret.
    pub secret: String,
    /// Per-URL queue.
    pub queue: usize,
    /// Per attempt.
    pub timeout: Duration,
    /// Participant ids and metadata in bodies.
    pub participant_data: bool,
    /// CA certificates for https receivers (`None`: the system's).
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for WebhooksResolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("WebhooksResolved")
            .field("urls", &self.urls.len())
            .field("key_id", &self.key_id)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Config {
    fn resolve_webhooks(&self) -> Result<Option<WebhooksResolved>, ConfigError> {
        let w = &self.webhooks;
        if w.urls.is_empty() {
            return Ok(None);
        }
        let mut urls = Vec::new();
        for u in &w.urls {
            let uri: hyper::Uri = u
                .parse()
                .map_err(|_| value("webhooks.urls", format!("{u:?} is not a URL")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(value(
                    "webhooks.urls",
                    format!("{u:?}: an http:// or https:// URL with a host"),
                ));
            }
            urls.push(uri);
        }
        if let Err(e) = crate::control::events::EventFilter::parse(&w.events) {
            return Err(value("webhooks.events", e.to_string()));
        }
        if w.secret.is_empty() && w.key_id.is_empty() {
            return Err(value(
                "webhooks.key_id",
                "every body is signed: name an API key (its secret from KASKADE_API_KEYS) \
                 or set webhooks.secret",
            ));
        }
        if !w.secret.is_empty() && w.secret.len() < 16 {
            return Err(value("webhooks.secret", "must be at least 16 bytes"));
        }
        Ok(Some(WebhooksResolved {
            urls,
            events: w.events.clone(),
            key_id: w.key_id.clone(),
            secret: w.secret.clone(),
            queue: w.queue,
            timeout: Duration::from_millis(w.timeout_ms),
            participant_data: w.participant_data,
            ca_file: (!w.ca_file.is_empty()).then(|| w.ca_file.clone().into()),
        }))
    }
}

impl Resolved {
    /// Adds the keys of `KASKADE_API_KEYS` (`env`), then refuses a control
    /// listener off loopback without keys unless `insecure_no_auth`.
    pub fn with_api_keys(
        mut self,
        env: Option<&str>,
        insecure_no_auth: bool,
    ) -> Result<Self, ConfigError> {
        if env.is_some_and(|e| !e.trim().is_empty()) {
            self.api_keys = crate::auth::KeySet::build(&self.config.api.keys, env)
                .map_err(|e| value(crate::auth::API_KEYS_ENV, e.to_string()))?;
        }
        if let Some(w) = self.webhooks.as_mut().filter(|w| w.secret.is_empty()) {
            // Signed with the secret of the API key webhooks.key_id names.
            let key = self.api_keys.get(&w.key_id).ok_or_else(|| {
                value(
                    "webhooks.key_id",
                    format!("{:?} is not an API key", w.key_id),
                )
            })?;
            let secret = key.secret().ok_or_else(|| {
                value(
                    "webhooks.key_id",
                    format!(
                        "API key {:?} has no secret here (api.keys holds only hashes): give it in {}",
                        w.key_id,
                        crate::auth::API_KEYS_ENV
                    ),
                )
            })?;
            w.secret = String::from_utf8_lossy(secret).into_owned();
        }
        if self.api_keys.is_empty() && !self.control_listen.ip().is_loopback() && !insecure_no_auth
        {
            return Err(value(
                "api.keys",
                format!(
                    "control.listen {} is reachable from other hosts and no API key is set: \
                     set {} (id:secret) or api.keys, or pass --insecure-no-auth",
                    self.control_listen,
                    crate::auth::API_KEYS_ENV
                ),
            ));
        }
        self.check_http_auth()?;
        Ok(self)
    }

    /// Refuses an HTTP listener off loopback without API keys: its demo
    /// signalling, WHIP and WHEP would let anyone who reaches it publish.
    /// (`--insecure-no-auth` is about the control API and does not lift this.)
    pub fn check_http_auth(&self) -> Result<(), ConfigError> {
        match self.http_listen {
            Some(a) if !a.ip().is_loopback() && self.api_keys.is_empty() => Err(value(
                "http.listen",
                format!(
                    "{a} is not a loopback address and no API key is set: off loopback the demo \
                     signalling, WHIP and WHEP need room tokens, which need API keys: set {} \
                     (id:secret; tokens are verified with the secret), or set http.listen to \
                     \"\" to turn it off",
                    crate::auth::API_KEYS_ENV
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The resolved defaults, for tests and embedding.
    pub fn defaults_for_test() -> Self {
        let mut c = Config::default();
        c.media.workers = 2;
        c.validate(2)
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    /// Loopback, ephemeral ports everywhere, no metrics and no HTTP
    /// listener: what tests use.
    pub fn ephemeral(workers: usize) -> Self {
        let mut c = Config::default();
        c.control.listen = "127.0.0.1:0".into();
        c.metrics.listen = String::new();
        c.http.listen = String::new();
        c.media.port_start = 0;
        c.media.workers = workers.clamp(1, 1024);
        c.validate(workers)
            .unwrap_or_else(|e| unreachable!("ephemeral defaults are valid: {e}"))
    }
}
