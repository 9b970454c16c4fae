//! Console sessions: a login by `CONSOLE_TOKEN` turns into a signed, stateless session cookie,
//! and every state change carries a CSRF token derived from that session.
//!
//! ```text
//! POST /console/login  token (form) == CONSOLE_TOKEN (constant time)
//!   -> Set-Cookie: engine_console=<expires_ms>.<nonce>.<mac>; HttpOnly; Secure;
//!      SameSite=Strict; Path=/console; Max-Age=<session length>
//! every console request: cookie -> mac checked (constant time), not expired -> Session
//! every POST: form field `csrf` == HMAC(key, "csrf" | nonce) (constant time)
//! ```
//!
//! The key is derived from CONSOLE_TOKEN, so sessions need no storage, hold across restarts and
//! across instances of one deployment, and rotating the token signs every session out. The
//! cookie holds no secret: a nonce, an expiry and a MAC.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::verify::Algorithm;
use crate::verify::mac::{compute, ct_eq};

/// The session cookie's name.
pub const COOKIE: &str = "engine_console";

/// How long a login lasts.
pub const SESSION_LENGTH: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Signs and checks sessions under a key derived from the console token.
#[derive(Clone)]
pub struct Keys {
    key: Vec<u8>,
    /// The MAC of the token itself, what a sign-in's is compared with (the token is not kept).
    token_mac: Vec<u8>,
}

/// A signed-in operator's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub nonce: String,
    pub expires_ms: i64,
}

impl Keys {
    pub fn new(token: &crate::config::operations::Secret) -> Keys {
        let key = compute(
            Algorithm::Sha256,
            token.expose().as_bytes(),
            &[b"engine console session v1"],
        );
        let token_mac = login_mac(&key, token.expose());
        Keys { key, token_mac }
    }

    /// Whether `given` is the console token (constant time over the token's bytes).
    pub fn token_matches(&self, given: &str) -> bool {
        // compare MACs, so neither the length nor any prefix of the token leaks through timing
        ct_eq(&login_mac(&self.key, given), &self.token_mac)
    }

    /// A new session starting at `now_ms`, and its cookie value.
    pub fn open(&self, now_ms: i64) -> (Session, String) {
        let mut nonce = [0u8; 18];
        // the OS generator; a failure leaves zeros, which the MAC still binds (never observed)
        let _ = getrandom::fill(&mut nonce);
        let session = Session {
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            expires_ms: now_ms + SESSION_LENGTH.as_millis() as i64,
        };
        let value = format!(
            "{}.{}.{}",
            session.expires_ms,
            session.nonce,
            self.mac(session.expires_ms, &session.nonce)
        );
        (session, value)
    }

    /// The session a cookie value holds, when its MAC is right and it has not expired.
    pub fn check(&self, value: &str, now_ms: i64) -> Option<Session> {
        let mut parts = value.split('.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nonce.is_empty() || nonce.len() > 64 {
            return None;
        }
        let expires_ms: i64 = expires.parse().ok()?;
        if !ct_eq(self.mac(expires_ms, nonce).as_bytes(), mac.as_bytes()) {
            return None;
        }
        (expires_ms > now_ms).then(|| Session {
            nonce: nonce.to_string(),
            expires_ms,
        })
    }

    /// The CSRF token of a session: what every form of that session posts back.
    pub fn csrf(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(compute(
            Algorithm::Sha256,
            &self.key,
            &[b"csrf|", session.nonce.as_bytes()],
        ))
    }

    /// Whether a posted CSRF token is the session's.
    pub fn csrf_matches(&self, session: &Session, given: &str) -> bool {
        ct_eq(self.csrf(session).as_bytes(), given.as_bytes())
    }

    fn mac(&self, expires_ms: i64, nonce: &str) -> String {
        URL_SAFE_NO_PAD.encode(compute(
            Algorithm::Sha256,
            &self.key,
            &[
                b"session|",
                expires_ms.to_string().as_bytes(),
                b"|",
                nonce.as_bytes(),
            ],
        ))
    }
}

/// What a sign-in's token is compared by.
fn login_mac(key: &[u8], token: &str) -> Vec<u8> {
    compute(Algorithm::Sha256, key, &[b"login", token.as_bytes()])
}

/// The `Set-Cookie` value that opens a session.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_LENGTH.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::operations::Secret;

    fn keys(token: &str) -> Keys {
        Keys::new(&Secret::new(token))
    }

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_token() {
        let k = keys("a-long-random-console-token-0123456789");
        let (session, value) = k.open(1_000);
        assert_eq!(k.check(&value, 2_000), Some(session.clone()));
        assert_eq!(k.check(&value, session.expires_ms), None, "expired");
        assert_eq!(
            keys("another-token-entirely-0123456789abcdef").check(&value, 2_000),
            None,
            "rotating the token signs sessions out"
        );
        // a later expiry written into the cookie breaks its MAC
        let forged = value.replacen(
            &session.expires_ms.to_string(),
            &(session.expires_ms + 1).to_string(),
            1,
        );
        assert_eq!(k.check(&forged, 2_000), None);
        for junk in ["", "1.2", "x.y.z", "1.a.b.c", &format!("{value}.")] {
            assert_eq!(k.check(junk, 2_000), None, "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let k = keys("a-long-random-console-token-0123456789");
        let (a, _) = k.open(0);
        let (b, _) = k.open(0);
        assert_ne!(a.nonce, b.nonce);
        assert!(k.csrf_matches(&a, &k.csrf(&a)));
        assert!(!k.csrf_matches(&a, &k.csrf(&b)));
        assert!(!k.csrf_matches(&a, ""));
    }

    #[test]
    fn the_token_is_compared_whole() {
        let k = keys("a-long-random-console-token-0123456789");
        assert!(k.token_matches("a-long-random-console-token-0123456789"));
        assert!(!k.token_matches("a-long-random-console-token-012345678"));
        assert!(!k.token_matches(""));
    }

    #[test]
    fn cookies_are_strict_and_found_among_others() {
        let c = set_cookie("v");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
            assert!(c.contains(flag), "{c}");
        }
    }
}
