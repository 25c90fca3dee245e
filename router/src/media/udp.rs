//! Batched UDP I/O for the media workers: `recvmmsg` and `sendmmsg`, one
//! system call for up to [`BATCH`] datagrams. Linux only, like the router.
//!
//! GSO is not used: it needs a burst of equal-sized segments to one
//! destination, and forwarded packets keep the sizes the publisher chose.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// Socket buffers a media worker asks for: a burst of keyframes to many
/// subscribers must not overflow the kernel's default (about 200 KiB).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A media worker's socket: bound, non-blocking, with large buffers.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    grow_buffers(&sock);
    Ok(sock)
}

/// A media worker's socket on a port it shares with the other workers
/// (`media.single_port`): `SO_REUSEPORT` before binding, so every worker
/// binds the same address and the kernel spreads the datagrams over them
/// by a hash of their source and destination.
pub fn bind_shared(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use std::os::fd::FromRawFd;
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns; the UdpSocket
    // closes it, on the error paths below too.
    let sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let (raw, len) = to_raw(addr);
    // SAFETY: `fd` is live; `one` and `raw` outlive the calls and the
    // lengths are theirs.
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(fd, (&raw as *const RawAddr).cast(), len) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    grow_buffers(&sock);
    Ok(sock)
}

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

/// Reads up to [`BATCH`] datagrams into `buf` without blocking; 0 when none
/// was read. `more` says whether the socket may hold more (it is cleared
/// once a read comes back short or would block). Errors that concern one
/// peer (ICMP errors surface here on Linux) and interruptions are retried a
/// few times, then left for the next call with `more` set.
pub fn recv_some(fd: RawFd, buf: &mut RecvBatch, more: &mut bool) -> usize {
    for _ in 0..4 {
        match buf.recv(fd) {
            Ok(n) => {
                *more = n == BATCH;
                return n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *more = false;
                return 0;
            }
            Err(_) => {}
        }
    }
    *more = true;
    0
}
/// Largest datagram received whole; longer ones are dropped (WebRTC keeps
/// datagrams under the path MTU, about 1200 bytes).
pub const MAX_DATAGRAM: usize = 2048;

/// A socket address in the layout the kernel takes.
#[derive(Clone, Copy)]
#[repr(C)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

fn to_raw(a: SocketAddr) -> (RawAddr, libc::socklen_t) {
    match a {
        SocketAddr::V4(a) => (
            RawAddr {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                },
            },
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ),
        SocketAddr::V6(a) => (
            RawAddr {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ),
    }
}

