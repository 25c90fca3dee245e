//! The TCP listeners of the control API, the HTTP listener and the metrics
//! listener: one accept loop with a connection limit, an idle timeout,
//! optional TLS (reloadable, handshakes in their own tasks) and a back-off
//! when the process runs out of file descriptors (issue 15, defect 3: the
//! control API used to busy-loop there). A client that opens connections and
//! leaves them silent holds at most `max_connections` descriptors of one
//! listener, each for at most the idle timeout; one that trickles a request
//! head in holds them no longer on the HTTP and metrics listeners, served
//! with a deadline for each head (`serve`).

use crate::control_tls::TlsState;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

mod serve;
pub use serve::serve_http;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest pause after an accept failed for want of descriptors.
const FD_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Limits of one listener (`control.*`, `http.*` or `metrics.*`).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections open at once, TLS handshakes included; more are closed as
    /// they arrive.
    pub max_connections: usize,
    /// A connection that moves no byte either way for this long is closed.
    /// On the HTTP and metrics listeners it is also the head deadline: a
    /// request head must be complete this long after the server starts
    /// waiting for it ([`serve_http`]).
    pub idle_timeout: Duration,
}

/// What one listener reports: its open connections, and the connections it
/// refused or cut by reason (`fd_limit`, `limit`, `tls`, `idle`, `other`;
/// `slow` for the listeners served by [`serve_http`]).
#[derive(Clone)]
pub struct ListenerMetrics {
    /// Open connections.
    pub connections: IntGauge,
    /// Connections not accepted or cut, by reason.
    pub errors: IntCounterVec,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection: counted while open, closed when it has moved no
/// byte either way for the idle timeout. A server that streams (SSE, gRPC
/// server streams) keeps it open by writing.
pub struct Conn {
    io: Io,
    peer: SocketAddr,
    /// Fires at the earliest moment the connection can be idle; when it does,
    /// `active` says whether it really is.
    idle: Pin<Box<Sleep>>,
    active: Instant,
    idle_timeout: Duration,
    idle_cut: IntCounter,
    gauge: IntGauge,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        io: Io,
        peer: SocketAddr,
        idle_timeout: Duration,
        c: &Counters,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        c.gauge.inc();
        let now = Instant::now();
        Self {
            io,
            peer,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            active: now,
            idle_timeout,
            idle_cut: c.idle.clone(),
            gauge: c.gauge.clone(),
            _permit: permit,
        }
    }

    /// The peer's address (not logged).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the idle timeout has passed since the last byte moved;
    /// otherwise the timer is armed for the next possible moment.
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            match recheck_at(self.active, self.idle_timeout, Instant::now()) {
                None => return true,
                Some(due) => self.idle.as_mut().reset(due),
            }
        }
    }

    fn idle_error(&self) -> io::Error {
        self.idle_cut.inc();
        io::Error::new(io::ErrorKind::TimedOut, "connection idle")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
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
                this.active = Instant::now();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.idle(cx) => Poll::Ready(Err(this.idle_error())),
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        };
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                this.active = Instant::now();
                Poll::Ready(Ok(n))
            }
            // A peer that reads nothing holds the connection no longer
            // than one that sends nothing.
            Poll::Pending if this.idle(cx) => Poll::Ready(Err(this.idle_error())),
            other => other,
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

/// For a connection whose last byte moved at `active`: `None` when it is
/// idle at `now`, else the moment to look again (sans-IO: the caller brings
/// the clock).
fn recheck_at(active: Instant, timeout: Duration, now: Instant) -> Option<Instant> {
    let due = active + timeout;
    (due > now).then_some(due)
}

/// Whether an accept error means "out of file descriptors".
fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The counters of one listener, resolved once.
#[derive(Clone)]
struct Counters {
    gauge: IntGauge,
    fd_limit: IntCounter,
    limit: IntCounter,
    tls: IntCounter,
    idle: IntCounter,
    other: IntCounter,
}

impl Counters {
    fn new(m: &ListenerMetrics) -> Self {
        let err = |r: &str| m.errors.with_label_values(&[r]);
        Self {
            gauge: m.connections.clone(),
            fd_limit: err("fd_limit"),
            limit: err("limit"),
            tls: err("tls"),
            idle: err("idle"),
            other: err("other"),
        }
    }
}

