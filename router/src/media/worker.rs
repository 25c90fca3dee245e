//! The mio driver of one media worker: the only code that touches the UDP
//! socket and the clock. Everything it reads goes into the [`WorkerCore`];
//! everything the core outputs goes out here.

use super::bus::{BusBatch, Outbox};
use super::command::{Command, WorkerEvent};
use super::core::WorkerCore;
use super::types::{LinkId, MediaPacket, WorkerId};
use super::udp::{send_batch, RecvBatch, BATCH};
use crate::metrics::WorkerMetrics;
use crossbeam_channel::{Receiver, Sender};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Datagrams read in one go before the worker looks at its other inputs.
const READ_BURST: usize = 256;
/// Transmits collected before they are sent (in `sendmmsg` batches).
const SEND_AT: usize = 2 * BATCH;
/// Longest sleep when no session has a deadline.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What the control plane and the other workers hold of a worker.
#[derive(Clone)]
pub struct WorkerHandle {
    /// Its id.
    pub id: WorkerId,
    /// Control commands.
    pub commands: Sender<Command>,
    /// Fan-out bus inbox (bounded).
    pub bus: Sender<BusBatch>,
    /// Wakes its poll loop.
    pub waker: Arc<Waker>,
    /// The address its socket is bound to.
    pub bound: SocketAddr,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerHandle({})", self.id)
    }
}

impl WorkerHandle {
    /// Sends a command and wakes the worker. Fails only when the worker is gone.
    pub fn send(&self, cmd: Command) -> Result<(), Command> {
        self.commands.send(cmd).map_err(|e| e.0)?;
        // A failed wake means the worker is shutting down; the command is
        // then dropped with its reply channel, which the caller observes.
        let _ = self.waker.wake();
        Ok(())
    }
}

/// A worker that is set up but not yet running.
pub struct PreparedWorker {
    poll: Poll,
    socket: UdpSocket,
    commands: Receiver<Command>,
    bus: Receiver<BusBatch>,
    handle: WorkerHandle,
}

impl PreparedWorker {
    /// Binds the socket and creates the poll, waker and channels.
    pub fn new(id: WorkerId, bind: SocketAddr, bus_capacity: usize) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let std_sock = std::net::UdpSocket::bind(bind)?;
        std_sock.set_nonblocking(true)?;
        grow_buffers(&std_sock);
        let bound = std_sock.local_addr()?;
        let mut socket = UdpSocket::from_std(std_sock);
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (bus_tx, bus_rx) = crossbeam_channel::bounded(bus_capacity);
        Ok(Self {
            poll,
            socket,
            commands: cmd_rx,
            bus: bus_rx,
            handle: WorkerHandle {
                id,
                commands: cmd_tx,
                bus: bus_tx,
                waker,
                bound,
            },
        })
    }

    /// The handle others use to reach this worker.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// Starts the worker thread.
    pub fn spawn(
        self,
        core: WorkerCore,
        peers: Vec<WorkerHandle>,
        events: UnboundedSender<(WorkerId, WorkerEvent)>,
        metrics: WorkerMetrics,
        relay: Option<RelaySender>,
    ) -> std::io::Result<JoinHandle<()>> {
        let name = format!("kaskade-media-{}", self.handle.id.0);
        let n_peers = peers.len();
        std::thread::Builder::new().name(name).spawn(move || {
            let mut driver = Driver {
                poll: self.poll,
                socket: self.socket,
                commands: self.commands,
                bus: self.bus,
                core,
                peers,
                events,
                outbox: Outbox::new(n_peers),
                metrics,
                relay,
            };
            driver.run();
        })
    }
}

struct Driver {
    poll: Poll,
    socket: UdpSocket,
    commands: Receiver<Command>,
    bus: Receiver<BusBatch>,
    core: WorkerCore,
    peers: Vec<WorkerHandle>,
    events: UnboundedSender<(WorkerId, WorkerEvent)>,
    metrics: WorkerMetrics,
    relay: Option<RelaySender>,
    /// Per peer worker: audio and control a full inbox refused.
    outbox: Outbox,
}

/// Where a worker hands packets of local tracks relayed to other routers.
pub type RelaySender = tokio::sync::mpsc::Sender<(LinkId, Arc<MediaPacket>)>;

