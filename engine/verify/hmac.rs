//! Generic HMAC signatures, for any provider: a signature header (with optional prefix, hex or
//! base64) over a payload template such as `{timestamp}.{body}`. Vapi's HMAC credential is this
//! scheme with Vapi's defaults.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::mac;
use super::{Inbound, Reject, Scheme, header};
use crate::config::verify::{Algorithm, Encoding, SecretEncoding};

/// One piece of a payload template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Body,
    Timestamp,
    Id,
    Method,
    Url,
    Header(String),
}

/// A parsed payload template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

/// What is wrong with a payload template as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a `{{` in the payload template is not closed")]
    Unclosed,
    #[error(
        "unknown placeholder `{{{0}}}` in the payload template; use {{body}}, {{timestamp}}, {{id}}, {{method}}, {{url}} or {{header:NAME}}"
    )]
    Unknown(String),
}

impl Template {
    /// Parse `{body}`, `{timestamp}`, `{id}`, `{method}`, `{url}`, `{header:NAME}` and literal text.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "body" => Part::Body,
                "timestamp" => Part::Timestamp,
                "id" => Part::Id,
                "method" => Part::Method,
                "url" => Part::Url,
                h if h.starts_with("header:") && h.len() > 7 => {
                    Part::Header(h[7..].to_ascii_lowercase())
                }
                other => return Err(TemplateError::Unknown(other.to_string())),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template(parts))
    }

    fn uses(&self, p: &Part) -> bool {
        self.0.contains(p)
    }

    /// Whether `{timestamp}` is signed.
    pub fn signs_timestamp(&self) -> bool {
        self.uses(&Part::Timestamp)
    }
}

pub struct HmacScheme {
    pub algorithm: Algorithm,
    pub header: String,
    pub prefix: String,
    pub encoding: Encoding,
    pub secret_encoding: SecretEncoding,
    pub payload: Template,
    pub timestamp_header: Option<String>,
    pub id_header: Option<String>,
    pub tolerance: u64,
}

impl HmacScheme {
    fn render(
        &self,
        req: &Inbound<'_>,
        timestamp: Option<&str>,
        id: Option<&str>,
    ) -> Result<Vec<u8>, Reject> {
        let mut out = Vec::with_capacity(req.body.len() + 64);
        for part in &self.payload.0 {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Body => out.extend_from_slice(req.body),
                Part::Timestamp => {
                    out.extend_from_slice(timestamp.ok_or(Reject::MissingCredentials)?.as_bytes())
                }
                Part::Id => out.extend_from_slice(id.ok_or(Reject::MissingCredentials)?.as_bytes()),
                Part::Method => out.extend_from_slice(req.method.as_bytes()),
                Part::Url => out.extend_from_slice(req.url.as_bytes()),
                Part::Header(h) => out.extend_from_slice(
                    header(req.headers, h)
                        .ok_or(Reject::MissingCredentials)?
                        .as_bytes(),
                ),
            }
        }
        Ok(out)
    }

    fn timestamp<'a>(&self, req: &'a Inbound<'_>) -> Result<Option<&'a str>, Reject> {
        match &self.timestamp_header {
            None => Ok(None),
            Some(h) => {
                let ts = header(req.headers, h).ok_or(Reject::MissingCredentials)?;
                mac::fresh(mac::parse_timestamp(ts)?, req.now, self.tolerance)?;
                Ok(Some(ts.trim()))
            }
        }
    }

    fn id<'a>(&self, req: &'a Inbound<'_>) -> Option<&'a str> {
        self.id_header
            .as_deref()
            .and_then(|h| header(req.headers, h))
    }
}

