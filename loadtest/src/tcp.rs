//! ICE-TCP for the clients: the active side of RFC 6544 with RFC 4571
//! framing. A client configured with [`crate::ClientConfig::tcp`] offers one
//! active TCP host candidate at [`candidate_addr`] (port 9, as RFC 6544 says
//! for active candidates) and pairs only with the router's passive TCP
//! candidate: its UDP is never used, as behind a firewall that drops it.
//! [`TcpTransport`] carries its datagrams: one connection, opened
//! (non-blocking) at the first datagram to the router's candidate.

use kaskade_protocol::rfc4571::{self, Decoder, PREFIX_LEN};
use mio::net::TcpStream;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};

/// The port of an active TCP candidate (RFC 6544, section 4.5).
pub const ACTIVE_PORT: u16 = 9;
/// Framed bytes a connection holds for a router that does not read, at
/// most; beyond, datagrams are dropped as a network would.
pub const MAX_QUEUED: usize = 1 << 20;
/// Largest packet read from the router.
const MAX_PACKET: usize = 2048;

/// The address of a client's active TCP candidate on `ip`.
pub fn candidate_addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, ACTIVE_PORT)
}

/// One client's ICE-TCP connection. See the [module docs](self).
#[derive(Debug)]
pub struct TcpTransport {
    stream: Option<TcpStream>,
    peer: Option<SocketAddr>,
    decoder: Decoder,
    out: Vec<u8>,
    /// Datagrams dropped: the queue was full, or they were for another peer.
    pub dropped: u64,
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpTransport {
    /// Not connected yet.
    pub fn new() -> Self {
        Self {
            stream: None,
            peer: None,
            decoder: Decoder::new(MAX_PACKET, 8 * (PREFIX_LEN + MAX_PACKET)),
            out: Vec::new(),
            dropped: 0,
        }
    }

    /// Frames `data` for `dst` and writes what the socket takes. Connects
    /// (without waiting) at the first datagram; returns `Ok(true)` then, so
    /// the caller can register [`TcpTransport::stream_mut`] with its poll.
    pub fn send(&mut self, dst: SocketAddr, data: &[u8]) -> io::Result<bool> {
        let mut opened = false;
        if self.stream.is_none() {
            let stream = TcpStream::connect(dst)?;
            // No Nagle delay, as browsers' ICE-TCP sockets: a packet waiting
            // for the ACK of the previous one would add tens of ms.
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.peer = Some(dst);
            opened = true;
        }
        let Some(prefix) = rfc4571::header(data.len()) else {
            self.dropped += 1;
            return Ok(opened);
        };
        if self.peer != Some(dst) || self.out.len() + PREFIX_LEN + data.len() > MAX_QUEUED {
            self.dropped += 1;
            return Ok(opened);
        }
        self.out.extend_from_slice(&prefix);
        self.out.extend_from_slice(data);
        self.flush()?;
        Ok(opened)
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut written = 0;
        while written < self.out.len() {
            match stream.write(&self.out[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                // Still connecting, or the buffer is full: later.
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::NotConnected =>
                {
                    break
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..written);
        Ok(())
    }

    /// Reads what has arrived and calls `f` with each packet and the peer
    /// it came from. An error (the router closed the connection, or sent
    /// something that is not RFC 4571 framing) ends the connection.
    pub fn recv(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> io::Result<()> {
        let (Some(stream), Some(peer)) = (self.stream.as_mut(), self.peer) else {
            return Ok(());
        };
        loop {
            match stream.read(self.decoder.spare()) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.decoder.filled(n);
                    while let Some(p) = self
                        .decoder
                        .next_packet()
                        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?
                    {
                        f(peer, p);
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::NotConnected =>
                {
                    return Ok(())
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The connection, once opened (to register it with a poll).
    pub fn stream_mut(&mut self) -> Option<&mut TcpStream> {
        self.stream.as_mut()
    }

    /// Framed bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn datagrams_cross_a_connection_framed_and_come_back_whole() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut t = TcpTransport::new();
        assert!(t.send(addr, b"hello").unwrap(), "the first send connects");
        assert!(!t.send(addr, &[7; 1500]).unwrap());
        let (mut server, _) = listener.accept().unwrap();
        // The server echoes two framed packets.
        server.write_all(&[0, 3, 1, 2, 3, 0, 1, 9]).unwrap();
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(5);
        while got.len() < 2 && Instant::now() < end {
            t.flush().unwrap();
            t.recv(|src, p| got.push((src, p.to_vec()))).unwrap();
        }
        assert_eq!(got, vec![(addr, vec![1, 2, 3]), (addr, vec![9])]);
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0; 2 + 5 + 2 + 1500];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..7], b"\x00\x05hello");
        assert_eq!(&buf[7..9], &[0x05, 0xdc]);
        // Datagrams for another peer are not sent on this connection.
        t.send("127.0.0.1:1".parse().unwrap(), b"x").unwrap();
        assert_eq!(t.dropped, 1);
        drop(server);
        let end = Instant::now() + Duration::from_secs(5);
        let mut r = Ok(());
        while r.is_ok() && Instant::now() < end {
            r = t.recv(|_, _| {});
        }
        assert!(r.is_err(), "a closed connection is an error");
    }
}
