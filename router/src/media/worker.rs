//! The mio thread of one media worker: the only code that touches its
//! socket (through `media::udp`) and the clock. It sleeps in `epoll` until
//! input or the core's next timeout, then runs one turn of the drive loop
//! (`media::drive`), which does everything else.

use super::bus::BusBatch;
use super::command::{Command, WorkerEvent};
use super::core::WorkerCore;
use super::drive::{Drive, Port};
use super::session::{Datagram, Transport};
use super::tcp::listener::WorkerInbox;
use super::tcp::streams::Streams;
use super::tcp::Handoff;
use super::types::{LinkId, MediaPacket, WorkerId};
use super::udp::{recv_some, send_batch, RecvBatch};
use crate::metrics::WorkerMetrics;
use crossbeam_channel::{Receiver, Sender};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Longest sleep when no session has a deadline.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Connections the listener may have handed a worker that it has not
/// taken yet.
const HANDOFF_QUEUE: usize = 256;
/// A worker busy for more than this part of a second (in thousandths) is
/// overloaded: no new session is placed on it.
pub const OVERLOADED_PERMILLE: u32 = 900;

/// How busy a worker is, as its thread measures it (written once a second,
/// read by the control plane when it places a session).
#[derive(Debug, Default)]
pub struct WorkerLoad {
    busy_permille: AtomicU32,
}

impl WorkerLoad {
    /// The part of the last second the worker spent working, in thousandths.
    pub fn busy_permille(&self) -> u32 {
        self.busy_permille.load(Ordering::Relaxed)
    }

    /// Records how busy the worker was.
    pub fn set_busy_permille(&self, v: u32) {
        self.busy_permille.store(v.min(1000), Ordering::Relaxed);
    }

    /// Whether no new session should be placed on the worker.
    pub fn overloaded(&self) -> bool {
        self.busy_permille() > OVERLOADED_PERMILLE
    }
}

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
    /// How busy it is.
    pub load: Arc<WorkerLoad>,
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
    handoffs: (crossbeam_channel::Sender<Handoff>, Receiver<Handoff>),
    handle: WorkerHandle,
}

impl PreparedWorker {
    /// Binds the socket (on a port shared with the other workers if
    /// `shared`: `media.single_port`) and creates the poll, waker and
    /// channels.
    pub fn new(
        id: WorkerId,
        bind: SocketAddr,
        shared: bool,
        bus_capacity: usize,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let std_sock = if shared {
            super::udp::bind_shared(bind)?
        } else {
            super::udp::bind(bind)?
        };
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
            handoffs: crossbeam_channel::bounded(HANDOFF_QUEUE),
            handle: WorkerHandle {
                id,
                commands: cmd_tx,
                bus: bus_tx,
                waker,
                bound,
                load: Arc::default(),
            },
        })
    }

    /// The handle others use to reach this worker.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// Where the ICE-TCP listener hands this worker its connections.
    pub fn tcp_inbox(&self) -> WorkerInbox {
        WorkerInbox {
            handoffs: self.handoffs.0.clone(),
            waker: self.handle.waker.clone(),
        }
    }

    /// Starts the worker thread.
    pub fn spawn(
        self,
        mut core: WorkerCore,
        peers: Vec<WorkerHandle>,
        events: UnboundedSender<(WorkerId, WorkerEvent)>,
        metrics: WorkerMetrics,
        relay: Option<RelaySender>,
    ) -> std::io::Result<JoinHandle<()>> {
        let id = self.handle.id;
        let name = format!("kaskade-media-{}", id.0);
        let mut drive = Drive::new(id.0, peers.len(), &metrics);
        let load = self.handle.load.clone();
        let mut poll = self.poll;
        let streams = match core.tcp_addr() {
            Some(_) => Some(Streams::new(
                poll.registry().try_clone()?,
                self.handoffs.1,
                metrics.transport.clone(),
            )),
            None => None,
        };
        std::thread::Builder::new().name(name).spawn(move || {
            let mut port = MioPort {
                streams,
                socket: self.socket,
                readable: true,
                commands: self.commands,
                bus: self.bus,
                peers,
                events,
                id,
                relay,
            };
            run(&mut poll, &mut core, &mut drive, &mut port, &load);
        })
    }
}

/// Where a worker hands packets of local tracks relayed to other routers.
pub type RelaySender = tokio::sync::mpsc::Sender<(LinkId, Arc<MediaPacket>)>;

