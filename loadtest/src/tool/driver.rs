//! Many clients on a few threads: each thread owns a group of [`Client`]s with
//! non-blocking UDP sockets registered with one `mio::Poll`, so a wake-up costs work
//! only for the sockets that have data and the clients whose timers are due.
//!
//! The driver also measures what clients receive, in the thread, per packet (through
//! the client's packet tap): latency into HDR histograms, bytes per simulcast layer,
//! freezes and layer switches; and its own timer lag (how late a client was served),
//! so a report can show whether the load generator kept up.
//!
//! Other threads reach a client through [`Driver::call`], which runs a closure on the
//! client's thread (offers, answers) and hands back the result asynchronously.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kaskade_loadtest::{Client, Link};
use mio::{Poll, Token, Waker};
use tokio::sync::oneshot;

mod results;
mod thread;
pub use results::{ClientResult, Interval, TrackResult, Window};
use thread::DriverThread;
pub use thread::{Slot, TrackRx};

const WAKE: Token = Token(usize::MAX);
/// Simulcast layers tracked per video stream.
pub const MAX_LAYERS: usize = 4;
/// Groups of receivers measured apart (a cascade's routers).
pub const MAX_GROUPS: usize = 4;

/// Global id of a client in a [`Driver`].
pub type ClientId = u32;

/// The driver thread is gone (it panicked or was stopped).
#[derive(Debug, Clone, thiserror::Error)]
#[error("driver thread gone")]
pub struct DriverGone;

/// A client to add.
pub struct NewClient {
    /// Its id (decides its thread: `id % threads`).
    pub id: ClientId,
    /// The client, whose local address is the socket's.
    pub client: Client,
    /// Its socket (made non-blocking by the driver).
    pub socket: std::net::UdpSocket,
    /// Impairment of its traffic, both directions.
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
pub struct Driver {
    threads: Vec<Handle>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Driver({} threads)", self.threads.len())
    }
}

impl Driver {
    /// Starts `n` (at least 1) driver threads. `epoch` is the probes' time zero.
    pub fn start(n: usize, epoch: Instant, seed: u64) -> std::io::Result<Driver> {
        let mut threads = vec![];
        for i in 0..n.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = mpsc::channel();
            let t = DriverThread::new(i, n.max(1), poll, rx, epoch, seed);
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
    pub async fn add(&self, c: NewClient) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let t = self.thread_of(c.id);
        self.send(t, Cmd::Add(Box::new(c), tx))
            .map_err(|e| e.to_string())?;
        rx.await.map_err(|_| DriverGone.to_string())?
    }

    /// Runs `f` on the client's thread and returns its result.
    pub async fn call<R: Send + 'static>(
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
    pub fn remove(&self, id: ClientId) {
        let _ = self.send(self.thread_of(id), Cmd::Remove(id));
    }

    /// Waits until the client is connected (ICE + DTLS); returns when it happened.
    pub async fn wait_connected(&self, id: ClientId) -> Result<Instant, DriverGone> {
        let (tx, rx) = oneshot::channel();
        self.send(self.thread_of(id), Cmd::WaitConnected(id, tx))?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Takes every thread's interval figures, merged.
    pub async fn interval(&self) -> Interval {
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
    pub fn measure(&self, on: bool) {
        for t in 0..self.threads.len() {
            let _ = self.send(t, Cmd::Measure(on));
        }
    }

    /// Every thread's window figures, merged.
    pub async fn window(&self) -> Window {
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
    pub async fn collect(&self, end: Instant) -> Vec<ClientResult> {
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
    pub fn stop(mut self) {
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
