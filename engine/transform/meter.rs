//! Memory held by a script run: the binary's allocator (`main.rs`, `alloc.rs`) charges every
//! allocation and release of a thread here, and a run's memory bound
//! (`script_limits.max_memory`) compares what its thread holds now with what it held when the
//! run began (`sandbox::with_deadline` takes that baseline; Rhai's progress callback checks it
//! on every operation).
//!
//! ```text
//! allocator: alloc(n) -> charge(+n); dealloc(n) -> charge(-n); realloc -> charge(new - old)
//! run:       start = held(); every Rhai operation: held() - start > max_memory -> terminated
//! ```
//!
//! A thread-local counter: a script runs on one thread from start to end (no await inside a
//! run), so its thread's balance is the run's. Memory freed on this thread but allocated on
//! another lowers the balance (it is never over-counted). Without the engine binary's allocator
//! (the library's own tests) nothing is charged and the bound never trips; `engine serve`,
//! `engine worker` and `engine replay` all run with it.

use std::cell::Cell;

thread_local! {
    /// Bytes allocated minus bytes released on this thread, since it started.
    static HELD: Cell<i64> = const { Cell::new(0) };
}

/// Record `delta` bytes allocated (positive) or released (negative) on this thread. Called by
/// the allocator: it must not allocate, and never panics (after a thread's locals are gone it
/// records nothing).
#[inline]
pub fn charge(delta: i64) {
    let _ = HELD.try_with(|h| h.set(h.get().wrapping_add(delta)));
}

/// This thread's balance now.
#[inline]
pub fn held() -> i64 {
    HELD.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_balances_its_own_charges() {
        let start = held();
        charge(1000);
        charge(-400);
        assert_eq!(held() - start, 600);
        std::thread::spawn(|| {
            charge(5);
            assert_eq!(held(), 5, "each thread has its own balance");
        })
        .join()
        .unwrap();
        assert_eq!(held() - start, 600);
    }
}
