//! HMAC computation, constant-time comparison, signature encodings and the timestamp window,
//! shared by every signature scheme.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::Reject;
use crate::config::verify::{Algorithm, Encoding};

/// HMAC of the concatenation of `parts` under `key`.
pub fn compute(alg: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Compare in time independent of where the inputs differ (length differences return early:
/// a signature's length is public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Compare a given secret with the expected one (a bearer token, a password, the metrics
/// token) by their SHA-256 digests: fixed-length values compared in constant time, so neither
/// where they differ nor the secret's length shows in the time taken.
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    use sha2::Digest;
    let a = sha2::Sha256::digest(given);
    let b = sha2::Sha256::digest(expected);
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// Accept when any of the signatures given matches the expected one (rotation and
/// multi-signature headers send several); `BadSignature` otherwise.
pub fn matches_any<S: AsRef<[u8]>>(
    given: impl IntoIterator<Item = S>,
    expected: &[u8],
) -> Result<(), Reject> {
    if given.into_iter().any(|s| ct_eq(s.as_ref(), expected)) {
        Ok(())
    } else {
        Err(Reject::BadSignature)
    }
}

/// Accept when `given` matches `expected`; `BadSignature` otherwise.
pub fn matches(given: &[u8], expected: &[u8]) -> Result<(), Reject> {
    matches_any([given], expected)
}

/// [`matches`] for a secret sent as it is (a bearer or header token): compared with
/// [`secret_eq`], so its length does not leak.
pub fn secret_matches(given: &[u8], expected: &[u8]) -> Result<(), Reject> {
    if secret_eq(given, expected) {
        Ok(())
    } else {
        Err(Reject::BadSignature)
    }
}

pub fn encode(enc: Encoding, bytes: &[u8]) -> String {
    match enc {
        Encoding::Hex => hex::encode(bytes),
        Encoding::Base64 => STANDARD.encode(bytes),
    }
}

pub fn decode(enc: Encoding, text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    match enc {
        Encoding::Hex => hex::decode(text).ok(),
        Encoding::Base64 => STANDARD.decode(text).ok(),
    }
}

/// A signed timestamp must be within `tolerance` seconds of `now`, in either direction.
pub fn fresh(timestamp: i64, now: i64, tolerance: u64) -> Result<(), Reject> {
    if now.abs_diff(timestamp) <= tolerance {
        Ok(())
    } else {
        Err(Reject::StaleTimestamp)
    }
}

/// Seconds since the epoch from a header value in seconds or milliseconds.
pub fn parse_timestamp(text: &str) -> Result<i64, Reject> {
    let t: i64 = text.trim().parse().map_err(|_| Reject::MalformedHeader)?;
    // Anything past year 33658 in seconds is a millisecond timestamp.
    Ok(if t > 999_999_999_999 { t / 1000 } else { t })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_digest_whatever_their_length() {
        assert!(secret_eq(b"tok", b"tok"));
        assert!(!secret_eq(b"tok", b"tok2"));
        assert!(!secret_eq(b"", b"tok"));
    }

    #[test]
    fn github_published_vector() {
        // docs.github.com "Validating webhook deliveries"
        let mac = compute(
            Algorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, World!"],
        );
        assert_eq!(
            hex::encode(mac),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn window_both_directions() {
        assert!(fresh(1000, 1300, 300).is_ok());
        assert!(fresh(1300, 1000, 300).is_ok());
        assert_eq!(fresh(1000, 1301, 300), Err(Reject::StaleTimestamp));
        assert_eq!(fresh(1301, 1000, 300), Err(Reject::StaleTimestamp));
        assert_eq!(parse_timestamp("1700000000123").unwrap(), 1_700_000_000);
        assert_eq!(parse_timestamp(" 1700000000 ").unwrap(), 1_700_000_000);
        assert!(parse_timestamp("soon").is_err());
    }
}
