//! Replaying archived events through a pipeline as it is now (`engine events replay`).
//!
//! ```text
//! Job (filter fixed at its start: events received up to then) -> page after the cursor (oldest
//!   first) -> open each request -> Program -> rows: same digest as last written to that sink?
//!   unchanged : grouped per sink -> write (postgres: overwriting the event's rows) -> steps
//!   marked with the run -> Store::write -> cursor, counts, heartbeat saved -> cancelled? -> pace
//! ```
//!
//! A job is kept in the store, so a replay outlives the process that ran it: one whose heartbeat
//! stopped (the process was killed) is taken over by a running `engine serve`
//! (`server::events::adopt_stopped_replays`) or with `engine events replay --resume ID`, and
//! goes on from its cursor. Replays keep each event's id: Postgres rows are upserted on the same
//! key, and an event whose rows are what it last wrote is not written again, so running a replay
//! twice writes nothing the second time, in every sink kind. Only the page in flight when a
//! process dies is written again on resume (idempotent in Postgres; appended again in file,
//! stdout and HTTP sinks). The pace (`rate` events a second) leaves the database to live traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ArchiveError, Cursor, Filter, Note, Outcome, Recorder, Step, Store, Stored};
use crate::sink::{Batch, Sink, SinkError};
use crate::transform::Program;
use tokio_postgres::types::Type;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    /// Asked to stop: the runner stops after its current page.
    Cancelling,
    Cancelled,
    Done,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "running" => Status::Running,
            "cancelling" => Status::Cancelling,
            "cancelled" => Status::Cancelled,
            "done" => Status::Done,
            _ => Status::Failed,
        }
    }
}

/// What a replay did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCounts {
    pub written: u64,
    pub dropped: u64,
    pub unchanged: u64,
    pub failed: u64,
}

/// A replay job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub pipeline: String,
    pub filter: Filter,
    pub status: Status,
    /// Events the filter matched when the job started.
    pub matched: u64,
    pub done: u64,
    pub counts: ReplayCounts,
    pub cursor: Option<Cursor>,
    /// Events a second at most.
    pub rate: u32,
    /// Write even events whose rows are unchanged.
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
}

/// A job whose heartbeat is older than this is no longer run by anyone.
pub const STALE: Duration = Duration::from_secs(15);

impl Job {
    /// A new job over `filter` (its pipeline set), for the events received until now.
    pub fn new(mut filter: Filter, matched: u64, rate: u32, force: bool) -> Job {
        let now = chrono::Utc::now().timestamp_millis();
        filter.until_ms = Some(filter.until_ms.map_or(now, |u| u.min(now)));
        Job {
            id: format!("rp-{}", crate::clock::random_uuid().simple()),
            pipeline: filter.pipeline.clone().unwrap_or_default(),
            filter,
            status: Status::Running,
            matched,
            done: 0,
            counts: ReplayCounts::default(),
            cursor: None,
            rate,
            force,
            error: None,
            started_at_ms: now,
            heartbeat_at_ms: now,
            finished_at_ms: None,
        }
    }
}

/// The jobs of a store.
pub struct Jobs<'a>(pub(super) &'a Store);

/// Why a replay job cannot be taken over (`engine events replay --resume`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefused {
    #[error("no replay job `{0}`")]
    NoJob(String),
    #[error("replay job `{id}` is {status}: nothing to resume")]
    NotRunning { id: String, status: &'static str },
    #[error(
        "replay job `{id}` is being run (heartbeat {secs} s ago); resume it once its process has stopped"
    )]
    Running { id: String, secs: i64 },
    #[error("replay job `{0}` was taken over by another process")]
    TakenOver(String),
}

