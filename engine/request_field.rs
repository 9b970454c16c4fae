//! Reading one named field of a request: a header, a path parameter, a query parameter, a form
//! field or a JSON pointer into the body. Tenant lookup (`verify.*.tenant.key`) and rate-limit
//! keys (`rate_limit.key`) name fields the same way.
//!
//! JSON pointers are read by streaming through the body ([`json_pointers`]): only the values at
//! the pointers are built, the rest is skipped without allocating, so a dedupe key of three
//! pointers into a 2 KiB report costs one scan instead of a whole `serde_json::Value` tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::verify::KeySource;
use salvo::http::HeaderMap;

/// A header value as text (`None` when absent or not visible ASCII).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The parts of a request that verifiers and named fields read.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a str,
    /// The URL as the provider addressed it (public scheme and host), with the query string.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    /// The raw body, exactly as received.
    pub body: &'a [u8],
    /// Seconds since the epoch (injected, so tests control the clock).
    pub now: i64,
}

/// The value of a request field: a tenant id, or a part of a rate-limit key. Empty values and
/// values over 256 characters count as absent.
pub fn extract(
    source: &KeySource,
    req: &Inbound<'_>,
    params: &[(String, String)],
) -> Option<String> {
    Fields::new(req, params).get(source)
}

/// The fields of one request, read for several sources (a dedupe key, an event id, a rate-limit
/// key).
pub struct Fields<'a> {
    req: &'a Inbound<'a>,
    params: &'a [(String, String)],
    /// Values of JSON pointers read ahead in one pass ([`Fields::reading`]).
    read: Vec<(&'a str, Option<serde_json::Value>)>,
}

impl<'a> Fields<'a> {
    pub fn new(req: &'a Inbound<'a>, params: &'a [(String, String)]) -> Fields<'a> {
        Fields {
            req,
            params,
            read: Vec::new(),
        }
    }

    /// The same, with the values at `pointers` (every JSON field a route reads: its dedupe key,
    /// rate-limit key, `respond.when` field, ...) read now in one pass through the body, instead
    /// of a pass per use.
    pub fn reading(
        req: &'a Inbound<'a>,
        params: &'a [(String, String)],
        pointers: &'a [String],
    ) -> Fields<'a> {
        let ptrs: Vec<&str> = pointers.iter().map(String::as_str).collect();
        let values = match ptrs.is_empty() {
            true => Vec::new(),
            // not JSON: every pointer reads nothing, as a pass of its own would find
            false => json_pointers(req.body, &ptrs).unwrap_or_else(|| vec![None; ptrs.len()]),
        };
        Fields {
            req,
            params,
            read: ptrs.into_iter().zip(values).collect(),
        }
    }

    /// The value at a JSON pointer: read ahead, or a pass of its own.
    fn json(&self, ptr: &str) -> Option<serde_json::Value> {
        match self.read.iter().find(|(p, _)| *p == ptr) {
            Some((_, v)) => v.clone(),
            None => json_pointer(self.req.body, ptr),
        }
    }

    /// One field (see [`extract`]).
    pub fn get(&self, source: &KeySource) -> Option<String> {
        let req = self.req;
        let id = match source {
            KeySource::Header(h) => header(req.headers, h).map(str::to_string),
            KeySource::Form(f) => form_urlencoded::parse(req.body)
                .find(|(k, _)| k == f.as_str())
                .map(|(_, v)| v.into_owned()),
            KeySource::Json(ptr) => self.json(ptr).and_then(key_text),
            KeySource::Path(p) => self
                .params
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.clone()),
            KeySource::Query(q) => req.url.split_once('?').and_then(|(_, qs)| {
                form_urlencoded::parse(qs.as_bytes())
                    .find(|(k, _)| k == q.as_str())
                    .map(|(_, v)| v.into_owned())
            }),
        };
        id.filter(|s| usable(s))
    }

    /// Every field of `sources` joined with `sep`; None when one is absent. Read through
    /// [`Fields::reading`] with the sources' pointers (as the request path does, `Route::json_fields`),
    /// the body is not passed through again.
    pub fn join(&self, sources: &[KeySource], sep: &str) -> Option<String> {
        let parts: Option<Vec<String>> = sources.iter().map(|s| self.get(s)).collect();
        Some(parts?.join(sep))
    }
}

/// A JSON value as a key part (and as a `when` field compares it): strings as they are, numbers
/// as JSON writes them.
pub(crate) fn key_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        n @ serde_json::Value::Number(_) => Some(n.to_string()),
        _ => None,
    }
}

/// Empty values and values over 256 characters count as absent.
fn usable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256
}

/// The value at the JSON pointer `ptr` (RFC 6901, as `serde_json::Value::pointer` reads it) in
/// the JSON document `body`; `None` when the body is not JSON or nothing is there.
pub fn json_pointer(body: &[u8], ptr: &str) -> Option<serde_json::Value> {
    json_pointers(body, &[ptr])?.pop().flatten()
}

