//! The allocator's settings, applied by the binary at start (`main.rs` installs mimalloc). A
//! module of the binary, not of the library: the library forbids `unsafe`, and these are C calls.
//!
//! mimalloc keeps freed memory for `purge_delay` milliseconds before returning it to the system,
//! so a burst reuses it cheaply: 1,000 ms by default in mimalloc v3 (its `options.c`; the header's
//! comment still says 10). Under sustained load the worker frees memory faster than that delay
//! lets it go: the soak showed `engine worker` climbing from ~50 to ~58 MiB over its first
//! minutes and staying there. An immediate purge (0) held it at 37-49 MiB, but every page given
//! back is a page fault (the kernel zeroing it) when it is used again a moment later: about two
//! per request in `engine serve` and one per event in the worker, 5-6 % of their CPU, plus the
//! `madvise` calls. At [`PURGE_DELAY_MS`] the faults fall to about a quarter in serve and half in
//! the worker, ingest costs ~4 µs less CPU per request and the worker ~1.5 µs less per event,
//! and both stay flat under sustained load (worker 50-56 MiB, serve ~31 MiB; docs/benchmarks.md,
//! "Memory under sustained load"). `MIMALLOC_PURGE_DELAY` overrides it (mimalloc reads its own
//! variable; an operator's choice wins): 0 for the least memory.

use std::alloc::{GlobalAlloc, Layout};

use libmimalloc_sys::mi_option_t;

/// mimalloc, with every allocation and release charged to its thread's balance
/// (`engine::transform::meter`): what bounds a script run's memory (`script_limits.max_memory`).
/// The charge is one thread-local add; it allocates nothing.
pub(crate) struct Metered;

static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn size(layout: Layout) -> i64 {
    i64::try_from(layout.size()).unwrap_or(i64::MAX)
}

// SAFETY: every call is forwarded to mimalloc with the same arguments, and what it returns is
// returned unchanged; the bookkeeping around it touches only a thread-local integer.
unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (the caller upholds `alloc`'s contract)
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() {
            engine::transform::meter::charge(size(layout));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() {
            engine::transform::meter::charge(size(layout));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received
        unsafe { INNER.dealloc(ptr, layout) };
        engine::transform::meter::charge(-size(layout));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received
        let p = unsafe { INNER.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let new = i64::try_from(new_size).unwrap_or(i64::MAX);
            engine::transform::meter::charge(new - size(layout));
        }
        p
    }
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49 names no
/// constant for it): the sixteenth option. [`tests`] checks it still is.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// How long freed memory is kept for reuse before it goes back to the system, milliseconds.
const PURGE_DELAY_MS: std::os::raw::c_long = 25;

/// The engine's allocator settings; call once, first thing in `main`.
pub(crate) fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option of the C allocator; mimalloc documents that options
        // may be set at any time (a purge reads the current value).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// The purge delay in force, milliseconds.
#[cfg(test)]
fn purge_delay_ms() -> std::os::raw::c_long {
    // SAFETY: reads a process-wide option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_the_purge_delay() {
        // nothing in the test binary sets it: mimalloc v3's default purge delay is 1000 ms (no
        // other option defaults to 1000), and MIMALLOC_PURGE_DELAY, when set, is what mimalloc
        // reads for this very option
        match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(v) => assert_eq!(purge_delay_ms().to_string(), v),
            Err(_) => assert_eq!(purge_delay_ms(), 1000),
        }
    }
}
