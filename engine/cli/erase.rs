//! `engine events erase`: a person's events removed from the archive and the dead letters, for a
//! deletion request, and the erasure recorded without the value (docs/events.md#retention-and-erasure).

use std::process::ExitCode;

use super::events::{ArchiveDeployment, At, deployment};
use crate::archive::search::conditions;
use crate::archive::{Erasure, Filter};

pub(super) async fn erase(
    pipeline: Option<String>,
    list: Vec<String>,
    at: At,
) -> Result<ExitCode, super::CommandError> {
    let d = deployment(&at, false).map_err(super::events::not_loaded)?;
    // the pipelines whose index has every field named
    let names: Vec<&str> = list
        .iter()
        .filter_map(|c| c.split_once('=').map(|(k, _)| k))
        .collect();
    let targets: Vec<&crate::config::LoadedPipeline> = d
        .project
        .pipelines
        .iter()
        .filter(|p| pipeline.as_ref().is_none_or(|n| *n == p.config.name))
        .filter(|p| {
            p.config
                .archive
                .kept()
                .is_some_and(|k| names.iter().all(|n| k.index.contains_key(*n)))
        })
        .collect();
    if targets.is_empty() {
        return Err(format!(
            "no archived pipeline{} indexes {}: add the field under `archive.index`",
            pipeline
                .as_deref()
                .map(|p| format!(" `{p}`"))
                .unwrap_or_default(),
            names.join(", ")
        )
        .into());
    }
    let mut archived = 0;
    let mut dead = 0;
    for p in &targets {
        let kept = p.config.archive.kept().expect("filtered on it");
        let indexed: Vec<&str> = kept.index.keys().map(String::as_str).collect();
        let filter = Filter {
            pipeline: Some(p.config.name.clone()),
            fields: conditions(&list, &indexed, &p.config.name)?,
            ..Filter::default()
        };
        archived += d.store.erase(&filter).await?;
        dead += erase_dead_letters(&d, p, &filter).await?;
    }
    let erasure = Erasure {
        at_ms: chrono::Utc::now().timestamp_millis(),
        pipeline,
        conditions: Erasure::conditions(&Filter {
            fields: conditions(&list, &names, "")?,
            ..Filter::default()
        }),
        archived,
        dead_letters: dead,
    };
    d.store.record_erasure(&erasure).await?;
    if d.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&erasure).unwrap_or_default()
        );
    } else {
        println!(
            "erased {archived} archived event(s) and {dead} dead letter(s); the erasure is recorded (the value as a SHA-256 digest)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Delete the dead letters of `p` whose events match `filter`'s fields (Redis queues: the
/// in-process queue of a server without REDIS_URL is not reachable from here, and lost at its
/// restart anyway).
async fn erase_dead_letters(
    d: &ArchiveDeployment,
    p: &crate::config::LoadedPipeline,
    filter: &Filter,
) -> Result<u64, super::CommandError> {
    let q = crate::server::queueing::redis_queue(&d.project, &p.config, "engine-cli", None)?;
    let Some(q) = q else {
        return Ok(0);
    };
    let kept = p.config.archive.kept().expect("archived");
    let recorder =
        crate::archive::Recorder::new(d.store.clone(), &p.config.name, &kept.index, None);
    let letters = q.dead_letters(100_000).await?;
    let ids: Vec<String> = letters
        .iter()
        .filter(|l| {
            l.event.as_ref().is_some_and(|e| {
                let fields = recorder.fields(e);
                filter.fields.iter().all(|(k, v)| fields.get(k) == Some(v))
            })
        })
        .map(|l| l.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(q.purge_dead(&ids).await?)
}
