//! The event archive: every event a pipeline accepted, kept with its story, so it can be found
//! (`engine events list|show`), replayed through the pipeline as it is now (`engine events
//! replay`, [`replay`]) and erased (`engine events erase`).
//!
//! ```text
//! worker: transform -> sink -> Recorder::note (one Note per event: the stored request on its
//!         first attempt, the attempt's Step) -> Store::write (one call per batch) -> ack / retry /
//!         dead-letter
//! replay: Store::page (oldest first, from the job's cursor) -> Program -> sinks -> Store::write
//!         (steps marked with the run) -> the job's cursor
//! ```
//!
//! Two stores hold the same thing: [`postgres`] (DATABASE_URL: the `engine_events` table,
//! partitioned by day so retention drops whole days) and [`local`] (no DATABASE_URL: JSON lines
//! under `<data_dir>/archive/`, one file per pipeline and day). The request is stored as the
//! queue stores it (credential headers removed); its body sealed with ENCRYPTION_KEY when one is
//! set (the keyring's binary form, `v1b:`), to `engine_events/<pipeline>/<event id>`. The
//! `index` fields of the pipeline's `archive` section are stored beside it in the clear (they
//! are what a search reads).

pub mod local;
pub mod postgres;
mod recorder;
pub mod replay;
pub mod retention;
pub mod search;

pub use recorder::{Recorder, index_of};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::crypto::Keyring;
use crate::transform::EventInput;

/// Why the archive could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive database: {0}")]
    Database(String),
    #[error("archive files: {0}")]
    Io(#[from] std::io::Error),
    #[error("archive: {0}")]
    Invalid(String),
}

impl From<tokio_postgres::Error> for ArchiveError {
    fn from(e: tokio_postgres::Error) -> Self {
        ArchiveError::Database(crate::db::describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for ArchiveError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ArchiveError::Database(e.to_string())
    }
}

/// What one attempt (or one replay) did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its rows were written to a sink.
    Written,
    /// A `when` or a script discarded it.
    Dropped,
    /// It failed and will be tried again.
    Retrying,
    /// It failed for good and is a dead letter.
    Dead,
    /// A replay found the rows it makes already written (nothing written again).
    Unchanged,
    /// A replay could not process it (the reason says why; the live queue is not involved).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Dropped => "dropped",
            Outcome::Retrying => "retrying",
            Outcome::Dead => "dead",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome a `--outcome` word names (`dead` also as `dead_lettered`, `retrying` as `retry`).
    pub fn parse(word: &str) -> Option<Outcome> {
        Some(match word {
            "written" => Outcome::Written,
            "dropped" => Outcome::Dropped,
            "retrying" | "retry" => Outcome::Retrying,
            "dead" | "dead_lettered" => Outcome::Dead,
            "unchanged" => Outcome::Unchanged,
            "failed" => Outcome::Failed,
            _ => return None,
        })
    }

    /// The event's standing after this step: an unchanged replay leaves the event written.
    fn standing(self) -> Outcome {
        match self {
            Outcome::Unchanged => Outcome::Written,
            o => o,
        }
    }
}

/// One line of an event's story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// The attempt (1 for the first delivery); replays count their own.
    pub attempt: u32,
    pub outcome: Outcome,
    /// The sink written to (written, unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// Rows written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// A digest of the rows written: a replay making the same rows writes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it was dropped, retried, dead-lettered or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The replay run that made this step (absent: the live queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Step {
    pub fn new(outcome: Outcome, attempt: u32) -> Step {
        Step {
            at_ms: chrono::Utc::now().timestamp_millis(),
            attempt,
            outcome,
            sink: None,
            rows: None,
            digest: None,
            reason: None,
            run: None,
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Step {
        self.reason = Some(reason.into());
        self
    }

    /// A write of `rows` to `sink`, with the rows' digest.
    pub fn written(self, sink: &str, rows: &[serde_json::Value]) -> Step {
        self.wrote(sink, rows, true)
    }

    /// A write of `rows` to `sink`; the digest only when `digest` (a live write to an
    /// idempotent sink skips it: a replay writing the same rows there changes nothing, and
    /// records the digest it makes).
    pub fn wrote(mut self, sink: &str, rows: &[serde_json::Value], digest: bool) -> Step {
        self.sink = Some(sink.to_string());
        self.rows = Some(rows.len());
        self.digest = digest.then(|| self::digest(sink, rows));
        self
    }
}

/// A digest of the rows an event made for a sink: 16 hex digits of SHA-256 over the sink name
/// and the rows' JSON.
pub fn digest(sink: &str, rows: &[serde_json::Value]) -> String {
    use sha2::Digest as _;
    /// The rows' JSON fed to the hash as it is written: no text built per row.
    struct Feed(sha2::Sha256);
    impl std::io::Write for Feed {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut f = Feed(sha2::Sha256::new());
    f.0.update(sink.as_bytes());
    f.0.update([0]);
    for r in rows {
        let _ = serde_json::to_writer(&mut f, r);
        f.0.update([0]);
    }
    hex::encode(&f.0.finalize()[..8])
}

/// The stored request: the queue's stored form of the event (`meta`, without the body) and the
/// body, raw or sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub meta: String,
    /// The body as received (shared with the event, not copied), or sealed: written in the
    /// binary form ([`Keyring::seal`]); events archived before 2026-12-05 hold the `v1:` text
    /// form, and both open.
    pub body: bytes::Bytes,
    pub sealed: bool,
}

/// What the worker hands the archive for one event: the request on its first attempt, and the
/// step.
#[derive(Debug, Clone)]
pub struct Note {
    pub pipeline: String,
    pub event_id: String,
    pub received_at_ms: i64,
    /// The index fields' values.
    pub fields: BTreeMap<String, String>,
    pub request: Option<Request>,
    pub step: Step,
}

/// An event as the archive holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored {
    pub pipeline: String,
    pub event_id: String,
    pub received_at_ms: i64,
    pub fields: BTreeMap<String, String>,
    pub outcome: Outcome,
    pub attempts: u32,
    pub story: Vec<Step>,
    #[serde(skip)]
    pub request: Option<Request>,
}

