//! The build's identity for `engine --version`: the commit (with `-dirty` when the work tree had
//! changes) and the profile. Read by the binary only (`main.rs`), so a new commit rebuilds the
//! small binary crate, not the library.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown commit".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!(
        "cargo:rustc-env=ENGINE_BUILD={commit}{}, {profile} build",
        if dirty { "-dirty" } else { "" }
    );
    for path in [".git/HEAD", ".git/refs/heads", ".git/index"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
