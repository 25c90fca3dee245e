//! Serving an axum app over HTTP/1.1 on a listener's connections: what
//! `axum::serve` did, plus a deadline for each request head (axum's own
//! loop sets none). The HTTP listener and the metrics listener both serve
//! through here.
//!
//! The idle timeout (`Conn`) cuts a connection on which no byte moves; a
//! client that sends half a request head and then a byte now and then is
//! never idle. hyper's `header_read_timeout` ends it: a request head must
//! be complete within the head deadline of the moment the server starts
//! waiting for it (the connection opened, or the previous response was
//! written).

use super::Incoming;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::pin;
use tokio::sync::watch;

/// Serves `app` on `listener`'s connections until `stop` resolves, then
/// accepts no more, lets each connection finish its request under way
/// (kept-alive ones close) and returns when all are closed, as
/// `axum::serve(..).with_graceful_shutdown(stop)` did. `name` names the
/// listener in log lines.
pub async fn serve_http(
    name: &'static str,
    mut listener: Incoming,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    // `true` asks every connection to close after its request under way;
    // every connection task holds a receiver, so all are closed once the
    // sender sees none.
    let (closing, watch_closing) = watch::channel(false);
    let slow_heads = listener.errors.with_label_values(&["slow"]);
    let mut stop = pin!(stop);
    loop {
        let conn = tokio::select! {
            c = listener.rx.recv() => match c {
                Some(c) => c,
                // The accept loop ended: it only does when `listener` is dropped.
                None => break,
            },
            () = &mut stop => break,
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(listener.head_timeout);
        let svc = TowerToHyperService::new(app.clone());
        let slow = slow_heads.clone();
        let mut closing = watch_closing.clone();
        tokio::spawn(async move {
            let mut conn = pin!(builder.serve_connection(TokioIo::new(conn), svc));
            let done = tokio::select! {
                r = conn.as_mut() => r,
                () = asked_to_close(&mut closing) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            match done {
                Ok(()) => {}
                // Only the head deadline ends a connection with a timeout:
                // an idle cut is an I/O error, counted where it happens.
                Err(e) if e.is_timeout() => {
                    slow.inc();
                    tracing::debug!(listener = name, "request head too slow; connection closed");
                }
                Err(e) => tracing::debug!(listener = name, error = %e, "connection failed"),
            }
        });
    }
    drop(listener);
    drop(watch_closing);
    closing.send_replace(true);
    closing.closed().await;
}

/// Resolves once the server closes (a dropped sender is a close too).
async fn asked_to_close(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::tests::metrics;
    use crate::listener::{spawn, ListenerLimits, ListenerMetrics};
    use axum::routing::get;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Serves a one-route app with an idle timeout (and head deadline) of
    /// `idle_ms`; the address and the sender that stops it.
    async fn start(
        m: &ListenerMetrics,
        idle_ms: u64,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let limits = ListenerLimits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(idle_ms),
        };
        let inc = spawn("test", l, limits, None, m).expect("spawn");
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_http("test", inc, app, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    #[tokio::test]
    async fn a_head_that_trickles_in_is_cut_at_the_deadline_and_counted_slow() {
        let m = metrics();
        let (addr, _stop) = start(&m, 300).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        // A byte every 100 ms: never idle for 300 ms.
        let cut = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 64];
            loop {
                if s.write_all(b"X").await.is_err() {
                    return;
                }
                let read = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return;
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "the trickling head was never cut");
        // Counted before the connection's task drops (and so closes) it.
        assert_eq!(m.errors.with_label_values(&["slow"]).get(), 1);
        assert_eq!(m.errors.with_label_values(&["idle"]).get(), 0);
    }

    #[tokio::test]
    async fn kept_alive_requests_are_served_and_stop_closes_the_idle_ones() {
        let m = metrics();
        // Kept alive longer than the test takes: only the stop closes it.
        let (addr, stop) = start(&m, 30_000).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.expect("read");
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with("ok"), "{text}");
        }
        stop.send(()).expect("serving");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a kept-alive connection outlived the stop");
        assert_eq!(m.errors.with_label_values(&["slow"]).get(), 0);
    }
}
