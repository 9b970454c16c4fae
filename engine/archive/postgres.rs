//! The archive in Postgres: `engine_events` (migrations/V7), partitioned by the day an event
//! arrived.
//!
//! A worker's batch is one statement: its notes merged per event (an event twice in a batch is
//! one row, its steps in order), inserted from arrays with `unnest`, and on a repeat the step
//! appended to the story (`story || new`). Days are partitions the engine makes ahead
//! ([`PgStore::ensure_days`], at boot and hourly; each keeps rows up to a page inline,
//! [`INLINE_ROW_BYTES`]) and drops once every pipeline's `keep` has passed
//! ([`PgStore::expire`]); a pipeline keeping less has its older rows deleted. A search by
//! an index field reads the GIN index on `fields` (`fields @> {...}`) before ordering, so a rare
//! value is found without scanning days of events.
//!
//! Every statement is sent unnamed with its parameters' types (`query_typed`), so the archive
//! works through a transaction-mode pooler (PgBouncer, Supavisor) as the sinks do. A batch's
//! write commits with `synchronous_commit = off`: it does not wait for its own WAL flush (the
//! sink's write in the same batch did), so a Postgres crash can lose the last moments of
//! archive steps but never the rows; an engine crash loses nothing. The setting is made inside
//! the statement (`set_config(.., true)`, local to the statement's own transaction) rather than
//! by a `BEGIN; SET LOCAL` sent before it: a statement sent alone reuses the client's encoding
//! buffer instead of growing a new one for its arrays on every write
//! ([`crate::db::write_in_one_round_trip`]).

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use tokio_postgres::types::{ToSql, Type};

use super::{ArchiveError, Cursor, Erasure, Filter, Note, Outcome, Request, Step, Stored};
use crate::sink::postgres::JsonText;

pub struct PgStore {
    pool: Pool,
    /// The settings' statement timeout: a write with no answer past it (and
    /// [`crate::db::ANSWER_MARGIN`]) drops its connection and fails, so a stalled or cut link
    /// fails the worker's batch (retried) instead of holding it.
    statement_timeout: std::time::Duration,
}

/// The rows of one write, column by column (the `unnest` arrays), borrowing the notes.
struct BatchColumns<'a> {
    ms: Vec<i64>,
    pipeline: Vec<&'a str>,
    id: Vec<&'a str>,
    fields: Vec<JsonText>,
    meta: Vec<&'a str>,
    body: Vec<&'a [u8]>,
    sealed: Vec<bool>,
    outcome: Vec<&'static str>,
    attempts: Vec<i32>,
    story: Vec<JsonText>,
}

impl BatchColumns<'_> {
    /// Columns for up to `rows` rows, each sized once.
    fn with_capacity(rows: usize) -> Self {
        BatchColumns {
            ms: Vec::with_capacity(rows),
            pipeline: Vec::with_capacity(rows),
            id: Vec::with_capacity(rows),
            fields: Vec::with_capacity(rows),
            meta: Vec::with_capacity(rows),
            body: Vec::with_capacity(rows),
            sealed: Vec::with_capacity(rows),
            outcome: Vec::with_capacity(rows),
            attempts: Vec::with_capacity(rows),
            story: Vec::with_capacity(rows),
        }
    }
}

/// The row a note belongs to.
fn event_key(n: &Note) -> (&str, &str, i64) {
    (n.pipeline.as_str(), n.event_id.as_str(), n.received_at_ms)
}

/// `v` as JSON text.
fn json<T: serde::Serialize + ?Sized>(v: &T) -> JsonText {
    JsonText(serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()))
}

const WRITE: &str = "INSERT INTO engine_events AS e \
    (received_at, pipeline, event_id, fields, meta, body, sealed, outcome, attempts, story) \
    SELECT to_timestamp(t.ms::float8 / 1000), t.p, t.id, t.f, t.m, t.b, t.s, t.o, t.a, t.st \
    FROM unnest($1::int8[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::bytea[], \
                $7::bool[], $8::text[], $9::int4[], $10::jsonb[]) AS t(ms, p, id, f, m, b, s, o, a, st), \
         (SELECT set_config('synchronous_commit', 'off', true)) AS lazy \
    ON CONFLICT (pipeline, event_id, received_at) DO UPDATE SET \
      outcome = EXCLUDED.outcome, \
      attempts = GREATEST(e.attempts, EXCLUDED.attempts), \
      story = e.story || EXCLUDED.story, \
      fields = CASE WHEN e.meta = '' THEN EXCLUDED.fields ELSE e.fields END, \
      body = CASE WHEN e.meta = '' THEN EXCLUDED.body ELSE e.body END, \
      sealed = CASE WHEN e.meta = '' THEN EXCLUDED.sealed ELSE e.sealed END, \
      meta = CASE WHEN e.meta = '' THEN EXCLUDED.meta ELSE e.meta END, \
      updated_at = now()";