impl Stored {
    /// The event as the pipeline received it (the body opened with `keyring` when sealed).
    pub fn event(&self, keyring: Option<&Keyring>) -> Result<EventInput, ArchiveError> {
        let request = self
            .request
            .as_ref()
            .ok_or_else(|| ArchiveError::Invalid("the event's request was not read".into()))?;
        let body = match request.sealed {
            false => request.body.to_vec(),
            true => {
                let keyring = keyring.ok_or_else(|| {
                    ArchiveError::Invalid(
                        "the event's body is encrypted: set ENCRYPTION_KEY (or the previous key it was sealed with)".into(),
                    )
                })?;
                keyring
                    .open(&request.body, &seal_context(&self.pipeline, &self.event_id))
                    .map_err(|e| ArchiveError::Invalid(format!("the event's body: {e}")))?
            }
        };
        EventInput::from_stored(request.meta.as_bytes(), Some(body))
            .ok_or_else(|| ArchiveError::Invalid("the stored request cannot be read".into()))
    }

    /// The newest written (or unchanged) step's digest for `sink`.
    pub fn written_digest(&self, sink: &str) -> Option<&str> {
        self.story
            .iter()
            .rev()
            .find(|s| {
                matches!(s.outcome, Outcome::Written | Outcome::Unchanged)
                    && s.sink.as_deref() == Some(sink)
            })
            .and_then(|s| s.digest.as_deref())
    }
}

/// Which events a list, a replay or an erasure is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// One pipeline (every pipeline when absent: erasure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Index fields that must all equal their value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// One event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Filter {
    /// Whether `s` matches (the local store's test; Postgres says the same in SQL).
    pub fn matches(&self, s: &Stored) -> bool {
        self.pipeline.as_ref().is_none_or(|p| *p == s.pipeline)
            && self.since_ms.is_none_or(|t| s.received_at_ms >= t)
            && self.until_ms.is_none_or(|t| s.received_at_ms < t)
            && self.outcome.is_none_or(|o| o == s.outcome)
            && self.event_id.as_ref().is_none_or(|id| *id == s.event_id)
            && self
                .fields
                .iter()
                .all(|(k, v)| s.fields.get(k).is_some_and(|have| have == v))
    }
}

/// Where a replay is: the last event done, in replay order (received time, then id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub received_at_ms: i64,
    pub event_id: String,
}

/// The context a body is sealed to: a body copied to another event's row does not open.
pub fn seal_context(pipeline: &str, event_id: &str) -> String {
    format!("engine_events/{pipeline}/{event_id}")
}

/// Where events are archived.
pub enum Store {
    Postgres(postgres::PgStore),
    Local(local::LocalStore),
}

impl Store {
    /// The deployment's store: Postgres with a pool, else files under `data_dir`.
    pub fn new(pool: Option<&deadpool_postgres::Pool>, settings: &Settings) -> Store {
        match pool {
            Some(p) => Store::Postgres(postgres::PgStore::new(p.clone(), settings)),
            None => Store::Local(local::LocalStore::new(&settings.data_dir)),
        }
    }

