//! Drives [`Client`]s over real UDP sockets (loopback), for process-level
//! tests and small runs, or over ICE-TCP ([`UdpClient::tcp`]): a client
//! whose UDP is blocked. One thread, non-blocking sockets, the wall clock.

use crate::client::{Client, ClientConfig, ClientError};
use crate::tcp::{candidate_addr, TcpTransport};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Longest the driver sleeps between passes.
const MAX_NAP: Duration = Duration::from_millis(2);

/// A client bound to its own UDP socket (or its ICE-TCP connection).
pub struct UdpClient {
    /// The client.
    pub client: Client,
    io: Io,
    buf: Vec<u8>,
}

enum Io {
    Udp(UdpSocket),
    Tcp(TcpTransport),
}

impl std::fmt::Debug for UdpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UdpClient({})", self.client.local_addr())
    }
}

impl UdpClient {
    /// Binds a socket on `ip` (any free port) and builds a client whose ICE
    /// host candidate is that socket's address.
    pub fn bind(
        ip: std::net::IpAddr,
        now: Instant,
        configure: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Result<Self, UdpError> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let client = Client::new(configure(ClientConfig::new(addr, now)), now)?;
        Ok(Self {
            client,
            io: Io::Udp(socket),
            buf: vec![0; 2048],
        })
    }

    /// A client whose only candidate is an active ICE-TCP one on `ip`: it
    /// never sends or receives UDP, as behind a firewall that drops it. Its
    /// connection opens at its first datagram (to the router's passive TCP
    /// candidate).
    pub fn tcp(
        ip: std::net::IpAddr,
        now: Instant,
        configure: impl FnOnce(ClientConfig) -> ClientConfig,
    ) -> Result<Self, UdpError> {
        let cfg = configure(ClientConfig::new(candidate_addr(ip), now)).tcp(true);
        Ok(Self {
            client: Client::new(cfg, now)?,
            io: Io::Tcp(TcpTransport::new()),
            buf: Vec::new(),
        })
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.client.local_addr()
    }

    /// Reads what has arrived, runs due timers and media, sends what is
    /// pending. Never blocks.
    pub fn poll_once(&mut self) {
        match &mut self.io {
            Io::Udp(socket) => loop {
                match socket.recv_from(&mut self.buf) {
                    Ok((n, src)) => {
                        let now = Instant::now();
                        self.client.handle_receive(now, src, &self.buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // ICMP "connection refused" and the like concern one peer only.
                    Err(_) => break,
                }
            },
            Io::Tcp(t) => {
                let client = &mut self.client;
                // A closed connection leaves the client to time out, as a
                // browser's would.
                let _ = t.flush();
                let _ = t.recv(|src, p| client.handle_receive(Instant::now(), src, p));
            }
        }
        let now = Instant::now();
        if self.client.next_timeout() <= now {
            self.client.handle_timeout(now);
        }
        while let Some(d) = self.client.poll_transmit() {
            // A full socket buffer drops the datagram, as a network would.
            match &mut self.io {
                Io::Udp(socket) => {
                    let _ = socket.send_to(&d.data, d.dst);
                }
                Io::Tcp(t) => {
                    let _ = t.send(d.dst, &d.data);
                }
            }
        }
    }
}

/// Why a UDP client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// Socket trouble.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Client set-up failed.
    #[error("client: {0}")]
    Client(#[from] ClientError),
}

/// Drives `clients` until `done` holds or `limit` passes; returns whether `done` held.
pub fn drive_until(
    clients: &mut [&mut UdpClient],
    limit: Duration,
    mut done: impl FnMut(&[&mut UdpClient]) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    loop {
        for c in clients.iter_mut() {
            c.poll_once();
        }
        if done(clients) {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        let next = clients
            .iter()
            .map(|c| c.client.next_timeout())
            .min()
            .unwrap_or(end);
        let nap = next.saturating_duration_since(now).min(MAX_NAP);
        if !nap.is_zero() {
            std::thread::sleep(nap);
        }
    }
}
