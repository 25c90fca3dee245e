//! `WatchEvents` streams: each holds a slot of `limits.max_watchers` for as
//! long as it lives, so the number of open streams (and with it the event
//! buffers they keep alive) stays bounded.

use kaskade_protocol::v1 as pb;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// The open streams, shared by the control plane and every [`Watch`].
#[derive(Debug, Default, Clone)]
pub struct Watchers(Arc<AtomicUsize>);

impl Watchers {
    /// Takes a slot if fewer than `max` are taken.
    pub fn enter(&self, max: usize) -> Option<WatchSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WatchSlot(self.0.clone()))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A watcher of a room's events: the receiver and its slot.
#[derive(Debug)]
pub struct Watch {
    /// The room's events from now on.
    pub events: broadcast::Receiver<pb::Event>,
    /// Held as long as the stream lives.
    pub slot: WatchSlot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_freed_on_drop() {
        let w = Watchers::default();
        let a = w.enter(2).expect("first");
        let _b = w.enter(2).expect("second");
        assert!(w.enter(2).is_none(), "third refused");
        drop(a);
        assert_eq!(w.open(), 1);
        assert!(w.enter(2).is_some());
    }
}
