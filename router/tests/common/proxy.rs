//! A user-space UDP impairment proxy (the kernel here has no netem): clients
//! send to the proxy, which forwards to one upstream address with added
//! delay, jitter and random loss, both ways. Counts bytes each way.

use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Impairment {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
}

pub(crate) struct Proxy {
    pub addr: SocketAddr,
    /// Bytes forwarded client → upstream, and upstream → client.
    pub up_bytes: Arc<AtomicU64>,
    pub down_bytes: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Due {
    at: Instant,
    seq: u64,
    from: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}
impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl Proxy {
    /// A proxy on 127.0.0.1 forwarding to `upstream`.
    pub(crate) fn start(upstream: SocketAddr, imp: Impairment, seed: u64) -> Proxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let up_bytes = Arc::new(AtomicU64::new(0));
        let down_bytes = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        // Packets waiting for their release time; the condvar wakes the
        // sender when one is added.
        let queue: Arc<(Mutex<BinaryHeap<Reverse<Due>>>, Condvar)> =
            Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
        let rng = Arc::new(Mutex::new(rand::rngs::SmallRng::seed_from_u64(seed)));
        let seqn = Arc::new(AtomicU64::new(0));
        // Per destination, the last release time: jitter varies the delay
        // like a queue does, without letting packets overtake each other.
        let last_due: Arc<Mutex<HashMap<SocketAddr, Instant>>> =
            Arc::new(Mutex::new(HashMap::new()));
        let schedule = {
            let (queue, rng, dropped, seqn, last_due) = (
                queue.clone(),
                rng.clone(),
                dropped.clone(),
                seqn.clone(),
                last_due.clone(),
            );
            move |from: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>| {
                let mut r = rng.lock().unwrap();
                if r.random::<f64>() < imp.loss {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let j = if imp.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    imp.jitter.mul_f64(r.random::<f64>())
                };
                let mut at = Instant::now() + imp.delay + j;
                {
                    let mut last = last_due.lock().unwrap();
                    let l = last.entry(to).or_insert(at);
                    at = at.max(*l);
                    *l = at;
                }
                queue.0.lock().unwrap().push(Reverse(Due {
                    at,
                    seq: seqn.fetch_add(1, Ordering::Relaxed),
                    from,
                    to,
                    data,
                }));
                queue.1.notify_one();
            }
        };
        // Sender thread: sleeps until the next packet is due (or a new one
        // arrives), then releases what is due.
        {
            let (queue, stop) = (queue.clone(), stop.clone());
            std::thread::spawn(move || {
                let (heap, added) = &*queue;
                let mut q = heap.lock().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let mut ready = Vec::new();
                    while q.peek().is_some_and(|Reverse(d)| d.at <= now) {
                        ready.push(q.pop().unwrap().0);
                    }
                    if ready.is_empty() {
                        // At most 50 ms, to notice `stop`.
                        let wait = q
                            .peek()
                            .map_or(Duration::from_millis(50), |Reverse(d)| {
                                d.at.saturating_duration_since(now)
                            })
                            .min(Duration::from_millis(50));
                        q = added.wait_timeout(q, wait).unwrap().0;
                        continue;
                    }
                    drop(q);
                    for d in ready {
                        let _ = d.from.send_to(&d.data, d.to);
                    }
                    q = heap.lock().unwrap();
                }
            });
        }
        // Front thread: client → upstream, one upstream socket per client.
        {
            let (front, stop, up_bytes, down_bytes) = (
                front.clone(),
                stop.clone(),
                up_bytes.clone(),
                down_bytes.clone(),
            );
            let schedule = schedule.clone();
            std::thread::spawn(move || {
                let mut uppers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    up_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let upper = uppers
                        .entry(client)
                        .or_insert_with(|| {
                            let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                            let (s2, front, stop, down, schedule) = (
                                s.clone(),
                                front.clone(),
                                stop.clone(),
                                down_bytes.clone(),
                                schedule.clone(),
                            );
                            std::thread::spawn(move || {
                                let mut buf = vec![0u8; 65536];
                                while !stop.load(Ordering::Relaxed) {
                                    if let Ok((n, _)) = s2.recv_from(&mut buf) {
                                        down.fetch_add(n as u64, Ordering::Relaxed);
                                        schedule(front.clone(), client, buf[..n].to_vec());
                                    }
                                }
                            });
                            s
                        })
                        .clone();
                    schedule(upper, upstream, buf[..n].to_vec());
                }
            });
        }
        Proxy {
            addr,
            up_bytes,
            down_bytes,
            dropped,
            stop,
        }
    }
}
