//! The archive without a database (the embedded default): JSON lines under
//! `<data_dir>/archive/<pipeline>/<YYYY-MM-DD>.jsonl`, one line per note (the request on the
//! first), appended whole; an event is its lines folded in order. Retention deletes a day's
//! file; erasure rewrites the files without the erased events (to a temporary file, renamed
//! over). Made for one machine's development traffic: a search reads the files it names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{ArchiveError, Cursor, Erasure, Filter, Note, Request, Step, Stored};

pub struct LocalStore {
    root: PathBuf,
    /// Appends and rewrites of this process, one at a time.
    lock: Mutex<()>,
}

/// One line of a day's file.
#[derive(Serialize, Deserialize)]
struct DayLine {
    id: String,
    ms: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<String>,
    /// The body, base64 (of the sealed text when sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sealed: bool,
    step: Step,
}

fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The start and end (Unix ms) of the day a file is named after.
fn day_bounds(file: &Path) -> Option<(i64, i64)> {
    let stem = file.file_stem()?.to_str()?;
    let day = chrono::NaiveDate::parse_from_str(stem, "%Y-%m-%d").ok()?;
    let start = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some((start, start + 86_400_000))
}

impl LocalStore {
    pub fn new(data_dir: &str) -> LocalStore {
        LocalStore {
            root: Path::new(data_dir).join("archive"),
            lock: Mutex::new(()),
        }
    }

    /// Where replay jobs are kept.
    pub(super) fn jobs_dir(&self) -> PathBuf {
        self.root.join("replays")
    }

    pub(super) async fn write(&self, notes: &[Note]) -> Result<(), ArchiveError> {
        let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
        for n in notes {
            let line = DayLine {
                id: n.event_id.clone(),
                ms: n.received_at_ms,
                fields: n.fields.clone(),
                meta: n.request.as_ref().map(|r| r.meta.clone()),
                body: n.request.as_ref().map(|r| STANDARD.encode(&r.body)),
                sealed: n.request.as_ref().is_some_and(|r| r.sealed),
                step: n.step.clone(),
            };
            let text =
                serde_json::to_string(&line).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            let file = self
                .root
                .join(&n.pipeline)
                .join(format!("{}.jsonl", day_of(n.received_at_ms)));
            let out = files.entry(file).or_default();
            out.push_str(&text);
            out.push('\n');
        }
        let _guard = self.lock.lock().await;
        for (file, text) in files {
            if let Some(dir) = file.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .await?;
            f.write_all(text.as_bytes()).await?;
            f.flush().await?;
        }
        Ok(())
    }

    /// The day files of the pipelines `filter` names, within its time range.
    async fn files(&self, filter: &Filter) -> Result<Vec<(String, PathBuf)>, ArchiveError> {
        let mut out = Vec::new();
        let pipelines: Vec<String> = match &filter.pipeline {
            Some(p) => vec![p.clone()],
            None => match std::fs::read_dir(&self.root) {
                Ok(dir) => dir
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir() && e.file_name() != "replays")
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        for p in pipelines {
            let Ok(dir) = std::fs::read_dir(self.root.join(&p)) else {
                continue;
            };
            for f in dir.filter_map(|e| e.ok()).map(|e| e.path()) {
                let Some((start, end)) = day_bounds(&f) else {
                    continue;
                };
                if filter.since_ms.is_some_and(|t| end <= t)
                    || filter.until_ms.is_some_and(|t| start >= t)
                {
                    continue;
                }
                out.push((p.clone(), f));
            }
        }
        Ok(out)
    }

    /// Every event of the files `filter` names, folded from their lines.
    async fn events(&self, filter: &Filter) -> Result<Vec<Stored>, ArchiveError> {
        let mut events: HashMap<(String, String), Stored> = HashMap::new();
        for (pipeline, file) in self.files(filter).await? {
            let text = tokio::fs::read_to_string(&file).await?;
            for line in text.lines() {
                // a line cut short by a crash is skipped, not fatal
                let Ok(l) = serde_json::from_str::<DayLine>(line) else {
                    continue;
                };
                let e = events
                    .entry((pipeline.clone(), l.id.clone()))
                    .or_insert_with(|| Stored {
                        pipeline: pipeline.clone(),
                        event_id: l.id.clone(),
                        received_at_ms: l.ms,
                        fields: BTreeMap::new(),
                        outcome: l.step.outcome.standing(),
                        attempts: 0,
                        story: Vec::new(),
                        request: None,
                    });
                if let (Some(meta), None) = (&l.meta, &e.request) {
                    e.request = Some(Request {
                        meta: meta.clone(),
                        body: l
                            .body
                            .as_deref()
                            .and_then(|b| STANDARD.decode(b).ok())
                            .unwrap_or_default()
                            .into(),
                        sealed: l.sealed,
                    });
                    e.fields = l.fields;
                }
                if l.step.run.is_none() {
                    e.attempts = e.attempts.max(l.step.attempt);
                }
                e.outcome = l.step.outcome.standing();
                e.story.push(l.step);
            }
        }
        Ok(events.into_values().filter(|e| filter.matches(e)).collect())
    }

    pub(super) async fn list(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Stored>, ArchiveError> {
        let mut all = self.events(filter).await?;
        all.sort_by(|a, b| (b.received_at_ms, &b.event_id).cmp(&(a.received_at_ms, &a.event_id)));
        all.truncate(limit);
        for e in &mut all {
            e.request = None;
        }
        Ok(all)
    }

    pub(super) async fn count(&self, filter: &Filter) -> Result<u64, ArchiveError> {
        Ok(self.events(filter).await?.len() as u64)
    }

    pub(super) async fn page(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Stored>, ArchiveError> {
        let mut all: Vec<Stored> = self
            .events(filter)
            .await?
            .into_iter()
            .filter(|e| {
                after.is_none_or(|c| {
                    (e.received_at_ms, e.event_id.as_str()) > (c.received_at_ms, &c.event_id)
                })
            })
            .collect();
        all.sort_by(|a, b| (a.received_at_ms, &a.event_id).cmp(&(b.received_at_ms, &b.event_id)));
        all.truncate(limit);
        Ok(all)
    }

    pub(super) async fn erase(&self, filter: &Filter) -> Result<u64, ArchiveError> {
        let gone: std::collections::HashSet<(String, String)> = self
            .events(filter)
            .await?
            .into_iter()
            .map(|e| (e.pipeline, e.event_id))
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let _guard = self.lock.lock().await;
        for (pipeline, file) in self.files(filter).await? {
            let text = tokio::fs::read_to_string(&file).await?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<DayLine>(line)
                        .map(|l| !gone.contains(&(pipeline.clone(), l.id)))
                        .unwrap_or(false)
                })
                .flat_map(|l| [l, "\n"])
                .collect();
            if kept.len() != text.len() {
                let tmp = file.with_extension("jsonl.tmp");
                tokio::fs::write(&tmp, kept).await?;
                tokio::fs::rename(&tmp, &file).await?;
            }
        }
        Ok(gone.len() as u64)
    }

    pub(super) async fn expire(&self, keep: &BTreeMap<String, i64>) -> Result<u64, ArchiveError> {
        let now = chrono::Utc::now().timestamp_millis();
        let longest = keep.values().copied().max().unwrap_or(7 * 86_400_000);
        let mut gone = 0;
        let _guard = self.lock.lock().await;
        for (pipeline, file) in self.files(&Filter::default()).await? {
            let kept_for = keep.get(&pipeline).copied().unwrap_or(longest);
            if day_bounds(&file).is_some_and(|(_, end)| end <= now - kept_for) {
                let text = tokio::fs::read_to_string(&file).await.unwrap_or_default();
                gone += text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<DayLine>(l).ok())
                    .filter(|l| l.meta.is_some())
                    .count() as u64;
                tokio::fs::remove_file(&file).await?;
            }
        }
        Ok(gone)
    }

