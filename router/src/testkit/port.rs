//! A simulated worker's inputs and outputs: the [`Port`] the production
//! drive loop runs against in the simulation.

use crate::control::Control;
use crate::media::drive::Port;
use crate::media::types::{LinkId, MediaPacket};
use crate::media::udp::{RecvBatch, BATCH};
use crate::media::{BusBatch, Command, Datagram, WorkerEvent};
use crossbeam_channel::{Receiver, Sender};
use kaskade_loadtest::{Datagram as NetDatagram, SimNet};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A simulated worker's inputs.
pub(super) struct SimIo {
    pub(super) commands: Receiver<Command>,
    /// Its bounded bus inbox, the same kind of channel as in production.
    pub(super) bus: Receiver<BusBatch>,
    /// Datagrams the network delivered, not yet read.
    pub(super) inbound: VecDeque<NetDatagram>,
    /// Until then it reads nothing from its inbox (a worker fallen behind).
    pub(super) stalled_until: Option<Instant>,
}

/// A simulated worker as the drive loop sees it.
pub(super) struct SimPort<'a> {
    pub(super) now: Instant,
    pub(super) addr: SocketAddr,
    pub(super) io: &'a mut SimIo,
    pub(super) inboxes: &'a [Sender<BusBatch>],
    pub(super) net: &'a mut SimNet,
    pub(super) control: &'a Control,
    pub(super) events: &'a mut Vec<WorkerEvent>,
    /// Where packets for the cascade go (`None`: no cascade, dropped).
    pub(super) relayed: &'a mut Option<Vec<(LinkId, Arc<MediaPacket>)>>,
    /// `Sim::router_mark`: the simulated network's own work is not the router's.
    pub(super) mark: fn(bool),
}

impl Port for SimPort<'_> {
    fn now(&mut self) -> Instant {
        self.now
    }

    fn recv(&mut self, buf: &mut RecvBatch) -> usize {
        // The kernel's copy into the receive buffers, in production.
        (self.mark)(false);
        while buf.len() < BATCH {
            let Some(d) = self.io.inbound.pop_front() else {
                break;
            };
            // Too long for the receive buffers: lost, as the kernel would truncate it.
            let _ = buf.push(d.src, &d.data);
        }
        (self.mark)(true);
        buf.len()
    }

    fn command(&mut self) -> Option<Command> {
        self.io.commands.try_recv().ok()
    }

    fn bus(&mut self) -> Option<BusBatch> {
        if self.io.stalled_until.is_some_and(|t| self.now < t) {
            return None;
        }
        self.io.bus.try_recv().ok()
    }

    fn send(&mut self, out: &mut Vec<Datagram>) -> usize {
        // The kernel's send, in production.
        (self.mark)(false);
        for d in out.drain(..) {
            self.net.send(
                self.now,
                NetDatagram {
                    src: self.addr,
                    dst: d.dst,
                    data: d.data,
                },
            );
        }
        (self.mark)(true);
        0
    }

    fn offer(&self, dst: usize, batch: BusBatch) -> Result<(), BusBatch> {
        let Some(inbox) = self.inboxes.get(dst) else {
            return Ok(());
        };
        inbox.try_send(batch).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(b)
            | crossbeam_channel::TrySendError::Disconnected(b) => b,
        })
    }

    fn event(&mut self, ev: WorkerEvent) {
        self.events.push(ev.clone());
        self.control.on_worker_event(ev);
    }

    fn relay(&mut self, link: LinkId, pkt: Arc<MediaPacket>) -> bool {
        if let Some(out) = self.relayed.as_mut() {
            out.push((link, pkt));
        }
        true
    }

    fn inbox_depth(&self) -> usize {
        self.io.bus.len()
    }
}
