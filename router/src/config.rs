//! Daemon configuration: embedded defaults, then a TOML file, then
//! environment variables, then command-line flags. Validated as a whole
//! before any port is bound; every error names the offending key.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Default of `media.keyframe_interval_ms`.
const DEFAULT_KEYFRAME_INTERVAL_MS: u64 =
    crate::media::core::PUBLISHER_KEYFRAME_INTERVAL.as_millis() as u64;
/// Largest `media.keyframe_interval_ms`: longer would leave a subscriber
/// whose keyframe request was lost without a picture for that long.
const MAX_KEYFRAME_INTERVAL_MS: u64 = 5000;

/// The whole configuration of one router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC control API.
    pub control: ControlConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The media plane.
    pub media: MediaConfig,
    /// Limits on what the API lets integrators create.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// This router's identity.
    pub node: NodeConfig,
    /// Links to other routers.
    pub cascade: CascadeConfig,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `node.id`: this router's node id (must match its cascade certificate).
    pub id: String,
    /// `node.region`: its region, e.g. `eu-de-fra` (residency policies match against it).
    pub region: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: "local".into(),
            region: String::new(),
        }
    }
}

/// `[cascade]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// `cascade.listen`: QUIC listen address; empty disables cascading.
    pub listen: String,
    /// `cascade.ca`: the cluster CA certificate (PEM).
    pub ca: String,
    /// `cascade.cert`: this node's certificate (PEM).
    pub cert: String,
    /// `cascade.key`: this node's private key (PEM).
    pub key: String,
    /// `cascade.peers`: other routers, `node_id=host:port`.
    pub peers: Vec<String>,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// `control.listen`: gRPC listen address.
    pub listen: String,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `metrics.listen`: Prometheus HTTP listen address; empty disables it.
    pub listen: String,
}

/// `[media]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// `media.bind`: IP address the UDP media sockets bind to.
    pub bind: String,
    /// `media.port_start`: first UDP port (worker i uses `port_start + i`); 0 = ephemeral.
    pub port_start: u16,
    /// `media.workers`: number of media workers; 0 = one per core.
    pub workers: usize,
    /// `media.advertise`: IP put in ICE candidates; empty = the bind address.
    pub advertise: String,
    /// `media.bus_queue`: capacity (in batches) of each worker's fan-out inbox.
    pub bus_queue: usize,
    /// `media.rtx_cache`: packets kept per outgoing video stream to answer NACKs.
    pub rtx_cache: usize,
    /// `media.keyframe_interval_ms`: minimum time between two keyframe
    /// requests to one publisher layer.
    pub keyframe_interval_ms: u64,
    /// `media.room_share`: the expected load (in streams) up to which a
    /// room's sessions share a worker; 0 places every session on the least
    /// loaded worker (see `media::placement`).
    pub room_share: u32,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `limits.max_rooms`
    pub max_rooms: usize,
    /// `limits.max_sessions_per_room`
    pub max_sessions_per_room: usize,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `log.level`: a tracing filter such as `info` or `kaskade=debug`.
    pub level: String,
    /// `log.ips`: include IP addresses in logs (off by default).
    pub ips: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            port_start: 40000,
            workers: 0,
            advertise: String::new(),
            bus_queue: 1024,
            rtx_cache: crate::media::rtc::DEFAULT_RTX_CACHE,
            keyframe_interval_ms: DEFAULT_KEYFRAME_INTERVAL_MS,
            room_share: crate::media::placement::ROOM_SHARE_STREAMS,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rooms: 10_000,
            max_sessions_per_room: 100,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            ips: false,
        }
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The path given.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The path given.
        path: String,
        /// toml's message, which names the key and line.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for {key}: {reason}")]
    Value {
        /// The key, e.g. `media.bind`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Overrides from the command line; `None` leaves the value as it is.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--control-listen`
    pub control_listen: Option<String>,
    /// `--metrics-listen`
    pub metrics_listen: Option<String>,
    /// `--media-bind`
    pub media_bind: Option<String>,
    /// `--media-port-start`
    pub media_port_start: Option<String>,
    /// `--workers`
    pub media_workers: Option<String>,
    /// `--advertise`
    pub media_advertise: Option<String>,
    /// `--bus-queue`
    pub media_bus_queue: Option<String>,
    /// `--rtx-cache`
    pub media_rtx_cache: Option<String>,
    /// `--keyframe-interval-ms`
    pub media_keyframe_interval_ms: Option<String>,
    /// `--room-share`
    pub media_room_share: Option<String>,
    /// `--log-level`
    pub log_level: Option<String>,
    /// `--log-ips`
    pub log_ips: Option<String>,
    /// `--node-id`
    pub node_id: Option<String>,
    /// `--region`
    pub node_region: Option<String>,
    /// `--cascade-listen`
    pub cascade_listen: Option<String>,
    /// `--cascade-ca`
    pub cascade_ca: Option<String>,
    /// `--cascade-cert`
    pub cascade_cert: Option<String>,
    /// `--cascade-key`
    pub cascade_key: Option<String>,
    /// `--peer` (repeatable) / `KASKADE_CASCADE_PEERS` (comma-separated)
    pub cascade_peers: Option<Vec<String>>,
}