fn from_raw(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What one [`send_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams dropped: refused for their destination, or the socket's
    /// send buffer was full (the rest of that chunk is dropped then, never
    /// waited for).
    pub failed: usize,
    /// System calls made.
    pub calls: usize,
}

/// Sends every datagram, [`BATCH`] per `sendmmsg` call. Never blocks on a
/// non-blocking socket and allocates nothing.
pub fn send_batch<'a>(
    fd: RawFd,
    items: impl IntoIterator<Item = (SocketAddr, &'a [u8])>,
) -> SendOutcome {
    let mut out = SendOutcome::default();
    let mut items = items.into_iter().peekable();
    // SAFETY: plain C structs (and a union of them): all-zero is valid.
    let mut addrs: [RawAddr; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    while items.peek().is_some() {
        let mut n = 0;
        for (dst, data) in items.by_ref().take(BATCH) {
            let (raw, len) = to_raw(dst);
            addrs[n] = raw;
            iov[n] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            hdrs[n] = libc::mmsghdr {
                // SAFETY: all-zero is a valid msghdr; the fields that matter
                // are set below.
                msg_hdr: unsafe { std::mem::zeroed() },
                msg_len: 0,
            };
            let h = &mut hdrs[n].msg_hdr;
            h.msg_name = (&mut addrs[n] as *mut RawAddr).cast();
            h.msg_namelen = len;
            h.msg_iov = &mut iov[n];
            h.msg_iovlen = 1;
            n += 1;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `hdrs[done..n]` point at `addrs` and `iov` entries that
            // live until this function returns, and at data slices that
            // outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[done..n].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            out.calls += 1;
            if r > 0 {
                done += r as usize;
                out.sent += r as usize;
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    // The send buffer is full: drop the rest of this chunk.
                    out.failed += n - done;
                    done = n;
                }
                // Refused for this destination (for example an ICMP error
                // reported late): drop it, go on with the others.
                _ => {
                    out.failed += 1;
                    done += 1;
                }
            }
        }
    }
    out
}

/// Buffers for receiving up to [`BATCH`] datagrams with one `recvmmsg`.
pub struct RecvBatch {
    bufs: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    lens: [usize; BATCH],
    flags: [libc::c_int; BATCH],
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBatch({} received)", self.n)
    }
}

impl RecvBatch {
    /// Allocates the buffers (about 64 KiB), once per worker.
    pub fn new() -> Self {
        Self {
            bufs: Box::new([[0; MAX_DATAGRAM]; BATCH]),
            // SAFETY: sockaddr_storage is a plain C struct: all-zero is valid.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            lens: [0; BATCH],
            flags: [0; BATCH],
            n: 0,
        }
    }

    /// Receives what is waiting, up to [`BATCH`] datagrams, without
    /// blocking. `Ok(0)` never happens: nothing waiting is `WouldBlock`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: plain C structs: all-zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer and an address slot owned
        // by `self` (borrowed mutably here) and at `iov`, all live for the
        // call; the kernel writes at most the lengths given.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        for (i, h) in hdrs.iter().enumerate().take(self.n) {
            self.lens[i] = h.msg_len as usize;
            self.flags[i] = h.msg_hdr.msg_flags;
        }
        Ok(self.n)
    }

    /// Datagrams held (from the last receive, or pushed).
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Forgets what it holds.
    pub fn clear(&mut self) {
        self.n = 0;
    }

    /// Adds a datagram as if it had been received (a simulated network
    /// fills the batch this way); false when full or too long.
    pub fn push(&mut self, src: SocketAddr, data: &[u8]) -> bool {
        if self.n == BATCH || data.len() > MAX_DATAGRAM {
            return false;
        }
        let i = self.n;
        let (raw, len) = to_raw(src);
        // SAFETY: sockaddr_storage is large and aligned enough for either
        // address type, and the first `len` bytes of `raw` are the address.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&raw as *const RawAddr).cast::<u8>(),
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                len as usize,
            );
        }
        self.bufs[i][..data.len()].copy_from_slice(data);
        self.lens[i] = data.len();
        self.flags[i] = 0;
        self.n += 1;
        true
    }

    /// Datagram `i` of the last receive: its source and bytes. `None` for
    /// one that was truncated or has an unknown address family.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.n || self.flags[i] & libc::MSG_TRUNC != 0 {
            return None;
        }
        let src = from_raw(&self.addrs[i])?;
        Some((src, &self.bufs[i][..self.lens[i].min(MAX_DATAGRAM)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batches_go_out_and_come_in_whole_with_their_sources() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let to = b.local_addr().unwrap();
        let msgs: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let out = send_batch(a.as_raw_fd(), msgs.iter().map(|m| (to, m.as_slice())));
        assert_eq!(out.sent, 70);
        assert_eq!(out.failed, 0);
        assert_eq!(out.calls, 3, "70 datagrams in batches of 32");
        let mut rb = RecvBatch::new();
        let mut got = Vec::new();
        while let Ok(n) = rb.recv(b.as_raw_fd()) {
            for i in 0..n {
                let (src, data) = rb.get(i).expect("whole datagram");
                assert_eq!(src, a.local_addr().unwrap());
                got.push(data.to_vec());
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn a_refused_destination_does_not_stop_the_others() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        let to = b.local_addr().unwrap();
        let m = [1u8; 10];
        // An IPv6 destination on an IPv4 socket is refused by the kernel.
        let out = send_batch(a.as_raw_fd(), [(to, &m[..]), (v6, &m[..]), (to, &m[..])]);
        assert_eq!((out.sent, out.failed), (2, 1));
    }

    #[test]
    fn workers_can_share_one_port_and_the_kernel_spreads_sources_over_them() {
        let first = bind_shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let socks: Vec<std::net::UdpSocket> = std::iter::once(first)
            .chain((0..3).map(|_| bind_shared(addr).unwrap()))
            .collect();
        assert!(socks.iter().all(|s| s.local_addr().unwrap() == addr));
        assert!(
            bind(addr).is_err(),
            "a socket without SO_REUSEPORT cannot join"
        );
        let clients: Vec<UdpSocket> = (0..32)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for c in &clients {
            c.send_to(b"x", addr).unwrap();
        }
        let mut got = Vec::new();
        for s in &socks {
            let mut rb = RecvBatch::new();
            let n = rb.recv(s.as_raw_fd()).unwrap_or(0);
            got.push(n);
        }
        assert_eq!(got.iter().sum::<usize>(), 32, "{got:?}");
        assert!(
            got.iter().filter(|n| **n > 0).count() > 1,
            "spread: {got:?}"
        );
    }

    #[test]
    fn pushed_datagrams_read_back_like_received_ones() {
        let mut rb = RecvBatch::new();
        let v4: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        assert!(rb.push(v4, b"one"));
        assert!(rb.push(v6, b"two"));
        assert_eq!(rb.len(), 2);
        assert_eq!(rb.get(0), Some((v4, &b"one"[..])));
        assert_eq!(rb.get(1), Some((v6, &b"two"[..])));
        rb.clear();
        assert!(rb.is_empty());
        assert!(!rb.push(v4, &[0; MAX_DATAGRAM + 1]));
    }

    #[test]
    fn truncated_datagrams_are_not_returned() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        a.send_to(&[7u8; MAX_DATAGRAM + 100], b.local_addr().unwrap())
            .unwrap();
        a.send_to(&[8u8; 20], b.local_addr().unwrap()).unwrap();
        let mut rb = RecvBatch::new();
        assert_eq!(rb.recv(b.as_raw_fd()).unwrap(), 2);
        assert!(rb.get(0).is_none());
        assert_eq!(rb.get(1).map(|(_, d)| d.len()), Some(20));
        assert_eq!(
            rb.recv(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