    /// Record notes (one batch of a worker or a replay).
    pub async fn write(&self, notes: &[Note]) -> Result<(), ArchiveError> {
        if notes.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(s) => s.write(notes).await,
            Store::Local(s) => s.write(notes).await,
        }
    }

    /// Events matching `filter`, newest first, at most `limit` (no request read).
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<Stored>, ArchiveError> {
        match self {
            Store::Postgres(s) => s.list(filter, limit).await,
            Store::Local(s) => s.list(filter, limit).await,
        }
    }

    /// How many events match.
    pub async fn count(&self, filter: &Filter) -> Result<u64, ArchiveError> {
        match self {
            Store::Postgres(s) => s.count(filter).await,
            Store::Local(s) => s.count(filter).await,
        }
    }

    /// Events matching `filter` after `after`, oldest first, with their requests (a replay's
    /// next batch).
    pub async fn page(
        &self,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Stored>, ArchiveError> {
        match self {
            Store::Postgres(s) => s.page(filter, after, limit).await,
            Store::Local(s) => s.page(filter, after, limit).await,
        }
    }

    /// One event with its request.
    pub async fn show(&self, pipeline: &str, id: &str) -> Result<Option<Stored>, ArchiveError> {
        let filter = Filter {
            pipeline: Some(pipeline.to_string()),
            event_id: Some(id.to_string()),
            ..Filter::default()
        };
        Ok(self.page(&filter, None, 1).await?.into_iter().next())
    }

    /// Delete every event matching `filter`; how many.
    pub async fn erase(&self, filter: &Filter) -> Result<u64, ArchiveError> {
        match self {
            Store::Postgres(s) => s.erase(filter).await,
            Store::Local(s) => s.erase(filter).await,
        }
    }

    /// Drop what each pipeline keeps no longer (`keep` per pipeline name); how many events went.
    pub async fn expire(&self, keep: &BTreeMap<String, i64>) -> Result<u64, ArchiveError> {
        match self {
            Store::Postgres(s) => s.expire(keep).await,
            Store::Local(s) => s.expire(keep).await,
        }
    }

    /// Record that an erasure happened: the field, a digest of the value (not the value), what
    /// went.
    pub async fn record_erasure(&self, erasure: &Erasure) -> Result<(), ArchiveError> {
        match self {
            Store::Postgres(s) => s.record_erasure(erasure).await,
            Store::Local(s) => s.record_erasure(erasure).await,
        }
    }

    /// The replay jobs' store.
    pub fn jobs(&self) -> replay::Jobs<'_> {
        replay::Jobs(self)
    }
}

/// What an erasure did, as recorded (for deletion requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Erasure {
    pub at_ms: i64,
    pub pipeline: Option<String>,
    /// `field=sha256:<hex>` per condition: the request is provable without keeping the value.
    pub conditions: Vec<String>,
    pub archived: u64,
    pub dead_letters: u64,
}

