//! The one loop that drives a worker core, written once for the mio thread
//! (`media::worker`), the test kit's simulation and the benchmarks. Each
//! of them implements [`Port`] (where datagrams, commands and bus batches
//! come from, where the outputs go) and calls [`Drive::turn`].
//!
//! # One turn, in this order
//!
//! 1. **Datagrams**, a batch at a time (up to [`BATCH`] per batch, at most
//!    [`RECV_BATCHES`] batches per turn so commands and the bus are never
//!    starved): `handle_datagram` for each; then the batch's media goes to
//!    the other workers (`poll_bus`: one bus batch and one wake-up per
//!    worker), and only then to this worker's own subscribers (`flush`), so
//!    the other workers fan out meanwhile. Transmits are sent once
//!    [`SEND_AT`] have gathered.
//!    Then the packets of the worker's ICE-TCP connections, if any
//!    ([`Port::streams`]), the same way.
//! 2. **Commands** from the control plane, all that wait.
//! 3. **Bus batches** from the other workers, all that wait (for each
//!    packet: write to the local subscribers, drain them).
//! 4. **Hand-over and flush** of what commands and the bus produced.
//! 5. **Timers**, when `poll_timeout` has come: `handle_timeout` touches
//!    only the sessions whose deadline has come; how late it is goes into
//!    `kaskade_worker_loop_lag_seconds`.
//! 6. **Outputs**: transmits to the socket, bus batches to the other
//!    workers (a full inbox sheds video, never blocks: [`Outbox`]), events
//!    to the control plane, relayed packets to the cascade.
//! 7. **Counters** are folded into the shared metrics about once a second.
//!
//! The driver then sleeps until `poll_timeout` (or input arrives), or goes
//! round at once when the socket had more than a turn could read.

use super::bus::{BusBatch, Inbox, Outbox};
use super::command::{Command, WorkerEvent};
use super::core::WorkerCore;
use super::session::Datagram;
use super::types::{LinkId, MediaPacket};
use super::udp::{RecvBatch, BATCH};
use crate::metrics::{WorkerIoMetrics, WorkerMetrics};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Datagram batches read in one turn before the worker looks at its other inputs.
pub const RECV_BATCHES: usize = 8;
/// Transmits gathered before they are sent (in `sendmmsg` batches).
pub const SEND_AT: usize = 2 * BATCH;
/// How often counters are folded into the shared metrics.
pub const FOLD_EVERY: Duration = Duration::from_secs(1);

/// What a worker core is driven through: its inputs and where its outputs go.
pub trait Port {
    /// The current time (the wall clock, or the simulation's).
    fn now(&mut self) -> Instant;
    /// Puts the datagrams that arrived (up to [`BATCH`]) into the emptied
    /// `buf`; returns how many (0: none waiting).
    fn recv(&mut self, buf: &mut RecvBatch) -> usize;
    /// The next control command, if one waits.
    fn command(&mut self) -> Option<Command>;
    /// The next batch from another worker, if one waits.
    fn bus(&mut self) -> Option<BusBatch>;
    /// Sends the datagrams (and empties `out`); returns how many failed.
    fn send(&mut self, out: &mut Vec<Datagram>) -> usize;
    /// Hands a batch to worker `dst`'s inbox and wakes it, never blocking;
    /// gives the batch back when the inbox is full.
    fn offer(&self, dst: usize, batch: BusBatch) -> Result<(), BusBatch>;
    /// Tells the control plane.
    fn event(&mut self, ev: WorkerEvent);
    /// Hands a packet of a local track to the cascade; false if refused.
    fn relay(&mut self, link: LinkId, pkt: Arc<MediaPacket>) -> bool;
    /// Batches waiting in this worker's own inbox (for the gauge).
    fn inbox_depth(&self) -> usize {
        0
    }
    /// Reads the worker's ICE-TCP connections, if it has any: each packet
    /// goes to [`WorkerCore::handle_tcp_packet`], and connections the core
    /// refuses or that idle out are closed. Returns the packets and bytes
    /// read.
    fn streams(&mut self, _core: &mut WorkerCore, _now: Instant) -> (u64, u64) {
        (0, 0)
    }
    /// Closes the ICE-TCP connection from `peer` (its session closed).
    fn close_stream(&mut self, _peer: std::net::SocketAddr) {}
}

