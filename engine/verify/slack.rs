//! Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<body>">` with the timestamp
//! in `X-Slack-Request-Timestamp`, which must be within the tolerance (Slack says 5 minutes).
//!
//! As Slack's SDK (python-slack-sdk `SignatureVerifier`): the header is compared with the expected
//! text `v0=<lower-case hex>` (constant time), and a blank signing secret is refused.

use super::mac;
use super::{Inbound, Reject, Scheme, header};
use crate::config::verify::Algorithm;

pub struct Slack {
    pub tolerance: u64,
}

impl Scheme for Slack {
    fn key(&self, secret: &str) -> Result<Vec<u8>, super::KeyError> {
        if secret.trim().is_empty() {
            return Err(super::KeyError::Blank);
        }
        Ok(secret.as_bytes().to_vec())
    }

    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let value = header(req.headers, "x-slack-signature").ok_or(Reject::MissingCredentials)?;
        let ts = header(req.headers, "x-slack-request-timestamp").ok_or(Reject::MissingHeader)?;
        let t = mac::parse_timestamp(ts)?;
        mac::fresh(t, req.now, self.tolerance)?;
        if !value.starts_with("v0=") {
            return Err(Reject::MalformedHeader);
        }
        let expected = format!(
            "v0={}",
            hex::encode(mac::compute(
                Algorithm::Sha256,
                key,
                &[b"v0:", ts.trim().as_bytes(), b":", req.body],
            ))
        );
        if mac::ct_eq(value.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Reject::BadSignature)
        }
    }

    fn credential_headers(&self) -> Vec<String> {
        vec!["x-slack-signature".into()]
    }
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let t = req.now.to_string();
        let sig = mac::compute(
            Algorithm::Sha256,
            key,
            &[b"v0:", t.as_bytes(), b":", req.body],
        );
        vec![
            ("X-Slack-Request-Timestamp".into(), t),
            (
                "X-Slack-Signature".into(),
                format!("v0={}", hex::encode(sig)),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    // The worked example in Slack's "Verifying requests from Slack".
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: i64 = 1531420618;
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn check(body: &str, sig: &str, now: i64) -> Result<(), Reject> {
        let mut h = HeaderMap::new();
        h.insert("x-slack-signature", sig.parse().unwrap());
        h.insert("x-slack-request-timestamp", TS.to_string().parse().unwrap());
        Slack { tolerance: 300 }.check(
            &Inbound {
                method: "POST",
                url: "",
                headers: &h,
                body: body.as_bytes(),
                now,
            },
            SECRET,
        )
    }

    #[test]
    fn published_example() {
        assert_eq!(check(BODY, SIG, TS + 60), Ok(()));
        assert_eq!(
            check(&BODY.replace("foobar", "foobaz"), SIG, TS),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn five_minutes_both_ways() {
        assert_eq!(check(BODY, SIG, TS + 300), Ok(()));
        assert_eq!(check(BODY, SIG, TS - 300), Ok(()));
        assert_eq!(check(BODY, SIG, TS + 301), Err(Reject::StaleTimestamp));
        assert_eq!(check(BODY, SIG, TS - 301), Err(Reject::StaleTimestamp));
    }
}
