//! What a worker hands the archive for each attempt ([`Recorder::note`]): the event's index
//! fields (as the request path read them, else read here, [`index_of`]), its stored request
//! (the meta JSON and the body, sealed with ENCRYPTION_KEY when one is set) on the first
//! attempt, and the attempt's step.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Note, Request, Step, Store, seal_context};
use crate::config::verify::KeySource;
use crate::crypto::Keyring;
use crate::transform::EventInput;

/// The index fields of `event` (a pipeline's `archive.index`), a JSON field's value given by
/// `json` (the field's place in `index` and its pointer -> the value there): read by the worker
/// in a pass of its own
/// ([`Recorder::fields`]) or by the request path in the pass it makes anyway
/// (`EventInput::index`). Headers are the event's, credentials already removed.
pub fn index_of(
    index: &BTreeMap<String, KeySource>,
    event: &EventInput,
    mut json: impl FnMut(usize, &str) -> Option<serde_json::Value>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (place, (name, source)) in index.iter().enumerate() {
        let value = match source {
            KeySource::Json(p) => json(place, p).and_then(crate::request_field::key_text),
            KeySource::Header(h) => event.header(h).map(str::to_string),
            KeySource::Form(f) => form_urlencoded::parse(&event.body)
                .find(|(k, _)| k == f.as_str())
                .map(|(_, v)| v.into_owned()),
            KeySource::Query(q) => form_urlencoded::parse(event.query.as_bytes())
                .find(|(k, _)| k == q.as_str())
                .map(|(_, v)| v.into_owned()),
            KeySource::Path(p) => event
                .params
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.clone()),
        };
        if let Some(v) = value.filter(|v| !v.is_empty() && v.len() <= 256) {
            out.insert(name.clone(), v);
        }
    }
    out
}

/// A pipeline's archive as its worker uses it: where, which fields, and the key bodies are
/// sealed with.
pub struct Recorder {
    pub store: Arc<Store>,
    pub pipeline: String,
    index: BTreeMap<String, KeySource>,
    /// The JSON pointers among `index`, read together in one pass.
    pointers: crate::request_field::JsonPointers,
    /// For each field of `index` (in its order), the place of its value among `pointers`' (a
    /// JSON field's; found once here, not per event).
    slots: Vec<Option<usize>>,
    keyring: Option<Keyring>,
}

impl Recorder {
    pub fn new(
        store: Arc<Store>,
        pipeline: &str,
        index: &BTreeMap<String, KeySource>,
        keyring: Option<Keyring>,
    ) -> Recorder {
        let ptrs: Vec<&str> = index
            .values()
            .filter_map(|s| match s {
                KeySource::Json(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        let pointers = crate::request_field::JsonPointers::new(&ptrs);
        let slots = index
            .values()
            .map(|s| match s {
                KeySource::Json(p) => pointers.texts().iter().position(|t| t == p),
                _ => None,
            })
            .collect();
        Recorder {
            store,
            pipeline: pipeline.to_string(),
            index: index.clone(),
            pointers,
            slots,
            keyring,
        }
    }

    /// The index fields of `event`: as the request path read them when that reading has a value
    /// for every field of this pipeline's index, else read now. A reading that lacks one cannot
    /// tell a field the event did not have from one `archive.index` gained after the event was
    /// queued (and one renamed or removed shows as a name the index no longer has); reading
    /// again costs the pass the carried reading saved, and a search or an erasure by the new
    /// field still finds the event.
    pub fn fields(&self, event: &EventInput) -> BTreeMap<String, String> {
        if let Some(read) = &event.index
            && read.len() == self.index.len()
            && read.keys().all(|k| self.index.contains_key(k))
        {
            return read.clone();
        }
        let json = match self.pointers.texts().is_empty() {
            true => Vec::new(),
            false => self.pointers.read(&event.body).unwrap_or_default(),
        };
        index_of(&self.index, event, |place, _| {
            let slot = self.slots.get(place).copied().flatten()?;
            json.get(slot).cloned().flatten()
        })
    }

    /// The stored request of `event`: its meta the queue's own text of it when there is one
    /// (`stored`, a Redis entry's `e`), else written now.
    pub fn request(&self, event: &EventInput, stored: Option<&str>) -> Request {
        let meta = match stored {
            Some(text) => text.to_string(),
            None => event.archived_meta().unwrap_or_default(),
        };
        match &self.keyring {
            Some(k) => Request {
                meta,
                body: k
                    .seal(&event.body, &seal_context(&event.pipeline, &event.id))
                    .into(),
                sealed: true,
            },
            None => Request {
                meta,
                body: event.body.clone(),
                sealed: false,
            },
        }
    }

    /// The note of one attempt: the request stored with the first one (later attempts and
    /// replays add only their step); `stored` is the queue's text of the event, when it keeps
    /// one ([`Recorder::request`]).
    pub fn note(&self, event: &EventInput, stored: Option<&str>, step: Step) -> Note {
        let first = step.attempt <= 1 && step.run.is_none();
        Note {
            pipeline: event.pipeline.clone(),
            event_id: event.id.clone(),
            received_at_ms: event.received_at_ms,
            fields: if first {
                self.fields(event)
            } else {
                BTreeMap::new()
            },
            request: first.then(|| self.request(event, stored)),
            step,
        }
    }

    /// The key bodies are opened with.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }
}
