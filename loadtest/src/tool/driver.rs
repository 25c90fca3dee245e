//! Many clients on a few threads: each thread owns a group of [`Client`]s with
//! non-blocking UDP sockets (or ICE-TCP connections, [`ClientIo::Tcp`])
//! registered with one `mio::Poll`, so a wake-up costs work only for the sockets
//! that have data and the clients whose timers are due.
//!
//! The driver also measures what clients receive, in the thread, per packet (through
//! the client's packet tap): latency into HDR histograms, bytes per simulcast layer,
//! freezes and layer switches; and its own timer lag (how late a client was served),
//! so a report can show whether the load generator kept up.
//!
//! Other threads reach a client through [`Driver::call`], which runs a closure on the
//! client's thread (offers, answers) and hands back the result asynchronously.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kaskade_loadtest::media::split_source_tag;
use kaskade_loadtest::{Client, Datagram, Link, RecvPacket, TcpTransport};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use str0m::media::{MediaKind, Mid};
use tokio::sync::oneshot;

use super::impair::{Due, Impairer};
use super::measure::{latency_histogram, FreezeTracker, LayerTracker, SeqLoss};

/// Longest a driver thread sleeps without looking at its clients' timers.
const MAX_NAP: Duration = Duration::from_millis(5);
const WAKE: Token = Token(usize::MAX);
/// Simulcast layers tracked per video stream.
pub(crate) const MAX_LAYERS: usize = 4;
/// Groups of receivers measured apart (a cascade's routers).
pub(crate) const MAX_GROUPS: usize = 4;

/// Global id of a client in a [`Driver`].
pub(crate) type ClientId = u32;

/// The driver thread is gone (it panicked or was stopped).
#[derive(Debug, Clone, thiserror::Error)]
#[error("driver thread gone")]
pub(crate) struct DriverGone;

/// How a client's datagrams travel.
pub(crate) enum ClientIo {
    /// Its own UDP socket (made non-blocking by the driver), whose address is
    /// the client's local address.
    Udp(std::net::UdpSocket),
    /// One ICE-TCP connection (the client is configured with
    /// `ClientConfig::tcp`), opened at its first datagram. Never impaired.
    Tcp,
}

/// A client to add.
pub(crate) struct NewClient {
    /// Its id (decides its thread: `id % threads`).
    pub id: ClientId,
    /// The client.
    pub client: Client,
    /// Its socket or connection.
    pub io: ClientIo,
    /// Impairment of its traffic, both directions (UDP only).
    pub impair: Option<Link>,
    /// Its group (the router it joined in a cascade; below [`MAX_GROUPS`]).
    pub group: u8,
}

/// Per received track state kept by the driver.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrackRx {
    /// Audio or video.
    pub kind: Option<MediaKind>,
    /// Frame gaps (video).
    pub freeze: FreezeTracker,
    /// Layer changes (video).
    pub layer: LayerTracker,
    /// Packets per simulcast layer of the source (from the probe).
    pub layer_packets: [u64; MAX_LAYERS],
    /// Loss from the RTP sequence numbers.
    pub seq: SeqLoss,
}

/// A client in its driver thread.
pub(crate) struct Slot {
    /// The client.
    pub client: Client,
    io: SlotIo,
    addr: SocketAddr,
    impaired: bool,
    group: u8,
    next: Instant,
    dirty: bool,
    /// When ICE + DTLS came up.
    pub connected_at: Option<Instant>,
    waiter: Option<oneshot::Sender<Instant>>,
    /// When the client asked for media (zero of time to first frame).
    pub media_requested_at: Option<Instant>,
    tracks: HashMap<Mid, TrackRx>,
}

/// A client's socket or connection in its driver thread.
enum SlotIo {
    Udp(UdpSocket),
    /// `registered`: the connection is open and in the poll.
    Tcp {
        t: TcpTransport,
        registered: bool,
    },
}

/// What the driver threads measured since the previous interval.
#[derive(Debug, Clone)]
pub(crate) struct Interval {
    /// RTP packets received.
    pub packets: u64,
    /// Audio payload bytes received.
    pub audio_bytes: u64,
    /// Video payload bytes received per source layer.
    pub video_bytes: [u64; MAX_LAYERS],
    /// End-to-end latency of probed packets (µs).
    pub latency: Histogram<u64>,
    /// Largest timer lag of the generator (µs).
    pub lag_max_us: u64,
    /// Packets lost so far (RTP sequence gaps over all subscriptions; cumulative).
    pub lost_total: u64,
    /// Packets expected so far (cumulative).
    pub expected_total: u64,
    /// Clients connected (cumulative).
    pub connected: u64,
    /// Datagrams the sockets would not take (cumulative).
    pub send_drops: u64,
}

