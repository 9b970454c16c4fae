//! The Postgres (Supabase) sink: one statement per event, idempotent, typed by Postgres itself.
//!
//! ```sql
//! INSERT INTO "call_logs" ("call_id", "cost", ..., "event_id", "row_index")
//! SELECT "call_id", "cost", ..., "event_id", "row_index"
//!   FROM jsonb_populate_recordset(NULL::"call_logs", $1::jsonb)
//! ON CONFLICT ("event_id", "row_index") DO NOTHING
//! ```
//!
//! `jsonb_populate_recordset` converts each JSON value to its column's type (timestamptz,
//! numeric, uuid, text[], jsonb, ...), so the mapping is the table's own. Every row carries
//! `event_id` and `row_index`: the default conflict key, which makes redelivery harmless. Field
//! names come from scripts, so each is checked to be a plain identifier and quoted.
//!
//! Errors: connection, timeout, serialization/deadlock, out of resources -> retry; data and
//! constraint errors (22xxx, 23xxx) and undefined columns -> dead letter, naming the column or
//! constraint Postgres reports.

use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use tokio_postgres::types::Type;

use crate::config::sink::{OnConflict, PostgresConfig};
use crate::crypto::Keyring;
use crate::sink::{Batch, Sink, SinkError, SinkFuture};

pub struct PostgresSink {
    pool: Pool,
    table: String,
    table_sql: String,
    columns: crate::config::sink::Columns,
    key: Vec<String>,
    on_conflict: OnConflict,
    update: Vec<String>,
    encrypt: Vec<String>,
    keyring: Option<Keyring>,
    /// `BEGIN; SET LOCAL statement_timeout = N` opening each write's transaction, built once,
    /// and that timeout (none: the server's own timeout, no explicit transaction, no bound on
    /// the answer).
    begin: Option<(String, std::time::Duration)>,
    /// The bytes a row's text took in the last write: the next write's text is sized from it
    /// once instead of growing by doubling (a Vapi call log with its transcript is ~2 KiB).
    row_bytes: std::sync::atomic::AtomicUsize,
}

/// The encryption context of an `encrypt` column's value: the table, the column, and the row's
/// conflict key values (`call_logs.transcript/<call_id>`, `oauth_tokens.access_token/<tenant>/
/// <provider>`), so a value copied to another row or column does not decrypt: whoever can write
/// the table cannot swap one tenant's token into another's row.
pub fn row_context(table: &str, column: &str, key: &[String]) -> String {
    let mut context = format!("{table}.{column}");
    for k in key {
        context.push('/');
        context.push_str(k);
    }
    context
}

/// A value as text: a string as it is, anything else as JSON.
fn as_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// One row as the table receives it: (column, value) in the row's order, and its conflict key.
struct MappedRow<'a> {
    fields: Vec<(&'a str, std::borrow::Cow<'a, Value>)>,
    key: Vec<String>,
}

/// JSON as text, sent as a `jsonb` parameter as it is (no `serde_json::Value` built to be
/// serialized again): the rows' array here, the archive's fields and stories.
#[derive(Debug)]
pub struct JsonText(pub Vec<u8>);

impl JsonText {
    /// The rows' array, its buffer sized for `row_bytes` a row.
    fn of(rows: &[MappedRow<'_>], row_bytes: usize) -> Result<JsonText, SinkError> {
        let bad =
            |e: serde_json::Error| SinkError::permanent("a row cannot be stored").caused_by(e);
        let mut out = Vec::with_capacity(rows.len() * row_bytes + 2);
        out.push(b'[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            for (j, (column, value)) in row.fields.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, column).map_err(bad)?;
                out.push(b':');
                serde_json::to_writer(&mut out, value.as_ref()).map_err(bad)?;
            }
            out.push(b'}');
        }
        out.push(b']');
        Ok(JsonText(out))
    }
}

impl tokio_postgres::types::ToSql for JsonText {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary form is a version byte (1) and the text
        if *ty == Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    tokio_postgres::types::to_sql_checked!();
}

/// `name` as a quoted SQL identifier, if it is a plain one.
fn ident(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63;
    ok.then(|| format!("\"{name}\""))
}

