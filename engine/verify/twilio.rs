//! Twilio: `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, URL + sorted form parameters)).
//!
//! The URL is the public one Twilio requested (`https://api.example.com/api/twilio/sms?x=1`),
//! which the caller builds from `BACKEND_URL` or trusted forwarding headers. Parameters are sorted
//! by name and, for a repeated name, by value, and appended as `name` + `value`. A JSON body is
//! signed differently: the URL carries `bodySHA256=<hex sha256 of the body>` and only the URL is
//! signed, so both the hash and the signature are checked.
//!
//! Which URL Twilio signed is not always the one that arrived, so like its SDKs the engine tries
//! the forms they try ([`url_candidates`]), each in constant time: the URL as received, as the
//! WHATWG URL parser normalises it (twilio-node: `new URL()`, which percent-encodes e.g. `'` in
//! the query), and with the query re-encoded as Node's legacy `querystring` does; each without
//! its port and with it (the default port added when there is none). All are spellings of the
//! URL the request came to: same scheme, host, path and query values.
//!
//! A parameter repeated with the same value is signed once (the SDKs sign the set of values).

use sha2::{Digest, Sha256};

use super::mac::{self, ct_eq};
use super::{Inbound, Reject, Scheme, header};
use crate::config::verify::{Algorithm, Encoding};

pub struct Twilio;

const SIGNATURE: &str = "x-twilio-signature";

impl Twilio {
    /// The signed parameter string: `name` + `value` for every form parameter, sorted by name
    /// then value. Empty for a JSON body (its hash is checked against `bodySHA256` instead).
    fn params(req: &Inbound<'_>) -> Result<String, Reject> {
        if let Some(expected) = body_hash_param(req.url) {
            // Byte for byte, as every SDK compares it: their digest is lowercase hex, so an
            // uppercase spelling of the right hash is refused there, and here.
            let actual = hex::encode(Sha256::digest(req.body));
            if !ct_eq(actual.as_bytes(), expected.as_bytes()) {
                return Err(Reject::BodyHashMismatch);
            }
            return Ok(String::new());
        }
        let is_form = header(req.headers, "content-type").is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        if !is_form {
            return Ok(String::new());
        }
        // Borrowed where no decoding is needed: most Twilio values are plain.
        let mut params: Vec<_> = form_urlencoded::parse(req.body).collect();
        params.sort_unstable();
        // twilio-python signs `sorted(set(values))`, twilio-node `new Set(values)`
        params.dedup();
        let mut joined = String::with_capacity(req.body.len());
        for (k, v) in &params {
            joined.push_str(k);
            joined.push_str(v);
        }
        Ok(joined)
    }

    fn signature(url: &str, params: &str, key: &[u8]) -> Vec<u8> {
        mac::compute(Algorithm::Sha1, key, &[url.as_bytes(), params.as_bytes()])
    }
}

impl Scheme for Twilio {
    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let given = header(req.headers, SIGNATURE).ok_or(Reject::MissingCredentials)?;
        let given = mac::decode(Encoding::Base64, given).ok_or(Reject::MalformedHeader)?;
        let params = Self::params(req)?;
        for url in url_candidates(req.url) {
            if ct_eq(&Self::signature(&url, &params, key), &given) {
                return Ok(());
            }
        }
        Err(Reject::BadSignature)
    }

    fn credential_headers(&self) -> Vec<String> {
        vec!["x-twilio-signature".into()]
    }
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let params = Self::params(req).unwrap_or_default();
        let sig = Self::signature(req.url, &params, key);
        vec![(
            "X-Twilio-Signature".into(),
            mac::encode(Encoding::Base64, &sig),
        )]
    }
}

fn body_hash_param(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
}

