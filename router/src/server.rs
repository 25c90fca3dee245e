//! Assembles a running router: media workers, the control plane, the gRPC
//! server and the metrics endpoint. Used by `main` and by the tests, which
//! start whole routers in-process or as processes.

use crate::auth::grpc::AuthLayer;
use crate::config::Resolved;
use crate::control::grpc_errors::ErrorCountLayer;
use crate::control::{Api, Control, Identity, Limits};
use crate::control_tls::TlsFiles;
use crate::control_tls::TlsState;
use crate::drain::{Lifecycle, RouterApi};
use crate::listener::ListenerLimits;
use crate::media::worker::{PreparedWorker, WorkerHandle};
use crate::media::{RtcFactory, WorkerCore, WorkerId};
use crate::metrics::{Metrics, WorkerMetrics};
use kaskade_protocol::v1::cascade_service_server::CascadeServiceServer;
use kaskade_protocol::v1::room_service_server::RoomServiceServer;
use kaskade_protocol::v1::router_service_server::RouterServiceServer;
use kaskade_protocol::v1::session_service_server::SessionServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// A peer that does not answer an HTTP/2 keepalive ping within this is
/// disconnected.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Crypto setup failed.
    #[error("{0}")]
    Crypto(String),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// The cascade could not start.
    #[error("{0}")]
    Cascade(String),
    /// Files the configuration names are unusable (TLS, cascade
    /// certificates): found before any port is bound.
    #[error("{0}")]
    Config(String),
    /// gRPC reflection setup failed.
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(String),
}

/// A router that is up.
pub struct Running {
    /// The bound gRPC address.
    pub control: SocketAddr,
    /// The bound metrics address.
    pub metrics: Option<SocketAddr>,
    /// The bound media addresses, by worker.
    pub media: Vec<SocketAddr>,
    /// The bound cascade (QUIC) address, if cascading is on.
    pub cascade: Option<SocketAddr>,
    /// The bound HTTP address (demo app, kaskade.js), if on.
    pub http: Option<SocketAddr>,
    /// Its base URL (`http://` or `https://` and the bound address), if on.
    pub http_url: Option<String>,
    /// The bound ICE-TCP listener address, if on.
    pub tcp: Option<SocketAddr>,
    tcp_handle: Option<crate::media::tcp::listener::TcpListenerHandle>,
    /// The control plane.
    pub plane: Arc<Control>,
    /// Serving or draining.
    pub lifecycle: Arc<Lifecycle>,
    tls: Option<Arc<TlsState>>,
    http_tls: Option<Arc<TlsState>>,
    cascade_handle: Option<crate::cascade::manager::CascadeHandle>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    grpc: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("control", &self.control)
            .field("media", &self.media)
            .finish()
    }
}

impl Running {
    /// The line `main` prints once the router is up (for scripts and tests).
    pub fn ready_line(&self) -> String {
        let media: Vec<String> = self.media.iter().map(|a| format!("\"{a}\"")).collect();
        let metrics = self
            .metrics
            .map(|m| format!("\"{m}\""))
            .unwrap_or_else(|| "null".into());
        let cascade = self
            .cascade
            .map(|c| format!("\"{c}\""))
            .unwrap_or_else(|| "null".into());
        let http = self
            .http
            .map(|h| format!("\"{h}\""))
            .unwrap_or_else(|| "null".into());
        let http_url = self
            .http_url
            .as_ref()
            .map(|u| format!("\"{u}\""))
            .unwrap_or_else(|| "null".into());
        let tcp = self
            .tcp
            .map(|t| format!("\"{t}\""))
            .unwrap_or_else(|| "null".into());
        format!(
            "KASKADE_READY {{\"control\":\"{}\",\"metrics\":{metrics},\"media\":[{}],\"cascade\":{cascade},\"http\":{http},\"http_url\":{http_url},\"tcp\":{tcp}}}",
            self.control,
            media.join(",")
        )
    }

    /// Starts draining (SIGTERM, `RouterService.Drain`): see [`crate::drain`].
    pub async fn start_drain(&self) -> kaskade_protocol::v1::DrainResponse {
        self.lifecycle.start_drain().await
    }