impl PostgresSink {
    pub fn new(
        cfg: &PostgresConfig,
        pool: Pool,
        keyring: Option<Keyring>,
    ) -> Result<PostgresSink, super::SinkBuildError> {
        let table_sql = cfg
            .table
            .split('.')
            .map(|p| ident(p).ok_or_else(|| super::SinkBuildError::BadTable(cfg.table.clone())))
            .collect::<Result<Vec<_>, _>>()?
            .join(".");
        if !cfg.encrypt.is_empty() && keyring.is_none() {
            return Err(super::SinkBuildError::NoEncryptionKey(cfg.table.clone()));
        }
        Ok(PostgresSink {
            pool,
            table: cfg.table.clone(),
            table_sql,
            columns: cfg.columns.clone(),
            key: if cfg.key.is_empty() {
                vec!["event_id".into(), "row_index".into()]
            } else {
                cfg.key.clone()
            },
            on_conflict: cfg.on_conflict,
            update: cfg.update.clone(),
            encrypt: cfg.encrypt.clone(),
            keyring,
            begin: None,
            row_bytes: std::sync::atomic::AtomicUsize::new(512),
        })
    }

    /// Give each write's transaction a statement timeout (settings' `statement_timeout_ms`).
    pub fn with_statement_timeout(mut self, timeout: std::time::Duration) -> PostgresSink {
        self.begin = Some((
            format!(
                "BEGIN; SET LOCAL statement_timeout = {}",
                timeout.as_millis()
            ),
            timeout,
        ));
        self
    }

    /// The table, as the configuration names it.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The conflict key: the configured one, or `event_id, row_index`.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// `rows` as one JSON array, sized from the last write's rows (and remembering this one's;
    /// up to 1 MiB a row, so one huge row does not size every write after it).
    fn text_of(&self, rows: &[MappedRow<'_>]) -> Result<JsonText, SinkError> {
        use std::sync::atomic::Ordering::Relaxed;
        let text = JsonText::of(rows, self.row_bytes.load(Relaxed))?;
        let per_row = text.0.len() / rows.len().max(1);
        self.row_bytes
            .store((per_row + per_row / 8 + 16).min(1 << 20), Relaxed);
        Ok(text)
    }

    /// The rows of `batches` as one JSON array (its text, written straight from the rows), the
    /// statement that writes them, and a connection; `None` when there is nothing to write.
    async fn prepared(
        &self,
        batches: &[Batch],
    ) -> Result<Option<(JsonText, String, deadpool_postgres::Object)>, SinkError> {
        if batches.iter().all(|b| b.rows.is_empty()) {
            return Ok(None);
        }
        let (rows, columns) = self.mapped(batches)?;
        let text = self.text_of(&rows)?;
        let sql = self.statement(&columns)?;
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| SinkError::retry("database unavailable").caused_by(e))?;
        Ok(Some((text, sql, client)))
    }

