//! A global allocator that counts, for tests and measurements that hold code to an
//! allocation budget (the quote path: zero) or measure memory (bytes per zone).
//!
//! It wraps the system allocator. Allocation *counts* are kept per thread, only while a
//! thread has switched counting on ([`count`]), so other test threads cannot disturb them;
//! live *bytes* are kept process-wide ([`live_bytes`]).
//!
//! ```
//! #[global_allocator]
//! static A: counting_alloc::Counting = counting_alloc::Counting;
//!
//! let (sum, n) = counting_alloc::count(|| [1u64, 2, 3].iter().sum::<u64>());
//! assert_eq!((sum, n), (6, 0));
//! let (_, n) = counting_alloc::count(|| vec![0u8; 64]);
//! assert_eq!(n, 1);
//! ```
//!
//! One of the two crates of the workspace with `unsafe` code (the other is `priority`):
//! implementing `GlobalAlloc` requires it.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

/// The counting allocator; install it with `#[global_allocator]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees carry over; the bookkeeping touches only atomics and const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see the impl's comment).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the number of allocations (including reallocations)
/// it made on this thread.
pub fn count<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = COUNT.with(Cell::get);
    ON.with(|on| on.set(true));
    let out = f();
    ON.with(|on| on.set(false));
    (out, COUNT.with(Cell::get) - before)
}

/// Bytes currently allocated by the whole process through this allocator.
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}