/// The values at several JSON pointers, in one pass through `body`: only the values found are
/// built, everything else is skipped without allocating. `None` when the body is not JSON (with
/// nothing but whitespace after it, as for a whole parse).
pub fn json_pointers(body: &[u8], ptrs: &[&str]) -> Option<Vec<Option<serde_json::Value>>> {
    JsonPointers::new(ptrs).read(body)
}

/// Whether `p` is a JSON pointer (RFC 6901): `""` is the whole document; anything else starts
/// with `/`.
pub fn is_pointer(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

/// JSON pointers split into their segments once, to be read from many bodies ([`json_pointers`]
/// splits them on every call): a transform step's `when` field and `map`.
#[derive(Debug, Clone)]
pub struct JsonPointers {
    texts: Vec<String>,
    /// Each pointer's unescaped segments; `None` for text that is no pointer (reads nothing).
    segments: Vec<Option<Vec<String>>>,
}

impl JsonPointers {
    pub fn new(ptrs: &[&str]) -> JsonPointers {
        let segments = ptrs
            .iter()
            .map(|p| {
                is_pointer(p).then(|| {
                    p.split('/')
                        .skip(1)
                        .map(|s| s.replace("~1", "/").replace("~0", "~"))
                        .collect()
                })
            })
            .collect();
        JsonPointers {
            texts: ptrs.iter().map(|p| p.to_string()).collect(),
            segments,
        }
    }

    /// The value at each pointer in an already parsed document.
    pub fn read_value(&self, doc: &serde_json::Value) -> Vec<Option<serde_json::Value>> {
        self.texts.iter().map(|p| doc.pointer(p).cloned()).collect()
    }

    /// The value at each pointer, in one pass through `body`; `None` when it is not JSON.
    pub fn read(&self, body: &[u8]) -> Option<Vec<Option<serde_json::Value>>> {
        let wants = self
            .segments
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                Some(Want {
                    slot,
                    rest: s.as_deref()?,
                })
            })
            .collect();
        let mut out = vec![None; self.segments.len()];
        let mut de = serde_json::Deserializer::from_slice(body);
        Walk {
            wants,
            out: &mut out,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        Some(out)
    }
}

/// A pointer still being followed: its slot in the output and the segments left.
#[derive(Clone, Copy)]
struct Want<'p> {
    slot: usize,
    rest: &'p [String],
}

/// Walks one value toward every pointer that leads into it, writing what it finds to `out`.
struct Walk<'o, 'p> {
    wants: Vec<Want<'p>>,
    out: &'o mut [Option<serde_json::Value>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.wants.iter().any(|w| w.rest.is_empty()) {
            // a pointer ends here: build this value and answer every pointer into it from it
            let v: serde_json::Value = serde::Deserialize::deserialize(d)?;
            // pointers going deeper copy what they find; the value itself is moved to the last
            // pointer ending here (a 2 KiB transcript is not built twice), copied to the others
            let last = self.wants.iter().rposition(|w| w.rest.is_empty());
            for (i, w) in self.wants.iter().enumerate() {
                if Some(i) != last {
                    self.out[w.slot] = follow(&v, w.rest).cloned();
                }
            }
            if let Some(i) = last {
                self.out[self.wants[i].slot] = Some(v);
            }
            return Ok(());
        }
        d.deserialize_any(self)
    }
}

/// `segments` from `v`, as `serde_json::Value::pointer` follows them.
fn follow<'v>(v: &'v serde_json::Value, segments: &[String]) -> Option<&'v serde_json::Value> {
    segments.iter().try_fold(v, |v, s| match v {
        serde_json::Value::Object(m) => m.get(s),
        serde_json::Value::Array(a) => a.get(array_index(s)?),
        _ => None,
    })
}

