//! The allocator's settings, applied by the binary at start (`main.rs` installs mimalloc). A
//! module of the binary, not of the library: the library forbids `unsafe`, and these are C calls.
//!
//! mimalloc keeps freed memory for `purge_delay` milliseconds before returning it to the system,
//! so a burst reuses it cheaply: 1,000 ms by default in mimalloc v3 (its `options.c`; the header's
//! comment still says 10). Under sustained load the worker frees memory
//! faster than the delay lets it go: the soak showed `engine worker` climbing from ~50 to ~58 MiB
//! over its first minutes and staying there, while with an immediate purge it stayed at 37-39 MiB
//! (`engine serve`: 30-31 against 28 MiB) at the same throughput (docs/benchmarks.md, "Memory
//! under sustained load"). So the engine purges at once, unless `MIMALLOC_PURGE_DELAY` says
//! otherwise (mimalloc reads its own variable; an operator's choice wins).

use libmimalloc_sys::mi_option_t;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49 names no
/// constant for it): the sixteenth option. [`tests`] checks it still is.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// The engine's allocator settings; call once, first thing in `main`.
pub(crate) fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option of the C allocator; mimalloc documents that options
        // may be set at any time (a purge reads the current value).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
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
