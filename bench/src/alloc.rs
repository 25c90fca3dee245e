//! A global allocator that attributes every allocation to "router" or
//! "other" (the simulated browsers, the simulated network, the bench).
//!
//! The simulation runs the router and its str0m clients in one thread, so
//! a plain counting allocator would mix their memory. Here the code marks
//! router calls with [`with_router`]; each block carries a one-byte tag in a
//! 16-byte prefix, so a block freed elsewhere (a datagram the router made
//! and the network delivered) still comes off the right account. Only the
//! memory benchmark installs it (`#[global_allocator]`); [`with_router`] is a
//! thread-local write otherwise.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Account of router code.
pub const ROUTER: usize = 1;
/// Account of everything else.
pub const OTHER: usize = 0;

thread_local! {
    static CONTEXT: Cell<u8> = const { Cell::new(OTHER as u8) };
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

static LIVE: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];
static ALLOCS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static BYTES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Live router bytes per size class (class `c` holds blocks of 2^(c-1)..2^c bytes).
static CLASSES: [AtomicI64; 48] = [const { AtomicI64::new(0) }; 48];

fn class(size: usize) -> usize {
    ((usize::BITS - size.leading_zeros()) as usize).min(47)
}

fn account_router_class(size: usize, delta: i64) {
    CLASSES[class(size)].fetch_add(delta, Ordering::Relaxed);
}

/// Live router bytes per size class: entry `c` counts blocks of
/// 2^(c-1) to 2^c - 1 bytes.
pub fn router_classes() -> Vec<i64> {
    CLASSES.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// Runs `f` with allocations attributed to the router.
pub fn with_router<R>(f: impl FnOnce() -> R) -> R {
    let prev = CONTEXT.with(|c| c.replace(ROUTER as u8));
    let r = f();
    CONTEXT.with(|c| c.set(prev));
    r
}

/// `Sim::router_mark` for the allocation accounts: between an outermost
/// `true` and its `false`, allocations go to the router.
pub fn router_mark(enter: bool) {
    let depth = DEPTH.with(|d| {
        let v = if enter {
            d.get() + 1
        } else {
            d.get().saturating_sub(1)
        };
        d.set(v);
        v
    });
    let account = if depth > 0 { ROUTER } else { OTHER };
    CONTEXT.with(|c| c.set(account as u8));
}

/// Bytes currently allocated on an account (requested sizes, prefixes not included).
pub fn live_bytes(account: usize) -> i64 {
    LIVE[account].load(Ordering::Relaxed)
}

/// Allocations made so far on an account (alloc, alloc_zeroed; realloc not counted).
pub fn allocations(account: usize) -> u64 {
    ALLOCS[account].load(Ordering::Relaxed)
}

/// Bytes allocated so far on an account (alloc, alloc_zeroed; realloc growth not counted).
pub fn allocated_bytes(account: usize) -> u64 {
    BYTES[account].load(Ordering::Relaxed)
}

/// The tagging allocator (see the module documentation).
#[derive(Debug)]
pub struct TaggingAlloc;

const PREFIX: usize = 16;

fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let prefix = PREFIX.max(layout.align());
    let size = layout.size().checked_add(prefix)?;
    let l = Layout::from_size_align(size, layout.align().max(PREFIX)).ok()?;
    Some((l, prefix))
}

fn current() -> usize {
    // `try_with`: during thread teardown the slot may be gone.
    CONTEXT.try_with(|c| usize::from(c.get())).unwrap_or(OTHER)
}

/// Allocates `layout` (zeroed or not) with the prefix, counts it to the
/// current account and writes the tag.
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
unsafe fn alloc_tagged(layout: Layout, zeroed: bool) -> *mut u8 {
    let Some((l, prefix)) = outer(layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `l` has a non-zero size.
    let p = unsafe {
        if zeroed {
            System.alloc_zeroed(l)
        } else {
            System.alloc(l)
        }
    };
    if p.is_null() {
        return p;
    }
    let account = current();
    LIVE[account].fetch_add(layout.size() as i64, Ordering::Relaxed);
    ALLOCS[account].fetch_add(1, Ordering::Relaxed);
    BYTES[account].fetch_add(layout.size() as u64, Ordering::Relaxed);
    if account == ROUTER {
        account_router_class(layout.size(), layout.size() as i64);
    }
    // SAFETY: `prefix` <= the block size; the tag byte is inside the prefix.
    unsafe {
        let user = p.add(prefix);
        *user.sub(1) = account as u8;
        user
    }
}

// SAFETY: every block is a System block `prefix` bytes larger than asked,
// aligned at least as asked; the returned pointer is `prefix` bytes in, and
// the tag byte sits just before it. dealloc/realloc undo exactly that.
unsafe impl GlobalAlloc for TaggingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `alloc_tagged`'s.
        unsafe { alloc_tagged(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { alloc_tagged(layout, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((l, prefix)) = outer(layout) else {
            return;
        };
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe {
            let account = usize::from(*ptr.sub(1)) & 1;
            LIVE[account].fetch_sub(layout.size() as i64, Ordering::Relaxed);
            if account == ROUTER {
                account_router_class(layout.size(), -(layout.size() as i64));
            }
            System.dealloc(ptr.sub(prefix), l);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some((l, prefix)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let Some(new_outer) = new_size.checked_add(prefix) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `ptr` came from `alloc` with `layout`; the prefix moves with
        // the block (System.realloc copies it), so the tag stays in front. The
        // block stays on the account of whoever allocated it.
        unsafe {
            let account = usize::from(*ptr.sub(1)) & 1;
            let p = System.realloc(ptr.sub(prefix), l, new_outer);
            if p.is_null() {
                return p;
            }
            LIVE[account].fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            if account == ROUTER {
                account_router_class(layout.size(), -(layout.size() as i64));
                account_router_class(new_size, new_size as i64);
            }
            p.add(prefix)
        }
    }
}
