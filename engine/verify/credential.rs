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

/// Whether a header name carries a credential: one of [`CREDENTIAL_HEADERS`], or a name holding
/// one of the credential words (case-insensitive).
pub fn is_credential_name(name: &str) -> bool {
    // names from a request are lower case already (the HTTP layer's); others are made so
    let lower: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    };
    CREDENTIAL_HEADERS.contains(&lower.as_ref())
        || (CREDENTIAL_NAME_PARTS.iter().any(|p| lower.contains(p))
            // Twilio's `I-Twilio-Idempotency-Token` names a delivery, it grants nothing
            && !lower.contains("idempotency"))
}

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
        ] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in [
            "content-type",
            "user-agent",
            "x-request-id",
            "i-twilio-idempotency-token",
            "webhook-id",
        ] {
            assert!(!is_credential_name(name), "{name}");
        }
    }
}
