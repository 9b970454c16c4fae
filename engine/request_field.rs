//! Reading one named field of a request: a header, a path parameter, a query parameter, a form
//! field or a JSON pointer into the body. Tenant lookup (`verify.*.tenant.key`) and rate-limit
//! keys (`rate_limit.key`) name fields the same way.
//!
//! A JSON pointer is read by streaming through the body ([`json_pointer`]): only the value at the
//! pointer is built, the rest is skipped without allocating, so a dedupe key of three pointers
//! into a 2 KiB report costs three scans instead of a whole `serde_json::Value` tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::verify::KeySource;
use crate::verify::{Inbound, header};

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
}

impl<'a> Fields<'a> {
    pub fn new(req: &'a Inbound<'a>, params: &'a [(String, String)]) -> Fields<'a> {
        Fields { req, params }
    }

    /// One field (see [`extract`]).
    pub fn get(&self, source: &KeySource) -> Option<String> {
        let req = self.req;
        let id = match source {
            KeySource::Header(h) => header(req.headers, h).map(str::to_string),
            KeySource::Form(f) => form_urlencoded::parse(req.body)
                .find(|(k, _)| k == f.as_str())
                .map(|(_, v)| v.into_owned()),
            KeySource::Json(ptr) => match json_pointer(req.body, ptr)? {
                serde_json::Value::String(s) => Some(s),
                n @ serde_json::Value::Number(_) => Some(n.to_string()),
                _ => None,
            },
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
        id.filter(|s| !s.is_empty() && s.len() <= 256)
    }

    /// Every field of `sources` joined with `sep`; None when one is absent.
    pub fn join(&self, sources: &[KeySource], sep: &str) -> Option<String> {
        let parts: Option<Vec<String>> = sources.iter().map(|f| self.get(f)).collect();
        parts.map(|p| p.join(sep))
    }
}

/// The value at the JSON pointer `ptr` (RFC 6901, as `serde_json::Value::pointer` reads it) in
/// the JSON document `body`; `None` when the body is not JSON or nothing is there. Streams through
/// the body once: only the value found is built.
pub fn json_pointer(body: &[u8], ptr: &str) -> Option<serde_json::Value> {
    if !ptr.is_empty() && !ptr.starts_with('/') {
        return None;
    }
    let segments: Vec<String> = ptr
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = At(&segments).deserialize(&mut de).ok()?;
    // the rest must be whitespace, as for a whole parse
    de.end().ok()?;
    found
}

/// Walks toward the value at the remaining segments; everything else is skipped.
struct At<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            return serde::Deserialize::deserialize(d).map(Some);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar where the pointer goes on: nothing there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (first, rest) = self.0.split_first().expect("a segment is left");
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(first))? {
            if hit {
                // a repeated key: the last one wins, as in a parsed `Value`
                found = map.next_value_seed(At(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (first, rest) = self.0.split_first().expect("a segment is left");
        // RFC 6901 indexes: digits, no leading zero (serde_json's rule)
        let index = (!first.starts_with('+') && (first == "0" || !first.starts_with('0')))
            .then(|| first.parse::<usize>().ok())
            .flatten();
        let mut found = None;
        let mut i = 0;
        loop {
            if Some(i) == index {
                match seq.next_element_seed(At(rest))? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

/// Whether an object key equals the segment, compared without copying the key.
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

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
}
