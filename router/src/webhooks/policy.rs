//! The delivery policy of one webhook receiver, sans IO: events in, at most
//! one request in flight, retries on a fixed backoff, a bounded queue that
//! refuses (the driver counts the drop) while the receiver is down or slow.
//! In order: the next event waits until the one before it was delivered
//! or given up.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Waits before the 2nd, 3rd, ... attempt of one event; after the last,
/// the event is given up (about a minute in all).
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// One event waiting for delivery.
#[derive(Debug, Clone)]
struct Job {
    /// Stable across attempts, so a receiver can drop duplicates.
    id: u64,
    body: Bytes,
}

/// A request to make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The event's delivery id.
    pub id: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The body.
    pub body: Bytes,
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// Failed; tried again at the given time.
    Retry(Instant),
    /// Failed for the last time; dropped.
    GaveUp,
}

/// The queue was full: the event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The policy of one receiver.
#[derive(Debug)]
pub struct Policy {
    queue: VecDeque<Job>,
    capacity: usize,
    next_id: u64,
    /// Attempts made of the head of the queue.
    attempts: u32,
    in_flight: bool,
    /// The head waits until then before its next attempt.
    retry_at: Option<Instant>,
}

impl Policy {
    /// A policy holding at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            next_id: 1,
            attempts: 0,
            in_flight: false,
            retry_at: None,
        }
    }

    /// Events queued (the one in flight included).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues an event; refused when the queue is full.
    pub fn push(&mut self, body: Bytes) -> Result<u64, QueueFull> {
        if self.queue.len() >= self.capacity {
            return Err(QueueFull);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Job { id, body });
        Ok(id)
    }

    /// The request to make now, if any (one at a time).
    pub fn poll_send(&mut self, now: Instant) -> Option<Attempt> {
        if self.in_flight || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let job = self.queue.front()?;
        self.retry_at = None;
        self.in_flight = true;
        self.attempts += 1;
        Some(Attempt {
            id: job.id,
            attempt: self.attempts,
            body: job.body.clone(),
        })
    }

    /// The attempt in flight ended (`delivered`: a 2xx answer).
    pub fn on_result(&mut self, now: Instant, delivered: bool) -> Outcome {
        self.in_flight = false;
        if delivered {
            self.next_job();
            return Outcome::Delivered;
        }
        match RETRY_DELAYS.get(self.attempts as usize - 1) {
            Some(d) => {
                let at = now + *d;
                self.retry_at = Some(at);
                Outcome::Retry(at)
            }
            None => {
                self.next_job();
                Outcome::GaveUp
            }
        }
    }

    fn next_job(&mut self) {
        self.queue.pop_front();
        self.attempts = 0;
        self.retry_at = None;
    }

    /// When [`Policy::poll_send`] has something again (a retry's time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        self.retry_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn events_go_one_at_a_time_in_order() {
        let t0 = Instant::now();
        let mut p = Policy::new(10);
        p.push(body("a")).unwrap();
        p.push(body("b")).unwrap();
        let a = p.poll_send(t0).unwrap();
        assert_eq!((a.id, a.attempt, &a.body[..]), (1, 1, &b"a"[..]));
        assert_eq!(p.poll_send(t0), None, "one in flight");
        assert_eq!(p.on_result(t0, true), Outcome::Delivered);
        let b = p.poll_send(t0).unwrap();
        assert_eq!(b.id, 2);
        p.on_result(t0, true);
        assert!(p.is_empty());
        assert_eq!(p.poll_send(t0), None);
    }

    #[test]
    fn a_failing_receiver_is_retried_with_backoff_then_given_up() {
        let t0 = Instant::now();
        let mut p = Policy::new(10);
        p.push(body("a")).unwrap();
        let mut now = t0;
        let mut waits = Vec::new();
        loop {
            let a = p.poll_send(now).expect("an attempt is due");
            assert_eq!(a.id, 1, "the same event, the same id");
            match p.on_result(now, false) {
                Outcome::Retry(at) => {
                    assert_eq!(p.poll_send(at - Duration::from_millis(1)), None);
                    assert_eq!(p.poll_timeout(), Some(at));
                    waits.push(at - now);
                    now = at;
                }
                Outcome::GaveUp => break,
                Outcome::Delivered => unreachable!(),
            }
        }
        assert_eq!(waits, RETRY_DELAYS.to_vec());
        assert!(p.is_empty());
        assert_eq!(now - t0, Duration::from_secs(31));
    }

    #[test]
    fn a_full_queue_refuses_and_a_recovered_receiver_drains_it() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        for s in ["a", "b", "c"] {
            p.push(body(s)).unwrap();
        }
        assert_eq!(p.push(body("d")), Err(QueueFull));
        // The receiver is down for a while: the head retries, the rest waits.
        let a = p.poll_send(t0).unwrap();
        let Outcome::Retry(at) = p.on_result(t0, false) else {
            panic!("retried")
        };
        assert_eq!(p.push(body("e")), Err(QueueFull), "still full");
        // Back up: a (second attempt), b, c, then room again.
        let again = p.poll_send(at).unwrap();
        assert_eq!((again.id, again.attempt), (a.id, 2));
        p.on_result(at, true);
        let mut ids = Vec::new();
        while let Some(x) = p.poll_send(at) {
            ids.push(x.id);
            p.on_result(at, true);
        }
        assert_eq!(ids, [2, 3]);
        assert_eq!(p.push(body("f")), Ok(4));
    }
}