impl Jobs<'_> {
    pub async fn create(&self, job: &Job) -> Result<(), ArchiveError> {
        match self.0 {
            Store::Postgres(s) => {
                let c = s.pool().get().await?;
                c.execute_typed(
                    "INSERT INTO engine_event_replays (id, pipeline, filter, status, matched, rate, force, started_at, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, now(), now())",
                    &[
                        (&job.id, Type::TEXT),
                        (&job.pipeline, Type::TEXT),
                        (&serde_json::to_value(&job.filter).unwrap_or_default(), Type::JSONB),
                        (&job.status.as_str(), Type::TEXT),
                        (&(job.matched as i64), Type::INT8),
                        (&(job.rate as i32), Type::INT4),
                        (&job.force, Type::BOOL),
                    ],
                )
                .await?;
                Ok(())
            }
            Store::Local(_) => self.save_local(job).await,
        }
    }

    async fn save_local(&self, job: &Job) -> Result<(), ArchiveError> {
        let Store::Local(s) = self.0 else {
            return Ok(());
        };
        let dir = s.jobs_dir();
        tokio::fs::create_dir_all(&dir).await?;
        let text =
            serde_json::to_string_pretty(job).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        let tmp = dir.join(format!("{}.json.tmp", job.id));
        tokio::fs::write(&tmp, text).await?;
        tokio::fs::rename(&tmp, dir.join(format!("{}.json", job.id))).await?;
        Ok(())
    }

    /// Every job, newest first (of one pipeline).
    pub async fn list(&self, pipeline: Option<&str>) -> Result<Vec<Job>, ArchiveError> {
        self.select(pipeline, None).await
    }

    /// One job, read by its id (one row, or one file).
    pub async fn get(&self, id: &str) -> Result<Option<Job>, ArchiveError> {
        Ok(self.select(None, Some(id)).await?.into_iter().next())
    }

    /// The jobs of `pipeline` (all when `None`), or the one with `id`, newest first.
    async fn select(
        &self,
        pipeline: Option<&str>,
        id: Option<&str>,
    ) -> Result<Vec<Job>, ArchiveError> {
        let mut jobs = match self.0 {
            Store::Postgres(s) => {
                let c = s.pool().get().await?;
                let rows = c
                    .query_typed(
                        "SELECT id, pipeline, filter, status, matched, done, counts, \
                           (extract(epoch FROM cursor_at) * 1000)::int8, cursor_id, rate, force, error, \
                           (extract(epoch FROM started_at) * 1000)::int8, \
                           (extract(epoch FROM heartbeat_at) * 1000)::int8, \
                           (extract(epoch FROM finished_at) * 1000)::int8 \
                         FROM engine_event_replays \
                         WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::text IS NULL OR id = $2) \
                         ORDER BY started_at DESC LIMIT 200",
                        &[(&pipeline, Type::TEXT), (&id, Type::TEXT)],
                    )
                    .await?;
                rows.iter().map(job_of_row).collect::<Result<Vec<_>, _>>()?
            }
            Store::Local(s) => {
                let files: Vec<std::path::PathBuf> = match id {
                    // a job id names a file: nothing but its own characters (`rp-<hex>`)
                    Some(id) if id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                        vec![s.jobs_dir().join(format!("{id}.json"))]
                    }
                    Some(_) => Vec::new(),
                    None => std::fs::read_dir(s.jobs_dir())
                        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                        .unwrap_or_default(),
                };
                files
                    .iter()
                    .filter(|f| f.extension().is_some_and(|e| e == "json"))
                    .filter_map(|f| std::fs::read_to_string(f).ok())
                    .filter_map(|text| serde_json::from_str::<Job>(&text).ok())
                    .filter(|job| pipeline.is_none_or(|p| p == job.pipeline))
                    .collect()
            }
        };
        jobs.sort_by_key(|j| std::cmp::Reverse(j.started_at_ms));
        Ok(jobs)
    }

    /// Save the job's progress and heartbeat; the status as stored (`Cancelling` when someone
    /// asked it to stop).
    pub async fn progress(&self, job: &Job) -> Result<Status, ArchiveError> {
        match self.0 {
            Store::Postgres(s) => {
                let c = s.pool().get().await?;
                let rows = c
                    .query_typed(
                        "UPDATE engine_event_replays SET done = $2, counts = $3, \
                           cursor_at = to_timestamp($4::float8 / 1000), cursor_id = $5, \
                           heartbeat_at = now(), \
                           status = CASE WHEN status = 'cancelling' AND $6 = 'running' THEN status ELSE $6 END, \
                           error = $7, \
                           finished_at = CASE WHEN $6 IN ('done', 'failed', 'cancelled') THEN now() ELSE NULL END \
                         WHERE id = $1 RETURNING status",
                        &[
                            (&job.id, Type::TEXT),
                            (&(job.done as i64), Type::INT8),
                            (&serde_json::to_value(&job.counts).unwrap_or_default(), Type::JSONB),
                            (&job.cursor.as_ref().map(|c| c.received_at_ms), Type::INT8),
                            (&job.cursor.as_ref().map(|c| c.event_id.clone()), Type::TEXT),
                            (&job.status.as_str(), Type::TEXT),
                            (&job.error, Type::TEXT),
                        ],
                    )
                    .await?;
                let row = rows.first().ok_or_else(|| {
                    ArchiveError::Invalid(format!("replay job `{}` is gone", job.id))
                })?;
                Ok(Status::parse(row.try_get::<_, &str>(0)?))
            }
            Store::Local(_) => {
                let stored = self.get(&job.id).await?.map(|j| j.status);
                let mut job = job.clone();
                job.heartbeat_at_ms = chrono::Utc::now().timestamp_millis();
                if matches!(
                    job.status,
                    Status::Done | Status::Failed | Status::Cancelled
                ) {
                    job.finished_at_ms = Some(job.heartbeat_at_ms);
                }
                if stored == Some(Status::Cancelling) && job.status == Status::Running {
                    job.status = Status::Cancelling;
                }
                self.save_local(&job).await?;
                Ok(job.status)
            }
        }
    }

    /// Ask a running job to stop; whether it was running.
    pub async fn cancel(&self, id: &str) -> Result<bool, ArchiveError> {
        match self.0 {
            Store::Postgres(s) => {
                let c = s.pool().get().await?;
                Ok(c.execute_typed(
                    "UPDATE engine_event_replays SET status = 'cancelling' WHERE id = $1 AND status = 'running'",
                    &[(&id, Type::TEXT)],
                )
                .await?
                    == 1)
            }
            Store::Local(_) => match self.get(id).await? {
                Some(mut job) if job.status == Status::Running => {
                    job.status = Status::Cancelling;
                    self.save_local(&job).await?;
                    Ok(true)
                }
                _ => Ok(false),
            },
        }
    }

    /// Take over a job nobody runs (running or cancelling, heartbeat older than [`STALE`]).
    pub async fn claim(&self, id: &str) -> Result<Result<Job, ClaimRefused>, ArchiveError> {
        let Some(job) = self.get(id).await? else {
            return Ok(Err(ClaimRefused::NoJob(id.to_string())));
        };
        if !matches!(job.status, Status::Running | Status::Cancelling) {
            return Ok(Err(ClaimRefused::NotRunning {
                id: id.to_string(),
                status: job.status.as_str(),
            }));
        }
        let age = chrono::Utc::now().timestamp_millis() - job.heartbeat_at_ms;
        if age < STALE.as_millis() as i64 {
            return Ok(Err(ClaimRefused::Running {
                id: id.to_string(),
                secs: age / 1000,
            }));
        }
        match self.0 {
            Store::Postgres(s) => {
                let c = s.pool().get().await?;
                let taken = c
                    .execute_typed(
                        "UPDATE engine_event_replays SET heartbeat_at = now() WHERE id = $1 \
                         AND heartbeat_at < now() - interval '15 seconds'",
                        &[(&id, Type::TEXT)],
                    )
                    .await?;
                if taken != 1 {
                    return Ok(Err(ClaimRefused::TakenOver(id.to_string())));
                }
            }
            Store::Local(_) => self.progress(&job).await.map(|_| ())?,
        }
        Ok(Ok(job))
    }
}

