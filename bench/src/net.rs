//! Loopback sinks and batched sending with the router's own `sendmmsg`
//! code (`kaskade_router::media::udp::send_batch`).
//!
//! Nobody reads the sinks: once a sink's receive buffer is full the kernel
//! drops what arrives (the send still succeeds). Both the floor and kaskade
//! send to the same sinks through the same code, so the kernel's share is
//! the same on both sides.

use kaskade_router::media::udp::{send_batch, BATCH};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per `sendmmsg` call.
pub const MAX_BATCH: usize = BATCH;

/// A sending socket and `n` bound receivers on 127.0.0.1.
pub struct Sinks {
    sender: UdpSocket,
    _receivers: Vec<UdpSocket>,
    addrs: Vec<SocketAddr>,
    /// `sendmmsg` calls made.
    pub calls: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams the kernel refused (counted, not retried).
    pub errors: u64,
}

impl Sinks {
    /// Binds `n` receivers and one sender.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let mut receivers = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let r = UdpSocket::bind("127.0.0.1:0")?;
            addrs.push(r.local_addr()?);
            receivers.push(r);
        }
        Ok(Self {
            sender,
            _receivers: receivers,
            addrs,
            calls: 0,
            sent: 0,
            errors: 0,
        })
    }

    /// Number of sinks.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are no sinks.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Sends up to [`MAX_BATCH`] datagrams `(bytes, sink index)` with one
    /// `sendmmsg` call (more calls only if the kernel takes fewer).
    pub fn send(&mut self, batch: &[(&[u8], usize)]) {
        if batch.is_empty() {
            return;
        }
        let out = send_batch(
            self.sender.as_raw_fd(),
            batch.iter().map(|(data, sink)| (self.addrs[*sink], *data)),
        );
        self.calls += out.calls as u64;
        self.sent += out.sent as u64;
        self.errors += out.failed as u64;
    }
}
