//! Memory per idle room (its own test binary: the counting allocator sees
//! every allocation of the process, so nothing else may run beside it).
//!
//! The defect a probe found: 10,000 empty rooms (the default
//! `limits.max_rooms`) took the daemon from 9 MB to 2.14 GB, because each
//! room preallocated a 1,024-event buffer. An idle room must cost at most
//! 2 kB; its event buffer exists only while someone watches it.

mod common;

use common::{Sim, SimOptions};
use kaskade_router::control::Limits;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout as asked for.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new` is the caller's valid size.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn an_idle_room_costs_at_most_2_kb_and_a_watched_one_gets_a_buffer() {
    const N: usize = 5_000;
    let sim = Sim::with_options(
        1,
        1,
        SimOptions {
            limits: Limits {
                max_rooms: N + 10,
                ..Limits::default()
            },
            ..Default::default()
        },
    );
    let names: Vec<String> = (0..N).map(|i| format!("room-{i:05}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for n in &names {
        sim.control.create_room(n, 0, &[]).unwrap();
    }
    let per_room = (LIVE.load(Ordering::Relaxed) - before) / N as isize;
    println!("{per_room} bytes per idle room");
    assert!(per_room <= 2048, "{per_room} bytes per idle room");

    // Watching allocates the room's buffer (the registry frees it again at
    // the first event after the last watcher left: control::registry tests).
    let base = LIVE.load(Ordering::Relaxed);
    let w = sim.control.watch("room-00000").unwrap();
    let watched = LIVE.load(Ordering::Relaxed) - base;
    println!("{watched} bytes for a watched room's buffer");
    assert!(watched > 1000);
    drop(w);
}