fn job_of_row(r: &tokio_postgres::Row) -> Result<Job, ArchiveError> {
    let cursor_at: Option<i64> = r.try_get(7)?;
    let cursor_id: Option<String> = r.try_get(8)?;
    Ok(Job {
        id: r.try_get(0)?,
        pipeline: r.try_get(1)?,
        filter: serde_json::from_value(r.try_get(2)?).unwrap_or_default(),
        status: Status::parse(r.try_get::<_, &str>(3)?),
        matched: r.try_get::<_, i64>(4)?.max(0) as u64,
        done: r.try_get::<_, i64>(5)?.max(0) as u64,
        counts: serde_json::from_value(r.try_get(6)?).unwrap_or_default(),
        cursor: cursor_at
            .zip(cursor_id)
            .map(|(received_at_ms, event_id)| Cursor {
                received_at_ms,
                event_id,
            }),
        rate: r.try_get::<_, i32>(9)?.max(1) as u32,
        force: r.try_get(10)?,
        error: r.try_get(11)?,
        started_at_ms: r.try_get(12)?,
        heartbeat_at_ms: r.try_get(13)?,
        finished_at_ms: r.try_get(14)?,
    })
}

/// What replaying one event would do (or did).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    pub event_id: String,
    pub received_at_ms: i64,
    /// Its standing before the replay.
    pub was: Outcome,
    /// written (would write), dropped, unchanged or failed.
    pub would: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Runs replays of one pipeline: its program and sinks as they are now.
pub struct Runner {
    pub store: Arc<Store>,
    pub recorder: Arc<Recorder>,
    pub program: Arc<Program>,
    /// Built for a replay (`sink::build(.., replay: true)`).
    pub sinks: HashMap<String, Arc<dyn Sink>>,
    /// Events per page.
    pub page: usize,
}

