//! The capturing sink of `engine replay`: every pipeline sink is replaced by one that keeps the
//! rows it is given, in order, so a fixture can compare them with what it expects. Nothing leaves
//! the process: no database, file or HTTP call.

use std::sync::{Arc, Mutex};

use crate::sink::{Batch, Sink, SinkFuture};

/// Rows written, in order, by every capturing sink of one run.
#[derive(Debug, Default)]
pub struct Captured {
    batches: Mutex<Vec<Batch>>,
}

impl Captured {
    /// A capturing sink recording into `self` (each batch carries its sink's name).
    pub fn sink(self: &Arc<Self>) -> Arc<dyn Sink> {
        Arc::new(Capture { into: self.clone() })
    }

    /// The batches so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many batches have been written.
    pub fn len(&self) -> usize {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Capture {
    into: Arc<Captured>,
}

impl Sink for Capture {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a> {
        self.into
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch.clone());
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_batches_in_order() {
        let captured = Arc::new(Captured::default());
        let a = captured.sink();
        let b = captured.sink();
        let batch = |sink: &str, n: i64| Batch {
            event_id: format!("e{n}"),
            pipeline: "p".into(),
            sink: sink.into(),
            step: "s".into(),
            rows: vec![serde_json::json!({"n": n})],
        };
        a.write(&batch("a", 1)).await.unwrap();
        b.write(&batch("b", 2)).await.unwrap();
        a.write(&batch("a", 3)).await.unwrap();
        let got: Vec<(String, String)> = captured
            .batches()
            .into_iter()
            .map(|b| (b.sink, b.event_id))
            .collect();
        assert_eq!(
            got,
            [("a", "e1"), ("b", "e2"), ("a", "e3")].map(|(s, e)| (s.to_string(), e.to_string()))
        );
    }
}
