//! https on the HTTP listener (`http.tls_cert`, `http.tls_key`): an
//! [`axum::serve::Listener`] that hands axum connections whose TLS
//! handshake is done. Handshakes run in their own tasks (a client that
//! stalls one holds up no other), each within [`HANDSHAKE_TIMEOUT`], at most
//! [`MAX_HANDSHAKES`] at once; the certificates are those of the
//! [`TlsState`] in use, which SIGHUP reloads for new connections.

use crate::control_listener::TlsState;
use crate::ops_metrics::OpsMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed.
pub const MAX_HANDSHAKES: usize = 256;
/// Pause after a failed accept (out of file descriptors, mostly).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections with their handshake done, as axum takes them.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The accept loop owns the socket: stop it with the server.
        self.accept.abort();
    }
}

impl TlsListener {
    /// Starts accepting on `listener` with `tls`'s certificates.
    pub fn spawn(
        listener: TcpListener,
        tls: Arc<TlsState>,
        metrics: OpsMetrics,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, tls, metrics, tx));
        Ok(Self { local, rx, accept })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (it only does when this is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    m: OpsMetrics,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let err = |r: &str| m.http_accept_errors.with_label_values(&[r]);
    let (failed, busy, other) = (err("tls"), err("busy"), err("other"));
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    other.inc();
                    tracing::debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            busy.inc();
            continue;
        };
        let (acceptor, tx, failed) = (tls.acceptor(), tx.clone(), failed.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => {
                    let _ = tx.send((s, peer)).await;
                }
                Ok(Err(e)) => {
                    failed.inc();
                    tracing::debug!(error = %e, "HTTP TLS handshake failed");
                }
                Err(_) => {
                    failed.inc();
                    tracing::debug!("HTTP TLS handshake timed out");
                }
            }
        });
    }
}