struct PortInbox<'a, P>(&'a P, usize);

impl<P: Port> Inbox for PortInbox<'_, P> {
    fn offer(&self, batch: BusBatch) -> Result<(), BusBatch> {
        self.0.offer(self.1, batch)
    }
}

/// What one turn did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// Something was handled or emitted (a simulation goes round again).
    pub progressed: bool,
    /// The last datagram batch was full: more may be waiting.
    pub more_input: bool,
    /// A shutdown command was handled: the worker stops.
    pub stop: bool,
}

/// The driving state of one worker: its bus outbox, its receive buffers
/// and its input/output counters.
pub struct Drive {
    outbox: Outbox,
    recv: RecvBatch,
    io: WorkerIoMetrics,
    packets_in: LocalIntCounter,
    packets_out: LocalIntCounter,
    bytes_in: LocalIntCounter,
    bytes_out: LocalIntCounter,
    lag: LocalHistogram,
    drop_malformed: LocalIntCounter,
    drop_send: LocalIntCounter,
    bus_drop_video: LocalIntCounter,
    bus_drop_other: LocalIntCounter,
    bus_drop_datagram: LocalIntCounter,
    bus_drop_link: LocalIntCounter,
    next_fold: Option<Instant>,
}

impl Drive {
    /// The driving state of worker `index` of `workers`.
    pub fn new(index: u16, workers: usize, metrics: &WorkerMetrics) -> Self {
        let io = metrics.io(index);
        Self {
            outbox: Outbox::new(workers),
            recv: RecvBatch::new(),
            packets_in: io.packets_in.local(),
            packets_out: io.packets_out.local(),
            bytes_in: io.bytes_in.local(),
            bytes_out: io.bytes_out.local(),
            lag: io.loop_lag.local(),
            io,
            drop_malformed: metrics.drop_malformed.local(),
            drop_send: metrics.drop_send.local(),
            bus_drop_video: metrics.bus_drop_video.local(),
            bus_drop_other: metrics.bus_drop_other.local(),
            bus_drop_datagram: metrics.bus_drop_datagram.local(),
            bus_drop_link: metrics.bus_drop_link.local(),
            next_fold: None,
        }
    }