impl Driver {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        let mut buf = RecvBatch::new();
        let mut more_to_read = true;
        loop {
            let timeout = if more_to_read {
                Duration::ZERO
            } else {
                self.core
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(IDLE_POLL)
                    .min(IDLE_POLL)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(worker = %self.core.id(), error = %e, "poll failed; worker stops");
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() == SOCKET {
                    more_to_read = true;
                }
            }
            if more_to_read {
                more_to_read = self.read_socket(&mut buf);
            }
            let now = Instant::now();
            while let Ok(cmd) = self.commands.try_recv() {
                let shutdown = matches!(cmd, Command::Shutdown);
                self.core.handle_command(now, cmd);
                if shutdown {
                    self.flush();
                    return;
                }
            }
            while let Ok(batch) = self.bus.try_recv() {
                self.core.handle_bus(now, batch);
            }
            self.hand_over_bus();
            self.core.flush(now);
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.flush();
        }
    }

    /// Reads up to a burst of datagrams (`recvmmsg`, [`BATCH`] per call);
    /// true if more may be waiting.
    fn read_socket(&mut self, buf: &mut RecvBatch) -> bool {
        let fd = self.socket.as_raw_fd();
        for _ in 0..READ_BURST / BATCH {
            match buf.recv(fd) {
                Ok(n) => {
                    let now = Instant::now();
                    for i in 0..n {
                        match buf.get(i) {
                            Some((src, data)) => self.core.handle_datagram(now, src, data),
                            None => self.metrics.drop_malformed.inc(),
                        }
                    }
                    // The other workers get the batch's media first and fan it
                    // out while this one writes to its own subscribers.
                    self.hand_over_bus();
                    self.core.flush(now);
                    if self.core.outputs().transmits.len() >= SEND_AT {
                        self.flush_transmits();
                    }
                    if n < BATCH {
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ICMP errors (e.g. connection refused from a departed peer)
                // surface here on Linux; they concern one peer only.
                Err(_) => {}
            }
        }
        true
    }

    /// Sends what the core produced, in `sendmmsg` batches.
    fn flush_transmits(&mut self) {
        let fd = self.socket.as_raw_fd();
        let out = self.core.outputs();
        if out.transmits.is_empty() {
            return;
        }
        let sent = send_batch(fd, out.transmits.iter().map(|d| (d.dst, d.data.as_slice())));
        out.transmits.clear();
        if sent.failed > 0 {
            tracing::debug!(failed = sent.failed, "sends failed");
            self.metrics.drop_send.inc_by(sent.failed as u64);
        }
    }

    /// Hands each other worker what the core produced for it (one batch and
    /// one wake-up per worker), never blocking.
    fn hand_over_bus(&mut self) {
        let out = self.core.outputs();
        for (i, batch) in out.bus.iter_mut().enumerate() {
            let Some(peer) = self.peers.get(i) else {
                batch.clear();
                continue;
            };
            // Never blocks: a full inbox sheds video and keeps the rest.
            let (sent, shed) = self.outbox.hand_over(i, batch, &peer.bus);
            if sent {
                let _ = peer.waker.wake();
            }
            self.metrics.bus_drop_video.inc_by(shed.video);
            self.metrics.bus_drop_other.inc_by(shed.other);
        }
    }

    fn flush(&mut self) {
        self.flush_transmits();
        self.hand_over_bus();
        let id = self.core.id();
        let out = self.core.outputs();
        for ev in out.events.drain(..) {
            let _ = self.events.send((id, ev));
        }
        for (link, pkt) in out.links.drain(..) {
            let sent = self
                .relay
                .as_ref()
                .is_some_and(|r| r.try_send((link, pkt)).is_ok());
            if !sent {
                self.metrics.bus_drop_video.inc();
            }
        }
    }
}

/// Socket buffers a media worker asks for: a burst of keyframes to many
/// subscribers must not overflow the kernel's default (about 200 KiB).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Enlarges the socket's buffers; with privileges past `net.core.*mem_max`.
fn grow_buffers(sock: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    for (force, normal) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is a live socket owned by `sock`; `v` outlives the
        // calls and `len` is its size. Failure only leaves the default size.
        let ok = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                (&v as *const libc::c_int).cast(),
                len,
            )
        };
        if ok != 0 {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    normal,
                    (&v as *const libc::c_int).cast(),
                    len,
                )
            };
        }
    }
}
