//! One driver thread: its clients' slots, the poll loop, the commands from
//! [`Driver`](super::Driver), socket I/O, impairment, timers and the hand-off of
//! received packets to the measurements.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kaskade_loadtest::{Client, Datagram, TcpTransport};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use str0m::media::Mid;
use tokio::sync::oneshot;

use super::super::impair::{Due, Impairer};
use super::figures::{keyframe_requests, on_packet, sent_packets};
use super::{
    ClientId, ClientIo, ClientResult, Cmd, Interval, NewClient, TrackResult, TrackRx, Window,
    MAX_GROUPS, WAKE,
};

/// Longest a driver thread sleeps without looking at its clients' timers.
const MAX_NAP: Duration = Duration::from_millis(5);

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

pub(super) struct DriverThread {
    pub(super) index: usize,
    pub(super) threads: usize,
    pub(super) poll: Poll,
    pub(super) rx: mpsc::Receiver<Cmd>,
    pub(super) epoch: Instant,
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) by_addr: HashMap<SocketAddr, usize>,
    pub(super) impairer: Impairer,
    pub(super) buf: Vec<u8>,
    pub(super) interval: Interval,
    pub(super) window: Window,
    pub(super) measuring: bool,
    pub(super) send_drops: u64,
}

impl DriverThread {
    fn local(&self, id: ClientId) -> usize {
        id as usize / self.threads
    }

    pub(super) fn run(mut self) {
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
