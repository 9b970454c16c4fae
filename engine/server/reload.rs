//! Hot reload: on SIGHUP, or every change under the pipelines directory with `engine serve
//! --watch`, the engine re-reads the directory (and the `--env-file`, if any), validates
//! everything, and swaps the new set in atomically (`server::Live::swap`). Requests in flight
//! finish on the old set; its workers finish their events within the grace period. On any error
//! the old set stays, and every problem is logged (`file:line:col`) and counted
//! (`engine_reloads_total{result="failed"}`).
//!
//! Render deploys replace the process and do not need this; an instance whose YAML is edited in
//! place does. The listening address and HTTP timeouts are read at start only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Live;
use crate::env::EnvSource;

/// How often `--watch` looks for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where a reload reads from: the pipelines directory and its environment.
#[derive(Debug, Clone)]
pub struct Source {
    pub dir: PathBuf,
    pub env: EnvOrigin,
}

/// Where the variables come from, read again at each reload.
#[derive(Debug, Clone)]
pub enum EnvOrigin {
    Process,
    File(PathBuf),
    /// Fixed variables (tests, embedding programs).
    Fixed(EnvSource),
}

/// Load and validate `source`, then swap it in. `Err` holds every problem; the old set stays.
pub fn reload(live: &Live, source: &Source, grace: Duration) -> Result<usize, Vec<String>> {
    let result = load_and_swap(live, source, grace);
    let label = if result.is_ok() { "ok" } else { "failed" };
    metrics::counter!("engine_reloads_total", "result" => label).increment(1);
    match &result {
        Ok(n) => tracing::info!(pipelines = n, "pipelines reloaded"),
        Err(problems) => {
            for p in problems {
                tracing::error!(problem = %p, "reload refused");
            }
            tracing::error!(
                problems = problems.len(),
                "reload failed: still serving the previous pipelines"
            );
        }
    }
    result
}

fn load_and_swap(live: &Live, source: &Source, grace: Duration) -> Result<usize, Vec<String>> {
    let env = match &source.env {
        EnvOrigin::File(f) => {
            EnvSource::from_file(f).map_err(|e| vec![crate::diagnostics::chain(&e)])?
        }
        EnvOrigin::Process => EnvSource::process(),
        EnvOrigin::Fixed(e) => e.clone(),
    };
    let (project, plan) = crate::plan::load(&source.dir, &env)
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let old = live.app();
    let (a, b) = (&old.project.settings, &project.settings);
    if a.host != b.host || a.port != b.port || a.timeouts != b.timeouts {
        tracing::warn!("host, port and timeouts changes take effect at the next restart");
    }
    let n = project.pipelines.len();
    live.swap(project, plan, grace)
        .map_err(|e| vec![crate::diagnostics::chain(&e)])?;
    Ok(n)
}

/// A summary of every file under `dir` (path, size, modification time): it changes when any
/// file is added, removed or written.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) => out.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Reload on SIGHUP, and with `watch` whenever the directory changes, until the process ends.
///
/// The SIGHUP handler and the directory's first fingerprint are taken here, before returning,
/// not in the spawned task: once the caller announces that it listens, a SIGHUP must reload
/// (not end the process by its default action) and an edit must be seen as a change (a task
/// that had not run yet would take the edited directory as its starting point and never reload).
/// Must be called within a Tokio runtime.
pub fn spawn(live: Arc<Live>, source: Source, watch: bool, grace: Duration) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = fingerprint(&source.dir);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let why = tokio::select! {
                _ = hangup => "SIGHUP",
                _ = tick.tick(), if watch => {
                    let now = fingerprint(&source.dir);
                    if now == seen {
                        continue;
                    }
                    // let an editor finish writing (several files, or write + rename)
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "change"
                }
            };
            seen = fingerprint(&source.dir);
            tracing::info!(trigger = why, dir = %source.dir.display(), "reloading pipelines");
            let (live, source) = (live.clone(), source.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&live, &source, grace)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_added_changed_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), "a").unwrap();
        let first = fingerprint(dir.path());
        std::fs::write(dir.path().join("scripts/x.rhai"), "1").unwrap();
        let second = fingerprint(dir.path());
        assert_ne!(first, second);
        std::fs::write(dir.path().join("scripts/x.rhai"), "12").unwrap();
        let third = fingerprint(dir.path());
        assert_ne!(second, third);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_ne!(third, fingerprint(dir.path()));
    }
}
