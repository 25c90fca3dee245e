//! Every config key, declared once: section, name, type, default, then
//! (unless the key lives only in the file) its environment variable, flag
//! and `--help` placeholder, then the rule its value must pass. The doc
//! comment is the key's `--help` text.
//!
//! New keys follow `KASKADE_<SECTION>_<KEY>` and `--section-key` (a secret
//! has `flag ""`: the environment gives it, never a command line); numbers
//! need a `Rule::Range` (a test checks both). Document the key in
//! docs/operations.md and deploy/kaskade.toml (a test checks that too).

use super::table::config_keys;
use super::value::{Rule, Span};
use std::time::Duration;

/// Largest `media.keyframe_interval_ms`: longer would leave a subscriber
/// whose keyframe request was lost without a picture for that long.
const MAX_KEYFRAME_INTERVAL_MS: u64 = 5000;

config_keys! {
    /// `[control]`: the gRPC control API.
    [control] ControlConfig {
        /// gRPC control API address. Port 0 picks any free port.
        listen: String = "127.0.0.1:50051".into(),
            env "KASKADE_CONTROL_LISTEN", flag "control-listen", value "ADDR",
            rule Rule::SocketAddr;
        /// TLS certificate chain (PEM) of the control API; with control.tls_key it
        /// turns TLS on. Reloaded on SIGHUP.
        tls_cert: String = String::new(),
            env "KASKADE_CONTROL_TLS_CERT", flag "control-tls-cert", value "FILE",
            rule Rule::Any;
        /// TLS private key (PEM) of the control API.
        tls_key: String = String::new(),
            env "KASKADE_CONTROL_TLS_KEY", flag "control-tls-key", value "FILE",
            rule Rule::Any;
        /// CA (PEM) that client certificates must chain to; set, it turns on mutual TLS.
        tls_client_ca: String = String::new(),
            env "KASKADE_CONTROL_TLS_CLIENT_CA", flag "control-tls-client-ca", value "FILE",
            rule Rule::Any;
        /// Most control connections open at once; more are closed as they come.
        max_connections: usize = 1024,
            env "KASKADE_CONTROL_MAX_CONNECTIONS", flag "control-max-connections", value "N",
            rule Rule::Range(1, 1_000_000);
        /// Most concurrent gRPC calls (HTTP/2 streams) on one connection.
        max_concurrent_streams: u32 = 256,
            env "KASKADE_CONTROL_MAX_CONCURRENT_STREAMS", flag "control-max-concurrent-streams",
            value "N",
            rule Rule::Range(1, 65536);
        /// A connection that moves no byte either way for this long is closed (an idle
        /// HTTP/2 client answers keepalive pings, so it stays).
        idle_timeout: Span = Span::secs(120),
            env "KASKADE_CONTROL_IDLE_TIMEOUT", flag "control-idle-timeout", value "DURATION",
            rule Rule::Between(Duration::from_secs(1), Duration::from_secs(24 * 3600));
        /// Interval of HTTP/2 keepalive pings; a peer that does not answer one within
        /// 20 s is disconnected.
        keepalive_interval: Span = Span::secs(30),
            env "KASKADE_CONTROL_KEEPALIVE_INTERVAL", flag "control-keepalive-interval",
            value "DURATION",
            rule Rule::Between(Duration::from_secs(1), Duration::from_secs(3600));
    }

    /// `[api]`: who may call the control API.
    [api] ApiConfig {
        /// API keys as [[api.keys]] tables of id and sha256 (the SHA-256 of the secret in
        /// hex), so the file holds no secret. KASKADE_API_KEYS adds keys as id:secret pairs.
        keys: Vec<crate::auth::ApiKeyEntry> = Vec::new(),
            rule Rule::Any;
    }

    /// `[metrics]`: the Prometheus and health endpoint.
    [metrics] MetricsConfig {
        /// Prometheus endpoint address (`/metrics`). An empty string disables it.
        listen: String = "127.0.0.1:9464".into(),
            env "KASKADE_METRICS_LISTEN", flag "metrics-listen", value "ADDR",
            rule Rule::SocketAddrOrOff;
        /// Most metrics connections open at once; more are closed as they come.
        max_connections: usize = 64,
            env "KASKADE_METRICS_MAX_CONNECTIONS", flag "metrics-max-connections", value "N",
            rule Rule::Range(1, 1_000_000);
        /// A metrics connection that moves no byte either way for this long is closed
        /// (longer than the scrape interval keeps a scraper's connection), and so is
        /// one whose request head is not complete this long after it opened or after
        /// its previous answer.
        idle_timeout: Span = Span::secs(120),
            env "KASKADE_METRICS_IDLE_TIMEOUT", flag "metrics-idle-timeout", value "DURATION",
            rule Rule::Between(Duration::from_secs(1), Duration::from_secs(24 * 3600));
    }

    /// `[media]`: the media plane.
    [media] MediaConfig {
        /// IP the UDP media sockets bind to. 0.0.0.0 needs media.advertise.
        bind: String = "127.0.0.1".into(),
            env "KASKADE_MEDIA_BIND", flag "media-bind", value "IP",
            rule Rule::Ip;
        /// First UDP media port; worker i uses port_start + i. 0 picks ephemeral ports.
        port_start: u16 = 40000,
            env "KASKADE_MEDIA_PORT_START", flag "media-port-start", value "PORT",
            rule Rule::Range(0, 65535);
        /// Number of media worker threads, each with one UDP port. 0 means one per core.
        workers: usize = 0,
            env "KASKADE_MEDIA_WORKERS", flag "workers", value "N",
            rule Rule::Range(0, 1024);
        /// IP put into ICE candidates; empty means the bind address.
        advertise: String = String::new(),
            env "KASKADE_MEDIA_ADVERTISE", flag "advertise", value "IP",
            rule Rule::IpOrEmpty;
        /// Capacity, in batches, of each worker's fan-out inbox.
        /// When an inbox is full, video is dropped and counted.
        bus_queue: usize = 1024,
            env "KASKADE_MEDIA_BUS_QUEUE", flag "bus-queue", value "N",
            rule Rule::Range(1, 1 << 20);
        /// Packets kept per outgoing video stream to answer NACKs.
        rtx_cache: usize = crate::media::rtc::DEFAULT_RTX_CACHE,
            env "KASKADE_MEDIA_RTX_CACHE", flag "rtx-cache", value "N",
            rule Rule::Range(32, 8192);
        /// Minimum time, in ms, between two keyframe requests to one publisher layer.
        keyframe_interval_ms: u64 =
            crate::media::core::PUBLISHER_KEYFRAME_INTERVAL.as_millis() as u64,
            env "KASKADE_MEDIA_KEYFRAME_INTERVAL_MS", flag "keyframe-interval-ms", value "MS",
            rule Rule::Range(0, MAX_KEYFRAME_INTERVAL_MS);
        /// Expected load, in streams (sessions x sources), up to which a room's
        /// sessions share one worker; 0 places every session on the least loaded worker.
        room_share: u32 = crate::media::placement::ROOM_SHARE_STREAMS,
            env "KASKADE_MEDIA_ROOM_SHARE", flag "media-room-share", value "STREAMS",
            rule Rule::Range(0, 1_000_000);
        /// ICE-TCP listener address, e.g. 0.0.0.0:443: one TCP port for clients that cannot
        /// reach UDP (passive candidates at media.advertise); empty: off.
        tcp_listen: String = String::new(),
            env "KASKADE_MEDIA_TCP_LISTEN", flag "media-tcp-listen", value "ADDR",
            rule Rule::SocketAddrOrOff;
        /// Every worker on one UDP port, media.port_start (SO_REUSEPORT): true or false.
        single_port: bool = false,
            env "KASKADE_MEDIA_SINGLE_PORT", flag "media-single-port", value "BOOL",
            rule Rule::Any;
    }

    /// `[limits]`: what the API lets integrators create.
    [limits] LimitsConfig {
        /// Maximum number of rooms.
        max_rooms: usize = 10_000,
            env "KASKADE_LIMITS_MAX_ROOMS", flag "limits-max-rooms", value "N",
            rule Rule::Range(1, 1_000_000);
        /// Sessions per room when CreateRoom gives max_sessions = 0 (and the most it may ask for).
        max_sessions_per_room: u32 = 100,
            env "KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM", flag "limits-max-sessions-per-room",
            value "N",
            rule Rule::Range(1, 1_000_000);
        /// Sessions on this router.
        max_sessions: usize = 10_000,
            env "KASKADE_LIMITS_MAX_SESSIONS", flag "limits-max-sessions", value "N",
            rule Rule::Range(1, 1_000_000);
        /// Sessions created but not yet connected (each holds a WebRTC stack for up to 30 s).
        max_pending_sessions: usize = 1_000,
            env "KASKADE_LIMITS_MAX_PENDING_SESSIONS", flag "limits-max-pending-sessions",
            value "N",
            rule Rule::Range(1, 1_000_000);
        /// Published tracks on this router, tracks relayed from other routers included.
        max_tracks: usize = 20_000,
            env "KASKADE_LIMITS_MAX_TRACKS", flag "limits-max-tracks", value "N",
            rule Rule::Range(1, 10_000_000);
        /// Audio and video tracks one session may publish.
        max_tracks_per_session: usize = 16,
            env "KASKADE_LIMITS_MAX_TRACKS_PER_SESSION", flag "limits-max-tracks-per-session",
            value "N",
            rule Rule::Range(1, 1024);
        /// Tracks one session may subscribe to.
        max_subscriptions_per_session: usize = 512,
            env "KASKADE_LIMITS_MAX_SUBSCRIPTIONS_PER_SESSION",
            flag "limits-max-subscriptions-per-session", value "N",
            rule Rule::Range(1, 10_000);
        /// Media sections (m= lines) in one SDP offer.
        max_media_lines: usize = 600,
            env "KASKADE_LIMITS_MAX_MEDIA_LINES", flag "limits-max-media-lines", value "N",
            rule Rule::Range(1, 20_000);
        /// WatchEvents streams open at once.
        max_watchers: usize = 1_000,
            env "KASKADE_LIMITS_MAX_WATCHERS", flag "limits-max-watchers", value "N",
            rule Rule::Range(1, 100_000);
    }

    /// `[http]`: the HTTP listener (demo app, kaskade.js, demo signalling).
    [http] HttpConfig {
        /// HTTP listen address of the demo app, kaskade.js, the demo signalling and
        /// WHIP/WHEP; empty disables it. Off loopback it needs API keys (then every
        /// signalling, WHIP and WHEP request needs a room token).
        listen: String = "127.0.0.1:8080".into(),
            env "KASKADE_HTTP_LISTEN", flag "http-listen", value "ADDR",
            rule Rule::SocketAddrOrOff;
        /// TLS certificate chain (PEM) of the HTTP listener; with http.tls_key it serves
        /// https (browsers need it for the camera off localhost). Reloaded on SIGHUP.
        tls_cert: String = String::new(),
            env "KASKADE_HTTP_TLS_CERT", flag "http-tls-cert", value "FILE",
            rule Rule::Any;
        /// TLS private key (PEM) of the HTTP listener.
        tls_key: String = String::new(),
            env "KASKADE_HTTP_TLS_KEY", flag "http-tls-key", value "FILE",
            rule Rule::Any;
        /// Most HTTP connections open at once, TLS handshakes included; more are closed
        /// as they come.
        max_connections: usize = 1024,
            env "KASKADE_HTTP_MAX_CONNECTIONS", flag "http-max-connections", value "N",
            rule Rule::Range(1, 1_000_000);
        /// An HTTP connection that moves no byte either way for this long is closed (an
        /// event stream stays: it sends a keep-alive comment every third of this, at
        /// most every 15 s), and so is one whose request head is not complete this long
        /// after it opened or after its previous answer; a request body must arrive
        /// within it too (at most 30 s; else 408).
        idle_timeout: Span = Span::secs(60),
            env "KASKADE_HTTP_IDLE_TIMEOUT", flag "http-idle-timeout", value "DURATION",
            rule Rule::Between(Duration::from_secs(1), Duration::from_secs(24 * 3600));
    }

    /// `[webhooks]`: an HTTP POST per event.
    [webhooks] WebhooksConfig {
        /// http:// or https:// URLs each event is POSTed to (flag repeatable, env comma-separated); empty: off.
        urls: Vec<String> = Vec::new(),
            env "KASKADE_WEBHOOKS_URLS", flag "webhooks-url", value "URL",
            rule Rule::Any;
        /// Only these event kinds (e.g. session_closed); empty: every kind.
        events: Vec<String> = Vec::new(),
            env "KASKADE_WEBHOOKS_EVENTS", flag "webhooks-event", value "KIND",
            rule Rule::Any;
        /// The id of the key that signs the bodies, sent with each request.
        key_id: String = String::new(),
            env "KASKADE_WEBHOOKS_KEY_ID", flag "webhooks-key-id", value "ID",
            rule Rule::Any;
        /// The signing secret (HMAC-SHA256), at least 16 bytes; required with urls.
        secret: String = String::new(),
            env "KASKADE_WEBHOOKS_SECRET", flag "", value "SECRET",
            rule Rule::Any;
        /// Events held per URL while its receiver is slow or down; beyond, dropped and counted.
        queue: usize = 1000,
            env "KASKADE_WEBHOOKS_QUEUE", flag "webhooks-queue", value "N",
            rule Rule::Range(1, 1_000_000);
        /// How long one delivery attempt may take, in ms.
        timeout_ms: u64 = 5000,
            env "KASKADE_WEBHOOKS_TIMEOUT_MS", flag "webhooks-timeout-ms", value "MS",
            rule Rule::Range(100, 60_000);
        /// PEM file of the CA certificates an https:// receiver's certificate must chain to;
        /// empty: the system's CA certificates.
        ca_file: String = String::new(),
            env "KASKADE_WEBHOOKS_CA_FILE", flag "webhooks-ca-file", value "PATH",
            rule Rule::Any;
        /// Include participant ids and metadata in the bodies: true or false.
        participant_data: bool = false,
            env "KASKADE_WEBHOOKS_PARTICIPANT_DATA", flag "webhooks-participant-data",
            value "BOOL",
            rule Rule::Any;
    }

    /// `[log]`: logging.
    [log] LogConfig {
        /// Log filter, RUST_LOG syntax (e.g. info,kaskade_router=debug).
        /// RUST_LOG is honoured when neither KASKADE_LOG_LEVEL nor --log-level is given.
        level: String = "info".into(),
            env "KASKADE_LOG_LEVEL", flag "log-level", value "FILTER",
            rule Rule::LogFilter;
        /// Include IP addresses in logs: true or false.
        ips: bool = false,
            env "KASKADE_LOG_IPS", flag "log-ips", value "BOOL",
            rule Rule::Any;
    }

    /// `[node]`: this router's identity.
    [node] NodeConfig {
        /// This router's node id (must match its cascade certificate).
        id: String = "local".into(),
            env "KASKADE_NODE_ID", flag "node-id", value "ID",
            rule Rule::Name;
        /// This router's region, e.g. eu-de-fra; residency policies match against it.
        region: String = String::new(),
            env "KASKADE_NODE_REGION", flag "region", value "REGION",
            rule Rule::NameOrEmpty;
    }

    /// `[cascade]`: links to other routers.
    [cascade] CascadeConfig {
        /// QUIC address for links to other routers; empty disables cascading.
        listen: String = String::new(),
            env "KASKADE_CASCADE_LISTEN", flag "cascade-listen", value "ADDR",
            rule Rule::SocketAddrOrOff;
        /// The cluster CA certificate (PEM); required with cascade.listen.
        ca: String = String::new(),
            env "KASKADE_CASCADE_CA", flag "cascade-ca", value "FILE",
            rule Rule::Any;
        /// This router's certificate (PEM), from `kaskade cert`.
        cert: String = String::new(),
            env "KASKADE_CASCADE_CERT", flag "cascade-cert", value "FILE",
            rule Rule::Any;
        /// This router's private key (PEM).
        key: String = String::new(),
            env "KASKADE_CASCADE_KEY", flag "cascade-key", value "FILE",
            rule Rule::Any;
        /// Routers to dial, as node_id=host:port (flag repeatable, env comma-separated).
        peers: Vec<String> = Vec::new(),
            env "KASKADE_CASCADE_PEERS", flag "peer", value "ID=ADDR",
            rule Rule::Any;
        /// Link rooms that this router and a peer both host, without LinkRoom: true or false.
        auto_link: bool = true,
            env "KASKADE_CASCADE_AUTO_LINK", flag "cascade-auto-link", value "BOOL",
            rule Rule::Any;
        /// What each link may send, in Mbit/s: QUIC's window follows this rate instead of
        /// shrinking on random loss, and relayed media beyond it (over 100 ms) is dropped and
        /// counted, not queued. Set it to the bandwidth kept for router-to-router traffic.
        link_rate_mbps: u64 = 100,
            env "KASKADE_CASCADE_LINK_RATE_MBPS", flag "cascade-link-rate-mbps", value "MBPS",
            rule Rule::Range(1, 100_000);
    }

    /// `[shutdown]`: draining on SIGTERM or RouterService.Drain.
    [shutdown] ShutdownConfig {
        /// How long open sessions may go on once the router drains; then they are
        /// closed and the router exits. 0 closes them at once.
        grace_period: Span = Span::secs(300),
            env "KASKADE_SHUTDOWN_GRACE_PERIOD", flag "shutdown-grace-period", value "DURATION",
            rule Rule::Between(Duration::ZERO, Duration::from_secs(24 * 3600));
    }
}