    /// Write `batches` on `client` and roll the write back: whether the table takes what the
    /// pipeline writes (types, NOT NULL, CHECK and unique constraints, the conflict key), without
    /// keeping anything. Used by the table check before traffic arrives, inside its transaction
    /// (the write is undone to a savepoint, so the check's own changes stay).
    pub async fn trial(
        &self,
        client: &tokio_postgres::Client,
        batches: &[Batch],
    ) -> Result<(), SinkError> {
        if batches.iter().all(|b| b.rows.is_empty()) {
            return Ok(());
        }
        let (rows, columns) = self.mapped(batches)?;
        let rows = self.text_of(&rows)?;
        let sql = self.statement(&columns)?;
        client
            .batch_execute("SAVEPOINT engine_trial")
            .await
            .map_err(|e| classify(e, &self.table))?;
        let result = client
            .execute_typed(sql.as_str(), &[(&rows, Type::JSONB)])
            .await;
        let _ = client
            .batch_execute("ROLLBACK TO SAVEPOINT engine_trial")
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.explain(client, e, batches).await),
        }
    }

    /// The batches' rows as column → value objects, with `event_id`, `row_index` and encryption
    /// (the table check's samples, and a failed write's explanation).
    pub(crate) fn rows(&self, batches: &[Batch]) -> Result<(Vec<Value>, Vec<String>), SinkError> {
        let (rows, columns) = self.mapped(batches)?;
        let rows = rows
            .into_iter()
            .map(|r| {
                Value::Object(
                    r.fields
                        .into_iter()
                        .map(|(c, v)| (c.to_string(), v.into_owned()))
                        .collect(),
                )
            })
            .collect();
        Ok((rows, columns))
    }

    /// The batches' rows as the table receives them: each field under its column (`columns:`),
    /// encrypted where `encrypt:` says, plus `event_id` and `row_index`; values borrowed from the
    /// rows except what encryption makes. Sorted by conflict key, with every column named.
    fn mapped<'a>(
        &'a self,
        batches: &'a [Batch],
    ) -> Result<(Vec<MappedRow<'a>>, Vec<String>), SinkError> {
        use std::borrow::Cow;
        // the statement's columns, in first-seen order; `seen` answers "already there?" without
        // a scan per field per row
        let mut columns: Vec<String> = Vec::new();
        let mut seen: std::collections::HashSet<&'a str> = Default::default();
        let mut out = Vec::new();
        for batch in batches {
            for (i, row) in batch.rows.iter().enumerate() {
                let Value::Object(fields) = row else {
                    return Err(SinkError::permanent("a row is not a map"));
                };
                let mut mapped: Vec<(&'a str, Cow<'a, Value>)> =
                    Vec::with_capacity(fields.len() + 2);
                // the columns stored encrypted, sealed once the row's key is known
                let mut sealed: Vec<&'a str> = Vec::new();
                for (field, value) in fields {
                    if !self.columns.allows(field) {
                        return Err(SinkError::permanent(format!(
                            "row field `{field}` is not in the sink's `columns:` list"
                        )));
                    }
                    let column = self.columns.column(field);
                    if self.encrypt.contains(field) && !value.is_null() {
                        sealed.push(column);
                    }
                    let value = Cow::Borrowed(value);
                    // a row's own fields are distinct; only a renamed one can land on another's
                    // column, and then the later one wins, as in a map
                    match (column != field.as_str())
                        .then(|| mapped.iter_mut().find(|(c, _)| *c == column))
                        .flatten()
                    {
                        Some(slot) => slot.1 = value,
                        None => mapped.push((column, value)),
                    }
                }
                for (name, value) in [
                    ("event_id", Value::from(batch.event_id.as_str())),
                    ("row_index", Value::from(i)),
                ] {
                    match mapped.iter_mut().find(|(c, _)| *c == name) {
                        Some(slot) => slot.1 = Cow::Owned(value),
                        None => mapped.push((name, Cow::Owned(value))),
                    }
                }
                // rows of one transform have the same fields as a rule: a row whose columns
                // are the previous row's, in order, adds none (compared, not hashed again)
                let as_before = out.last().is_some_and(|p: &MappedRow<'a>| {
                    p.fields.len() == mapped.len()
                        && p.fields.iter().zip(&mapped).all(|(a, b)| a.0 == b.0)
                });
                if !as_before {
                    for (c, _) in &mapped {
                        if seen.insert(c) {
                            columns.push(c.to_string());
                        }
                    }
                }
                // the conflict key's values as text: what the statements are ordered by, and
                // what an encrypted value is sealed to
                let key: Vec<String> = self
                    .key
                    .iter()
                    .map(|k| {
                        mapped
                            .iter()
                            .find(|(c, _)| c == k)
                            .map(|(_, v)| as_text(v))
                            .unwrap_or_default()
                    })
                    .collect();
                if !sealed.is_empty() {
                    let ring = self.keyring.as_ref().expect("checked at build");
                    for column in sealed {
                        if let Some(slot) = mapped.iter_mut().find(|(c, _)| *c == column) {
                            let text = as_text(&slot.1);
                            let context = row_context(&self.table, column, &key);
                            slot.1 =
                                Cow::Owned(Value::String(ring.encrypt(text.as_bytes(), &context)));
                        }
                    }
                }
                out.push(MappedRow {
                    fields: mapped,
                    key,
                });
            }
        }
        // One order for every statement: two workers writing rows with the same conflict keys
        // in two concurrent batches then take the rows' locks in the same order, and one waits
        // for the other instead of both deadlocking (Postgres would abort one with `deadlock
        // detected`, a rollback and a retry). Stable, so rows of one key keep their order.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, columns))
    }

    fn statement(&self, columns: &[String]) -> Result<String, SinkError> {
        let quoted: Vec<String> = columns
            .iter()
            .map(|c| {
                ident(c).ok_or_else(|| {
                    SinkError::permanent(format!("row field `{c}` is not a column name"))
                })
            })
            .collect::<Result<_, _>>()?;
        let list = quoted.join(", ");
        let key: Vec<String> = self.key.iter().filter_map(|k| ident(k)).collect();
        let conflict = match self.on_conflict {
            OnConflict::Nothing => "DO NOTHING".to_string(),
            OnConflict::Update => {
                let targets: Vec<&String> = if self.update.is_empty() {
                    columns.iter().filter(|c| !self.key.contains(c)).collect()
                } else {
                    self.update.iter().collect()
                };
                let sets: Vec<String> = targets
                    .iter()
                    .filter_map(|c| ident(c))
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                if sets.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", sets.join(", "))
                }
            }
        };
        Ok(format!(
            "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{t}, $1::jsonb) ON CONFLICT ({k}) {conflict}",
            t = self.table_sql,
            k = key.join(", ")
        ))
    }
}