/// The loop: sleep until input or the next timeout, one turn, again.
fn run(
    poll: &mut Poll,
    core: &mut WorkerCore,
    drive: &mut Drive,
    port: &mut MioPort,
    load: &WorkerLoad,
) {
    let mut events = Events::with_capacity(64);
    let mut window = Instant::now();
    let mut idle = Duration::ZERO;
    loop {
        let streams = port.streams.as_ref();
        let timeout = if port.readable || streams.is_some_and(Streams::wants_turn) {
            Duration::ZERO
        } else {
            let next = match streams.and_then(Streams::poll_timeout) {
                Some(t) => Some(core.poll_timeout().map_or(t, |c| c.min(t))),
                None => core.poll_timeout(),
            };
            next.map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL)
        };
        let slept = Instant::now();
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::error!(worker = %core.id(), error = %e, "poll failed; worker stops");
                return;
            }
        }
        idle += slept.elapsed();
        for ev in events.iter() {
            if ev.token() == SOCKET {
                port.readable = true;
            } else if let Some(s) = port.streams.as_mut() {
                s.on_event(ev.token(), ev.is_readable(), ev.is_writable());
            }
        }
        if drive.turn(core, port, true).stop {
            if let Some(s) = port.streams.as_mut() {
                s.close_all();
            }
            return;
        }
        // How busy the last second was, for placement.
        let elapsed = window.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let busy = elapsed.saturating_sub(idle).as_millis() * 1000 / elapsed.as_millis().max(1);
            load.set_busy_permille(busy as u32);
            window = Instant::now();
            idle = Duration::ZERO;
        }
    }
}

/// The worker's socket, channels and peers, as the drive loop sees them.
struct MioPort {
    socket: UdpSocket,
    /// Its ICE-TCP connections, when ICE-TCP is on.
    streams: Option<Streams>,
    /// The socket may hold datagrams (mio reports readiness once, edge-triggered).
    readable: bool,
    commands: Receiver<Command>,
    bus: Receiver<BusBatch>,
    peers: Vec<WorkerHandle>,
    events: UnboundedSender<(WorkerId, WorkerEvent)>,
    id: WorkerId,
    relay: Option<RelaySender>,
}

impl Port for MioPort {
    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn recv(&mut self, buf: &mut RecvBatch) -> usize {
        if !self.readable {
            return 0;
        }
        recv_some(self.socket.as_raw_fd(), buf, &mut self.readable)
    }

    fn command(&mut self) -> Option<Command> {
        self.commands.try_recv().ok()
    }

    fn bus(&mut self) -> Option<BusBatch> {
        self.bus.try_recv().ok()
    }

    fn send(&mut self, out: &mut Vec<Datagram>) -> usize {
        let udp = out.iter().filter(|d| d.transport == Transport::Udp);
        let sent = send_batch(
            self.socket.as_raw_fd(),
            udp.map(|d| (d.dst, d.data.as_slice())),
        );
        if sent.failed > 0 {
            tracing::debug!(failed = sent.failed, "sends failed");
        }
        if let Some(streams) = self.streams.as_mut() {
            // Queued per connection (drops counted there), written once each.
            for d in out.iter() {
                if let Transport::Tcp(class) = d.transport {
                    streams.queue(d.dst, class, &d.data);
                }
            }
            streams.flush();
        }
        sent.failed
    }

    fn streams(&mut self, core: &mut WorkerCore, now: Instant) -> (u64, u64) {
        match self.streams.as_mut() {
            Some(s) => s.pump(core, now),
            None => (0, 0),
        }
    }

    fn close_stream(&mut self, peer: SocketAddr) {
        if let Some(s) = self.streams.as_mut() {
            s.close_peer(peer);
        }
    }

    fn offer(&self, dst: usize, batch: BusBatch) -> Result<(), BusBatch> {
        let Some(peer) = self.peers.get(dst) else {
            return Ok(());
        };
        let r = peer.bus.try_send(batch).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(b)
            | crossbeam_channel::TrySendError::Disconnected(b) => b,
        });
        if r.is_ok() {
            let _ = peer.waker.wake();
        }
        r
    }

    fn event(&mut self, ev: WorkerEvent) {
        let _ = self.events.send((self.id, ev));
    }

    fn relay(&mut self, link: LinkId, pkt: Arc<MediaPacket>) -> bool {
        self.relay
            .as_ref()
            .is_some_and(|r| r.try_send((link, pkt)).is_ok())
    }

    fn inbox_depth(&self) -> usize {
        self.bus.len()
    }
}
