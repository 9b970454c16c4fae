//! The `engine` binary; everything lives in the library (see `lib.rs` for the map).

// mimalloc instead of glibc's malloc: a request allocates many small, short-lived values (the
// parsed body, the script's maps, the stream entry), and glibc's bins and consolidation took 18 %
// of the engine's CPU under load; with mimalloc the engine spends ~20 % less CPU per request
// (docs/benchmarks.md).
mod alloc;

// metered: every allocation charged to its thread, so a script run's memory can be bounded
// (alloc.rs, transform::meter)
#[global_allocator]
static GLOBAL: alloc::Metered = alloc::Metered;

fn main() -> std::process::ExitCode {
    // freed memory back to the system at once (alloc.rs says why)
    alloc::tune();
    // the version with the commit and profile (build.rs): `engine --version`
    engine::cli::run(concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("ENGINE_BUILD"),
        ")"
    ))
}
