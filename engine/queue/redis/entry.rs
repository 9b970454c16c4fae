//! A queue entry as Redis keeps it, and read back.
//!
//! ```text
//! e   the event without its body (JSON: id, pipeline, received_at_ms, method, path, query,
//!     headers, params, tenant)
//! b   the raw body, as it arrived (no base64, no JSON escaping)
//! a   attempts made before this delivery; absent (a fresh append leaves it out): none
//! ```
//!
//! A fresh append writes `e` and `b` only: every field is two more values in each read's reply,
//! and redis-rs's reply parser spends ~1,000 instructions on a value.
//!
//! An entry with `e` alone is the full form, the body base64 inside the JSON: what retries carry
//! through the delayed set and the promoter, and what entries written before the raw-body form
//! hold. Both forms read the same event.

use mobc_redis::redis::Value;

use crate::transform::EventInput;

use crate::queue::{DeadLetter, Delivery, Enqueued};

/// What an append answered: the entry id, or "" for a duplicate.
pub(super) fn stored(id: String) -> Enqueued {
    if id.is_empty() {
        Enqueued::Duplicate
    } else {
        Enqueued::Added(id)
    }
}

/// When a stream entry was added: the milliseconds its id starts with (`1764086400000-0`).
pub(super) fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A reply value's bytes, moved out (no copy).
pub(super) fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// One stream entry's field/value pairs, as bytes.
pub(super) type EntryFields = Vec<(Vec<u8>, Vec<u8>)>;

/// `[[id, [field, value, ...]], ...]`: each entry's id and fields, moved out of the reply
/// (entries that do not decode are skipped; XAUTOCLAIM reports deleted ones separately).
pub(super) fn stream_entries(v: Value) -> impl Iterator<Item = (String, EntryFields)> {
    let entries = match v {
        Value::Array(entries) => entries,
        _ => Vec::new(),
    };
    entries.into_iter().filter_map(|entry| {
        let Value::Array(parts) = entry else {
            return None;
        };
        let mut parts = parts.into_iter();
        let id = String::from_utf8(into_bytes(parts.next()?)?).ok()?;
        let fields = match parts.next()? {
            Value::Array(items) => {
                let mut items = items.into_iter();
                let mut out = Vec::with_capacity(items.len() / 2);
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    if let (Some(k), Some(v)) = (into_bytes(k), into_bytes(v)) {
                        out.push((k, v));
                    }
                }
                out
            }
            _ => Vec::new(),
        };
        Some((id, fields))
    })
}

/// A field's value, taken out of the entry's fields.
pub(super) fn take(fields: &mut [(Vec<u8>, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    fields
        .iter_mut()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| std::mem::take(v))
}

/// A field's value as text.
pub(super) fn text(fields: &[(Vec<u8>, Vec<u8>)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n == name.as_bytes())
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
}

/// The event of an entry in either stored form: `e` (the event without its body) and `b` (the
/// raw body), or `e` alone (the full form with a base64 body: retries moved back by the
/// promoter, and entries written before the raw-body form).
pub(super) fn stored_event(fields: &mut [(Vec<u8>, Vec<u8>)]) -> Option<EventInput> {
    stored_event_and_meta(fields).map(|(event, _)| event)
}

/// [`stored_event`], and the entry's `e` as text when the body is stored raw beside it: the
/// event's stored form without its body, which the archive keeps as it is.
fn stored_event_and_meta(
    fields: &mut [(Vec<u8>, Vec<u8>)],
) -> Option<(EventInput, Option<String>)> {
    let body = take(fields, "b");
    let raw_body = body.is_some();
    let e = take(fields, "e")?;
    let event = EventInput::from_stored(&e, body)?;
    Some((event, raw_body.then(|| String::from_utf8(e).ok()).flatten()))
}

/// Stream entries as deliveries.
pub(super) fn parse_entries(v: Value) -> Vec<Delivery> {
    stream_entries(v)
        .filter_map(|(id, mut f)| {
            let attempts = text(&f, "a").and_then(|a| a.parse().ok()).unwrap_or(0);
            let (event, stored) = stored_event_and_meta(&mut f)?;
            Some(Delivery {
                id,
                event,
                attempts,
                stored,
            })
        })
        .collect()
}

/// An XREADGROUP reply: `[[stream, entries]]` (nil when the block timed out).
pub(super) fn parse_read(v: Value) -> Vec<Delivery> {
    match v {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(parts) if parts.len() == 2 => parts
                    .into_iter()
                    .nth(1)
                    .map(parse_entries)
                    .unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        _ => Vec::new(),
    }
}

pub(super) fn parse_dead(v: Value) -> Vec<DeadLetter> {
    stream_entries(v)
        .map(|(id, mut f)| {
            let event = stored_event(&mut f);
            DeadLetter {
                at_ms: entry_ms(&id).map_or(0, |ms| ms as i64),
                id,
                event_id: event.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
                reason: text(&f, "reason").unwrap_or_default(),
                attempts: text(&f, "attempts")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                event,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: Vec<(&str, Vec<u8>)>) -> Value {
        let fields = fields
            .into_iter()
            .flat_map(|(k, v)| [Value::BulkString(k.into()), Value::BulkString(v)])
            .collect();
        Value::Array(vec![Value::BulkString(id.into()), Value::Array(fields)])
    }

    /// The raw-body form hands its `e` on as the text the archive keeps; the full form (a retry,
    /// an old entry) reads the same event and hands on nothing, its `e` holding the body.
    #[test]
    fn an_entry_with_a_raw_body_hands_its_stored_form_on() {
        let mut event = crate::transform::event::sample("application/json", r#"{"a":1}"#);
        event.index = Some([("call_id".to_string(), "c-1".to_string())].into());
        let meta = event.stored_meta().unwrap();
        let full = serde_json::to_vec(&event).unwrap();
        let got = parse_entries(Value::Array(vec![
            entry(
                "1-0",
                vec![("e", meta.clone().into_bytes()), ("b", event.body.to_vec())],
            ),
            entry("2-0", vec![("e", full), ("a", b"1".to_vec())]),
        ]));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].event, event);
        assert_eq!(
            got[0].attempts, 0,
            "no `a`: a fresh append's first delivery"
        );
        assert_eq!(got[0].stored.as_deref(), Some(meta.as_str()));
        assert_eq!(got[1].event, event);
        assert_eq!((got[1].attempts, got[1].stored.as_deref()), (1, None));
    }
}