/// The connections a listener accepted, TLS done: a stream for tonic
/// ([`Incoming::into_stream`]), or for HTTP/1.1 with a head deadline
/// ([`serve_http`]). The accept loop stops when this is dropped.
pub struct Incoming {
    local: SocketAddr,
    rx: mpsc::UnboundedReceiver<Conn>,
    /// Longest a request head may take to arrive ([`serve_http`]): the
    /// idle timeout. A connection waiting for a head with no byte arriving
    /// is cut as idle first (its idle moment is never later), so this only
    /// ends one whose head trickles in, and the kept-alive wait between
    /// requests stays what it was (scrapers that come back within the idle
    /// timeout keep their connection).
    head_timeout: Duration,
    /// The listener's counters by reason; [`serve_http`] adds `slow` (a
    /// request head missed `head_timeout`), which the control API never
    /// counts.
    errors: IntCounterVec,
}

impl Incoming {
    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connections as a stream, as tonic's `serve_with_incoming` takes them.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<Conn>> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::UnboundedReceiverStream::new(self.rx).map(Ok)
    }
}

/// Starts accepting on `listener`; `name` names it in log lines.
pub fn spawn(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<Arc<TlsState>>,
    metrics: &ListenerMetrics,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Counters::new(metrics);
    tokio::spawn(accept_loop(name, listener, limits, tls, counters, tx));
    Ok(Incoming {
        local,
        rx,
        head_timeout: limits.idle_timeout,
        errors: metrics.errors.clone(),
    })
}

async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<Arc<TlsState>>,
    c: Counters,
    tx: mpsc::UnboundedSender<Conn>,
) {
    // Every connection holds a slot from accept to close, its handshake
    // included, so the channel never holds more than the limit either.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = FD_BACKOFF.0;
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) if is_fd_limit(&e) => {
                    c.fd_limit.inc();
                    tracing::warn!(listener = name, pause = ?backoff, "out of file descriptors; pausing accepts");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(FD_BACKOFF.1);
                    continue;
                }
                Err(e) => {
                    c.other.inc();
                    tracing::debug!(listener = name, error = %e, "accept failed");
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        backoff = FD_BACKOFF.0;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            c.limit.inc();
            drop(sock);
            continue;
        };
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(listener = name, error = %e, "TCP_NODELAY");
        }
        let timeout = limits.idle_timeout;
        let Some(tls) = &tls else {
            let _ = tx.send(Conn::new(Io::Plain(sock), peer, timeout, &c, permit));
            continue;
        };
        let (acceptor, tx, c) = (tls.acceptor(), tx.clone(), c.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => {
                    let io = Io::Tls(Box::new(s));
                    let _ = tx.send(Conn::new(io, peer, timeout, &c, permit));
                }
                Ok(Err(e)) => {
                    c.tls.inc();
                    tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    c.tls.inc();
                    tracing::debug!(listener = name, "TLS handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Metrics of a listener under test (also `serve`'s tests).
    pub(super) fn metrics() -> ListenerMetrics {
        ListenerMetrics {
            connections: IntGauge::new("c", "c").expect("valid name"),
            errors: IntCounterVec::new(prometheus::Opts::new("e", "e"), &["reason"])
                .expect("valid name"),
        }
    }

    async fn listen(idle_ms: u64, m: &ListenerMetrics) -> (Incoming, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let limits = ListenerLimits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(idle_ms),
        };
        (spawn("test", l, limits, None, m).expect("spawn"), addr)
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_is_cut_when_idle() {
        let m = metrics();
        let (mut inc, addr) = listen(300, &m).await;
        let _client = TcpStream::connect(addr).await.expect("connect");
        let mut conn = inc.rx.recv().await.expect("a connection");
        let chunk = vec![0u8; 64 * 1024];
        let err = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = conn.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the write stalls, then fails, not forever");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(m.errors.with_label_values(&["idle"]).get(), 1);
    }

    #[test]
    fn activity_moves_the_idle_moment_and_only_silence_reaches_it() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(300);
        // A byte every 100 ms: each look finds the deadline moved on.
        for i in 1..=10u32 {
            let active = t0 + Duration::from_millis(100) * i;
            let look = active + Duration::from_millis(299);
            assert_eq!(recheck_at(active, timeout, look), Some(active + timeout));
        }
        // Then silence: idle exactly at the timeout, not before.
        let last = t0 + Duration::from_millis(1000);
        assert!(recheck_at(last, timeout, last + timeout).is_none());
        assert!(recheck_at(last, timeout, last + timeout - Duration::from_millis(1)).is_some());
    }

    #[tokio::test]
    async fn a_closed_connection_returns_its_slot() {
        let m = metrics();
        let (mut inc, addr) = listen(300, &m).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut conn = inc.rx.recv().await.expect("a connection");
        assert_eq!(m.connections.get(), 1);
        client.write_all(b"0123456789").await.expect("write");
        drop(client);
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.expect("read");
        assert_eq!(got.len(), 10);
        drop(conn);
        assert_eq!(m.errors.with_label_values(&["idle"]).get(), 0);
        assert_eq!(m.connections.get(), 0, "the slot is returned on close");
    }
}