    /// Resolves once a drain has started and ended (every session closed,
    /// or the grace period over and the rest closed).
    pub async fn drained(&self) {
        self.lifecycle.run_drain().await
    }

    /// Reloads what can change while the router runs (SIGHUP): the TLS
    /// certificates of the control API, the HTTP listener and the cascade.
    /// New connections get the new configuration; open connections, links
    /// and sessions are untouched. All are tried; the first error is returned.
    pub async fn reload(&self) -> Result<(), String> {
        let control = match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        };
        let http = match &self.http_tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        };
        let cascade = match &self.cascade_handle {
            Some(c) => c.reload_tls().await.map_err(|e| format!("cascade: {e}")),
            None => Ok(()),
        };
        control.and(http).and(cascade)
    }

    /// Stops accepting API calls, closes every session, joins the workers.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut tcp) = self.tcp_handle.take() {
            let _ = tokio::task::spawn_blocking(move || tcp.stop()).await;
        }
        self.plane.shutdown_workers();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.grpc).await;
    }
}

/// Starts a router with a resolved configuration. Must run inside a tokio runtime.
pub async fn start(cfg: &Resolved, metrics: Metrics) -> Result<Running, StartError> {
    let (tls, http_tls) = preflight(cfg).map_err(StartError::Config)?;
    let webhook_tls = match &cfg.webhooks {
        Some(w) => crate::webhooks::tls_for(w).map_err(StartError::Config)?,
        None => None,
    };
    let factory = RtcFactory::new()
        .map_err(|e| StartError::Crypto(e.to_string()))?
        .with_rtx_cache(cfg.config.media.rtx_cache);

    // Media workers: bind every socket first, then start the threads with
    // the complete list of peers. In single-port mode every worker binds the
    // first one's address.
    let mut prepared: Vec<PreparedWorker> = Vec::with_capacity(cfg.workers);
    for i in 0..cfg.workers {
        let port = match (cfg.config.media.single_port, prepared.first()) {
            (true, Some(first)) => first.handle().bound.port(),
            (true, None) | (false, _) if cfg.media_port_start == 0 => 0,
            (true, None) => cfg.media_port_start,
            (false, _) => cfg.media_port_start + i as u16,
        };
        let addr = SocketAddr::new(cfg.media_bind, port);
        let w = PreparedWorker::new(
            WorkerId(i as u16),
            addr,
            cfg.config.media.single_port,
            cfg.config.media.bus_queue,
        )
        .map_err(|source| StartError::Bind {
            what: "media",
            addr,
            source,
        })?;
        prepared.push(w);
    }
    let tcp_listener =
        match cfg.tcp_listen {
            Some(addr) => Some(crate::media::tcp::listener::bind(addr).map_err(|source| {
                StartError::Bind {
                    what: "media TCP",
                    addr,
                    source,
                }
            })?),
            None => None,
        };
    // The passive ICE-TCP candidate: the advertised IP, the bound port.
    let tcp_candidate = match &tcp_listener {
        Some(l) => Some(SocketAddr::new(
            cfg.advertise,
            l.local_addr()
                .map_err(|source| StartError::Bind {
                    what: "media TCP",
                    addr: cfg
                        .tcp_listen
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    source,
                })?
                .port(),
        )),
        None => None,
    };
    let tcp_inboxes: Vec<_> = prepared.iter().map(PreparedWorker::tcp_inbox).collect();
    let handles: Vec<WorkerHandle> = prepared.iter().map(PreparedWorker::handle).collect();
    let media: Vec<SocketAddr> = handles.iter().map(|h| h.bound).collect();

    let grpc_listener = TcpListener::bind(cfg.control_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "control",
            addr: cfg.control_listen,
            source,
        })?;
    let control_addr = grpc_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "control",
            addr: cfg.control_listen,
            source,
        })?;
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let http_listener = match cfg.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "http",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (relay_tx, relay_rx) = match cfg.cascade {
        Some(_) => {
            let (tx, rx) = mpsc::channel(crate::cascade::manager::RELAY_QUEUE);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let mut threads = Vec::new();
    for (i, w) in prepared.into_iter().enumerate() {
        let id = WorkerId(i as u16);
        let advertised = SocketAddr::new(cfg.advertise, media[i].port());
        let wm = WorkerMetrics::new(&metrics);
        let mut core = WorkerCore::new(
            id,
            cfg.workers,
            advertised,
            factory.clone(),
            wm.clone(),
            rand::random(),
            std::time::Instant::now(),
        )
        .with_keyframe_interval(cfg.keyframe_interval);
        if let Some(addr) = tcp_candidate {
            core = core.with_tcp(addr);
        }
        if cfg.config.media.single_port {
            core = core.with_single_port(cfg.workers);
        }
        let t = w
            .spawn(core, handles.clone(), ev_tx.clone(), wm, relay_tx.clone())
            .map_err(StartError::Thread)?;
        threads.push(t);
    }

    let tcp = match tcp_listener {
        Some(l) => Some(
            crate::media::tcp::listener::spawn(l, tcp_inboxes, metrics.transport.clone())
                .map_err(StartError::Thread)?,
        ),
        None => None,
    };

    let plane = Arc::new(Control::new(
        handles,
        metrics.clone(),
        Limits::from(&cfg.config.limits),
        Identity {
            node_id: cfg.config.node.id.clone(),
            region: cfg.config.node.region.clone(),
        },
    ));
    plane.set_placement(cfg.placement);
    {
        let plane = plane.clone();
        tokio::spawn(async move {
            while let Some((_worker, ev)) = ev_rx.recv().await {
                plane.on_worker_event(ev);
            }
        });
    }

    let cascade = match (&cfg.cascade, relay_rx) {
        (Some(c), Some(rx)) => {
            let h = crate::cascade::manager::start(c, plane.clone(), rx)
                .map_err(|e| StartError::Cascade(e.to_string()))?;
            plane.set_cascade(Arc::new(h.clone()));
            Some(h)
        }
        _ => None,
    };
    let cascade_addr = cascade.as_ref().map(|h| h.local_addr);
    let cascade_handle = cascade.clone();
    let cascade_api = crate::cascade::api::CascadeApi::new(cascade);

    let api = Api::new(plane.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<RoomServiceServer<Api>>().await;
    health.set_serving::<SessionServiceServer<Api>>().await;
    let lifecycle = Arc::new(Lifecycle::new(
        cfg.config.shutdown.grace_period.0,
        plane.clone(),
        metrics.clone(),
        health,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(l) = metrics_listener {
        let m = &cfg.config.metrics;
        let limits = ListenerLimits {
            max_connections: m.max_connections,
            idle_timeout: m.idle_timeout.0,
        };
        let addr = cfg.metrics_listen.unwrap_or(control_addr);
        let l = crate::listener::spawn("metrics", l, limits, None, &metrics.ops.metrics_listener())
            .map_err(|source| StartError::Bind {
                what: "metrics",
                addr,
                source,
            })?;
        let mut stop = stop_rx.clone();
        let routes = crate::http::routes(metrics.clone(), lifecycle.clone());
        tokio::spawn(crate::http::serve(l, routes, async move {
            let _ = stop.wait_for(|v| *v).await;
        }));
    }
    if let Some(l) = http_listener {
        let h = &cfg.config.http;
        let limits = ListenerLimits {
            max_connections: h.max_connections,
            idle_timeout: h.idle_timeout.0,
        };
        let addr = cfg.http_listen.unwrap_or(control_addr);
        let l = crate::listener::spawn(
            "http",
            l,
            limits,
            http_tls.clone(),
            &metrics.ops.http_listener(),
        )
        .map_err(|source| StartError::Bind {
            what: "http",
            addr,
            source,
        })?;
        let web = crate::web::serve(
            l,
            h.idle_timeout.0,
            plane.clone(),
            metrics.clone(),
            Arc::new(cfg.api_keys.clone()),
            http_tls.is_some(),
            stop_rx.clone(),
        );
        tokio::spawn(web);
    }
    if let Some(w) = &cfg.webhooks {
        crate::webhooks::start(w, webhook_tls, &plane, &metrics, stop_rx.clone());
    }
    tokio::spawn(plane.clone().drive_speakers(stop_rx.clone()));
    let router_api = RouterServiceServer::new(RouterApi::new(lifecycle.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kaskade_protocol::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let c = &cfg.config.control;
    let limits = ListenerLimits {
        max_connections: c.max_connections,
        idle_timeout: c.idle_timeout.0,
    };
    let incoming = crate::listener::spawn(
        "control",
        grpc_listener,
        limits,
        tls.clone(),
        &metrics.ops.control_listener(),
    )
    .map_err(|source| StartError::Bind {
        what: "control",
        addr: control_addr,
        source,
    })?
    .into_stream();
    let auth = AuthLayer::new(Arc::new(cfg.api_keys.clone()), &metrics);
    let errors = ErrorCountLayer::new(metrics.api_errors.clone());
    let (keepalive, streams) = (c.keepalive_interval.0, c.max_concurrent_streams);
    let mut stop = stop_rx;
    let grpc = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(Some(streams))
            .layer(auth)
            .layer(errors)
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(RoomServiceServer::new(api.clone()))
            .add_service(SessionServiceServer::new(api))
            .add_service(CascadeServiceServer::new(cascade_api))
            .add_service(router_api)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    Ok(Running {
        cascade: cascade_addr,
        http: http_addr,
        http_url: http_addr.map(|a| crate::web::base_url(a, http_tls.is_some())),
        tcp: tcp.as_ref().map(|t| t.local_addr),
        tcp_handle: tcp,
        control: control_addr,
        metrics: metrics_addr,
        media,
        plane,
        lifecycle,
        tls,
        http_tls,
        cascade_handle,
        stop: stop_tx,
        threads,
        grpc,
    })
}

/// The TLS of the control API and of the HTTP listener, if on.
pub type ListenerTls = (Option<Arc<TlsState>>, Option<Arc<TlsState>>);

/// Checks the files the configuration names, before any port is bound:
/// the TLS files of the control API and the HTTP listener (loaded, and
/// returned) and the cascade's certificates (readable, chaining to the
/// cluster CA, and carrying this router's node id and region; issue 15,
/// defect 6). Also refuses an HTTP listener off loopback without API keys
/// (for embedders that skip [`Resolved::with_api_keys`]).
pub fn preflight(cfg: &Resolved) -> Result<ListenerTls, String> {
    cfg.check_http_auth().map_err(|e| e.to_string())?;
    let tls = match TlsFiles::from_config(&cfg.config.control) {
        Err((key, reason)) => return Err(format!("invalid value for {key}: {reason}")),
        Ok(None) => None,
        Ok(Some(files)) => Some(Arc::new(TlsState::load(files)?)),
    };
    let http_tls = match TlsFiles::from_http_config(&cfg.config.http) {
        Err((key, reason)) => return Err(format!("invalid value for {key}: {reason}")),
        Ok(Some(files)) if cfg.http_listen.is_some() => Some(Arc::new(TlsState::load(files)?)),
        Ok(_) => None,
    };
    if let Some(c) = &cfg.cascade {
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("{key} {}: {e}", p.display()))
        };
        let (ca, cert, key) = (
            read("cascade.ca", &c.ca)?,
            read("cascade.cert", &c.cert)?,
            read("cascade.key", &c.key)?,
        );
        let id = crate::cascade::cert::identity_of_pem(&cert)
            .map_err(|e| format!("cascade.cert {}: {e}", c.cert.display()))?;
        if id.node_id != cfg.config.node.id || id.region != cfg.config.node.region {
            return Err(format!(
                "cascade.cert {} is for node {:?} in region {:?}, but node.id/node.region are {:?}/{:?}",
                c.cert.display(),
                id.node_id,
                id.region,
                cfg.config.node.id,
                cfg.config.node.region
            ));
        }
        crate::cascade::tls::endpoint_configs(&ca, &cert, &key, c.link_rate).map_err(|e| {
            format!(
                "cascade.cert {} / cascade.ca {}: {e}",
                c.cert.display(),
                c.ca.display()
            )
        })?;
    }
    Ok((tls, http_tls))
}
