//! A user-space impairment proxy for a link between two routers (the kernel
//! here has no netem): router A's peer address for B is the proxy, which
//! forwards to B's cascade port and back through the same [`Impairer`] model the
//! clients use (loss, then delay plus jitter, order kept), on its own thread.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kaskade_loadtest::{Datagram, Link};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::impair::{Due, Impairer};

const FRONT: Token = Token(0);
const UPPER: Token = Token(1);
/// Longest the thread sleeps before it looks at the stop flag.
const NAP: Duration = Duration::from_millis(20);

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub(crate) struct LinkProxy {
    /// Where the dialling router sends.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl LinkProxy {
    /// A proxy on 127.0.0.1 that forwards to `upstream`, impaired by `link` in
    /// both directions.
    pub(crate) fn start(upstream: SocketAddr, link: Link, seed: u64) -> std::io::Result<LinkProxy> {
        let mut front = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let mut upper = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = front.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut front, FRONT, Interest::READABLE)?;
        poll.registry()
            .register(&mut upper, UPPER, Interest::READABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut p = ProxyThread {
            poll,
            front,
            upper,
            upstream,
            client: None,
            link,
            impairer: Impairer::new(seed),
        };
        let s = stop.clone();
        let join = std::thread::Builder::new()
            .name("lt-link-proxy".into())
            .spawn(move || p.run(&s))?;
        Ok(LinkProxy {
            addr,
            stop,
            join: Some(join),
        })
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

struct ProxyThread {
    poll: Poll,
    front: UdpSocket,
    upper: UdpSocket,
    upstream: SocketAddr,
    /// The dialling router's address, learnt from its first datagram.
    client: Option<SocketAddr>,
    link: Link,
    impairer: Impairer,
}

impl ProxyThread {
    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .impairer
                .next_due()
                .map_or(NAP, |t| t.saturating_duration_since(now).min(NAP));
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != ErrorKind::Interrupted {
                    return;
                }
            }
            let now = Instant::now();
            for ev in events.iter() {
                let from_front = ev.token() == FRONT;
                loop {
                    let sock = if from_front { &self.front } else { &self.upper };
                    let (n, src) = match sock.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let data = buf[..n].to_vec();
                    if from_front {
                        if self.client != Some(src) {
                            self.client = Some(src);
                            self.impairer.add_client(src, self.link);
                        }
                        let dst = self.upstream;
                        self.impairer.push(now, Datagram { src, dst, data });
                    } else if let Some(client) = self.client {
                        let src = self.upstream;
                        self.impairer.push(
                            now,
                            Datagram {
                                src,
                                dst: client,
                                data,
                            },
                        );
                    }
                }
            }
            while let Some(due) = self.impairer.poll(Instant::now()) {
                match due {
                    // A full socket buffer drops the datagram, as a network would.
                    Due::Out(d) => {
                        let _ = self.upper.send_to(&d.data, d.dst);
                    }
                    Due::In(d) => {
                        let _ = self.front.send_to(&d.data, d.dst);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_both_ways_with_the_link_delay() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let delay = Duration::from_millis(30);
        let p = LinkProxy::start(server.local_addr().unwrap(), Link::with_delay(delay), 1).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let t0 = Instant::now();
        client.send_to(b"ping", p.addr).unwrap();
        let mut buf = [0u8; 16];
        let (n, via) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(t0.elapsed() >= delay);
        server.send_to(b"pong", via).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], p.addr));
        assert!(t0.elapsed() >= 2 * delay);
    }
}