impl Scheme for HmacScheme {
    fn key(&self, secret: &str) -> Result<Vec<u8>, super::KeyError> {
        match self.secret_encoding {
            SecretEncoding::Utf8 => Ok(secret.as_bytes().to_vec()),
            SecretEncoding::Base64 => STANDARD
                .decode(secret.trim())
                .map_err(|_| super::KeyError::NotBase64),
        }
    }

    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let value = header(req.headers, &self.header).ok_or(Reject::MissingCredentials)?;
        let sig = value
            .trim()
            .strip_prefix(self.prefix.as_str())
            .ok_or(Reject::MalformedHeader)?;
        let given = mac::decode(self.encoding, sig).ok_or(Reject::MalformedHeader)?;
        let ts = self.timestamp(req)?;
        let payload = self.render(req, ts, self.id(req))?;
        let expected = mac::compute(self.algorithm, key, &[&payload]);
        mac::matches(&given, &expected)
    }

    fn credential_headers(&self) -> Vec<String> {
        vec![self.header.clone()]
    }
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        let now = req.now.to_string();
        let ts = if self.timestamp_header.is_some() || self.payload.uses(&Part::Timestamp) {
            if let Some(h) = &self.timestamp_header {
                headers.push((h.clone(), now.clone()));
            }
            Some(now.as_str())
        } else {
            None
        };
        let Ok(payload) = self.render(req, ts, self.id(req)) else {
            return headers;
        };
        let sig = mac::compute(self.algorithm, key, &[&payload]);
        headers.push((
            self.header.clone(),
            format!("{}{}", self.prefix, mac::encode(self.encoding, &sig)),
        ));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    fn vapi_defaults() -> HmacScheme {
        HmacScheme {
            algorithm: Algorithm::Sha256,
            header: "x-signature".into(),
            prefix: String::new(),
            encoding: Encoding::Hex,
            secret_encoding: SecretEncoding::Utf8,
            payload: Template::parse("{timestamp}.{body}").unwrap(),
            timestamp_header: Some("x-timestamp".into()),
            id_header: None,
            tolerance: 300,
        }
    }

    #[test]
    fn vapi_style_vector() {
        // printf '1700000000.{"message":{"type":"status-update"}}' | openssl dgst -sha256 -hmac vapi-hmac-secret
        let mut h = HeaderMap::new();
        h.insert(
            "x-signature",
            "8a47ddf4e7d581ad5b780282fc110a687dee44522ab7977bbde81daee281df33"
                .parse()
                .unwrap(),
        );
        h.insert("x-timestamp", "1700000000".parse().unwrap());
        let body: &[u8] = br#"{"message":{"type":"status-update"}}"#;
        let s = vapi_defaults();
        let req = Inbound {
            method: "POST",
            url: "",
            headers: &h,
            body,
            now: 1_700_000_010,
        };
        assert_eq!(s.check(&req, b"vapi-hmac-secret"), Ok(()));
        let stale = Inbound {
            now: 1_700_001_000,
            ..req
        };
        assert_eq!(
            s.check(&stale, b"vapi-hmac-secret"),
            Err(Reject::StaleTimestamp)
        );
    }

    #[test]
    fn github_style_prefix_and_sign_roundtrip() {
        let s = HmacScheme {
            prefix: "sha256=".into(),
            header: "x-sig".into(),
            payload: Template::parse("{method} {url}\n{header:x-id}\n{body}").unwrap(),
            timestamp_header: None,
            ..vapi_defaults()
        };
        let mut h = HeaderMap::new();
        h.insert("x-id", "42".parse().unwrap());
        let body: &[u8] = b"payload";
        let req = Inbound {
            method: "POST",
            url: "https://x/y",
            headers: &h,
            body,
            now: 5,
        };
        for (k, v) in s.sign(&req, b"k") {
            h.insert(
                salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = Inbound {
            method: "POST",
            url: "https://x/y",
            headers: &h,
            body,
            now: 5,
        };
        assert_eq!(s.check(&req, b"k"), Ok(()));
        assert_eq!(
            s.check(
                &Inbound {
                    method: "PUT",
                    ..req
                },
                b"k"
            ),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn templates() {
        assert!(Template::parse("{timestamp}.{body}").is_ok());
        let nope = Template::parse("{nope}").unwrap_err();
        assert_eq!(nope, TemplateError::Unknown("nope".into()));
        assert!(nope.to_string().contains("unknown placeholder `{nope}`"));
        assert_eq!(Template::parse("{body"), Err(TemplateError::Unclosed));
        assert_eq!(
            TemplateError::Unclosed.to_string(),
            "a `{` in the payload template is not closed"
        );
    }

    #[test]
    fn base64_secret() {
        let s = HmacScheme {
            secret_encoding: SecretEncoding::Base64,
            ..vapi_defaults()
        };
        assert_eq!(s.key("aGVsbG8=").unwrap(), b"hello");
        assert!(s.key("***").is_err());
    }
}
