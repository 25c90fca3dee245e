//! Assembles a running router: media workers, the control plane, the gRPC
//! server and the metrics endpoint. Used by `main` and by the tests, which
//! start whole routers in-process or as processes.

use crate::config::Resolved;
use crate::control::{Api, Control, Identity, Limits};
use crate::media::worker::{PreparedWorker, WorkerHandle};
use crate::media::{RtcFactory, WorkerCore, WorkerId};
use crate::metrics::{Metrics, WorkerMetrics};
use kaskade_protocol::v1::cascade_service_server::CascadeServiceServer;
use kaskade_protocol::v1::room_service_server::RoomServiceServer;
use kaskade_protocol::v1::session_service_server::SessionServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
    /// The control plane.
    pub plane: Arc<Control>,
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
        format!(
            "KASKADE_READY {{\"control\":\"{}\",\"metrics\":{metrics},\"media\":[{}],\"cascade\":{cascade},\"http\":{http}}}",
            self.control,
            media.join(",")
        )
    }

    /// Stops accepting API calls, closes every session, joins the workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
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
    let factory = RtcFactory::new()
        .map_err(|e| StartError::Crypto(e.to_string()))?
        .with_rtx_cache(cfg.rtx_cache);

    // Media workers: bind every socket first, then start the threads with
    // the complete list of peers.
    let mut prepared = Vec::with_capacity(cfg.workers);
    for i in 0..cfg.workers {
        let port = if cfg.media_port_start == 0 {
            0
        } else {
            cfg.media_port_start + i as u16
        };
        let addr = SocketAddr::new(cfg.media_bind, port);
        let w = PreparedWorker::new(WorkerId(i as u16), addr, cfg.bus_queue).map_err(|source| {
            StartError::Bind {
                what: "media",
                addr,
                source,
            }
        })?;
        prepared.push(w);
    }
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
        let core = WorkerCore::new(
            id,
            cfg.workers,
            advertised,
            factory.clone(),
            wm.clone(),
            rand::random(),
            std::time::Instant::now(),
        )
        .with_keyframe_interval(cfg.keyframe_interval);
        let t = w
            .spawn(core, handles.clone(), ev_tx.clone(), wm, relay_tx.clone())
            .map_err(StartError::Thread)?;
        threads.push(t);
    }

    let plane = Arc::new(Control::new(
        handles,
        metrics.clone(),
        Limits::from(&cfg.config.limits),
        Identity {
            node_id: cfg.node_id.clone(),
            region: cfg.region.clone(),
        },
    ));
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
    let cascade_api = crate::cascade::api::CascadeApi::new(cascade, metrics.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(l) = metrics_listener {
        tokio::spawn(serve_metrics(l, metrics.clone(), stop_rx.clone()));
    }
    if let Some(l) = http_listener {
        let web = crate::web::serve(l, plane.clone(), metrics.clone(), stop_rx.clone());
        tokio::spawn(web);
    }
    if let Some(w) = &cfg.webhooks {
        crate::webhooks::start(w, &plane, &metrics, stop_rx.clone());
    }
    tokio::spawn(plane.clone().drive_speakers(stop_rx.clone()));

    let api = Api::new(plane.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<RoomServiceServer<Api>>().await;
    health.set_serving::<SessionServiceServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kaskade_protocol::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let incoming = nodelay_incoming(grpc_listener);
    let mut stop = stop_rx;
    let grpc = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(RoomServiceServer::new(api.clone()))
            .add_service(SessionServiceServer::new(api))
            .add_service(CascadeServiceServer::new(cascade_api))
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
        control: control_addr,
        metrics: metrics_addr,
        media,
        plane,
        stop: stop_tx,
        threads,
        grpc,
    })
}

/// The control API's accepted connections, with `TCP_NODELAY` set on each.
/// tonic's own `tcp_nodelay` is ignored with `serve_with_incoming`; without
/// it Nagle holds a response's last frames until the client's delayed ACK
/// (up to 40 ms per call).
fn nodelay_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY on a control connection");
                }
            })
        },
    )
}

/// A minimal HTTP/1.1 endpoint: `GET /metrics` answers the text exposition.
async fn serve_metrics(listener: TcpListener, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.wait_for(|v| *v) => return,
        };
        let Ok((mut sock, _)) = conn else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let m = sock.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let req = &buf[..n];
            let (status, body) = if req.starts_with(b"GET /metrics ") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found: try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_connections_are_accepted_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(nodelay_incoming(listener));
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = tokio_stream::StreamExt::next(&mut incoming)
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().unwrap(), "Nagle is off for the API");
        drop(client);
    }
}