/// Every form of `url` the SDKs sign: as received, WHATWG-normalised and with the legacy
/// querystring encoding, each without and with the port; no form twice.
fn url_candidates(url: &str) -> Vec<String> {
    let mut out = url_variants(url);
    if let Ok(parsed) = url::Url::parse(url) {
        // the `url` crate implements the WHATWG URL standard, as Node's `URL` does
        let whatwg = parsed.to_string();
        let legacy = legacy_querystring(&whatwg);
        out.extend(url_variants(&whatwg));
        if let Some(legacy) = legacy {
            out.extend(url_variants(&legacy));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|u| seen.insert(u.clone()));
    out
}

/// twilio-node's `withLegacyQuerystring`: the query parsed and re-stringified by Node's
/// `querystring` (repeated keys grouped at their first place, `+` read as a space, values
/// encoded with `querystring.escape`); `None` without a query.
fn legacy_querystring(url: &str) -> Option<String> {
    let (base, query) = url.split_once('?')?;
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match grouped.iter_mut().find(|(name, _)| *name == k) {
            Some((_, values)) => values.push(v.into_owned()),
            None => grouped.push((k.into_owned(), vec![v.into_owned()])),
        }
    }
    let mut out = format!("{base}?");
    let mut first = true;
    for (k, values) in &grouped {
        for v in values {
            if !first {
                out.push('&');
            }
            first = false;
            out.push_str(&node_escape(k));
            out.push('=');
            out.push_str(&node_escape(v));
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// Node's `querystring.escape`: UTF-8 percent-encoding of all but `A-Za-z0-9-_.!~*'()`.
fn node_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL without its port and with it (the scheme's default port when none is given).
fn url_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => (&hostport[..i], Some(&hostport[i + 1..])),
        _ => (hostport, None),
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        _ => "80",
    };
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = format!(
        "{scheme}://{userinfo}{host}:{}{tail}",
        port.unwrap_or(default_port)
    );
    vec![without, with]
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    // twilio-python tests/unit/test_request_validator.py (also twilio-node spec/validation.spec.js)
    const TOKEN: &[u8] = b"12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const PARAMS: &str = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    fn check(url: &str, body: &str, sig: &str, form: bool) -> Result<(), Reject> {
        let mut headers = HeaderMap::new();
        headers.insert("x-twilio-signature", sig.parse().unwrap());
        if form {
            headers.insert(
                "content-type",
                "application/x-www-form-urlencoded".parse().unwrap(),
            );
        }
        Twilio.check(
            &Inbound {
                method: "POST",
                url,
                headers: &headers,
                body: body.as_bytes(),
                now: 0,
            },
            TOKEN,
        )
    }

    #[test]
    fn published_vector() {
        assert_eq!(
            check(URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", true),
            Ok(())
        );
    }

    #[test]
    fn repeated_parameters_sort_by_value() {
        let body = "Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert_eq!(
            check(URL, body, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", true),
            Ok(())
        );
    }

    #[test]
    fn ports_added_and_removed() {
        // https with a port: Twilio signed the URL without it
        assert_eq!(
            check(
                "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
                PARAMS,
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                true
            ),
            Ok(())
        );
        // http with a port: signed with it
        assert_eq!(
            check(
                "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
                PARAMS,
                "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
                true
            ),
            Ok(())
        );
        // signed with the default port added
        assert_eq!(
            check(URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=", true),
            Ok(())
        );
        assert_eq!(
            check(
                "http://mycompany.com/myapp.php?foo=1&bar=2",
                PARAMS,
                "0ZXoZLH/DfblKGATFgpif+LLRf4=",
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn json_body_via_body_sha256() {
        let body = "{\"property\": \"value\", \"boolean\": true}";
        let url = format!(
            "{URL}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        assert_eq!(
            check(&url, body, "a9nBmqA0ju/hNViExpshrM61xv4=", false),
            Ok(())
        );
        // the signature covers the URL, the hash covers the body: a changed body fails on the hash
        assert_eq!(
            check(
                &url,
                "{\"property\": \"other\"}",
                "a9nBmqA0ju/hNViExpshrM61xv4=",
                false
            ),
            Err(Reject::BodyHashMismatch)
        );
    }

    #[test]
    fn tampering_and_missing() {
        assert_eq!(
            check(
                URL,
                &PARAMS.replace("1234", "9999"),
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                true
            ),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            check(URL, PARAMS, "RSOYDt4T1cUTdK1PDd94/VVr8B8=", true),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            check(URL, PARAMS, "not base64!", true),
            Err(Reject::MalformedHeader)
        );
        let headers = HeaderMap::new();
        let r = Twilio.check(
            &Inbound {
                method: "POST",
                url: URL,
                headers: &headers,
                body: b"",
                now: 0,
            },
            TOKEN,
        );
        assert_eq!(r, Err(Reject::MissingCredentials));
    }

    #[test]
    fn candidates_cover_the_sdks_url_forms_once_each() {
        let c = url_candidates("https://example.com/path?test=param'With+Quote");
        assert_eq!(
            c,
            [
                "https://example.com/path?test=param'With+Quote",
                "https://example.com:443/path?test=param'With+Quote",
                "https://example.com/path?test=param%27With+Quote",
                "https://example.com:443/path?test=param%27With+Quote",
                "https://example.com/path?test=param'With%20Quote",
                "https://example.com:443/path?test=param'With%20Quote",
            ]
        );
        // nothing to normalise: two forms
        assert_eq!(url_candidates("https://a.com/x?y=1").len(), 2);
        assert_eq!(
            legacy_querystring("https://a.com/x?b=1&a=%27&b=2&c").unwrap(),
            "https://a.com/x?b=1&b=2&a='&c="
        );
    }

    #[test]
    fn variants() {
        assert_eq!(
            url_variants("https://a.com/x?y=1"),
            ["https://a.com/x?y=1", "https://a.com:443/x?y=1"]
        );
        assert_eq!(
            url_variants("http://a.com:8080"),
            ["http://a.com", "http://a.com:8080"]
        );
        assert_eq!(
            url_variants("http://[::1]:80/p"),
            ["http://[::1]/p", "http://[::1]:80/p"]
        );
    }
}