const SUMMARY: &str = "pipeline, event_id, (extract(epoch FROM received_at) * 1000)::int8, \
    fields, outcome, attempts, story";

/// A filter as a SQL condition and its parameters (numbered from 1).
struct Where {
    sql: String,
    params: Vec<(Box<dyn ToSql + Sync + Send>, Type)>,
}

impl Where {
    fn of(filter: &Filter) -> Where {
        let mut w = Where {
            sql: "TRUE".into(),
            params: Vec::new(),
        };
        if let Some(p) = &filter.pipeline {
            w.push("pipeline = $", Box::new(p.clone()), Type::TEXT, "");
        }
        if let Some(t) = filter.since_ms {
            let at = "received_at >= to_timestamp($";
            w.push(at, Box::new(t), Type::INT8, "::float8 / 1000)");
        }
        if let Some(t) = filter.until_ms {
            let at = "received_at < to_timestamp($";
            w.push(at, Box::new(t), Type::INT8, "::float8 / 1000)");
        }
        if let Some(o) = filter.outcome {
            w.push("outcome = $", Box::new(o.as_str()), Type::TEXT, "");
        }
        if let Some(id) = &filter.event_id {
            w.push("event_id = $", Box::new(id.clone()), Type::TEXT, "");
        }
        if !filter.fields.is_empty() {
            let json = serde_json::to_value(&filter.fields).unwrap_or_default();
            w.push("fields @> $", Box::new(json), Type::JSONB, "");
        }
        w
    }

    fn push(&mut self, before: &str, value: Box<dyn ToSql + Sync + Send>, ty: Type, after: &str) {
        self.params.push((value, ty));
        self.sql = format!("{} AND {before}{}{after}", self.sql, self.params.len());
    }

