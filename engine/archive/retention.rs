//! Keeping the archive to its `keep`: the coming days' partitions made ahead (Postgres), the
//! expired days dropped, at start (before the workers) and hourly by every engine process (the operations are
//! idempotent, so instances running it at once agree).

use std::collections::BTreeMap;

use super::{ArchiveError, Store};
use crate::config::Project;

/// How long each archived pipeline keeps its events (milliseconds), by name.
pub fn keeps(project: &Project) -> BTreeMap<String, i64> {
    project
        .pipelines
        .iter()
        // only queued pipelines' events reach the archive
        .filter(|p| !p.config.transform.is_empty())
        .filter_map(|p| {
            let kept = p.config.archive.kept()?;
            Some((p.config.name.clone(), kept.keep.0.as_millis() as i64))
        })
        .collect()
}

/// Make the partitions of yesterday through three days ahead, then drop what has expired; how
/// many events went.
pub async fn tend(store: &Store, keeps: &BTreeMap<String, i64>) -> Result<u64, ArchiveError> {
    if let Store::Postgres(s) = store {
        let today = chrono::Utc::now().date_naive();
        s.ensure_days(
            today.pred_opt().unwrap_or(today),
            today + chrono::Days::new(3),
        )
        .await
        .map_err(|e| match e {
            ArchiveError::Database(m)
                if m.contains("engine_events") && m.contains("does not exist") =>
            {
                ArchiveError::Database(format!(
                    "{m}: the archive's tables are missing; run `engine migrate`"
                ))
            }
            e => e,
        })?;
    }
    store.expire(keeps).await
}

/// Tend `store` every hour (the first in an hour: the start tends it itself) while `alive`.
pub async fn run(
    store: std::sync::Arc<Store>,
    keeps: BTreeMap<String, i64>,
    alive: impl Fn() -> bool,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        if !alive() {
            break;
        }
        match tend(&store, &keeps).await {
            Ok(0) => {}
            Ok(gone) => tracing::info!(gone, "archive: expired events dropped"),
            Err(e) => tracing::error!(error = %e, "archive upkeep failed"),
        }
    }
}