/// The resolved, validated configuration the daemon runs with.
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
    /// Bus inbox capacity, in batches.
    pub bus_queue: usize,
    /// RTX cache per outgoing video stream, in packets.
    pub rtx_cache: usize,
    /// Minimum time between two keyframe requests to one publisher layer.
    pub keyframe_interval: Duration,
    /// How sessions are placed on workers.
    pub placement: crate::media::placement::Policy,
    /// Room limit.
    pub max_rooms: usize,
    /// Sessions per room limit.
    pub max_sessions_per_room: usize,
    /// Tracing filter.
    pub log_level: String,
    /// Whether logs may carry IP addresses.
    pub log_ips: bool,
    /// This router's node id.
    pub node_id: String,
    /// This router's region (empty: none).
    pub region: String,
    /// Cascade settings, if cascading is enabled.
    pub cascade: Option<CascadeResolved>,
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
    pub ca: std::path::PathBuf,
    /// Node certificate file.
    pub cert: std::path::PathBuf,
    /// Node key file.
    pub key: std::path::PathBuf,
    /// Known peers.
    pub peers: Vec<PeerAddr>,
}

/// Whether a node id or region name is well formed: lowercase letters,
/// digits and '-', 1 to 63 characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Config {
    /// Reads a TOML file on top of the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|reason| ConfigError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses TOML text on top of the defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Applies `KASKADE_*` environment variables read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let o = Overrides {
            control_listen: get("KASKADE_CONTROL_LISTEN"),
            metrics_listen: get("KASKADE_METRICS_LISTEN"),
            media_bind: get("KASKADE_MEDIA_BIND"),
            media_port_start: get("KASKADE_MEDIA_PORT_START"),
            media_workers: get("KASKADE_MEDIA_WORKERS"),
            media_advertise: get("KASKADE_MEDIA_ADVERTISE"),
            media_bus_queue: get("KASKADE_MEDIA_BUS_QUEUE"),
            media_rtx_cache: get("KASKADE_MEDIA_RTX_CACHE"),
            media_keyframe_interval_ms: get("KASKADE_MEDIA_KEYFRAME_INTERVAL_MS"),
            media_room_share: get("KASKADE_MEDIA_ROOM_SHARE"),
            log_level: get("KASKADE_LOG_LEVEL"),
            log_ips: get("KASKADE_LOG_IPS"),
            node_id: get("KASKADE_NODE_ID"),
            node_region: get("KASKADE_NODE_REGION"),
            cascade_listen: get("KASKADE_CASCADE_LISTEN"),
            cascade_ca: get("KASKADE_CASCADE_CA"),
            cascade_cert: get("KASKADE_CASCADE_CERT"),
            cascade_key: get("KASKADE_CASCADE_KEY"),
            cascade_peers: get("KASKADE_CASCADE_PEERS").map(|v| {
                v.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            }),
        };
        self.apply(&o)?;
        if let Some(v) = get("KASKADE_LIMITS_MAX_ROOMS") {
            self.limits.max_rooms = parse_num("limits.max_rooms", &v)?;
        }
        if let Some(v) = get("KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM") {
            self.limits.max_sessions_per_room = parse_num("limits.max_sessions_per_room", &v)?;
        }
        Ok(())
    }

    /// Applies overrides (from flags or the environment).
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.control_listen {
            self.control.listen = v.clone();
        }
        if let Some(v) = &o.metrics_listen {
            self.metrics.listen = v.clone();
        }
        if let Some(v) = &o.media_bind {
            self.media.bind = v.clone();
        }
        if let Some(v) = &o.media_port_start {
            self.media.port_start = parse_num("media.port_start", v)?;
        }
        if let Some(v) = &o.media_workers {
            self.media.workers = parse_num("media.workers", v)?;
        }
        if let Some(v) = &o.media_advertise {
            self.media.advertise = v.clone();
        }
        if let Some(v) = &o.media_bus_queue {
            self.media.bus_queue = parse_num("media.bus_queue", v)?;
        }
        if let Some(v) = &o.media_rtx_cache {
            self.media.rtx_cache = parse_num("media.rtx_cache", v)?;
        }
        if let Some(v) = &o.media_keyframe_interval_ms {
            self.media.keyframe_interval_ms = parse_num("media.keyframe_interval_ms", v)?;
        }
        if let Some(v) = &o.media_room_share {
            self.media.room_share = parse_num("media.room_share", v)?;
        }
        if let Some(v) = &o.log_level {
            self.log.level = v.clone();
        }
        if let Some(v) = &o.node_id {
            self.node.id = v.clone();
        }
        if let Some(v) = &o.node_region {
            self.node.region = v.clone();
        }
        if let Some(v) = &o.cascade_listen {
            self.cascade.listen = v.clone();
        }
        if let Some(v) = &o.cascade_ca {
            self.cascade.ca = v.clone();
        }
        if let Some(v) = &o.cascade_cert {
            self.cascade.cert = v.clone();
        }
        if let Some(v) = &o.cascade_key {
            self.cascade.key = v.clone();
        }
        if let Some(v) = &o.cascade_peers {
            self.cascade.peers = v.clone();
        }
        if let Some(v) = &o.log_ips {
            self.log.ips = match v.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::Value {
                        key: "log.ips",
                        reason: format!("{v:?} is not a boolean"),
                    })
                }
            };
        }
        Ok(())
    }

    /// Checks every value and resolves defaults that depend on the machine.
    pub fn resolve(&self, cores: usize) -> Result<Resolved, ConfigError> {
        let control_listen = parse_sock("control.listen", &self.control.listen)?;
        let metrics_listen = if self.metrics.listen.is_empty() {
            None
        } else {
            Some(parse_sock("metrics.listen", &self.metrics.listen)?)
        };
        let media_bind: IpAddr = self.media.bind.parse().map_err(|_| ConfigError::Value {
            key: "media.bind",
            reason: format!("{:?} is not an IP address", self.media.bind),
        })?;
        let advertise = if self.media.advertise.is_empty() {
            if media_bind.is_unspecified() {
                return Err(ConfigError::Value {
                    key: "media.advertise",
                    reason: format!(
                        "must be set when media.bind is {media_bind}: browsers need a concrete address"
                    ),
                });
            }
            media_bind
        } else {
            let ip: IpAddr = self
                .media
                .advertise
                .parse()
                .map_err(|_| ConfigError::Value {
                    key: "media.advertise",
                    reason: format!("{:?} is not an IP address", self.media.advertise),
                })?;
            if ip.is_unspecified() {
                return Err(ConfigError::Value {
                    key: "media.advertise",
                    reason: "must be a concrete address, not 0.0.0.0 or ::".into(),
                });
            }
            ip
        };
        let workers = if self.media.workers == 0 {
            cores.max(1)
        } else {
            self.media.workers
        };
        if workers > 1024 {
            return Err(ConfigError::Value {
                key: "media.workers",
                reason: format!("{workers} is more than 1024"),
            });
        }
        if self.media.port_start != 0 && usize::from(self.media.port_start) + workers > 65536 {
            return Err(ConfigError::Value {
                key: "media.port_start",
                reason: format!(
                    "{} + {workers} workers runs past port 65535",
                    self.media.port_start
                ),
            });
        }
        if self.media.bus_queue == 0 {
            return Err(ConfigError::Value {
                key: "media.bus_queue",
                reason: "must be at least 1".into(),
            });
        }
        if !(32..=8192).contains(&self.media.rtx_cache) {
            return Err(ConfigError::Value {
                key: "media.rtx_cache",
                reason: "must be between 32 and 8192 packets".into(),
            });
        }
        if self.media.keyframe_interval_ms > MAX_KEYFRAME_INTERVAL_MS {
            return Err(ConfigError::Value {
                key: "media.keyframe_interval_ms",
                reason: format!("must be at most {MAX_KEYFRAME_INTERVAL_MS} ms"),
            });
        }
        if self.limits.max_rooms == 0 {
            return Err(ConfigError::Value {
                key: "limits.max_rooms",
                reason: "must be at least 1".into(),
            });
        }
        if self.limits.max_sessions_per_room == 0 {
            return Err(ConfigError::Value {
                key: "limits.max_sessions_per_room",
                reason: "must be at least 1".into(),
            });
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::Value {
                key: "log.level",
                reason: format!("{:?} is not a valid log filter", self.log.level),
            });
        }
        if !valid_name(&self.node.id) {
            return Err(ConfigError::Value {
                key: "node.id",
                reason: format!(
                    "{:?} must be 1-63 lowercase letters, digits or '-'",
                    self.node.id
                ),
            });
        }
        if !self.node.region.is_empty() && !valid_name(&self.node.region) {
            return Err(ConfigError::Value {
                key: "node.region",
                reason: format!(
                    "{:?} must be 1-63 lowercase letters, digits or '-'",
                    self.node.region
                ),
            });
        }
        let cascade = self.resolve_cascade()?;
        Ok(Resolved {
            control_listen,
            metrics_listen,
            media_bind,
            media_port_start: self.media.port_start,
            workers,
            advertise,
            bus_queue: self.media.bus_queue,
            rtx_cache: self.media.rtx_cache,
            keyframe_interval: Duration::from_millis(self.media.keyframe_interval_ms),
            placement: match self.media.room_share {
                0 => crate::media::placement::Policy::LeastLoaded,
                share => crate::media::placement::Policy::Rooms { share },
            },
            max_rooms: self.limits.max_rooms,
            max_sessions_per_room: self.limits.max_sessions_per_room,
            log_level: self.log.level.clone(),
            log_ips: self.log.ips,
            node_id: self.node.id.clone(),
            region: self.node.region.clone(),
            cascade,
        })
    }

    fn resolve_cascade(&self) -> Result<Option<CascadeResolved>, ConfigError> {
        let c = &self.cascade;
        if c.listen.is_empty() {
            if !c.peers.is_empty() {
                return Err(ConfigError::Value {
                    key: "cascade.peers",
                    reason: "needs cascade.listen (cascading is off)".into(),
                });
            }
            return Ok(None);
        }
        let listen = parse_sock("cascade.listen", &c.listen)?;
        let file = |key: &'static str, v: &str| -> Result<std::path::PathBuf, ConfigError> {
            if v.is_empty() {
                return Err(ConfigError::Value {
                    key,
                    reason: "is required when cascade.listen is set".into(),
                });
            }
            Ok(std::path::PathBuf::from(v))
        };
        let mut peers = Vec::new();
        for p in &c.peers {
            let Some((id, addr)) = p.split_once('=') else {
                return Err(ConfigError::Value {
                    key: "cascade.peers",
                    reason: format!("{p:?} is not node_id=host:port"),
                });
            };
            if !valid_name(id) || addr.rsplit_once(':').is_none() {
                return Err(ConfigError::Value {
                    key: "cascade.peers",
                    reason: format!("{p:?} is not node_id=host:port"),
                });
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
        }))
    }
}