    pub(super) async fn record_erasure(&self, e: &Erasure) -> Result<(), ArchiveError> {
        tokio::fs::create_dir_all(&self.root).await?;
        let mut line =
            serde_json::to_string(e).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        line.push('\n');
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("erasures.jsonl"))
            .await?;
        f.write_all(line.as_bytes()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Outcome;

    fn note(id: &str, ms: i64, step: Step, request: bool) -> Note {
        Note {
            pipeline: "p".into(),
            event_id: id.into(),
            received_at_ms: ms,
            fields: [("call_id".to_string(), format!("c-{id}"))].into(),
            request: request.then(|| Request {
                meta: "{}".into(),
                body: bytes::Bytes::from_static(b"body"),
                sealed: false,
            }),
            step,
        }
    }

    #[tokio::test]
    async fn events_fold_list_page_erase_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_str().unwrap());
        let now = chrono::Utc::now().timestamp_millis();
        let old = now - 10 * 86_400_000;
        store
            .write(&[
                note("a", now - 2, Step::new(Outcome::Retrying, 1), true),
                note("b", now - 1, Step::new(Outcome::Dropped, 1), true),
                note("old", old, Step::new(Outcome::Written, 1), true),
            ])
            .await
            .unwrap();
        store
            .write(&[note("a", now - 2, Step::new(Outcome::Written, 2), false)])
            .await
            .unwrap();
        let all = store.list(&Filter::default(), 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
            ["b", "a", "old"]
        );
        let a = &all[1];
        assert_eq!(
            (a.outcome, a.attempts, a.story.len()),
            (Outcome::Written, 2, 2)
        );
        let written = Filter {
            outcome: Some(Outcome::Written),
            since_ms: Some(now - 86_400_000),
            ..Filter::default()
        };
        assert_eq!(store.count(&written).await.unwrap(), 1);
        let first = store.page(&Filter::default(), None, 1).await.unwrap();
        assert_eq!(first[0].event_id, "old");
        assert_eq!(&first[0].request.as_ref().unwrap().body[..], b"body");
        let next = store
            .page(
                &Filter::default(),
                Some(&Cursor {
                    received_at_ms: old,
                    event_id: "old".into(),
                }),
                5,
            )
            .await
            .unwrap();
        assert_eq!(next.len(), 2);
        let by_field = Filter {
            fields: [("call_id".to_string(), "c-b".to_string())].into(),
            ..Filter::default()
        };
        assert_eq!(store.erase(&by_field).await.unwrap(), 1);
        assert_eq!(store.count(&Filter::default()).await.unwrap(), 2);
        let keep = [("p".to_string(), 7 * 86_400_000)].into();
        assert_eq!(store.expire(&keep).await.unwrap(), 1);
        assert_eq!(store.count(&Filter::default()).await.unwrap(), 1);
    }
}
