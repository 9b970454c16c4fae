//! What a script sees as `event`: a read-only map built from the request the engine received.
//!
//! ```text
//! event.id            the event id (the provider's, or minted once at ingest)
//! event.pipeline      the pipeline name
//! event.received_at   RFC 3339 time the request arrived; event.received_at_ms the same in ms
//! event.method, event.path
//! event.query         query parameters (repeated names: arrays)
//! event.headers       request headers, names lower-cased
//! event.params        path parameters
//! event.tenant        the tenant id, when the pipeline names one
//! event.vars          the pipeline's `vars`
//! event.body          JSON bodies as maps/arrays; form bodies as a map (repeated names: arrays);
//!                     anything else as text
//! ```

use bytes::Bytes;
use rhai::{Dynamic, Map};

/// The request as the queue keeps it: everything a script may read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventInput {
    pub id: String,
    pub pipeline: String,
    pub received_at_ms: i64,
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub params: Vec<(String, String)>,
    pub tenant: Option<String>,
    /// Base64 inside the JSON of the full form (retries, old entries); absent from the stored
    /// form's `e` field, whose body is stored raw beside it ([`EventInput::stored_meta`]).
    #[serde(default, with = "body_base64")]
    pub body: Bytes,
    /// The W3C `traceparent` of the request's span while tracing is on (`ops::trace`): a
    /// worker continues the event's trace from it, in whatever process and however late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// The archive's index fields (the pipeline's `archive.index`), when the request path read
    /// them in the pass it makes over the body anyway: the worker's archive then takes them as
    /// they are instead of reading the body a second time (`archive::Recorder::note`). Not seen
    /// by scripts. The archive keeps them in a column of their own; the archived request, the
    /// queue's own text of the event where it keeps one, may carry them too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<std::collections::BTreeMap<String, String>>,
}

/// Every field of an [`EventInput`] but the body: the `e` field of a stored queue entry, whose
/// raw body is the `b` field beside it.
#[derive(serde::Serialize)]
struct Meta<'a> {
    id: &'a str,
    pipeline: &'a str,
    received_at_ms: i64,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    params: &'a [(String, String)],
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a std::collections::BTreeMap<String, String>>,
}

