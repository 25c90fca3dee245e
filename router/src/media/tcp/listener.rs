//! The ICE-TCP listener: one thread with its own mio loop, the thin driver
//! around [`Pending`]. It accepts, reads each connection's first packet and
//! hands the connection (with the bytes read) to the worker its ufrag
//! names, or closes it. Nothing here touches a session.

use super::metrics::TransportMetrics;
use super::pending::{Pending, PendingId, Verdict};
use super::{tune, CloseReason, Handoff};
use crossbeam_channel::{Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const CONN_BASE: usize = 2;
/// After an accept error (out of file descriptors, say), when to try again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Where the listener hands a worker its connections.
#[derive(Clone)]
pub struct WorkerInbox {
    /// The worker's hand-over queue (bounded).
    pub handoffs: Sender<Handoff>,
    /// Wakes the worker's loop.
    pub waker: Arc<Waker>,
}

/// The running listener.
pub struct TcpListenerHandle {
    /// The address it is bound to.
    pub local_addr: SocketAddr,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpListenerHandle")
    }
}

impl TcpListenerHandle {
    /// Stops the thread (closing what is pending) and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpListenerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The listen backlog: connections the kernel completes before the
/// listener thread accepts them. The standard library's 128 overflows
/// under a burst (a room's subscribers reconnecting at once, or a flood):
/// the kernel then drops SYNs and each client retries only after a second.
/// The kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 1024;

/// Binds the listener (non-blocking, address reusable after a restart).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Starts the listener thread for a router whose workers are `workers`.
pub fn spawn(
    listener: std::net::TcpListener,
    workers: Vec<WorkerInbox>,
    metrics: TransportMetrics,
) -> std::io::Result<TcpListenerHandle> {
    let local_addr = listener.local_addr()?;
    let poll = Poll::new()?;
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut driver = Driver {
        pending: Pending::new(workers.len()),
        gauge: metrics.open("pending"),
        metrics,
        poll,
        listener,
        streams: Vec::new(),
        workers,
        retry_at: None,
    };
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kaskade-tcp".into())
        .spawn(move || driver.run(&flag))?;
    Ok(TcpListenerHandle {
        local_addr,
        waker,
        stop,
        thread: Some(thread),
    })
}

struct Driver {
    pending: Pending,
    metrics: TransportMetrics,
    gauge: prometheus::IntGauge,
    poll: Poll,
    listener: TcpListener,
    /// The pending connections' sockets, by slot.
    streams: Vec<Option<(PendingId, TcpStream)>>,
    workers: Vec<WorkerInbox>,
    retry_at: Option<Instant>,
}

impl Driver {
    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let next = [self.pending.poll_timeout(), self.retry_at]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map(|t| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "ICE-TCP listener: poll failed; it stops");
                    return;
                }
            }
            if stop.load(Ordering::Acquire) {
                self.close_all();
                return;
            }
            let now = Instant::now();
            let mut accept = self.retry_at.is_some_and(|t| now >= t);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(t) => self.read(t - CONN_BASE, now),
                }
            }
            if accept {
                self.accept(now);
            }
            while let Some(id) = self.pending.pop_expired(now) {
                self.drop_stream(id, CloseReason::Timeout);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        self.retry_at = None;
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.on_accept(stream, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors or memory: the connection stays
                    // in the backlog; try again shortly.
                    tracing::warn!(error = %e, "ICE-TCP listener: accept failed");
                    self.retry_at = Some(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn on_accept(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        self.metrics.tcp_accepted.inc();
        let (id, evicted) = self.pending.accept(now, peer);
        if let Some(old) = evicted {
            self.drop_stream(old, CloseReason::PendingLimit);
        }
        let slot = id.slot();
        let token = Token(CONN_BASE + slot);
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_err()
        {
            self.pending.close(id);
            self.metrics.closed(CloseReason::Error);
            return;
        }
        if self.streams.len() <= slot {
            self.streams.resize_with(slot + 1, || None);
        }
        self.streams[slot] = Some((id, stream));
        self.gauge.inc();
        // The request may be there already.
        self.read(slot, now);
    }

    fn read(&mut self, slot: usize, now: Instant) {
        let Some((id, stream)) = self.streams.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let id = *id;
        loop {
            let Some(spare) = self.pending.spare(id) else {
                return;
            };
            let verdict = match stream.read(spare) {
                Ok(n) => self.pending.filled(id, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => Verdict::Close(CloseReason::Error),
            };
            match verdict {
                Verdict::Wait => {}
                Verdict::HandTo(w) => return self.hand(slot, id, w.index(), now),
                Verdict::Close(r) => {
                    self.pending.close(id);
                    return self.drop_stream(id, r);
                }
            }
        }
    }

    fn hand(&mut self, slot: usize, id: PendingId, worker: usize, _now: Instant) {
        let Some((_, mut stream)) = self.streams.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.gauge.dec();
        let _ = self.poll.registry().deregister(&mut stream);
        let Some((peer, bytes)) = self.pending.take(id) else {
            return;
        };
        let Some(w) = self.workers.get(worker) else {
            self.metrics.closed(CloseReason::Garbage);
            return;
        };
        let stream = std::net::TcpStream::from(stream);
        tune(&stream);
        match w.handoffs.try_send(Handoff {
            stream,
            peer,
            bytes,
        }) {
            Ok(()) => {
                let _ = w.waker.wake();
            }
            Err(TrySendError::Full(_)) => self.metrics.closed(CloseReason::WorkerBusy),
            Err(TrySendError::Disconnected(_)) => self.metrics.closed(CloseReason::Shutdown),
        }
    }

    /// Closes a pending connection's socket (the machine has let it go).
    fn drop_stream(&mut self, id: PendingId, reason: CloseReason) {
        let Some(entry) = self.streams.get_mut(id.slot()) else {
            return;
        };
        if entry.as_ref().is_some_and(|(i, _)| *i == id) {
            if let Some((_, mut stream)) = entry.take() {
                let _ = self.poll.registry().deregister(&mut stream);
                self.gauge.dec();
            }
            self.metrics.closed(reason);
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.streams.len() {
            if let Some((id, _)) = self.streams[slot].as_ref() {
                let id = *id;
                self.pending.close(id);
                self.drop_stream(id, CloseReason::Shutdown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst larger than the standard library's backlog of 128 completes
    /// its handshakes while nobody accepts: no SYN is dropped, so no client
    /// waits a second for its retry.
    #[test]
    fn a_burst_beyond_128_connections_is_queued_not_dropped() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let burst: Vec<_> = (0..300)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} not queued: {e}"))
            })
            .collect();
        assert_eq!(burst.len(), 300);
    }
}
