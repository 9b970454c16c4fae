//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`. No timestamp: replays are
//! stopped by the queue's dedupe on `X-GitHub-Delivery`.
//!
//! As Octokit's `verify` (@octokit/webhooks-methods): the header is compared with the expected
//! text `sha256=<lower-case hex>` byte for byte (in constant time), and an empty body is refused.

use super::mac;
use super::{Inbound, Reject, Scheme, header};
use crate::config::verify::Algorithm;

pub struct Github;

impl Scheme for Github {
    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let value = header(req.headers, "x-hub-signature-256").ok_or(Reject::MissingCredentials)?;
        if !value.starts_with("sha256=") {
            return Err(Reject::MalformedHeader);
        }
        if req.body.is_empty() {
            return Err(Reject::EmptyBody);
        }
        let expected = format!(
            "sha256={}",
            hex::encode(mac::compute(Algorithm::Sha256, key, &[req.body]))
        );
        if mac::ct_eq(value.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Reject::BadSignature)
        }
    }

    fn credential_headers(&self) -> Vec<String> {
        vec!["x-hub-signature-256".into(), "x-hub-signature".into()]
    }
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let sig = mac::compute(Algorithm::Sha256, key, &[req.body]);
        vec![(
            "X-Hub-Signature-256".into(),
            format!("sha256={}", hex::encode(sig)),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    #[test]
    fn published_vector() {
        // docs.github.com "Validating webhook deliveries"
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        let req = |body: &'static [u8]| Inbound {
            method: "POST",
            url: "",
            headers: &h,
            body,
            now: 0,
        };
        let key = b"It's a Secret to Everybody";
        assert_eq!(Github.check(&req(b"Hello, World!"), key), Ok(()));
        assert_eq!(
            Github.check(&req(b"Hello, World?"), key),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            Github.check(&req(b"Hello, World!"), b"wrong"),
            Err(Reject::BadSignature)
        );
    }
}