impl Erasure {
    /// The recorded form of the conditions of `filter`.
    pub fn conditions(filter: &Filter) -> Vec<String> {
        use sha2::Digest as _;
        filter
            .fields
            .iter()
            .map(|(k, v)| format!("{k}=sha256:{}", hex::encode(sha2::Sha256::digest(v))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::verify::KeySource;
    use std::sync::Arc;

    fn event(body: &str) -> EventInput {
        EventInput {
            id: "ev1".into(),
            pipeline: "vapi".into(),
            received_at_ms: 1_700_000_000_000,
            method: "POST".into(),
            path: "/hooks".into(),
            query: "tenant=t1".into(),
            headers: vec![("x-org".into(), "org-9".into())],
            params: vec![],
            tenant: None,
            trace: None,
            index: None,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn recorder(keyring: Option<Keyring>) -> Recorder {
        let index: BTreeMap<String, KeySource> = [
            (
                "call_id".to_string(),
                KeySource::Json("/message/call/id".into()),
            ),
            ("org".to_string(), KeySource::Header("x-org".into())),
            ("tenant".to_string(), KeySource::Query("tenant".into())),
            ("missing".to_string(), KeySource::Json("/nope".into())),
        ]
        .into_iter()
        .collect();
        Recorder::new(
            Arc::new(Store::Local(local::LocalStore::new("unused"))),
            "vapi",
            &index,
            keyring,
        )
    }

    #[test]
    fn index_fields_are_read_from_the_stored_request() {
        let r = recorder(None);
        let f = r.fields(&event(r#"{"message":{"call":{"id":"c-1"}}}"#));
        assert_eq!(f["call_id"], "c-1");
        assert_eq!(f["org"], "org-9");
        assert_eq!(f["tenant"], "t1");
        assert!(!f.contains_key("missing"));
        // a body that is not JSON has no JSON fields, and no panic
        assert!(!r.fields(&event("\u{0}not json")).contains_key("call_id"));
    }

    #[test]
    fn a_sealed_body_opens_only_for_its_own_event() {
        let key = "11".repeat(32);
        let keyring = Keyring::new(&key, &[]).unwrap();
        let r = recorder(Some(keyring.clone()));
        let e = event(r#"{"message":{"call":{"id":"c-1"}}}"#);
        let note = r.note(&e, None, Step::new(Outcome::Written, 1));
        let request = note.request.clone().unwrap();
        assert!(request.sealed);
        assert!(!String::from_utf8_lossy(&request.body).contains("c-1"));
        assert_eq!(
            digest("s", &[serde_json::json!({"a": "x"})]),
            {
                use sha2::Digest as _;
                hex::encode(&sha2::Sha256::digest(b"s\0{\"a\":\"x\"}\0")[..8])
            },
            "the digest is of the rows' JSON text"
        );
        let stored = Stored {
            pipeline: "vapi".into(),
            event_id: "ev1".into(),
            received_at_ms: e.received_at_ms,
            fields: note.fields.clone(),
            outcome: Outcome::Written,
            attempts: 1,
            story: vec![note.step.clone()],
            request: Some(request.clone()),
        };
        assert_eq!(stored.event(Some(&keyring)).unwrap(), e);
        assert!(stored.event(None).is_err());
        assert!(request.body.starts_with(b"v1b:"), "the binary form");
        // an event archived before the binary form holds the text one, and still opens
        let text = keyring.encrypt(&e.body, &seal_context("vapi", "ev1"));
        let older = Stored {
            request: Some(Request {
                body: text.into_bytes().into(),
                ..request.clone()
            }),
            ..stored.clone()
        };
        assert_eq!(older.event(Some(&keyring)).unwrap(), e);
        let moved = Stored {
            event_id: "ev2".into(),
            ..stored
        };
        assert!(moved.event(Some(&keyring)).is_err());
    }

    #[test]
    fn carried_index_fields_are_taken_unless_the_index_changed_since() {
        let r = recorder(None);
        let mut e = event(r#"{"message":{"call":{"id":"c-1"}}}"#);
        let carried = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        e.index = carried(&[
            ("call_id", "carried"),
            ("org", "o"),
            ("tenant", "t"),
            ("missing", "m"),
        ]);
        assert_eq!(
            r.fields(&e)["call_id"],
            "carried",
            "the request path's reading"
        );
        // queued before `archive.index` renamed a field: read again
        e.index = carried(&[
            ("call", "c-1"),
            ("org", "o"),
            ("tenant", "t"),
            ("missing", "m"),
        ]);
        let read = r.fields(&e);
        assert_eq!(read["call_id"], "c-1");
        assert!(!read.contains_key("call"));
        // queued before `archive.index` gained `call_id` (or the event lacked one): read again,
        // so a search or an erasure by it finds the event
        e.index = carried(&[("org", "o")]);
        assert_eq!(r.fields(&e)["call_id"], "c-1");
    }

    #[test]
    fn later_attempts_carry_only_their_step() {
        let r = recorder(None);
        let e = event("{}");
        assert!(
            r.note(&e, None, Step::new(Outcome::Retrying, 1))
                .request
                .is_some()
        );
        assert!(
            r.note(&e, None, Step::new(Outcome::Written, 2))
                .request
                .is_none()
        );
        let mut replayed = Step::new(Outcome::Written, 1);
        replayed.run = Some("run".into());
        assert!(r.note(&e, None, replayed).request.is_none());
    }

    #[test]
    fn digests_tell_rows_apart() {
        let a = [serde_json::json!({"x": 1})];
        let b = [serde_json::json!({"x": 2})];
        assert_eq!(digest("s", &a), digest("s", &a));
        assert_ne!(digest("s", &a), digest("s", &b));
        assert_ne!(digest("s", &a), digest("t", &a));
    }

    #[test]
    fn filters_match_every_condition() {
        let s = Stored {
            pipeline: "vapi".into(),
            event_id: "e".into(),
            received_at_ms: 100,
            fields: [("call_id".to_string(), "c".to_string())].into(),
            outcome: Outcome::Dropped,
            attempts: 1,
            story: vec![],
            request: None,
        };
        let mut f = Filter {
            pipeline: Some("vapi".into()),
            since_ms: Some(100),
            until_ms: Some(101),
            outcome: Some(Outcome::Dropped),
            fields: [("call_id".to_string(), "c".to_string())].into(),
            event_id: None,
        };
        assert!(f.matches(&s));
        f.fields.insert("call_id".into(), "d".into());
        assert!(!f.matches(&s));
        f.fields.clear();
        f.until_ms = Some(100);
        assert!(!f.matches(&s));
    }
}
