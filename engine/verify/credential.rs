//! Which request headers carry credentials: never stored with an event (so never in the queue,
//! dead letters, the console or recorded fixtures), whatever verifies the pipeline.

/// Headers that carry credentials in the schemes here or in common use: never stored with events.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-twilio-signature",
    "stripe-signature",
    "x-hub-signature",
    "x-hub-signature-256",
    "webhook-signature",
    "svix-signature",
    "x-slack-signature",
    "x-shopify-hmac-sha256",
    "shopify-hmac-sha256",
    "x-vapi-secret",
    "x-vapi-signature",
    "x-signature",
];

/// Parts of a header name that mark it as carrying a credential, whatever the scheme: a sender's
/// `x-api-key`, `x-auth-token`, `x-webhook-secret` or `x-session` is never stored with an event,
/// shown by the console or kept in a dead letter, though no verifier here reads it.
const CREDENTIAL_NAME_PARTS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "signature",
    "password",
    "passwd",
    "cookie",
    "session",
    "api-key",
    "apikey",
    "api_key",
    "access-key",
    "private-key",
    "credential",
];

/// The credential words, found in one pass over a name whatever its case: every header of every
/// request is asked, and fourteen separate searches were ~3,000 instructions a header.
static PARTS: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(CREDENTIAL_NAME_PARTS)
        .expect("fixed words make an automaton")
});

/// Whether a header name carries a credential: one of [`CREDENTIAL_HEADERS`], or a name holding
/// one of the credential words (case-insensitive).
pub fn is_credential_name(name: &str) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
        || (PARTS.is_match(name)
            // Twilio's `I-Twilio-Idempotency-Token` names a delivery, it grants nothing
            && !name
                .as_bytes()
                .windows(IDEMPOTENCY.len())
                .any(|w| w.eq_ignore_ascii_case(IDEMPOTENCY)))
}

const IDEMPOTENCY: &[u8] = b"idempotency";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_like_header_names_are_recognised() {
        for name in [
            "Authorization",
            "x-api-key",
            "X-Auth-Token",
            "x-webhook-secret",
            "Cookie",
            "x-session-id",
            "stripe-signature",
            "X-Access-Key",
            "api_key",
            "X-API-KEY",
            // in the list, though no credential word is in it
            "X-Shopify-Hmac-Sha256",
            "x-shopify-hmac-sha256",
        ] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in [
            "content-type",
            "user-agent",
            "x-request-id",
            "i-twilio-idempotency-token",
            "I-Twilio-Idempotency-Token",
            "webhook-id",
        ] {
            assert!(!is_credential_name(name), "{name}");
        }
    }
}
