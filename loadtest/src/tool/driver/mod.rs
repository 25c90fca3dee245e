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

mod figures;
mod thread;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kaskade_loadtest::{Client, Link};
use mio::{Poll, Token, Waker};
use tokio::sync::oneshot;

use super::impair::Impairer;

pub(crate) use figures::{ClientResult, Interval, TrackResult, TrackRx, Window};
use thread::DriverThread;
pub(crate) use thread::Slot;

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
