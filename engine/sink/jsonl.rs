//! JSON-lines sinks: one line per row, `{"event_id", "row_index", "sink", ...row}`, appended to a
//! file or written to standard output. Appends are serialized; a line is written whole or not at
//! all from the process's point of view. These sinks do not deduplicate: a redelivered event
//! appends its rows again (use Postgres where exactly-once rows matter).

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::sink::{Batch, Sink, SinkError, SinkFuture};

enum Destination {
    File(PathBuf),
    Stdout,
}

pub struct JsonLines {
    target: Destination,
    lock: Mutex<()>,
}

impl JsonLines {
    pub fn file(path: PathBuf) -> JsonLines {
        JsonLines {
            target: Destination::File(path),
            lock: Mutex::new(()),
        }
    }

    pub fn stdout() -> JsonLines {
        JsonLines {
            target: Destination::Stdout,
            lock: Mutex::new(()),
        }
    }
}

/// The lines of a batch.
fn lines(batch: &Batch) -> String {
    let mut out = String::new();
    for (i, row) in batch.rows.iter().enumerate() {
        let mut line = serde_json::Map::new();
        line.insert("event_id".into(), batch.event_id.clone().into());
        line.insert("row_index".into(), i.into());
        line.insert("sink".into(), batch.sink.clone().into());
        if let serde_json::Value::Object(fields) = row {
            for (k, v) in fields {
                line.insert(k.clone(), v.clone());
            }
        }
        out.push_str(&serde_json::Value::Object(line).to_string());
        out.push('\n');
    }
    out
}

impl Sink for JsonLines {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move {
            let text = lines(batch);
            let _guard = self.lock.lock().await;
            match &self.target {
                Destination::Stdout => {
                    let mut out = tokio::io::stdout();
                    let failed =
                        |e| SinkError::retry("cannot write to standard output").caused_by(e);
                    out.write_all(text.as_bytes()).await.map_err(failed)?;
                    out.flush().await.map_err(failed)
                }
                Destination::File(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        tokio::fs::create_dir_all(dir).await.map_err(|e| {
                            SinkError::retry(format!("cannot create {}", dir.display()))
                                .caused_by(e)
                        })?;
                    }
                    let mut f = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .map_err(|e| {
                            SinkError::retry(format!("cannot open {}", path.display())).caused_by(e)
                        })?;
                    let failed = |e| {
                        SinkError::retry(format!("cannot write {}", path.display())).caused_by(e)
                    };
                    f.write_all(text.as_bytes()).await.map_err(failed)?;
                    f.flush().await.map_err(failed)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_one_line_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rows.jsonl");
        let sink = JsonLines::file(path.clone());
        let batch = Batch {
            event_id: "e1".into(),
            pipeline: "p".into(),
            sink: "s".into(),
            step: "x".into(),
            rows: vec![serde_json::json!({"a": 1}), serde_json::json!({"a": 2})],
        };
        sink.write(&batch).await.unwrap();
        sink.write(&batch).await.unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            serde_json::json!({"event_id": "e1", "row_index": 1, "sink": "s", "a": 2})
        );
    }
}
