//! A timer per session slot, in one indexed binary heap: the earliest
//! deadline is at hand in O(1), setting, moving or cancelling a timer costs
//! O(log n) and nothing else, and a worker's loop touches only the sessions
//! whose deadline has come (quinn keeps its timers the same way, in a table
//! the driver asks for the next expiry). Allocation happens only when the
//! number of slots grows.

use std::time::Instant;

const NONE: u32 = u32::MAX;

/// Deadlines of slots `0..n`.
#[derive(Debug, Default)]
pub struct TimerQueue {
    /// (deadline, slot), a binary min-heap.
    heap: Vec<(Instant, u32)>,
    /// Slot → its position in `heap`, or [`NONE`].
    pos: Vec<u32>,
}

impl TimerQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or moves) the deadline of `slot`.
    pub fn set(&mut self, slot: u32, at: Instant) {
        let s = slot as usize;
        if self.pos.len() <= s {
            self.pos.resize(s + 1, NONE);
        }
        match self.pos[s] {
            NONE => {
                self.heap.push((at, slot));
                let i = self.heap.len() - 1;
                self.pos[s] = i as u32;
                self.up(i);
            }
            i => {
                let i = i as usize;
                let old = self.heap[i].0;
                self.heap[i].0 = at;
                if at < old {
                    self.up(i);
                } else {
                    self.down(i);
                }
            }
        }
    }

    /// The deadline of `slot`, if it has one.
    pub fn get(&self, slot: u32) -> Option<Instant> {
        match self.pos.get(slot as usize) {
            Some(&i) if i != NONE => Some(self.heap[i as usize].0),
            _ => None,
        }
    }

    /// Cancels the deadline of `slot`.
    pub fn remove(&mut self, slot: u32) {
        let Some(&i) = self.pos.get(slot as usize) else {
            return;
        };
        if i == NONE {
            return;
        }
        self.take(i as usize);
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.first().map(|(t, _)| *t)
    }

    /// Removes and returns a slot whose deadline is `now` or earlier
    /// (earliest first; among equal deadlines the lowest slot).
    pub fn pop_due(&mut self, now: Instant) -> Option<u32> {
        let (t, slot) = *self.heap.first()?;
        if t > now {
            return None;
        }
        self.take(0);
        Some(slot)
    }

    /// Slots with a deadline.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no slot has a deadline.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn take(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        let (_, slot) = self.heap.pop().unwrap_or_else(|| unreachable!("i < len"));
        self.pos[slot as usize] = NONE;
        if i < self.heap.len() {
            self.down(i);
            self.up(i);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] >= self.heap[parent] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l] < self.heap[least] {
                least = l;
            }
            if r < self.heap.len() && self.heap[r] < self.heap[least] {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_timer_fires_at_its_time_and_no_other_is_touched() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::new();
        for (slot, at) in [(0, 50), (1, 10), (2, 30), (3, 10), (4, 70)] {
            q.set(slot, ms(at));
        }
        assert_eq!(q.next(), Some(ms(10)));
        assert_eq!(q.pop_due(ms(9)), None, "nothing is due before 10 ms");
        // At 10 ms exactly the two timers of 10 ms fire, lowest slot first,
        // and nothing else.
        assert_eq!(q.pop_due(ms(10)), Some(1));
        assert_eq!(q.pop_due(ms(10)), Some(3));
        assert_eq!(q.pop_due(ms(10)), None);
        assert_eq!(q.len(), 3);
        // Moving and cancelling.
        q.set(4, ms(20));
        q.remove(2);
        q.remove(2);
        assert_eq!(q.get(2), None);
        assert_eq!(q.get(4), Some(ms(20)));
        assert_eq!(q.pop_due(ms(100)), Some(4));
        assert_eq!(q.pop_due(ms(100)), Some(0));
        assert_eq!(q.pop_due(ms(100)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn the_heap_stays_ordered_through_many_changes() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        let mut want = vec![None; 64];
        let mut x: u64 = 7;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let slot = ((x >> 33) % 64) as u32;
            if (x >> 20).is_multiple_of(5) {
                q.remove(slot);
                want[slot as usize] = None;
            } else {
                let at = t0 + Duration::from_micros((x >> 40) % 10_000);
                q.set(slot, at);
                want[slot as usize] = Some(at);
            }
            let min = want.iter().flatten().min().copied();
            assert_eq!(q.next(), min);
        }
        let mut last = t0;
        while let Some(slot) = q.pop_due(t0 + Duration::from_secs(1)) {
            let at = want[slot as usize].take().expect("a set timer");
            assert!(at >= last, "earliest first");
            last = at;
        }
        assert!(want.iter().all(Option::is_none));
    }
}