mod body_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// A body sent as JSON that is not JSON: the event fails permanently (a retry sends the same).
#[derive(Debug, thiserror::Error)]
#[error("the body is not valid JSON")]
pub struct NotJson(#[source] serde_json::Error);

impl EventInput {
    /// The stored form's JSON: the event without its body.
    pub fn stored_meta(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.meta(self.index.as_ref()))
    }

    /// The archived request's JSON when the queue kept no text of the event to reuse
    /// (`queue::Delivery::stored`): the stored form without the index fields (the archive keeps
    /// those in a column of their own).
    pub fn archived_meta(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.meta(None))
    }

    fn meta<'a>(
        &'a self,
        index: Option<&'a std::collections::BTreeMap<String, String>>,
    ) -> Meta<'a> {
        Meta {
            id: &self.id,
            pipeline: &self.pipeline,
            received_at_ms: self.received_at_ms,
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            params: &self.params,
            tenant: self.tenant.as_deref(),
            trace: self.trace.as_deref(),
            index,
        }
    }

    /// An event read back from a queue entry: `e` in either form (without a body, or the full
    /// form with a base64 body), and the raw body `b` when the entry has one (it wins).
    pub fn from_stored(e: &[u8], b: Option<Vec<u8>>) -> Option<EventInput> {
        let mut event: EventInput = serde_json::from_slice(e).ok()?;
        if let Some(body) = b {
            event.body = Bytes::from(body);
        }
        Some(event)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase()
    }

    /// Whether scripts see the body as JSON: a JSON content type, or none and a body that
    /// starts like an object.
    pub fn is_json(&self) -> bool {
        self.is_json_typed(&self.content_type())
    }

    /// [`EventInput::is_json`] with the lower-cased content type already read.
    fn is_json_typed(&self, ct: &str) -> bool {
        ct.contains("json") || (ct.is_empty() && self.body.first() == Some(&b'{'))
    }

    /// A header, query parameter, path parameter or form field of the event (a `when` field of a
    /// transform step); JSON fields are read with the step's other pointers.
    pub fn field(&self, source: &crate::config::verify::KeySource) -> Option<String> {
        use crate::config::verify::KeySource;
        let pair = |pairs: form_urlencoded::Parse<'_>, name: &str| {
            pairs
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        match source {
            KeySource::Header(name) => self.header(name).map(str::to_string),
            KeySource::Query(name) => pair(form_urlencoded::parse(self.query.as_bytes()), name),
            KeySource::Path(name) => self
                .params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            KeySource::Form(name) => self
                .content_type()
                .starts_with("application/x-www-form-urlencoded")
                .then(|| pair(form_urlencoded::parse(&self.body), name))
                .flatten(),
            KeySource::Json(ptr) => {
                crate::request_field::key_text(crate::request_field::json_pointer(&self.body, ptr)?)
            }
        }
    }

    /// The body as a script sees it. A JSON content type whose body is not JSON is an error.
    pub fn parsed_body(&self) -> Result<Dynamic, NotJson> {
        let ct = self.content_type();
        if self.is_json_typed(&ct) {
            // Straight into Rhai values: one pass, no intermediate `serde_json::Value`.
            return serde_json::from_slice::<Json>(&self.body)
                .map(|j| j.0)
                .map_err(NotJson);
        }
        if ct.starts_with("application/x-www-form-urlencoded") {
            return Ok(Dynamic::from_map(multi_map(form_urlencoded::parse(
                &self.body,
            ))));
        }
        Ok(Dynamic::from(
            String::from_utf8_lossy(&self.body).into_owned(),
        ))
    }

    /// The `event` map, with `body` given (it may have been reshaped by an earlier step).
    pub fn to_dynamic(&self, body: Dynamic, vars: &Dynamic) -> Dynamic {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("pipeline".into(), self.pipeline.clone().into());
        m.insert(
            "received_at".into(),
            super::sandbox::format_time(self.received_at_ms).into(),
        );
        m.insert(
            "received_at_ms".into(),
            Dynamic::from_int(self.received_at_ms),
        );
        m.insert("method".into(), self.method.clone().into());
        m.insert("path".into(), self.path.clone().into());
        m.insert(
            "query".into(),
            Dynamic::from_map(multi_map(form_urlencoded::parse(self.query.as_bytes()))),
        );
        let mut headers = Map::new();
        for (k, v) in &self.headers {
            headers.insert(k.to_ascii_lowercase().into(), v.clone().into());
        }
        m.insert("headers".into(), Dynamic::from_map(headers));
        let mut params = Map::new();
        for (k, v) in &self.params {
            params.insert(k.as_str().into(), v.clone().into());
        }
        m.insert("params".into(), Dynamic::from_map(params));
        m.insert(
            "tenant".into(),
            self.tenant.clone().map_or(Dynamic::UNIT, Dynamic::from),
        );
        m.insert("vars".into(), vars.clone());
        m.insert("body".into(), body);
        Dynamic::from_map(m)
    }
}

/// Name/value pairs as a map; a repeated name becomes an array of its values.
fn multi_map<'a>(
    pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
) -> Map {
    let mut m = Map::new();
    for (k, v) in pairs {
        let v = Dynamic::from(v.into_owned());
        match m.get_mut(k.as_ref()) {
            None => {
                m.insert(k.as_ref().into(), v);
            }
            Some(existing) if existing.is_array() => {
                if let Some(mut arr) = existing.write_lock::<rhai::Array>() {
                    arr.push(v);
                }
            }
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Dynamic::from_array(vec![first, v]);
            }
        }
    }
    m
}

/// An event for unit tests: a POST to `/x?a=1&a=2&b=3` with `content_type` and `body`.
#[cfg(test)]
pub(crate) fn sample(content_type: &str, body: &str) -> EventInput {
    EventInput {
        id: "evt_1".into(),
        pipeline: "p".into(),
        received_at_ms: 1_700_000_000_000,
        method: "POST".into(),
        path: "/x".into(),
        query: "a=1&a=2&b=3".into(),
        headers: vec![("Content-Type".into(), content_type.into())],
        params: vec![],
        tenant: None,
        trace: None,
        index: None,
        body: Bytes::from(body.to_string()),
    }
}

