//! The control API's listener: accepts TCP connections for the gRPC server
//! with a connection limit, an idle timeout, optional TLS (reloadable) and a
//! back-off when the process runs out of file descriptors (issue 15,
//! defect 3: it used to busy-loop there).

use crate::ops_metrics::OpsMetrics;
use prometheus::IntCounter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest pause after an accept failed for want of descriptors.
const FD_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// `control.max_connections`
    pub max_connections: usize,
    /// `control.idle_timeout`
    pub idle_timeout: Duration,
}

/// The TLS configuration in use; [`TlsState::reload`] swaps it for new
/// connections (SIGHUP).
pub struct TlsState {
    files: crate::control_tls::TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsState {
    /// Loads the files once.
    pub fn load(files: crate::control_tls::TlsFiles) -> Result<Self, String> {
        let cfg = files.load()?;
        Ok(Self {
            files,
            current: RwLock::new(cfg),
        })
    }

    /// Reads the files again; on error the previous configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = self.files.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
        Ok(())
    }

    /// An acceptor with the configuration in use.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted control connection: counted while open, closed when it has
/// sent nothing for the idle timeout.
pub struct ControlConn {
    io: Io,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    idle_cut: IntCounter,
    gauge: prometheus::IntGauge,
    _permit: OwnedSemaphorePermit,
}

impl ControlConn {
    fn new(
        io: Io,
        idle_timeout: Duration,
        idle_cut: IntCounter,
        gauge: prometheus::IntGauge,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        gauge.inc();
        Self {
            io,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            idle_cut,
            gauge,
            _permit: permit,
        }
    }
}

impl Drop for ControlConn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl tonic::transport::server::Connected for ControlConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for ControlConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let at = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(at);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.idle.as_mut().poll(cx).is_ready() => {
                this.idle_cut.inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "control connection idle",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for ControlConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether an accept error means "out of file descriptors".
fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts connections on `listener` until the receiver is dropped, and
/// hands them (TLS done, if any) to the gRPC server.
pub fn spawn(
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<Arc<TlsState>>,
    metrics: OpsMetrics,
) -> mpsc::UnboundedReceiver<io::Result<ControlConn>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(accept_loop(listener, limits, tls, metrics, tx));
    rx
}

async fn accept_loop(
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<Arc<TlsState>>,
    m: OpsMetrics,
    tx: mpsc::UnboundedSender<io::Result<ControlConn>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let err = |r: &str| m.control_accept_errors.with_label_values(&[r]);
    let (fd_limit, over_limit, tls_failed, other) =
        (err("fd_limit"), err("limit"), err("tls"), err("other"));
    let idle_cut = err("idle");
    let mut backoff = FD_BACKOFF.0;
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if is_fd_limit(&e) => {
                    fd_limit.inc();
                    tracing::warn!(pause = ?backoff, "control listener out of file descriptors; pausing accepts");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(FD_BACKOFF.1);
                    continue;
                }
                Err(e) => {
                    other.inc();
                    tracing::debug!(error = %e, "control accept failed");
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        backoff = FD_BACKOFF.0;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            over_limit.inc();
            drop(sock);
            continue;
        };
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on a control connection");
        }
        let gauge = m.control_connections.clone();
        let idle_cut = idle_cut.clone();
        let timeout = limits.idle_timeout;
        match &tls {
            None => {
                let c = ControlConn::new(Io::Plain(sock), timeout, idle_cut, gauge, permit);
                let _ = tx.send(Ok(c));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let (tx, tls_failed) = (tx.clone(), tls_failed.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let io = Io::Tls(Box::new(s));
                            let _ =
                                tx.send(Ok(ControlConn::new(io, timeout, idle_cut, gauge, permit)));
                        }
                        Ok(Err(e)) => {
                            tls_failed.inc();
                            tracing::debug!(error = %e, "control TLS handshake failed");
                        }
                        Err(_) => {
                            tls_failed.inc();
                            tracing::debug!("control TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}