impl Interval {
    fn new() -> Self {
        Interval {
            packets: 0,
            audio_bytes: 0,
            video_bytes: [0; MAX_LAYERS],
            latency: latency_histogram(),
            lag_max_us: 0,
            lost_total: 0,
            expected_total: 0,
            connected: 0,
            send_drops: 0,
        }
    }

    /// Adds another thread's interval.
    pub(crate) fn merge(&mut self, o: &Interval) {
        self.packets += o.packets;
        self.audio_bytes += o.audio_bytes;
        for (a, b) in self.video_bytes.iter_mut().zip(o.video_bytes) {
            *a += b;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        self.lag_max_us = self.lag_max_us.max(o.lag_max_us);
        self.lost_total += o.lost_total;
        self.expected_total += o.expected_total;
        self.connected += o.connected;
        self.send_drops += o.send_drops;
    }
}

/// What the driver threads measured while measuring was on.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Audio latency (µs).
    pub latency_audio: Histogram<u64>,
    /// Video latency (µs).
    pub latency_video: Histogram<u64>,
    /// Generator timer lag (µs).
    pub lag: Histogram<u64>,
    /// RTP packets received.
    pub packets: u64,
    /// Audio payload bytes.
    pub audio_bytes: u64,
    /// Video payload bytes per source layer.
    pub video_bytes: [u64; MAX_LAYERS],
    /// Video latency per receiver group (µs).
    pub latency_video_by_group: Vec<Histogram<u64>>,
}

impl Window {
    /// An empty window.
    pub(crate) fn empty() -> Self {
        Window {
            latency_video_by_group: (0..MAX_GROUPS).map(|_| latency_histogram()).collect(),
            latency_audio: latency_histogram(),
            latency_video: latency_histogram(),
            lag: latency_histogram(),
            packets: 0,
            audio_bytes: 0,
            video_bytes: [0; MAX_LAYERS],
        }
    }

    /// Adds another thread's window.
    pub(crate) fn merge(&mut self, o: &Window) {
        let _ = self.latency_audio.add(&o.latency_audio);
        let _ = self.latency_video.add(&o.latency_video);
        let _ = self.lag.add(&o.lag);
        for (a, b) in self
            .latency_video_by_group
            .iter_mut()
            .zip(&o.latency_video_by_group)
        {
            let _ = a.add(b);
        }
        self.packets += o.packets;
        self.audio_bytes += o.audio_bytes;
        for (a, b) in self.video_bytes.iter_mut().zip(o.video_bytes) {
            *a += b;
        }
    }
}

/// Final figures of one received track.
#[derive(Debug, Clone)]
pub(crate) struct TrackResult {
    /// Audio or video.
    pub kind: Option<MediaKind>,
    /// RTP packets received.
    pub packets: u64,
    /// Probe gaps: loss, plus packets the SFU chose not to forward (layer switches,
    /// temporal layers).
    pub probe_gaps: u64,
    /// First complete keyframe.
    pub first_frame_at: Option<Instant>,
    /// Driver-side state (freezes, layers).
    pub rx: TrackRx,
}

/// Final figures of one client.
#[derive(Debug, Clone)]
pub(crate) struct ClientResult {
    /// Its id.
    pub id: ClientId,
    /// When it asked for media.
    pub media_requested_at: Option<Instant>,
    /// Connected at the end.
    pub connected_at_end: bool,
    /// str0m errors.
    pub errors: u64,
    /// Last str0m error.
    pub last_error: Option<String>,
    /// Received tracks.
    pub tracks: Vec<TrackResult>,
    /// RTP packets sent (publishers).
    pub sent_packets: u64,
    /// Keyframe requests received and, of those, ignored as too soon
    /// (publishers).
    pub keyframe_requests: (u64, u64),
}

type CallFn = Box<dyn FnOnce(&mut Slot) + Send>;

enum Cmd {
    Add(Box<NewClient>, oneshot::Sender<Result<(), String>>),
    Call(ClientId, CallFn),
    Remove(ClientId),
    WaitConnected(ClientId, oneshot::Sender<Instant>),
    Interval(oneshot::Sender<Interval>),
    Measure(bool),
    Window(oneshot::Sender<Window>),
    Collect(Instant, oneshot::Sender<Vec<ClientResult>>),
    Stop,
}