    fn refs(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .map(|(p, t)| (&**p as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
}

fn stored(row: &tokio_postgres::Row, with_request: bool) -> Result<Stored, ArchiveError> {
    let fields: serde_json::Value = row.try_get(3)?;
    let story: serde_json::Value = row.try_get(6)?;
    let outcome: String = row.try_get(4)?;
    let attempts: i32 = row.try_get(5)?;
    Ok(Stored {
        pipeline: row.try_get(0)?,
        event_id: row.try_get(1)?,
        received_at_ms: row.try_get(2)?,
        fields: serde_json::from_value(fields).unwrap_or_default(),
        outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Failed),
        attempts: attempts.max(0) as u32,
        story: serde_json::from_value::<Vec<Step>>(story).unwrap_or_default(),
        request: match with_request {
            false => None,
            true => Some(Request {
                meta: row.try_get(7)?,
                body: row.try_get::<_, Vec<u8>>(8)?.into(),
                sealed: row.try_get(9)?,
            }),
        },
    })
}

/// How large a row may grow before Postgres moves its body to the TOAST table: the most a page
/// holds (migrations/V9), set on every day partition made here. An event of a few KiB is then
/// one heap insert, not three (row, TOAST chunks, TOAST index): ~8-10 µs of Postgres CPU less
/// per 2.5 KiB event (docs/benchmarks.md, "Event archive").
const INLINE_ROW_BYTES: u32 = 8160;

/// The name of the day partition starting at `day`.
fn partition_name(day: chrono::NaiveDate) -> String {
    format!("engine_events_p{}", day.format("%Y%m%d"))
}

impl PgStore {
    pub fn new(pool: Pool, settings: &crate::config::Settings) -> PgStore {
        PgStore {
            pool,
            statement_timeout: std::time::Duration::from_millis(settings.statement_timeout_ms),
        }
    }

    pub(super) async fn write(&self, notes: &[Note]) -> Result<(), ArchiveError> {
        // one row per event: a statement may not touch a row twice. The notes sorted by event
        // (stably: an event's steps stay in order) and taken a run at a time: no hashing, no
        // list per event, and concurrent writers take the rows' locks in one order.
        let mut sorted: Vec<&Note> = notes.iter().collect();
        sorted.sort_by(|a, b| event_key(a).cmp(&event_key(b)));
        let mut c = BatchColumns::with_capacity(notes.len());
        for group in sorted.chunk_by(|a, b| event_key(a) == event_key(b)) {
            let key = event_key(group[0]);
            let with_request = group.iter().find(|n| n.request.is_some());
            let last = group.last().map(|n| &n.step);
            c.ms.push(key.2);
            c.pipeline.push(key.0);
            c.id.push(key.1);
            match with_request.and_then(|n| n.request.as_ref().map(|r| (n, r))) {
                Some((n, r)) => {
                    c.fields.push(json(&n.fields));
                    c.meta.push(&r.meta);
                    c.body.push(&r.body);
                    c.sealed.push(r.sealed);
                }
                None => {
                    c.fields.push(JsonText(b"{}".to_vec()));
                    c.meta.push("");
                    c.body.push(&[]);
                    c.sealed.push(false);
                }
            }
            c.outcome.push(
                last.map_or(Outcome::Failed, |s| s.outcome.standing())
                    .as_str(),
            );
            c.attempts.push(
                group
                    .iter()
                    .filter(|n| n.step.run.is_none())
                    .map(|n| n.step.attempt as i32)
                    .max()
                    .unwrap_or(0),
            );
            c.story
                .push(json(&group.iter().map(|n| &n.step).collect::<Vec<_>>()));
        }
        let client = self.pool.get().await?;
        let params: [(&(dyn ToSql + Sync), Type); 10] = [
            (&c.ms, Type::INT8_ARRAY),
            (&c.pipeline, Type::TEXT_ARRAY),
            (&c.id, Type::TEXT_ARRAY),
            (&c.fields, Type::JSONB_ARRAY),
            (&c.meta, Type::TEXT_ARRAY),
            (&c.body, Type::BYTEA_ARRAY),
            (&c.sealed, Type::BOOL_ARRAY),
            (&c.outcome, Type::TEXT_ARRAY),
            (&c.attempts, Type::INT4_ARRAY),
            (&c.story, Type::JSONB_ARRAY),
        ];
        let (_, written) = crate::db::write_in_one_round_trip(
            client,
            None,
            WRITE,
            &params,
            self.statement_timeout,
        )
        .await
        .map_err(|e| ArchiveError::Database(e.to_string()))?;
        written?;
        Ok(())
    }

    pub(super) async fn list(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Stored>, ArchiveError> {
        let w = Where::of(filter);
        // matches by an index field found through the GIN index first: ordered by time, a
        // rare value would otherwise be looked for by walking the time index
        let sql = match filter.fields.is_empty() {
            true => format!(
                "SELECT {SUMMARY} FROM engine_events WHERE {} ORDER BY received_at DESC, event_id DESC LIMIT {limit}",
                w.sql
            ),
            false => format!(
                "WITH m AS MATERIALIZED (SELECT pipeline, event_id, received_at, fields, outcome, \
                   attempts, story FROM engine_events WHERE {}) \
                 SELECT {SUMMARY} FROM m ORDER BY received_at DESC, event_id DESC LIMIT {limit}",
                w.sql
            ),
        };
        let client = self.pool.get().await?;
        let rows = client.query_typed(&sql, &w.refs()).await?;
        rows.iter().map(|r| stored(r, false)).collect()
    }

    pub(super) async fn count(&self, filter: &Filter) -> Result<u64, ArchiveError> {
        let w = Where::of(filter);
        let client = self.pool.get().await?;
        let rows = client
            .query_typed(
                &format!("SELECT count(*) FROM engine_events WHERE {}", w.sql),
                &w.refs(),
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64)
    }

    pub(super) async fn page(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Stored>, ArchiveError> {
        let mut w = Where::of(filter);
        if let Some(c) = after {
            w.params.push((Box::new(c.received_at_ms), Type::INT8));
            w.params.push((Box::new(c.event_id.clone()), Type::TEXT));
            let (a, b) = (w.params.len() - 1, w.params.len());
            w.sql = format!(
                "{} AND (received_at, event_id) > (to_timestamp(${a}::float8 / 1000), ${b})",
                w.sql
            );
        }
        let sql = format!(
            "SELECT {SUMMARY}, meta, body, sealed FROM engine_events WHERE {} \
             ORDER BY received_at, event_id LIMIT {limit}",
            w.sql
        );
        let client = self.pool.get().await?;
        let rows = client.query_typed(&sql, &w.refs()).await?;
        rows.iter().map(|r| stored(r, true)).collect()
    }

    pub(super) async fn erase(&self, filter: &Filter) -> Result<u64, ArchiveError> {
        let w = Where::of(filter);
        let client = self.pool.get().await?;
        let n = client
            .execute_typed(
                &format!("DELETE FROM engine_events WHERE {}", w.sql),
                &w.refs(),
            )
            .await?;
        Ok(n)
    }

    pub(super) async fn record_erasure(&self, e: &Erasure) -> Result<(), ArchiveError> {
        let client = self.pool.get().await?;
        client
            .execute_typed(
                "INSERT INTO engine_event_erasures (at, pipeline, conditions, archived, dead_letters) \
                 VALUES (to_timestamp($1::float8 / 1000), $2, $3, $4, $5)",
                &[
                    (&e.at_ms, Type::INT8),
                    (&e.pipeline, Type::TEXT),
                    (&e.conditions, Type::TEXT_ARRAY),
                    (&(e.archived as i64), Type::INT8),
                    (&(e.dead_letters as i64), Type::INT8),
                ],
            )
            .await?;
        Ok(())
    }

    /// Make the day partitions from `from` through `to` (UTC days) that do not exist yet. Rows
    /// of such a day already in the default partition move into it.
    pub async fn ensure_days(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<(), ArchiveError> {
        let mut client = self.pool.get().await?;
        let mut day = from;
        while day <= to {
            let name = partition_name(day);
            let exists = client
                .query_typed("SELECT to_regclass($1) IS NOT NULL", &[(&name, Type::TEXT)])
                .await?
                .first()
                .is_some_and(|r| r.get::<_, bool>(0));
            if !exists {
                let next = day.succ_opt().unwrap_or(day);
                let (lo, hi) = (
                    format!("{} 00:00:00+00", day.format("%Y-%m-%d")),
                    format!("{} 00:00:00+00", next.format("%Y-%m-%d")),
                );
                let tx = client.transaction().await?;
                // the whole archive locked for the moment it takes (instances making the same
                // day at once wait for each other instead of deadlocking; an insert landing in
                // the default partition mid-way would refuse the new partition)
                let sql = format!(
                    "CREATE TEMP TABLE engine_events_moving ON COMMIT DROP AS \
                       SELECT * FROM engine_events_default WHERE received_at >= '{lo}' AND received_at < '{hi}'; \
                     DELETE FROM engine_events_default WHERE received_at >= '{lo}' AND received_at < '{hi}'; \
                     CREATE TABLE {name} PARTITION OF engine_events FOR VALUES FROM ('{lo}') TO ('{hi}') \
                       WITH (toast_tuple_target = {INLINE_ROW_BYTES}); \
                     INSERT INTO engine_events SELECT * FROM engine_events_moving;"
                );
                let sql = format!(
                    "LOCK TABLE engine_events IN ACCESS EXCLUSIVE MODE; \
                     DO $$ BEGIN IF to_regclass('{name}') IS NULL THEN EXECUTE $q${sql}$q$; END IF; END $$"
                );
                match tx.batch_execute(&sql).await {
                    Ok(()) => tx.commit().await?,
                    // another instance made it at the same moment
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_TABLE) =>
                    {
                        drop(tx);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            day = match day.succ_opt() {
                Some(d) => d,
                None => break,
            };
        }
        Ok(())
    }

    /// The days the archive has partitions for.
    pub async fn days(&self) -> Result<Vec<chrono::NaiveDate>, ArchiveError> {
        let client = self.pool.get().await?;
        let rows = client
            .query_typed(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'engine_events'::regclass",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|n| {
                n.strip_prefix("engine_events_p")
                    .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            })
            .collect())
    }

    /// Drop the days no pipeline keeps, then delete what a pipeline keeping less still has.
    pub(super) async fn expire(&self, keep: &BTreeMap<String, i64>) -> Result<u64, ArchiveError> {
        let now = chrono::Utc::now().timestamp_millis();
        let longest = keep.values().copied().max().unwrap_or(7 * 86_400_000);
        let mut gone = 0u64;
        for day in self.days().await? {
            let end = day
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_millis())
                .unwrap_or(i64::MAX);
            if end <= now - longest {
                let client = self.pool.get().await?;
                let name = partition_name(day);
                let n: i64 = client
                    .query_typed(&format!("SELECT count(*) FROM {name}"), &[])
                    .await?
                    .first()
                    .map_or(0, |r| r.get(0));
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
                gone += n.max(0) as u64;
            }
        }
        let client = self.pool.get().await?;
        // pipelines keeping less, and rows of any pipeline older than the longest keep (the
        // default partition, pipelines no longer configured)
        for (pipeline, ms) in keep {
            gone += client
                .execute_typed(
                    "DELETE FROM engine_events WHERE pipeline = $1 \
                     AND received_at < to_timestamp($2::float8 / 1000)",
                    &[(pipeline, Type::TEXT), (&(now - ms), Type::INT8)],
                )
                .await?;
        }
        gone += client
            .execute_typed(
                "DELETE FROM engine_events WHERE received_at < to_timestamp($1::float8 / 1000)",
                &[(&(now - longest), Type::INT8)],
            )
            .await?;
        Ok(gone)
    }

    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }
}
