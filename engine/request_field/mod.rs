//! Reading one named field of a request: a header, a path parameter, a query parameter, a form
//! field or a JSON pointer into the body. Tenant lookup (`verify.*.tenant.key`) and rate-limit
//! keys (`rate_limit.key`) name fields the same way.
//!
//! JSON pointers are read by streaming through the body (`pointers`, [`JsonPointers`]): only the
//! values at the pointers are built, the rest is skipped without allocating, so a dedupe key of
//! three pointers into a 2 KiB report costs one scan instead of a whole `serde_json::Value` tree.

mod pointers;

pub use pointers::{JsonPointers, is_pointer, json_pointer, json_pointers};

use crate::config::verify::KeySource;
use salvo::http::HeaderMap;

/// A header value as text (`None` when absent or not visible ASCII).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name` among the request's `Cookie` headers (the console's session, an
/// OAuth flow's browser binding).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(salvo::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
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
    RequestFields::new(req, params).get(source)
}

/// The fields of one request, read for several sources (a dedupe key, an event id, a rate-limit
/// key).
pub struct RequestFields<'a> {
    req: &'a Inbound<'a>,
    params: &'a [(String, String)],
    /// Values of JSON pointers read ahead in one pass ([`RequestFields::reading`]).
    read: Vec<(&'a str, Option<serde_json::Value>)>,
}

impl<'a> RequestFields<'a> {
    pub fn new(req: &'a Inbound<'a>, params: &'a [(String, String)]) -> RequestFields<'a> {
        RequestFields {
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
        pointers: &'a JsonPointers,
    ) -> RequestFields<'a> {
        let texts = pointers.texts();
        let values = match texts.is_empty() {
            true => Vec::new(),
            // not JSON: every pointer reads nothing, as a pass of its own would find
            false => pointers
                .read(req.body)
                .unwrap_or_else(|| vec![None; texts.len()]),
        };
        RequestFields {
            req,
            params,
            read: texts.iter().map(String::as_str).zip(values).collect(),
        }
    }

    /// The value at a JSON pointer: read ahead, or a pass of its own.
    pub fn json(&self, ptr: &str) -> Option<serde_json::Value> {
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
    /// [`RequestFields::reading`] with the sources' pointers (as the request path does, `Route::json_fields`),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; engine_console=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "engine_console"), Some("xyz"));
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "engine_console"), None);
        assert_eq!(cookie(&h, "b"), Some("2"));
    }
    use salvo::http::HeaderMap;

    /// A POST to `url` with `headers` and `body`.
    fn inbound<'a>(headers: &'a HeaderMap, url: &'a str, body: &'a [u8]) -> Inbound<'a> {
        Inbound {
            method: "POST",
            url,
            headers,
            body,
            now: 0,
        }
    }

    /// RequestFields read ahead in one pass answer exactly as fields read one pass per use: every
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
        let compiled = JsonPointers::new(&ahead.iter().map(String::as_str).collect::<Vec<_>>());
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
            let req = inbound(&h, "https://x/y", body);
            let (one_by_one, read) = (
                RequestFields::new(&req, &params),
                RequestFields::reading(&req, &params, &compiled),
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
        let req = inbound(&h, "https://x/y?t=org_3", body);
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
        let req = inbound(&h, "https://x/y", body);
        let fields = RequestFields::new(&req, &[]);
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
}