    /// One turn of the loop (see the module docs for the order). `timers`
    /// false leaves step 5 out (a simulation that turns the workers over
    /// and over at one instant serves timers once per instant).
    pub fn turn(&mut self, core: &mut WorkerCore, port: &mut impl Port, timers: bool) -> Turn {
        let mut turn = Turn::default();
        // 1. Datagrams.
        for _ in 0..RECV_BATCHES {
            self.recv.clear();
            let n = port.recv(&mut self.recv);
            if n == 0 {
                turn.more_input = false;
                break;
            }
            turn.progressed = true;
            let now = port.now();
            for i in 0..n {
                match self.recv.get(i) {
                    Some((src, data)) => {
                        self.packets_in.inc();
                        self.bytes_in.inc_by(data.len() as u64);
                        core.handle_datagram(now, src, data);
                    }
                    None => self.drop_malformed.inc(),
                }
            }
            self.hand_over(core, port);
            core.flush(now);
            if core.outputs().transmits.len() >= SEND_AT {
                self.send(core, port);
            }
            turn.more_input = n == BATCH;
            if !turn.more_input {
                break;
            }
        }
        let now = port.now();
        // 1b. ICE-TCP packets, like datagrams.
        let (packets, bytes) = port.streams(core, now);
        if packets > 0 {
            turn.progressed = true;
            self.packets_in.inc_by(packets);
            self.bytes_in.inc_by(bytes);
            self.hand_over(core, port);
            core.flush(now);
        }
        // 2. Commands.
        while let Some(cmd) = port.command() {
            turn.progressed = true;
            let stop = matches!(cmd, Command::Shutdown);
            core.handle_command(now, cmd);
            if stop {
                self.poll_outputs(core, port);
                self.fold(core, port.inbox_depth());
                turn.stop = true;
                return turn;
            }
        }
        // 3. Bus batches.
        while let Some(batch) = port.bus() {
            turn.progressed = true;
            core.handle_bus(now, batch);
        }
        // 4. What commands and the bus produced for the other workers
        //    first, then for this worker's subscribers.
        self.hand_over(core, port);
        core.flush(now);
        // 5. Timers.
        if timers {
            if let Some(due) = core.poll_timeout().filter(|t| *t <= now) {
                self.lag
                    .observe(now.saturating_duration_since(due).as_secs_f64());
                core.handle_timeout(now);
            }
        }
        // 6. Outputs.
        turn.progressed |= self.poll_outputs(core, port);
        // 7. Counters.
        if self.next_fold.is_none_or(|t| now >= t) {
            self.next_fold = Some(now + FOLD_EVERY);
            self.fold(core, port.inbox_depth());
        }
        turn
    }

    /// Adds every counter to the shared metrics now (the loop does it about
    /// once a second; a simulation may after every step).
    pub fn fold(&mut self, core: &WorkerCore, inbox_depth: usize) {
        core.fold_metrics();
        for c in [
            &self.packets_in,
            &self.packets_out,
            &self.bytes_in,
            &self.bytes_out,
            &self.drop_malformed,
            &self.drop_send,
            &self.bus_drop_video,
            &self.bus_drop_other,
            &self.bus_drop_datagram,
            &self.bus_drop_link,
        ] {
            c.flush();
        }
        self.lag.flush();
        self.io.bus_queue_depth.set(inbox_depth as i64);
    }

    /// Hands each other worker what the core produced for it (one batch and
    /// one wake-up per worker), never blocking.
    fn hand_over(&mut self, core: &mut WorkerCore, port: &impl Port) -> bool {
        let mut handed = false;
        for (i, batch) in core.outputs().bus.iter_mut().enumerate() {
            // A full inbox sheds video and keeps the rest for next time.
            let (sent, shed) = self.outbox.hand_over(i, batch, &PortInbox(port, i));
            handed |= sent;
            self.bus_drop_video.inc_by(shed.video);
            self.bus_drop_other.inc_by(shed.other);
            self.bus_drop_datagram.inc_by(shed.datagrams);
        }
        handed
    }

    /// Sends the core's transmits.
    fn send(&mut self, core: &mut WorkerCore, port: &mut impl Port) {
        let out = &mut core.outputs().transmits;
        if out.is_empty() {
            return;
        }
        self.packets_out.inc_by(out.len() as u64);
        self.bytes_out
            .inc_by(out.iter().map(|d| d.data.len() as u64).sum());
        let failed = port.send(out);
        out.clear();
        if failed > 0 {
            self.drop_send.inc_by(failed as u64);
        }
    }

    /// Step 6: everything the core produced goes out. Returns whether
    /// anything reached the control plane or another worker.
    fn poll_outputs(&mut self, core: &mut WorkerCore, port: &mut impl Port) -> bool {
        self.send(core, port);
        let mut progressed = self.hand_over(core, port);
        let out = core.outputs();
        progressed |= !out.events.is_empty();
        for ev in out.events.drain(..) {
            port.event(ev);
        }
        for (link, pkt) in out.links.drain(..) {
            if !port.relay(link, pkt) {
                self.bus_drop_link.inc();
            }
        }
        for peer in out.tcp_closed.drain(..) {
            port.close_stream(peer);
        }
        progressed
    }
}