impl Sink for PostgresSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a> {
        self.write_many(std::slice::from_ref(batch))
    }

    fn batches(&self) -> bool {
        true
    }

    fn idempotent(&self) -> bool {
        true
    }

    /// The rows of every event in one statement (one round trip, one transaction).
    fn write_many<'a>(&'a self, batches: &'a [Batch]) -> SinkFuture<'a> {
        Box::pin(async move {
            let Some((rows, sql, client)) = self.prepared(batches).await? else {
                return Ok(());
            };
            let params = [(
                &rows as &(dyn tokio_postgres::types::ToSql + Sync),
                Type::JSONB,
            )];
            let (client, result) = match &self.begin {
                None => {
                    let result = client.execute_typed(sql.as_str(), &params).await;
                    (client, result)
                }
                Some((begin, timeout)) => {
                    crate::db::write_in_one_round_trip(client, Some(begin), &sql, &params, *timeout)
                        .await
                        .map_err(|e| SinkError::retry("database write").caused_by(e))?
                }
            };
            match result {
                Ok(_) => Ok(()),
                Err(e) => {
                    // the explanation's probes run in a transaction of their own (`refuses`)
                    let _ = client.batch_execute("BEGIN").await;
                    let error = self.explain(&client, e, batches).await;
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        })
    }
}

impl PostgresSink {
    /// A failed write as a sink error. A value that does not fit its column names the column,
    /// not the value.
    async fn explain(
        &self,
        client: &tokio_postgres::Client,
        e: tokio_postgres::Error,
        batches: &[Batch],
    ) -> SinkError {
        if !e
            .as_db_error()
            .is_some_and(|d| d.code().code().starts_with("22"))
        {
            return classify(e, &self.table);
        }
        let rows = self.rows(batches).map(|(r, _)| r).unwrap_or_default();
        let column = self.failing_column(client, &rows).await;
        let message = e
            .as_db_error()
            .map(|d| without_value(d.message()))
            .unwrap_or_default();
        SinkError::permanent(match column {
            Some(c) => format!("{}: column `{c}`: {message}", self.table),
            None => format!("{}: {message}", self.table),
        })
    }

    /// The first column whose value alone fails to convert (only run after a data error).
    async fn failing_column(
        &self,
        client: &tokio_postgres::Client,
        rows: &[Value],
    ) -> Option<String> {
        for row in rows {
            let Value::Object(fields) = row else { continue };
            for (column, value) in fields {
                if self.refuses(client, column, value).await.is_some() {
                    return Some(column.clone());
                }
            }
        }
        None
    }

    /// Why the table's `column` refuses `value` (Postgres's own conversion, the value cut from
    /// the message), if it does. Called inside a transaction (the table check's, or the one a
    /// failed write's explanation opens).
    pub(crate) async fn refuses(
        &self,
        client: &tokio_postgres::Client,
        column: &str,
        value: &Value,
    ) -> Option<String> {
        let sql = format!(
            "SELECT jsonb_populate_record(NULL::{}, $1::jsonb) IS NULL",
            self.table_sql
        );
        let one = Value::Object(Map::from_iter([(column.to_string(), value.clone())]));
        // A refused value fails the statement; the savepoint keeps the caller's transaction (the
        // table check's) usable after it.
        let _ = client.batch_execute("SAVEPOINT engine_refuses").await;
        let result = client.query_typed(&sql, &[(&one, Type::JSONB)]).await;
        let _ = client
            .batch_execute("ROLLBACK TO SAVEPOINT engine_refuses")
            .await;
        match result {
            Ok(_) => None,
            Err(e) => Some(
                e.as_db_error()
                    .map(|d| without_value(d.message()))
                    .unwrap_or_else(|| e.to_string()),
            ),
        }
    }
}

/// Postgres quotes the offending value (`invalid input syntax for type uuid: "abc"`); it may be
/// personal data, so it is cut from messages that are stored in dead letters and logs.
fn without_value(message: &str) -> String {
    match message.find(": \"") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Retry what may pass later; dead-letter what never will.
fn classify(e: tokio_postgres::Error, table: &str) -> SinkError {
    let Some(db) = e.as_db_error() else {
        return SinkError::retry("database connection").caused_by(e);
    };
    let code = db.code().code();
    let mut msg = format!("{table}: {}", db.message());
    if let Some(c) = db.column() {
        msg.push_str(&format!(" (column `{c}`)"));
    }
    if let Some(c) = db.constraint() {
        msg.push_str(&format!(" (constraint `{c}`)"));
    }
    match &code[..2] {
        "08" | "40" | "53" | "57" | "58" => SinkError::retry(msg),
        _ => SinkError::permanent(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink writing `table` (never connected: the pool connects lazily).
    fn sink(config: serde_json::Value) -> PostgresSink {
        let cfg: PostgresConfig = serde_json::from_value(config).unwrap();
        let pool = crate::db::pool("postgres://nobody@127.0.0.1:1/none?sslmode=disable", 1);
        PostgresSink::new(&cfg, pool.unwrap(), None).unwrap()
    }

    /// The statement names every column any row has, in first-seen order, whether the rows
    /// repeat the previous row's columns (in order or not) or bring new ones.
    #[test]
    fn the_statement_names_every_column_of_every_row() {
        let s = sink(serde_json::json!({"table": "t", "key": ["a"]}));
        let rows = |rows: serde_json::Value| rows.as_array().unwrap().clone();
        let batch = |id: &str, rows| Batch {
            event_id: id.into(),
            pipeline: "p".into(),
            sink: "t".into(),
            step: "s".into(),
            rows,
        };
        let batches = [
            batch(
                "e1",
                rows(serde_json::json!([{"a": 1, "b": 2}, {"a": 2, "b": 3}])),
            ),
            batch("e2", rows(serde_json::json!([{"a": 3, "c": 4}]))),
            batch(
                "e3",
                rows(serde_json::json!([{"b": 5, "a": 4}, {"a": 5, "b": 6}])),
            ),
            batch("e4", rows(serde_json::json!([{"a": 6, "b": 7, "d": 8}]))),
        ];
        let (mapped, columns) = s.mapped(&batches).unwrap();
        assert_eq!(
            columns,
            ["a", "b", "event_id", "row_index", "c", "d"].map(String::from)
        );
        assert_eq!(mapped.len(), 6);
        // sorted by the key's text, each row its own fields
        let keys: Vec<&str> = mapped.iter().map(|r| r.key[0].as_str()).collect();
        assert_eq!(keys, ["1", "2", "3", "4", "5", "6"]);
        let names = |i: usize| -> Vec<&str> { mapped[i].fields.iter().map(|f| f.0).collect() };
        assert_eq!(names(2), ["a", "c", "event_id", "row_index"]);
        assert_eq!(names(5), ["a", "b", "d", "event_id", "row_index"]);
    }

    /// The rows' text is the same whatever size it was given to start from (the size only
    /// decides how the buffer is allocated, never what is written).
    #[test]
    fn rows_text_does_not_depend_on_its_starting_size() {
        let transcript = Value::String("a".repeat(2000));
        let rows = [
            MappedRow {
                fields: vec![
                    (
                        "call_id",
                        std::borrow::Cow::Owned(Value::String("c-1".into())),
                    ),
                    ("transcript", std::borrow::Cow::Borrowed(&transcript)),
                ],
                key: vec!["c-1".into()],
            },
            MappedRow {
                fields: vec![("call_id", std::borrow::Cow::Owned(Value::Null))],
                key: vec!["c-2".into()],
            },
        ];
        let texts: Vec<Vec<u8>> = [0, 1, 512, 1 << 20]
            .into_iter()
            .map(|hint| JsonText::of(&rows, hint).unwrap().0)
            .collect();
        assert!(texts.windows(2).all(|w| w[0] == w[1]));
        let parsed: Value = serde_json::from_slice(&texts[0]).unwrap();
        assert_eq!(parsed[0]["transcript"], transcript);
        assert_eq!(parsed[1], serde_json::json!({"call_id": null}));
    }

    #[test]
    fn values_are_cut_from_messages() {
        assert_eq!(
            without_value("invalid input syntax for type uuid: \"jane@example.com\""),
            "invalid input syntax for type uuid"
        );
        assert_eq!(
            without_value("numeric field overflow"),
            "numeric field overflow"
        );
    }

    #[test]
    fn identifiers() {
        assert_eq!(ident("call_id").as_deref(), Some("\"call_id\""));
        for bad in ["", "1a", "a b", "a\"; drop table x; --", "a-b"] {
            assert!(ident(bad).is_none(), "{bad}");
        }
    }
}