fn parse_sock(key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| ConfigError::Value {
        key,
        reason: format!("{v:?} is not an address like 127.0.0.1:50051"),
    })
}

fn parse_num<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::Value {
        key,
        reason: format!("{v:?} is not a valid number"),
    })
}

impl Resolved {
    /// The resolved defaults, for tests and embedding.
    pub fn defaults_for_test() -> Self {
        let mut c = Config::default();
        c.media.workers = 2;
        c.resolve(2)
            .unwrap_or_else(|_| unreachable!("defaults are valid"))
    }

    /// Loopback, ephemeral ports everywhere: what tests use.
    pub fn ephemeral(workers: usize) -> Self {
        Resolved {
            control_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            metrics_listen: None,
            media_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            media_port_start: 0,
            workers,
            advertise: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bus_queue: 1024,
            rtx_cache: crate::media::rtc::DEFAULT_RTX_CACHE,
            keyframe_interval: Duration::from_millis(DEFAULT_KEYFRAME_INTERVAL_MS),
            placement: crate::media::placement::Policy::default(),
            max_rooms: 10_000,
            max_sessions_per_room: 100,
            log_level: "info".into(),
            log_ips: false,
            node_id: "local".into(),
            region: String::new(),
            cascade: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let r = Config::default().resolve(4).unwrap();
        assert_eq!(r.control_listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(r.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(r.workers, 4);
        assert_eq!(r.media_port_start, 40000);
        assert_eq!(r.advertise, r.media_bind);
        assert!(!r.log_ips);
    }

    #[test]
    fn file_then_env_then_flags() {
        let mut c = Config::from_toml("[media]\nworkers = 3\nport_start = 41000\n").unwrap();
        c.apply_env(|k| (k == "KASKADE_MEDIA_WORKERS").then(|| "5".to_string()))
            .unwrap();
        assert_eq!(c.media.workers, 5);
        assert_eq!(c.media.port_start, 41000);
        c.apply(&Overrides {
            media_workers: Some("7".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.resolve(2).unwrap().workers, 7);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[media]\nworkerz = 3\n").unwrap_err();
        assert!(err.contains("workerz"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml("[media]\nworkers = \"many\"\n").unwrap_err();
        assert!(err.contains("workers"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.media.bind = "0.0.0.0".into();
        let e = c.resolve(2).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Value {
                    key: "media.advertise",
                    ..
                }
            ),
            "{e}"
        );
        c.media.advertise = "203.0.113.7".into();
        let r = c.resolve(2).unwrap();
        assert_eq!(r.advertise, "203.0.113.7".parse::<IpAddr>().unwrap());

        let mut c = Config::default();
        c.control.listen = "localhost".into();
        let e = c.resolve(2).unwrap_err();
        assert!(e.to_string().contains("control.listen"), "{e}");

        let mut c = Config::default();
        let e = c
            .apply_env(|k| (k == "KASKADE_MEDIA_PORT_START").then(|| "70000".into()))
            .unwrap_err();
        assert!(e.to_string().contains("media.port_start"), "{e}");

        c.media.port_start = 65530;
        c.media.workers = 8;
        assert!(c
            .resolve(2)
            .unwrap_err()
            .to_string()
            .contains("media.port_start"));
    }

    #[test]
    fn node_and_cascade_keys_are_checked() {
        let mut c = Config::from_toml(
            "[node]\nid = \"fra-1\"\nregion = \"eu-de-fra\"\n[cascade]\nlisten = \"127.0.0.1:7000\"\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\npeers = [\"ams-1=127.0.0.1:7001\"]\n",
        )
        .unwrap();
        let r = c.resolve(1).unwrap();
        assert_eq!(r.region, "eu-de-fra");
        let cas = r.cascade.unwrap();
        assert_eq!(cas.peers[0].node_id, "ams-1");
        c.cascade.peers = vec!["nope".into()];
        assert!(c
            .resolve(1)
            .unwrap_err()
            .to_string()
            .contains("cascade.peers"));
        c.cascade.peers.clear();
        c.cascade.key.clear();
        assert!(c
            .resolve(1)
            .unwrap_err()
            .to_string()
            .contains("cascade.key"));
        c.node.region = "EU".into();
        assert!(c
            .resolve(1)
            .unwrap_err()
            .to_string()
            .contains("node.region"));
    }

    /// Whether resolving `c` fails on `key`.
    fn refuses(c: &Config, key: &str) -> bool {
        c.resolve(1).is_err_and(|e| e.to_string().contains(key))
    }

    #[test]
    fn room_share_sets_the_placement() {
        use crate::media::placement::{Policy, ROOM_SHARE_STREAMS};
        let c = Config::default();
        assert_eq!(
            c.resolve(1).unwrap().placement,
            Policy::Rooms {
                share: ROOM_SHARE_STREAMS
            }
        );
        let mut c = Config::from_toml("[media]\nroom_share = 40\n").unwrap();
        assert_eq!(c.resolve(1).unwrap().placement, Policy::Rooms { share: 40 });
        c.apply_env(|k| (k == "KASKADE_MEDIA_ROOM_SHARE").then(|| "0".to_string()))
            .unwrap();
        assert_eq!(c.resolve(1).unwrap().placement, Policy::LeastLoaded);
    }

    #[test]
    fn keyframe_interval_is_bounded() {
        let c = Config::from_toml("[media]\nkeyframe_interval_ms = 100\n").unwrap();
        assert_eq!(
            c.resolve(1).unwrap().keyframe_interval,
            Duration::from_millis(100)
        );
        let mut c = Config::default();
        c.apply_env(|k| (k == "KASKADE_MEDIA_KEYFRAME_INTERVAL_MS").then(|| "0".into()))
            .unwrap();
        assert_eq!(c.resolve(1).unwrap().keyframe_interval, Duration::ZERO);
        c.apply(&Overrides {
            media_keyframe_interval_ms: Some("60000".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(refuses(&c, "media.keyframe_interval_ms"));
        assert_eq!(
            Config::default().resolve(1).unwrap().keyframe_interval,
            crate::media::core::PUBLISHER_KEYFRAME_INTERVAL
        );
    }

    #[test]
    fn rtx_cache_is_bounded() {
        let mut c = Config::from_toml("[media]\nrtx_cache = 300\n").unwrap();
        assert_eq!(c.resolve(1).unwrap().rtx_cache, 300);
        c.apply(&Overrides {
            media_rtx_cache: Some("8".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(refuses(&c, "media.rtx_cache"));
        assert_eq!(
            Config::default().resolve(1).unwrap().rtx_cache,
            crate::media::rtc::DEFAULT_RTX_CACHE
        );
    }

    #[test]
    fn metrics_can_be_disabled() {
        let mut c = Config::default();
        c.metrics.listen = String::new();
        assert_eq!(c.resolve(1).unwrap().metrics_listen, None);
    }
}