/// A JSON value read straight into a Rhai value. Rhai's own `Deserialize for Dynamic` builds each
/// object as a `BTreeMap` and then converts it into another (`Map::from_iter`: every object's
/// keys sorted and its values re-wrapped a second time); this visitor builds each map once, its
/// keys taken from the input without an intermediate `String` where the JSON has no escapes.
/// Numbers as Rhai reads them: integers that fit `i64` as integers, the rest as floats.
struct Json(Dynamic);

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::from_bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Dynamic, E> {
        Ok(i64::try_from(v).map_or_else(|_| Dynamic::from_float(v as f64), Dynamic::from_int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::from_float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::from(rhai::ImmutableString::from(v)))
    }

    fn visit_string<E>(self, v: String) -> Result<Dynamic, E> {
        Ok(Dynamic::from(v))
    }

    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut arr = rhai::Array::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Json(v)) = seq.next_element()? {
            arr.push(v);
        }
        Ok(Dynamic::from_array(arr))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Dynamic, A::Error> {
        let mut m = Map::new();
        while let Some(MapKey(k)) = map.next_key()? {
            let Json(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Dynamic::from_map(m))
    }
}

/// An object key as a Rhai map key, borrowed from the input where it can be.
struct MapKey(rhai::Identifier);

impl<'de> serde::Deserialize<'de> for MapKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MapKey, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = MapKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, v: &str) -> Result<MapKey, E> {
                Ok(MapKey(v.into()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body reader gives what Rhai's own deserializer gives, value for value.
    #[test]
    fn json_bodies_read_as_rhai_reads_them() {
        for text in [
            r#"{"message":{"type":"end-of-call-report","call":{"id":"c1","cost":0.0125},"n":3}}"#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":1.5e300,"z":0}"#,
            r#"{"esc":"a\"b\\c\n\u00e9\ud83d\ude00","k\u00e9y":true,"nil":null}"#,
            r#"{"arr":[1,"two",[3,{"four":4}],{},[]],"dup":1,"dup":2}"#,
            r#"[1,2,3]"#,
            r#""just a string""#,
            r#"42"#,
        ] {
            let ours = serde_json::from_slice::<Json>(text.as_bytes()).unwrap().0;
            let rhai: Dynamic = serde_json::from_str(text).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{rhai:?}"), "{text}");
            assert_eq!(ours.type_name(), rhai.type_name(), "{text}");
        }
        for bad in ["{", r#"{"a":}"#, "[1,]", "nul"] {
            assert!(
                serde_json::from_slice::<Json>(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bodies() {
        let f = sample(
            "application/x-www-form-urlencoded",
            "MediaUrl=a&MediaUrl=b&From=%2B1",
        );
        let body = f.parsed_body().unwrap();
        let map = body.read_lock::<Map>().unwrap();
        assert_eq!(map["From"].to_string(), "+1");
        assert_eq!(map["MediaUrl"].clone().into_array().unwrap().len(), 2);
        let j = sample("application/json", r#"{"message":{"type":"x"}}"#)
            .parsed_body()
            .unwrap();
        assert!(j.is_map());
        assert!(
            crate::diagnostics::chain(
                &sample("application/json", "{nope")
                    .parsed_body()
                    .unwrap_err()
            )
            .starts_with("the body is not valid JSON: key must be a string")
        );
        assert_eq!(
            sample("text/plain", "hi")
                .parsed_body()
                .unwrap()
                .to_string(),
            "hi"
        );
    }

    #[test]
    fn event_map() {
        let e = sample("text/plain", "hi");
        let d = e.to_dynamic(Dynamic::from("hi"), &Dynamic::from_map(Map::new()));
        let m = d.read_lock::<Map>().unwrap();
        assert_eq!(m["received_at"].to_string(), "2023-11-14T22:13:20.000Z");
        assert_eq!(
            m["headers"].read_lock::<Map>().unwrap()["content-type"].to_string(),
            "text/plain"
        );
        assert!(m["query"].read_lock::<Map>().unwrap()["a"].is_array());
    }

    #[test]
    fn queue_serialization_roundtrip() {
        let e = sample("application/octet-stream", "\u{0}\u{ff} bytes");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<EventInput>(&json).unwrap(), e);
    }
}