struct Handle {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<()>>,
}

/// The driver: `n` threads of clients. See the [module docs](self).
pub(crate) struct Driver {
    threads: Vec<Handle>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Driver({} threads)", self.threads.len())
    }
}

impl Driver {
    /// Starts `n` (at least 1) driver threads. `epoch` is the probes' time zero.
    pub(crate) fn start(n: usize, epoch: Instant, seed: u64) -> std::io::Result<Driver> {
        let mut threads = vec![];
        for i in 0..n.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = mpsc::channel();
            let t = DriverThread {
                index: i,
                threads: n.max(1),
                poll,
                rx,
                epoch,
                slots: vec![],
                by_addr: HashMap::new(),
                impairer: Impairer::new(seed.wrapping_add(i as u64)),
                buf: vec![0; 2048],
                interval: Interval::new(),
                window: Window::empty(),
                measuring: false,
                send_drops: 0,
            };
            let join = std::thread::Builder::new()
                .name(format!("lt-driver-{i}"))
                .spawn(move || t.run())?;
            threads.push(Handle {
                tx,
                waker,
                join: Some(join),
            });
        }
        Ok(Driver { threads })
    }

    fn send(&self, thread: usize, cmd: Cmd) -> Result<(), DriverGone> {
        let h = &self.threads[thread % self.threads.len()];
        h.tx.send(cmd).map_err(|_| DriverGone)?;
        h.waker.wake().map_err(|_| DriverGone)
    }

    fn thread_of(&self, id: ClientId) -> usize {
        id as usize % self.threads.len()
    }

    /// Adds a client to its thread.
    pub(crate) async fn add(&self, c: NewClient) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let t = self.thread_of(c.id);
        self.send(t, Cmd::Add(Box::new(c), tx))
            .map_err(|e| e.to_string())?;
        rx.await.map_err(|_| DriverGone.to_string())?
    }

    /// Runs `f` on the client's thread and returns its result.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        id: ClientId,
        f: impl FnOnce(&mut Slot) -> R + Send + 'static,
    ) -> Result<R, DriverGone> {
        let (tx, rx) = oneshot::channel();
        let call: CallFn = Box::new(move |slot| {
            let _ = tx.send(f(slot));
        });
        self.send(self.thread_of(id), Cmd::Call(id, call))?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Removes a client (it has left): its socket closes, its figures are gone.
    pub(crate) fn remove(&self, id: ClientId) {
        let _ = self.send(self.thread_of(id), Cmd::Remove(id));
    }

    /// Waits until the client is connected (ICE + DTLS); returns when it happened.
    pub(crate) async fn wait_connected(&self, id: ClientId) -> Result<Instant, DriverGone> {
        let (tx, rx) = oneshot::channel();
        self.send(self.thread_of(id), Cmd::WaitConnected(id, tx))?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Takes every thread's interval figures, merged.
    pub(crate) async fn interval(&self) -> Interval {
        let mut all = Interval::new();
        for t in 0..self.threads.len() {
            let (tx, rx) = oneshot::channel();
            if self.send(t, Cmd::Interval(tx)).is_ok() {
                if let Ok(i) = rx.await {
                    all.merge(&i);
                }
            }
        }
        all
    }

    /// Turns window measurement on or off.
    pub(crate) fn measure(&self, on: bool) {
        for t in 0..self.threads.len() {
            let _ = self.send(t, Cmd::Measure(on));
        }
    }

    /// Every thread's window figures, merged.
    pub(crate) async fn window(&self) -> Window {
        let mut all = Window::empty();
        for t in 0..self.threads.len() {
            let (tx, rx) = oneshot::channel();
            if self.send(t, Cmd::Window(tx)).is_ok() {
                if let Ok(w) = rx.await {
                    all.merge(&w);
                }
            }
        }
        all
    }

    /// Final figures of every client; `end` closes freeze tracking.
    pub(crate) async fn collect(&self, end: Instant) -> Vec<ClientResult> {
        let mut all = vec![];
        for t in 0..self.threads.len() {
            let (tx, rx) = oneshot::channel();
            if self.send(t, Cmd::Collect(end, tx)).is_ok() {
                if let Ok(v) = rx.await {
                    all.extend(v);
                }
            }
        }
        all.sort_by_key(|c| c.id);
        all
    }

    /// Stops the threads (their clients are dropped).
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for t in 0..self.threads.len() {
            let _ = self.send(t, Cmd::Stop);
        }
        for h in &mut self.threads {
            if let Some(j) = h.join.take() {
                let _ = j.join();
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct DriverThread {
    index: usize,
    threads: usize,
    poll: Poll,
    rx: mpsc::Receiver<Cmd>,
    epoch: Instant,
    slots: Vec<Option<Slot>>,
    by_addr: HashMap<SocketAddr, usize>,
    impairer: Impairer,
    buf: Vec<u8>,
    interval: Interval,
    window: Window,
    measuring: bool,
    send_drops: u64,
}

impl DriverThread {
    fn local(&self, id: ClientId) -> usize {
        id as usize / self.threads
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next = Instant::now();
        loop {
            let wait = next.saturating_duration_since(Instant::now()).min(MAX_NAP);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("driver thread {}: poll failed: {e}", self.index);
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() != WAKE {
                    self.read(ev.token().0);
                }
            }
            if !self.commands() {
                return;
            }
            let now = Instant::now();
            self.impaired(now);
            self.timers(now);
            next = self.flush(now);
        }
    }

    /// Handles queued commands; false on Stop or when the driver is gone.
    fn commands(&mut self) -> bool {
        loop {
            let cmd = match self.rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            match cmd {
                Cmd::Add(c, reply) => {
                    let _ = reply.send(self.add(*c));
                }
                Cmd::Call(id, f) => {
                    let local = self.local(id);
                    if let Some(slot) = self.slots.get_mut(local).and_then(Option::as_mut) {
                        f(slot);
                        slot.dirty = true;
                    }
                }
                Cmd::Remove(id) => self.remove(id),
                Cmd::WaitConnected(id, reply) => {
                    let local = self.local(id);
                    if let Some(slot) = self.slots.get_mut(local).and_then(Option::as_mut) {
                        match slot.connected_at {
                            Some(t) => {
                                let _ = reply.send(t);
                            }
                            None => slot.waiter = Some(reply),
                        }
                    }
                }
                Cmd::Interval(reply) => {
                    let mut i = std::mem::replace(&mut self.interval, Interval::new());
                    for slot in self.slots.iter().flatten() {
                        i.connected += u64::from(slot.connected_at.is_some());
                        for t in slot.tracks.values() {
                            i.lost_total += t.seq.lost();
                            i.expected_total += t.seq.expected();
                        }
                    }
                    i.send_drops = self.send_drops;
                    let _ = reply.send(i);
                }
                Cmd::Measure(on) => self.measuring = on,
                Cmd::Window(reply) => {
                    let _ = reply.send(self.window.clone());
                }
                Cmd::Collect(end, reply) => {
                    let _ = reply.send(self.collect(end));
                }
                Cmd::Stop => return false,
            }
        }
    }

    fn add(&mut self, c: NewClient) -> Result<(), String> {
        let local = self.local(c.id);
        let (io, addr, impair) = match c.io {
            ClientIo::Udp(socket) => {
                socket.set_nonblocking(true).map_err(|e| e.to_string())?;
                let addr = socket.local_addr().map_err(|e| e.to_string())?;
                let mut socket = UdpSocket::from_std(socket);
                self.poll
                    .registry()
                    .register(&mut socket, Token(local), Interest::READABLE)
                    .map_err(|e| e.to_string())?;
                if let Some(link) = c.impair {
                    self.impairer.add_client(addr, link);
                }
                self.by_addr.insert(addr, local);
                (SlotIo::Udp(socket), addr, c.impair)
            }
            // Every TCP client has the same candidate address: not in by_addr.
            ClientIo::Tcp => (
                SlotIo::Tcp {
                    t: TcpTransport::new(),
                    registered: false,
                },
                c.client.local_addr(),
                None,
            ),
        };
        if self.slots.len() <= local {
            self.slots.resize_with(local + 1, || None);
        }
        let next = c.client.next_timeout();
        self.slots[local] = Some(Slot {
            client: c.client,
            io,
            addr,
            impaired: impair.is_some(),
            group: c.group.min(MAX_GROUPS as u8 - 1),
            next,
            dirty: true,
            connected_at: None,
            waiter: None,
            media_requested_at: None,
            tracks: HashMap::new(),
        });
        Ok(())
    }

    fn remove(&mut self, id: ClientId) {
        let local = self.local(id);
        if let Some(mut slot) = self.slots.get_mut(local).and_then(Option::take) {
            match &mut slot.io {
                SlotIo::Udp(socket) => {
                    let _ = self.poll.registry().deregister(socket);
                    self.by_addr.remove(&slot.addr);
                    self.impairer.remove_client(slot.addr);
                }
                SlotIo::Tcp { t, registered } => {
                    if let (true, Some(stream)) = (*registered, t.stream_mut()) {
                        let _ = self.poll.registry().deregister(stream);
                    }
                }
            }
        }
    }

    fn read(&mut self, local: usize) {
        let Some(slot) = self.slots.get_mut(local).and_then(Option::as_mut) else {
            return;
        };
        let socket = match &mut slot.io {
            SlotIo::Udp(socket) => socket,
            SlotIo::Tcp { t, .. } => {
                let client = &mut slot.client;
                // Writable: what is queued goes out. A closed connection
                // leaves the client to time out, as a browser's would.
                let _ = t.flush();
                let _ = t.recv(|src, p| client.handle_receive(Instant::now(), src, p));
                slot.dirty = true;
                return;
            }
        };
        let mut errors = 0;
        loop {
            match socket.recv_from(&mut self.buf) {
                Ok((n, src)) => {
                    let now = Instant::now();
                    if slot.impaired {
                        self.impairer.push(
                            now,
                            Datagram {
                                src,
                                dst: slot.addr,
                                data: self.buf[..n].to_vec(),
                            },
                        );
                    } else {
                        slot.client.handle_receive(now, src, &self.buf[..n]);
                        slot.dirty = true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ICMP errors (a peer gone) are reported once per datagram: go on,
                // but never spin.
                Err(_) => {
                    errors += 1;
                    if errors > 16 {
                        break;
                    }
                }
            }
        }
    }

    fn impaired(&mut self, now: Instant) {
        while let Some(due) = self.impairer.poll(now) {
            match due {
                Due::In(d) => {
                    if let Some(slot) = self
                        .by_addr
                        .get(&d.dst)
                        .and_then(|l| self.slots.get_mut(*l))
                        .and_then(Option::as_mut)
                    {
                        slot.client.handle_receive(now, d.src, &d.data);
                        slot.dirty = true;
                    }
                }
                Due::Out(d) => {
                    if let Some(slot) = self
                        .by_addr
                        .get(&d.src)
                        .and_then(|l| self.slots.get(*l))
                        .and_then(Option::as_ref)
                    {
                        if let SlotIo::Udp(socket) = &slot.io {
                            if socket.send_to(&d.data, d.dst).is_err() {
                                self.send_drops += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        for slot in self.slots.iter_mut().flatten() {
            if slot.next <= now {
                let lag = u64::try_from((now - slot.next).as_micros()).unwrap_or(u64::MAX);
                self.interval.lag_max_us = self.interval.lag_max_us.max(lag);
                if self.measuring {
                    self.window.lag.saturating_record(lag.max(1));
                }
                slot.client.handle_timeout(now);
                slot.dirty = true;
            }
        }
    }

    /// Sends what dirty clients have pending, consumes their tapped packets, notices
    /// connections; returns the earliest deadline.
    fn flush(&mut self, now: Instant) -> Instant {
        let mut next = now + MAX_NAP;
        let epoch = self.epoch;
        let measuring = self.measuring;
        for (local, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.dirty {
                slot.dirty = false;
                while let Some(d) = slot.client.poll_transmit() {
                    if slot.impaired {
                        self.impairer.push(now, d);
                        continue;
                    }
                    match &mut slot.io {
                        SlotIo::Udp(socket) => {
                            if socket.send_to(&d.data, d.dst).is_err() {
                                // A full socket buffer drops the datagram, as a network would.
                                self.send_drops += 1;
                            }
                        }
                        SlotIo::Tcp { t, registered } => {
                            let dropped = t.dropped;
                            match t.send(d.dst, &d.data) {
                                Ok(opened) => {
                                    if opened {
                                        // Readable for the router's packets,
                                        // writable for what the socket did not take.
                                        if let Some(stream) = t.stream_mut() {
                                            *registered = self
                                                .poll
                                                .registry()
                                                .register(
                                                    stream,
                                                    Token(local),
                                                    Interest::READABLE | Interest::WRITABLE,
                                                )
                                                .is_ok();
                                        }
                                    }
                                    // A full queue drops, as a full socket buffer does.
                                    self.send_drops += t.dropped - dropped;
                                }
                                Err(_) => self.send_drops += 1,
                            }
                        }
                    }
                }
                let (interval, window, tracks) =
                    (&mut self.interval, &mut self.window, &mut slot.tracks);
                let group = usize::from(slot.group);
                slot.client.drain_tap(|mid, kind, p| {
                    on_packet(
                        epoch, measuring, interval, window, tracks, group, mid, kind, p,
                    );
                });
                if slot.connected_at.is_none() && slot.client.is_connected() {
                    slot.connected_at = Some(now);
                    if let Some(w) = slot.waiter.take() {
                        let _ = w.send(now);
                    }
                }
                slot.next = slot.client.next_timeout();
            }
            next = next.min(slot.next);
        }
        if let Some(t) = self.impairer.next_due() {
            next = next.min(t);
        }
        next
    }

    fn collect(&self, end: Instant) -> Vec<ClientResult> {
        let mut out = vec![];
        for (local, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let id = (local * self.threads + self.index) as ClientId;
            let tracks = slot
                .client
                .received()
                .iter()
                .map(|r| {
                    let mut rx = slot.tracks.get(&r.mid).cloned().unwrap_or_default();
                    rx.kind = rx.kind.or(r.kind);
                    rx.freeze.finish(end);
                    TrackResult {
                        kind: r.kind,
                        packets: r.packets,
                        probe_gaps: r.lost(),
                        first_frame_at: r.first_frame_at,
                        rx,
                    }
                })
                .collect();
            out.push(ClientResult {
                id,
                media_requested_at: slot.media_requested_at,
                connected_at_end: slot.client.is_connected(),
                errors: slot.client.errors(),
                last_error: slot.client.last_error().map(str::to_string),
                tracks,
                sent_packets: sent_packets(&slot.client),
                keyframe_requests: keyframe_requests(&slot.client),
            });
        }
        out
    }
}

/// Counters of every layer the client sends (its local tracks).
fn sent_layers(c: &Client) -> impl Iterator<Item = kaskade_loadtest::LayerStats> + '_ {
    (0..8)
        .filter_map(|i| c.track_stats(kaskade_loadtest::TrackId(i)))
        .flat_map(|t| t.layers)
}

fn keyframe_requests(c: &Client) -> (u64, u64) {
    sent_layers(c).fold((0, 0), |(r, i), l| {
        (r + l.keyframe_requests, i + l.keyframe_requests_ignored)
    })
}

fn sent_packets(c: &Client) -> u64 {
    sent_layers(c).map(|l| l.packets_sent).sum()
}

#[allow(clippy::too_many_arguments)]
fn on_packet(
    epoch: Instant,
    measuring: bool,
    interval: &mut Interval,
    window: &mut Window,
    tracks: &mut HashMap<Mid, TrackRx>,
    group: usize,
    mid: Mid,
    kind: Option<MediaKind>,
    p: &RecvPacket,
) {
    let t = tracks.entry(mid).or_default();
    if t.kind.is_none() {
        t.kind = kind;
    }
    let video = kind == Some(MediaKind::Video);
    let layer = p
        .probe
        .map_or(0, |pr| split_source_tag(pr.source_tag).2)
        .min(MAX_LAYERS as u8 - 1);
    let latency = p.probe.map(|pr| {
        let sent = epoch + Duration::from_micros(pr.sent_micros);
        u64::try_from(p.at.saturating_duration_since(sent).as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    });
    let len = p.payload_len as u64;
    t.seq.on_packet(p.seq);
    interval.packets += 1;
    if video {
        t.layer.on_packet(layer);
        t.layer_packets[usize::from(layer)] += 1;
        if p.marker {
            t.freeze.on_frame(p.at);
        }
        interval.video_bytes[usize::from(layer)] += len;
    } else {
        interval.audio_bytes += len;
    }
    if let Some(l) = latency {
        interval.latency.saturating_record(l);
    }
    if measuring {
        window.packets += 1;
        if video {
            window.video_bytes[usize::from(layer)] += len;
        } else {
            window.audio_bytes += len;
        }
        if let Some(l) = latency {
            if video {
                window.latency_video.saturating_record(l);
                window.latency_video_by_group[group].saturating_record(l);
            } else {
                window.latency_audio.saturating_record(l);
            }
        }
    }
}
