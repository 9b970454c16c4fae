//! Standard Webhooks (and Svix, its origin): headers `webhook-id`, `webhook-timestamp`,
//! `webhook-signature` (or the same with `svix-`). The signature header is a space-separated list
//! of `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`; any v1 may match. The secret is
//! `whsec_` followed by base64 of the key bytes. The timestamp must be within the tolerance in
//! either direction.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::mac;
use super::{Inbound, Reject, Scheme, header};
use crate::config::verify::{Algorithm, Encoding};

pub struct StandardWebhooks {
    pub tolerance: u64,
}

fn either<'a>(req: &'a Inbound<'_>, name: &str) -> Option<&'a str> {
    header(req.headers, &format!("webhook-{name}"))
        .or_else(|| header(req.headers, &format!("svix-{name}")))
}

impl Scheme for StandardWebhooks {
    /// `whsec_` + base64 of the key, padded or not (the reference library adds the padding);
    /// an empty key is refused.
    fn key(&self, secret: &str) -> Result<Vec<u8>, super::KeyError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        // like Python's b64decode(secret + "=="): padding optional, trailing bits ignored
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        );
        let key = LENIENT.decode(b64).map_err(|_| super::KeyError::NotWhsec)?;
        if key.is_empty() {
            return Err(super::KeyError::EmptyWhsec);
        }
        Ok(key)
    }

    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let sigs = either(req, "signature").ok_or(Reject::MissingCredentials)?;
        let id = either(req, "id").ok_or(Reject::MissingHeader)?;
        let ts = either(req, "timestamp").ok_or(Reject::MissingHeader)?;
        let t = ts
            .trim()
            .parse::<i64>()
            .map_err(|_| Reject::MalformedHeader)?;
        mac::fresh(t, req.now, self.tolerance)?;
        let expected = mac::compute(
            Algorithm::Sha256,
            key,
            &[id.as_bytes(), b".", ts.trim().as_bytes(), b".", req.body],
        );
        let given = sigs
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| mac::decode(Encoding::Base64, s));
        mac::matches_any(given, &expected)
    }

    fn credential_headers(&self) -> Vec<String> {
        vec!["webhook-signature".into(), "svix-signature".into()]
    }
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let id = either(req, "id").map_or_else(|| format!("msg_{}", req.now), str::to_string);
        let t = req.now.to_string();
        let sig = mac::compute(
            Algorithm::Sha256,
            key,
            &[id.as_bytes(), b".", t.as_bytes(), b".", req.body],
        );
        vec![
            ("webhook-id".into(), id),
            ("webhook-timestamp".into(), t),
            (
                "webhook-signature".into(),
                format!("v1,{}", mac::encode(Encoding::Base64, &sig)),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    // standard-webhooks library tests (the same values in every language)
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const TS: i64 = 1614265330;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn check(prefix: &str, sig: &str, now: i64) -> Result<(), Reject> {
        let mut h = HeaderMap::new();
        h.insert(
            format!("{prefix}-id")
                .as_str()
                .parse::<salvo::http::HeaderName>()
                .unwrap(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap(),
        );
        h.insert(
            format!("{prefix}-timestamp")
                .as_str()
                .parse::<salvo::http::HeaderName>()
                .unwrap(),
            TS.to_string().parse().unwrap(),
        );
        h.insert(
            format!("{prefix}-signature")
                .as_str()
                .parse::<salvo::http::HeaderName>()
                .unwrap(),
            sig.parse().unwrap(),
        );
        let s = StandardWebhooks { tolerance: 300 };
        let key = s.key(SECRET).unwrap();
        s.check(
            &Inbound {
                method: "POST",
                url: "",
                headers: &h,
                body: BODY,
                now,
            },
            &key,
        )
    }

    #[test]
    fn published_vector_both_header_families() {
        assert_eq!(check("webhook", SIG, TS), Ok(()));
        assert_eq!(check("svix", SIG, TS), Ok(()));
        assert_eq!(
            check(
                "webhook",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
                TS
            ),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn any_of_several_signatures() {
        let list = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {SIG}");
        assert_eq!(check("webhook", &list, TS), Ok(()));
    }

    #[test]
    fn tolerance_both_directions() {
        assert_eq!(check("webhook", SIG, TS + 300), Ok(()));
        assert_eq!(check("webhook", SIG, TS - 300), Ok(()));
        assert_eq!(check("webhook", SIG, TS + 301), Err(Reject::StaleTimestamp));
        assert_eq!(check("webhook", SIG, TS - 301), Err(Reject::StaleTimestamp));
    }

    #[test]
    fn secret_form() {
        assert!(StandardWebhooks { tolerance: 1 }.key("whsec_!!!").is_err());
    }
}