/// One event's decision before writing.
enum PageChoice {
    Rows {
        sink: String,
        step: String,
        rows: Vec<serde_json::Value>,
    },
    Done(Step),
}

impl Runner {
    /// Transform a page and decide per event (nothing written).
    async fn decide(&self, page: &[Stored], force: bool) -> Vec<PageChoice> {
        let mut opened = Vec::with_capacity(page.len());
        for s in page {
            opened.push(s.event(self.recorder.keyring()));
        }
        let program = self.program.clone();
        let inputs: Vec<Option<crate::transform::EventInput>> =
            opened.iter().map(|o| o.as_ref().ok().cloned()).collect();
        let outcomes = tokio::task::spawn_blocking(move || {
            inputs
                .iter()
                .map(|e| e.as_ref().map(|e| program.run(e)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut out = Vec::with_capacity(page.len());
        for (i, s) in page.iter().enumerate() {
            let decision = match (&opened[i], outcomes.get(i).and_then(Option::as_ref)) {
                (Err(e), _) => {
                    PageChoice::Done(Step::new(Outcome::Failed, 1).reason(e.to_string()))
                }
                (_, None) => PageChoice::Done(
                    Step::new(Outcome::Failed, 1).reason("the transform task failed"),
                ),
                (_, Some(Err(f))) => {
                    PageChoice::Done(Step::new(Outcome::Failed, 1).reason(&f.reason))
                }
                (_, Some(Ok(crate::transform::Output::Dropped { reason }))) => {
                    PageChoice::Done(Step::new(Outcome::Dropped, 1).reason(reason))
                }
                (_, Some(Ok(crate::transform::Output::Rows { sink, step, rows }))) => {
                    let digest = super::digest(sink, rows);
                    if !self.sinks.contains_key(sink) {
                        PageChoice::Done(
                            Step::new(Outcome::Failed, 1).reason(format!("no sink named `{sink}`")),
                        )
                    } else if !force && s.written_digest(sink) == Some(digest.as_str()) {
                        PageChoice::Done(Step::new(Outcome::Unchanged, 1).written(sink, rows))
                    } else {
                        PageChoice::Rows {
                            sink: sink.clone(),
                            step: step.clone(),
                            rows: rows.clone(),
                        }
                    }
                }
            };
            out.push(decision);
        }
        out
    }

    /// What replaying the first `sample` events matching `filter` would do, and how many match.
    pub async fn dry_run(
        &self,
        filter: &Filter,
        sample: usize,
        force: bool,
    ) -> Result<(u64, Vec<Preview>), ArchiveError> {
        let matched = self.store.count(filter).await?;
        let page = self.store.page(filter, None, sample).await?;
        let decisions = self.decide(&page, force).await;
        let previews = page
            .iter()
            .zip(decisions)
            .map(|(s, d)| {
                let (would, sink, rows, reason) = match d {
                    PageChoice::Rows { sink, rows, .. } => {
                        (Outcome::Written, Some(sink), Some(rows.len()), None)
                    }
                    PageChoice::Done(step) => (step.outcome, step.sink, step.rows, step.reason),
                };
                Preview {
                    event_id: s.event_id.clone(),
                    received_at_ms: s.received_at_ms,
                    was: s.outcome,
                    would,
                    sink,
                    rows,
                    reason,
                }
            })
            .collect();
        Ok((matched, previews))
    }

    /// Write a page's rows: per sink in one call where the sink batches, one event at a time
    /// after a failure (so one bad event fails alone); a sink that asks to be retried is tried
    /// three times, a second apart.
    async fn write(&self, wanted: Vec<(usize, Batch)>) -> Vec<(usize, Step)> {
        let mut by_sink: std::collections::BTreeMap<String, Vec<(usize, Batch)>> =
            Default::default();
        for (i, b) in wanted {
            by_sink.entry(b.sink.clone()).or_default().push((i, b));
        }
        let mut out = Vec::new();
        for (name, items) in by_sink {
            let sink = &self.sinks[&name];
            let batches: Vec<Batch> = items.iter().map(|(_, b)| b.clone()).collect();
            let mut together = sink.write_many(&batches).await;
            for _ in 1..3 {
                if !matches!(together, Err(SinkError::Retry(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                together = sink.write_many(&batches).await;
            }
            match together {
                Ok(()) => out.extend(
                    items
                        .iter()
                        .map(|(i, b)| (*i, Step::new(Outcome::Written, 1).written(&name, &b.rows))),
                ),
                Err(e @ SinkError::Retry(_)) => {
                    let reason = format!("sink `{name}`: {}", crate::diagnostics::chain(&e));
                    out.extend(
                        items.iter().map(|(i, _)| {
                            (*i, Step::new(Outcome::Failed, 1).reason(reason.clone()))
                        }),
                    )
                }
                Err(SinkError::Permanent(_)) => {
                    for (i, b) in &items {
                        let step = match sink.write(b).await {
                            Ok(()) => Step::new(Outcome::Written, 1).written(&name, &b.rows),
                            Err(e) => Step::new(Outcome::Failed, 1).reason(format!(
                                "sink `{name}`: {}",
                                crate::diagnostics::chain(&e)
                            )),
                        };
                        out.push((*i, step));
                    }
                }
            }
        }
        out
    }

    /// Run `job` to its end (or until it is cancelled), saving progress after every page;
    /// `progress` hears each save.
    pub async fn run(
        &self,
        job: &mut Job,
        progress: &(dyn Fn(&Job) + Send + Sync),
    ) -> Result<(), ArchiveError> {
        let started = Instant::now();
        let mut moved = 0u64;
        let jobs = self.store.jobs();
        let mut page = self
            .store
            .page(&job.filter, job.cursor.as_ref(), self.page)
            .await?;
        loop {
            let Some(last) = page.last() else {
                job.status = Status::Done;
                break;
            };
            let cursor = Cursor {
                received_at_ms: last.received_at_ms,
                event_id: last.event_id.clone(),
            };
            // the next page is read while this one is written (it lies after this page's
            // cursor: nothing written now changes it)
            let (notes, next) = tokio::join!(
                self.replay_page(&page, &job.id, job.force, &mut job.counts),
                self.store.page(&job.filter, Some(&cursor), self.page)
            );
            self.store.write(&notes).await?;
            job.done += page.len() as u64;
            job.cursor = Some(cursor);
            if jobs.progress(job).await? == Status::Cancelling {
                job.status = Status::Cancelled;
                break;
            }
            progress(job);
            // pace: `rate` events a second at most
            moved += page.len() as u64;
            let due = Duration::from_secs_f64(moved as f64 / job.rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            page = next?;
        }
        jobs.progress(job).await?;
        Ok(())
    }

    /// One page through the pipeline: its rows written, each event's step (marked with the
    /// job) counted and returned as the archive's notes.
    async fn replay_page(
        &self,
        page: &[Stored],
        run: &str,
        force: bool,
        counts: &mut ReplayCounts,
    ) -> Vec<Note> {
        // while traces are exported: a new trace per replayed event, linked to its request's
        let spans: Vec<tracing::Span> = match crate::ops::trace::on() {
            true => page.iter().map(|s| replay_span(s, run)).collect(),
            false => Vec::new(),
        };
        let decisions = self.decide(page, force).await;
        let mut steps: Vec<Option<Step>> = vec![None; page.len()];
        let mut wanted = Vec::new();
        for (i, d) in decisions.into_iter().enumerate() {
            match d {
                PageChoice::Done(step) => steps[i] = Some(step),
                PageChoice::Rows { sink, step, rows } => wanted.push((
                    i,
                    Batch {
                        event_id: page[i].event_id.clone(),
                        pipeline: page[i].pipeline.clone(),
                        sink,
                        step,
                        rows,
                    },
                )),
            }
        }
        for (i, step) in self.write(wanted).await {
            steps[i] = Some(step);
        }
        page.iter()
            .zip(steps)
            .enumerate()
            .filter_map(|(i, (s, step))| {
                let mut step = step?;
                step.run = Some(run.to_string());
                if let Some(span) = spans.get(i) {
                    span.record("outcome", step.outcome.as_str());
                }
                match step.outcome {
                    Outcome::Written => counts.written += 1,
                    Outcome::Dropped => counts.dropped += 1,
                    Outcome::Unchanged => counts.unchanged += 1,
                    _ => counts.failed += 1,
                }
                Some(Note {
                    pipeline: s.pipeline.clone(),
                    event_id: s.event_id.clone(),
                    received_at_ms: s.received_at_ms,
                    fields: Default::default(),
                    request: None,
                    step,
                })
            })
            .collect()
    }
}

/// The span of one archived event's replay: the root of its own trace, linked to the trace its
/// request began (when it was traced).
fn replay_span(s: &Stored, run: &str) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "replay",
        pipeline = %s.pipeline,
        event_id = %s.event_id,
        run,
        outcome = tracing::field::Empty,
    );
    crate::ops::trace::link_to(&span, s.traceparent().as_deref());
    span
}
