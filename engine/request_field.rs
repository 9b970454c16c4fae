//! Reading one named field of a request: a header, a path parameter, a query parameter, a form
//! field or a JSON pointer into the body. Tenant lookup (`verify.*.tenant.key`) and rate-limit
//! keys (`rate_limit.key`) name fields the same way.

use std::cell::OnceCell;

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
/// key): a JSON body is parsed once for all of them, not once per field.
pub struct Fields<'a> {
    req: &'a Inbound<'a>,
    params: &'a [(String, String)],
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> Fields<'a> {
    pub fn new(req: &'a Inbound<'a>, params: &'a [(String, String)]) -> Fields<'a> {
        Fields {
            req,
            params,
            json: OnceCell::new(),
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
            KeySource::Json(ptr) => {
                let body = self
                    .json
                    .get_or_init(|| serde_json::from_slice(req.body).ok());
                match body.as_ref()?.pointer(ptr)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    n @ serde_json::Value::Number(_) => Some(n.to_string()),
                    _ => None,
                }
            }
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
}
