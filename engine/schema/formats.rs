//! The engine's custom formats: checklist rules that JSON Schema cannot express on its own
//! (used by the env schema).
//!
//! `format: supabase-service-role-key` refuses the key that is most often pasted by mistake: the
//! anon (publishable) key looks just like the service-role key but cannot bypass row-level
//! security, so every sink write would fail in production. Supabase issues two shapes of key: the
//! legacy JWTs, whose `role` claim says which one it is, and the newer `sb_secret_` /
//! `sb_publishable_` API keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Custom format check: a token long and varied enough to be a random secret — at least 32
/// characters carrying at least 100 bits by their character frequencies (Shannon entropy × length).
/// `openssl rand -hex 16` (32 hex characters) passes; a repeated word or pattern does not.
pub fn is_random_token(value: &str) -> bool {
    let n = value.chars().count();
    if n < 32 {
        return false;
    }
    let mut counts = std::collections::HashMap::new();
    for c in value.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    per_char * n as f64 >= 100.0
}

/// Custom format check: a service-role key.
pub fn is_service_role_key(value: &str) -> bool {
    service_role_key_problem(value).is_none()
}

/// Why `value` is not a Supabase service-role key, or `None` when it is one. The reason names the
/// kind of key found, never the key.
pub fn service_role_key_problem(value: &str) -> Option<String> {
    const WHERE: &str = "copy the service_role / secret key from Supabase → Project Settings → API";
    if value.starts_with("sb_secret_") {
        return None;
    }
    if value.starts_with("sb_publishable_") {
        return Some(format!(
            "is a publishable key (sb_publishable_…), not the secret service-role key; {WHERE}"
        ));
    }
    match jwt_role(value) {
        Some(role) if role == "service_role" => None,
        Some(role) if role == "anon" => Some(format!(
            "is the anon key (its JWT role is \"anon\"), not the service-role key; {WHERE}"
        )),
        Some(_) => Some(format!(
            "is a JWT whose role is not \"service_role\"; {WHERE}"
        )),
        None => Some(format!(
            "is neither a service-role JWT nor an sb_secret_ key; {WHERE}"
        )),
    }
}

/// The `role` claim of a JWT, without verifying its signature (only its kind matters here).
fn jwt_role(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("role")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_long_and_varied() {
        // `openssl rand -hex 16`, `-hex 32` and `-base64 32` outputs
        for ok in [
            "3f9c1a7e0b5d42c8a16e9f03d7b2c5e4",
            "9b1e4f0c2a7d38e5b6c10f9a4d2e7b3c5a8f1e0d9c6b2a7e4f3d1c0b9a8e7f6d",
            "q4Zb1v0mW8yTn2kR9sXf3cLp7hJd5gAe6uBo0iQw+Yc=",
        ] {
            assert!(is_random_token(ok), "{ok}");
        }
        for bad in [
            "short",
            &"a".repeat(64),
            &"abcd".repeat(10),
            "passwordpasswordpasswordpassword",
        ] {
            assert!(!is_random_token(bad), "{bad}");
        }
    }

    fn jwt(claims: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn service_role_jwt_and_secret_key_pass() {
        assert!(is_service_role_key(&jwt(
            r#"{"iss":"supabase","ref":"lbjymlodxprzqgtyqtcq","role":"service_role","iat":1700000000,"exp":2000000000}"#
        )));
        assert!(is_service_role_key(
            "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
        ));
    }

    #[test]
    fn anon_and_publishable_are_refused_with_reason() {
        let anon = jwt(r#"{"iss":"supabase","role":"anon"}"#);
        let why = service_role_key_problem(&anon).unwrap();
        assert!(why.starts_with("is the anon key"), "{why}");
        assert!(!why.contains(&anon));
        let why = service_role_key_problem("sb_publishable_abc123").unwrap();
        assert!(why.starts_with("is a publishable key"), "{why}");
        assert!(
            service_role_key_problem("hello")
                .unwrap()
                .starts_with("is neither")
        );
        assert!(service_role_key_problem("a.b.c").is_some());
    }
}
