//! Loopback sinks and batched sending with `sendmmsg`.
//!
//! Nobody reads the sinks: once a sink's receive buffer is full the kernel
//! drops what arrives (the send still succeeds). Both the floor and kaskade
//! send to the same sinks through the same code, so the kernel's share is
//! the same on both sides.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per `sendmmsg` call.
pub const MAX_BATCH: usize = 32;

/// A sending socket and `n` bound receivers on 127.0.0.1.
pub struct Sinks {
    sender: UdpSocket,
    _receivers: Vec<UdpSocket>,
    addrs: Vec<libc::sockaddr_in>,
    /// `sendmmsg` calls made.
    pub calls: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams the kernel refused (counted, not retried).
    pub errors: u64,
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl Sinks {
    /// Binds `n` receivers and one sender.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        let mut receivers = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let r = UdpSocket::bind("127.0.0.1:0")?;
            let SocketAddr::V4(a) = r.local_addr()? else {
                unreachable!("bound to an IPv4 address")
            };
            addrs.push(sockaddr(a));
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
        assert!(batch.len() <= MAX_BATCH);
        if batch.is_empty() {
            return;
        }
        // SAFETY: plain C structs, all-zero is a valid value.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for (i, (data, sink)) in batch.iter().enumerate() {
            iov[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &self.addrs[*sink] as *const libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        let fd = self.sender.as_raw_fd();
        let mut done = 0;
        while done < batch.len() {
            // SAFETY: `hdrs[done..len]` point at `iov` entries and addresses
            // that live until this function returns; the data slices
            // outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[done..].as_mut_ptr(),
                    (batch.len() - done) as libc::c_uint,
                    0,
                )
            };
            self.calls += 1;
            if r <= 0 {
                // The first datagram of the rest failed: count it, go on.
                self.errors += 1;
                done += 1;
            } else {
                done += r as usize;
                self.sent += r as u64;
            }
        }
    }
}
