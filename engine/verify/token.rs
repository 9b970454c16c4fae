//! Shared-secret schemes: a bearer token, HTTP Basic, or a static value in a named header
//! (Vapi's bearer credential and its legacy `X-Vapi-Secret` are the bearer scheme). Compared in
//! constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::mac;
use super::{Inbound, Reject, Scheme, header};

/// A token in a header, with or without `Bearer `.
pub struct Token {
    pub header: String,
    pub bearer_prefix: bool,
}

impl Scheme for Token {
    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let value = header(req.headers, &self.header)
            .ok_or(Reject::MissingCredentials)?
            .trim();
        let token = if self.bearer_prefix {
            match value.split_once(' ') {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                _ => return Err(Reject::MalformedHeader),
            }
        } else {
            value
        };
        mac::secret_matches(token.as_bytes(), key)
    }

    fn credential_headers(&self) -> Vec<String> {
        vec![self.header.clone()]
    }
    fn sign(&self, _req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let token = String::from_utf8_lossy(key);
        let value = if self.bearer_prefix {
            format!("Bearer {token}")
        } else {
            token.into_owned()
        };
        vec![(self.header.clone(), value)]
    }
}

/// `Authorization: Basic base64(username:password)`.
pub struct Basic {
    pub username: String,
}

impl Scheme for Basic {
    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let value = header(req.headers, "authorization")
            .ok_or(Reject::MissingCredentials)?
            .trim();
        let encoded = match value.split_once(' ') {
            Some((scheme, e)) if scheme.eq_ignore_ascii_case("basic") => e.trim(),
            _ => return Err(Reject::MalformedHeader),
        };
        let decoded = STANDARD
            .decode(encoded)
            .map_err(|_| Reject::MalformedHeader)?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(Reject::MalformedHeader)?;
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // evaluate both comparisons: no early exit on the user name
        let user_ok = mac::secret_eq(user, self.username.as_bytes());
        let pass_ok = mac::secret_eq(pass, key);
        if user_ok & pass_ok {
            Ok(())
        } else {
            Err(Reject::BadSignature)
        }
    }

    fn credential_headers(&self) -> Vec<String> {
        vec!["authorization".into()]
    }
    fn sign(&self, _req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let mut creds = self.username.as_bytes().to_vec();
        creds.push(b':');
        creds.extend_from_slice(key);
        vec![(
            "Authorization".into(),
            format!("Basic {}", STANDARD.encode(creds)),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    fn req(h: &HeaderMap) -> Inbound<'_> {
        Inbound {
            method: "POST",
            url: "",
            headers: h,
            body: b"",
            now: 0,
        }
    }

    #[test]
    fn bearer_with_and_without_prefix() {
        let bearer = Token {
            header: "authorization".into(),
            bearer_prefix: true,
        };
        assert_eq!(
            bearer.check(&req(&with("authorization", "Bearer s3cret")), b"s3cret"),
            Ok(())
        );
        assert_eq!(
            bearer.check(&req(&with("authorization", "bearer s3cret")), b"s3cret"),
            Ok(())
        );
        assert_eq!(
            bearer.check(&req(&with("authorization", "Bearer s3cres")), b"s3cret"),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            bearer.check(&req(&with("authorization", "s3cret")), b"s3cret"),
            Err(Reject::MalformedHeader)
        );
        assert_eq!(
            bearer.check(&req(&HeaderMap::new()), b"s3cret"),
            Err(Reject::MissingCredentials)
        );
        let legacy = Token {
            header: "x-vapi-secret".into(),
            bearer_prefix: false,
        };
        assert_eq!(
            legacy.check(&req(&with("x-vapi-secret", "s3cret")), b"s3cret"),
            Ok(())
        );
    }

    #[test]
    fn basic_auth() {
        // RFC 7617 section 2's example: Aladdin / open sesame
        let b = Basic {
            username: "Aladdin".into(),
        };
        let h = with("authorization", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(b.check(&req(&h), b"open sesame"), Ok(()));
        assert_eq!(b.check(&req(&h), b"open sesamE"), Err(Reject::BadSignature));
        assert_eq!(
            Basic {
                username: "aladdin".into()
            }
            .check(&req(&h), b"open sesame"),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            b.check(&req(&with("authorization", "Basic ***")), b"x"),
            Err(Reject::MalformedHeader)
        );
    }
}