/// An RFC 6901 array index: digits, no leading zero (serde_json's rule).
fn array_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() > 1) {
        return None;
    }
    s.parse().ok()
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar where the pointers go on: nothing there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk { wants, out } = self;
        while let Some(next) = map.next_key_seed(KeyMatch(&wants))? {
            if next.is_empty() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            // a repeated key: the last one wins, as in a parsed `Value`
            for w in &next {
                out[w.slot] = None;
            }
            map.next_value_seed(Walk {
                wants: next,
                out: &mut *out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk { wants, out } = self;
        let indexes: Vec<Option<usize>> = wants.iter().map(|w| array_index(&w.rest[0])).collect();
        let mut i = 0;
        loop {
            let next: Vec<Want> = wants
                .iter()
                .zip(&indexes)
                .filter(|(_, index)| **index == Some(i))
                .map(|(w, _)| Want {
                    slot: w.slot,
                    rest: &w.rest[1..],
                })
                .collect();
            let more = if next.is_empty() {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Walk {
                    wants: next,
                    out: &mut *out,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// The pointers whose next segment is this object key (with that segment taken), compared
/// without copying the key.
struct KeyMatch<'w, 'p>(&'w [Want<'p>]);

impl<'de, 'p> DeserializeSeed<'de> for KeyMatch<'_, 'p> {
    type Value = Vec<Want<'p>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for KeyMatch<'_, 'p> {
    type Value = Vec<Want<'p>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .iter()
            .filter(|w| w.rest[0] == key)
            .map(|w| Want {
                slot: w.slot,
                rest: &w.rest[1..],
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    /// Fields read ahead in one pass answer exactly as fields read one pass per use: every
    /// source kind, repeated keys (the last wins), pointers not read ahead, bodies not JSON.
    #[test]
    fn fields_read_ahead_answer_as_fields_read_one_by_one() {
        let h = HeaderMap::new();
        let params = [("p".to_string(), "v".to_string())];
        let ahead: Vec<String> = [
            "/message/type",
            "/message/call/id",
            "/n",
            "/missing",
            "/a/1",
        ]
        .map(String::from)
        .to_vec();
        let sources = [
            KeySource::Json("/message/type".into()),
            KeySource::Json("/message/call/id".into()),
            KeySource::Json("/message/timestamp".into()),
            KeySource::Json("/n".into()),
            KeySource::Json("/a/1".into()),
            KeySource::Path("p".into()),
        ];
        for body in [
            &br#"{"message":{"type":"x","call":{"id":"c1"},"timestamp":17},"n":2.5,"a":[1,"two"]}"#[..],
            br#"{"message":{"type":"first"},"message":{"type":"last","call":{"id":"c"},"timestamp":1},"n":1,"a":[0,0]}"#,
            br#"{"message":{"type":"x"}}"#,
            b"not json",
            b"",
        ] {
            let req = Inbound {
                method: "POST",
                url: "https://x/y",
                headers: &h,
                body,
                now: 0,
            };
            let (one_by_one, read) = (
                Fields::new(&req, &params),
                Fields::reading(&req, &params, &ahead),
            );
            for s in &sources {
                assert_eq!(one_by_one.get(s), read.get(s), "{s:?} in {body:?}");
            }
            assert_eq!(
                one_by_one.join(&sources, "|"),
                read.join(&sources, "|"),
                "{body:?}"
            );
            assert_eq!(
                one_by_one.join(&sources[..3], "|"),
                read.join(&sources[..3], "|"),
                "{body:?}"
            );
        }
    }

    #[test]
    fn fields() {
        let mut h = HeaderMap::new();
        h.insert("x-org", "org_1".parse().unwrap());
        let body = br#"{"message":{"call":{"orgId":"org_2"}}}"#;
        let req = Inbound {
            method: "POST",
            url: "https://x/y?t=org_3",
            headers: &h,
            body,
            now: 0,
        };
        let params = [("tenant".to_string(), "org_4".to_string())];
        assert_eq!(
            extract(&KeySource::Header("X-Org".into()), &req, &params).as_deref(),
            Some("org_1")
        );
        assert_eq!(
            extract(
                &KeySource::Json("/message/call/orgId".into()),
                &req,
                &params
            )
            .as_deref(),
            Some("org_2")
        );
        assert_eq!(
            extract(&KeySource::Query("t".into()), &req, &params).as_deref(),
            Some("org_3")
        );
        assert_eq!(
            extract(&KeySource::Path("tenant".into()), &req, &params).as_deref(),
            Some("org_4")
        );
        let form = Inbound {
            body: b"AccountSid=AC123&From=%2B1",
            ..req
        };
        assert_eq!(
            extract(&KeySource::Form("AccountSid".into()), &form, &params).as_deref(),
            Some("AC123")
        );
        assert_eq!(
            extract(&KeySource::Form("Nope".into()), &form, &params),
            None
        );
    }

    #[test]
    fn join_reads_every_field_and_needs_all_of_them() {
        let h = HeaderMap::new();
        let body = br#"{"message":{"type":"status-update","call":{"id":"c1"},"timestamp":17}}"#;
        let req = Inbound {
            method: "POST",
            url: "https://x/y",
            headers: &h,
            body,
            now: 0,
        };
        let fields = Fields::new(&req, &[]);
        let key = [
            KeySource::Json("/message/call/id".into()),
            KeySource::Json("/message/type".into()),
            KeySource::Json("/message/timestamp".into()),
        ];
        assert_eq!(
            fields.join(&key, "|").as_deref(),
            Some("c1|status-update|17")
        );
        let missing = [
            KeySource::Json("/message/call/id".into()),
            KeySource::Json("/message/nope".into()),
        ];
        assert_eq!(fields.join(&missing, "|"), None);
    }

    /// The streaming reader agrees with `serde_json::Value::pointer` on every pointer into real
    /// provider payloads (and on some that lead nowhere).
    #[test]
    fn json_pointer_agrees_with_a_whole_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/payloads");
        let mut checked = 0;
        for provider in std::fs::read_dir(dir).unwrap() {
            let provider = provider.unwrap().path();
            if !provider.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(provider).unwrap() {
                let path = file.unwrap().path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let body = std::fs::read(&path).unwrap();
                let whole: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut pointers = vec![String::new(), "/nope".into(), "/0".into()];
                collect_pointers(&whole, String::new(), &mut pointers);
                // all of them at once, in one pass
                let all: Vec<&str> = pointers.iter().map(String::as_str).collect();
                let at_once = json_pointers(&body, &all).unwrap();
                for (p, v) in all.iter().zip(&at_once) {
                    assert_eq!(v.as_ref(), whole.pointer(p), "{} at {p:?}", path.display());
                }
                for p in &pointers {
                    for p in [p.clone(), format!("{p}/missing"), format!("{p}/0")] {
                        assert_eq!(
                            json_pointer(&body, &p).as_ref(),
                            whole.pointer(&p),
                            "{} at {p:?}",
                            path.display()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 300, "only {checked} pointers checked");
    }

    fn collect_pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        let children: Vec<(String, &serde_json::Value)> = match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
                .collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => return,
        };
        for (k, child) in children {
            let p = format!("{at}/{k}");
            out.push(p.clone());
            collect_pointers(child, p, out);
        }
    }

    #[test]
    fn json_pointer_edge_cases() {
        let body = br#"{"a/b":{"m~n":[10,{"x":"y"}]},"d":1,"d":2,"s":"t\"u","e":""} "#;
        assert_eq!(
            json_pointer(body, "/a~1b/m~0n/0"),
            Some(serde_json::json!(10))
        );
        assert_eq!(
            json_pointer(body, "/a~1b/m~0n/1/x"),
            Some(serde_json::json!("y"))
        );
        assert_eq!(json_pointer(body, "/a~1b/m~0n/01"), None, "leading zero");
        assert_eq!(json_pointer(body, "/a~1b/m~0n/+1"), None);
        assert_eq!(json_pointer(body, "/a~1b/m~0n/2"), None);
        assert_eq!(
            json_pointer(body, "/d"),
            Some(serde_json::json!(2)),
            "last key wins"
        );
        assert_eq!(json_pointer(body, "/s"), Some(serde_json::json!("t\"u")));
        assert_eq!(json_pointer(body, "/d/x"), None, "into a number");
        assert_eq!(json_pointer(body, "/e"), Some(serde_json::json!("")));
        assert_eq!(json_pointer(body, "d"), None, "a pointer starts with /");
        // not JSON, or JSON with something after it: nothing, as a whole parse would give
        assert_eq!(json_pointer(br#"{"d":1} x"#, "/d"), None);
        assert_eq!(json_pointer(br#"{"d":1"#, "/d"), None);
        assert_eq!(json_pointer(br#"{"d":1,"z":[}"#, "/d"), None);
        assert_eq!(json_pointer(b"", "/d"), None);
    }

    #[test]
    fn json_pointers_in_one_pass() {
        let body = br#"{"a":{"x":1,"l":[5,6]},"b":"t","a":{"y":2,"l":[7]}}"#;
        let got = json_pointers(
            body,
            &["/a/x", "/a/y", "/a", "/b", "/a/l/0", "/a/l/1", "x", "/a/y"],
        );
        let whole: serde_json::Value = serde_json::from_slice(body).unwrap();
        let want: Vec<Option<serde_json::Value>> = ["/a/x", "/a/y", "/a", "/b", "/a/l/0", "/a/l/1"]
            .iter()
            .map(|p| whole.pointer(p).cloned())
            .chain([None, whole.pointer("/a/y").cloned()])
            .collect();
        assert_eq!(got, Some(want));
        // several pointers ending at one value, and one going on into it: the value is moved to
        // one of them, copied to the rest
        let ptrs = ["/a", "/a/b", "/a", "/s", "/s"];
        let body = br#"{"a":{"b":[1,{"c":"d"}]},"s":"long text"}"#;
        let whole: serde_json::Value = serde_json::from_slice(body).unwrap();
        let compiled = JsonPointers::new(&ptrs);
        for _ in 0..2 {
            let got = compiled.read(body).unwrap();
            let want: Vec<_> = ptrs.iter().map(|p| whole.pointer(p).cloned()).collect();
            assert_eq!(got, want);
        }
        assert_eq!(json_pointers(b"{", &["/a"]), None);
        assert_eq!(json_pointers(b"[1]", &[]), Some(vec![]));
    }
}
