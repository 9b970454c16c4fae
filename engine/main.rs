//! The `engine` binary; everything lives in the library (see `lib.rs` for the map).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    engine::cli::run()
}
