//! Request verification: is this webhook genuine?
//!
//! Runs on the raw body bytes before anything parses or stores the request. A [`Verifier`] is
//! built once per pipeline from its `verify` section and checks, in order:
//!
//! ```text
//! ip_allow (client IP in a CIDR list)
//!   -> secrets: the tenant's (tenant_credentials table, cached) or the configured ones (rotation)
//!   -> the scheme's check against each secret; any match passes
//! ```
//!
//! A failure is a [`Reject`] (answered 401, with the reason in the log only) or, when the tenant
//! store cannot be reached, [`VerifyError::Unavailable`] (answered 503 so the provider retries).
//! Every scheme can also [`Verifier::sign`] a request: tests and fixture replay use it.

pub mod credential;
pub mod github;
pub mod hmac;
pub mod mac;
#[cfg(test)]
mod refusals;
mod reject;
pub mod shopify;
pub mod slack;
pub mod standard_webhooks;
pub mod stripe;
pub mod tenant;
pub mod token;
pub mod twilio;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::verify::{Secrets, Section, Tenant, VapiMode, Verify};
pub use reject::Reject;
pub use tenant::TenantSecrets;

pub use crate::request_field::{Inbound, header};

/// A verification outcome other than success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Not genuine: 401.
    Rejected(Reject),
    /// The tenant's secret could not be read: 503 (the provider retries).
    Unavailable(String),
}

/// What is wrong with a configured secret's *form* (never its value): `engine validate` says
/// "the secret <this>" at the secret's place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is declared `secret_encoding: base64` but is not base64")]
    NotBase64,
    #[error("must be `whsec_` followed by base64 (as the provider shows it)")]
    NotWhsec,
    #[error("is empty: `whsec_` must be followed by the key's base64")]
    EmptyWhsec,
    #[error("is blank")]
    Blank,
}

/// A signature scheme.
pub trait Scheme: Send + Sync {
    /// Key bytes for a configured secret; `Err` says what is wrong with the secret's *form*.
    fn key(&self, secret: &str) -> Result<Vec<u8>, KeyError> {
        Ok(secret.as_bytes().to_vec())
    }
    /// Check a request against one key.
    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject>;
    /// Headers that make `req` pass [`Scheme::check`] under `key` at `req.now`.
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)>;
    /// The request headers this scheme reads its credential from (lower case): never stored
    /// with an event, whatever [`CREDENTIAL_HEADERS`] lists. Every scheme names its own (no
    /// default), so a new one cannot leave its signature in the queue.
    fn credential_headers(&self) -> Vec<String>;
}

pub use credential::{CREDENTIAL_HEADERS, is_credential_name};

/// What the verifier needs beyond the request itself.
pub struct Context<'a> {
    pub client_ip: IpAddr,
    /// The tenant id the request names, read once by the caller ([`Verifier::tenant_id`]), which
    /// the request path also counts and stores with the event.
    pub tenant_id: Option<&'a str>,
    /// The tenant store, when a database is configured.
    pub tenants: Option<&'a TenantSecrets>,
}

/// A pipeline's verifier, built once from its `verify` section.
pub struct Verifier {
    /// The headers carrying the credential ([`Scheme::credential_headers`]), lower case.
    credential_headers: Vec<String>,
    scheme_name: &'static str,
    scheme: Box<dyn Scheme>,
    /// Key bytes of the configured secrets, newest first.
    keys: Vec<Vec<u8>>,
    tenant: Option<TenantLookup>,
    ip_allow: Vec<IpNet>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme_name)
            .field("secrets", &self.keys.len())
            .field("tenant", &self.tenant)
            .field("ip_allow", &self.ip_allow)
            .finish()
    }
}

/// Where a request names its tenant, and the shape a tenant id must have to be looked up.
#[derive(Debug)]
struct TenantLookup {
    key: crate::config::verify::KeySource,
    credential: String,
    /// `None`: any id within [`LONGEST_TENANT_ID`] bytes, without control characters.
    shape: Option<Arc<regex::Regex>>,
}

/// Tenant ids longer than this are never looked up.
pub const LONGEST_TENANT_ID: usize = 128;

/// Twilio's AccountSid: `AC` and 32 lowercase hex digits.
pub const TWILIO_ACCOUNT_SID: &str = "^AC[0-9a-f]{32}$";

/// The compiled shape of tenant ids. Twilio's default is compiled once per process and shared,
/// with its match cache: each is ~10 KiB, held by every Twilio pipeline (a thousand tenants'
/// pipelines: 10 MiB, and as much again once each has matched; docs/benchmarks.md, "Many
/// pipelines").
fn shape_of(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    static TWILIO: std::sync::LazyLock<Arc<regex::Regex>> = std::sync::LazyLock::new(|| {
        Arc::new(
            regex::Regex::new(TWILIO_ACCOUNT_SID).expect("Twilio's AccountSid pattern compiles"),
        )
    });
    if pattern == TWILIO_ACCOUNT_SID {
        return Ok(TWILIO.clone());
    }
    regex::Regex::new(pattern).map(Arc::new)
}

impl TenantLookup {
    fn build(scheme: &str, t: Tenant, errors: &mut Vec<ConfigProblem>) -> TenantLookup {
        let pattern = t
            .pattern
            .clone()
            .or_else(|| (scheme == "twilio").then(|| TWILIO_ACCOUNT_SID.to_string()));
        let shape = pattern.and_then(|p| match shape_of(&p) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push((
                    format!("/{scheme}/tenant/pattern"),
                    format!("is not a regular expression ({e}): write one anchored with `^` and `$`, e.g. `^AC[0-9a-f]{{32}}$`"),
                ));
                None
            }
        });
        TenantLookup {
            key: t.key,
            credential: t.credential,
            shape,
        }
    }

    /// Whether `id` may name a tenant: a made-up id of the wrong shape costs no query.
    fn fits(&self, id: &str) -> bool {
        id.len() <= LONGEST_TENANT_ID
            && !id.chars().any(char::is_control)
            && self.shape.as_ref().is_none_or(|r| r.is_match(id))
    }
}

/// A problem building a verifier: a pointer below `/verify` and a message.
pub type ConfigProblem = (String, String);

impl Verifier {
    /// Build from an interpolated `verify` section.
    pub fn build(cfg: &Verify) -> Result<Verifier, Vec<ConfigProblem>> {
        let mut errors = Vec::new();
        let schemes = cfg.schemes();
        if schemes.len() > 1 {
            errors.push((
                format!("/{}", schemes[1]),
                format!(
                    "one verification scheme per pipeline; this one already uses `{}`",
                    schemes[0]
                ),
            ));
        }
        let ip_allow: Vec<IpNet> = cfg
            .ip_allow
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, s)| match parse_net(s) {
                Some(n) => Some(n),
                None => {
                    errors.push((
                        format!("/ip_allow/{i}"),
                        "must be an IP address or CIDR range, e.g. `54.172.60.0/23`".into(),
                    ));
                    None
                }
            })
            .collect();
        let Some((name, scheme, secrets, tenant)) = scheme_of(cfg, &mut errors) else {
            if schemes.is_empty() && ip_allow.is_empty() {
                errors.push((
                    String::new(),
                    "name a verification scheme (e.g. `twilio:`, `vapi:`, `hmac:`) or `ip_allow`"
                        .into(),
                ));
            }
            return if errors.is_empty() {
                Ok(Verifier {
                    credential_headers: Vec::new(),
                    scheme_name: "ip_allow",
                    scheme: Box::new(AllowAll),
                    keys: vec![Vec::new()],
                    tenant: None,
                    ip_allow,
                })
            } else {
                Err(errors)
            };
        };
        let secret_field = if name == "basic" {
            "password"
        } else {
            "secret"
        };
        let mut keys = Vec::new();
        if let Some(secrets) = secrets {
            for (i, s) in secrets.values().iter().enumerate() {
                match scheme.key(s) {
                    Ok(k) => keys.push(k),
                    Err(why) => errors.push((
                        secret_pointer(name, secret_field, &secrets, i),
                        format!("the secret {why}"),
                    )),
                }
            }
        }
        let tenant = tenant.map(|t| TenantLookup::build(name, t, &mut errors));
        if keys.is_empty() && tenant.is_none() && errors.is_empty() {
            errors.push((
                format!("/{name}/{secret_field}"),
                "no secret is set: set the variable this refers to".into(),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Verifier {
            credential_headers: scheme
                .credential_headers()
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            scheme_name: name,
            scheme,
            keys,
            tenant,
            ip_allow,
        })
    }

    /// The scheme's name, for logs.
    pub fn scheme_name(&self) -> &'static str {
        self.scheme_name
    }

    /// Whether `name` is a header this verifier reads its credential from (its scheme's
    /// [`Scheme::credential_headers`], the configured one of the bearer, header, hmac and vapi
    /// schemes included): never stored, like every header [`is_credential_name`] names.
    pub fn reads_credential_from(&self, name: &str) -> bool {
        self.credential_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The tenant id `req` names, when the pipeline has per-tenant secrets: read once per
    /// request, then given to [`Verifier::verify`] in its [`Context`].
    pub fn tenant_id(&self, req: &Inbound<'_>, path_params: &[(String, String)]) -> Option<String> {
        let t = self.tenant.as_ref()?;
        crate::request_field::extract(&t.key, req, path_params)
    }

    /// Whether verifying a request naming `tenant_id` would read its tenant's secret from the
    /// database: an id of the right shape that `store` has not cached (found or absent). The
    /// request path counts such a request against the per-IP limit before the lookup.
    pub fn would_look_up(&self, tenant_id: Option<&str>, store: &TenantSecrets) -> bool {
        let (Some(t), Some(id)) = (&self.tenant, tenant_id) else {
            return false;
        };
        t.fits(id) && !store.is_cached(id, &t.credential)
    }

    /// Whether this verifier reads per-tenant secrets.
    pub fn uses_tenants(&self) -> bool {
        self.tenant.is_some()
    }

    /// Decide whether `req` is genuine.
    pub async fn verify(&self, req: &Inbound<'_>, ctx: &Context<'_>) -> Result<(), VerifyError> {
        if !self.ip_allow.is_empty() && !self.ip_allow.iter().any(|n| n.contains(&ctx.client_ip)) {
            return Err(VerifyError::Rejected(Reject::IpNotAllowed));
        }
        let tenant_key = match (&self.tenant, ctx.tenants) {
            (Some(t), Some(store)) => {
                match ctx.tenant_id {
                    // an id of the wrong shape names no tenant: never looked up, like an
                    // unknown one (the configured secrets, or 401)
                    Some(id) if !t.fits(id) => {
                        if self.keys.is_empty() {
                            return Err(VerifyError::Rejected(Reject::UnknownTenant));
                        }
                        None
                    }
                    Some(id) => match store.get(id, &t.credential).await {
                        Ok(Some(secret)) => Some(self.scheme.key(&secret).map_err(|_| {
                            VerifyError::Unavailable("stored credential has the wrong form".into())
                        })?),
                        Ok(None) if self.keys.is_empty() => {
                            return Err(VerifyError::Rejected(Reject::UnknownTenant));
                        }
                        Ok(None) => None,
                        Err(e) => return Err(VerifyError::Unavailable(e.to_string())),
                    },
                    None if self.keys.is_empty() => {
                        return Err(VerifyError::Rejected(Reject::MissingCredentials));
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let keys: &[Vec<u8>] = match &tenant_key {
            Some(k) => std::slice::from_ref(k),
            None => &self.keys,
        };
        if keys.is_empty() {
            return Err(VerifyError::Rejected(Reject::UnknownTenant));
        }
        let mut last = Reject::BadSignature;
        for key in keys {
            match self.scheme.check(req, key) {
                Ok(()) => return Ok(()),
                Err(r) => last = r,
            }
        }
        Err(VerifyError::Rejected(last))
    }

    /// Headers that make `req` verify with the first configured secret.
    pub fn sign(&self, req: &Inbound<'_>) -> Vec<(String, String)> {
        self.keys
            .first()
            .map(|k| self.scheme.sign(req, k))
            .unwrap_or_default()
    }
}

/// The `ip_allow`-only scheme: no signature.
struct AllowAll;

impl Scheme for AllowAll {
    fn check(&self, _: &Inbound<'_>, _: &[u8]) -> Result<(), Reject> {
        Ok(())
    }
    fn sign(&self, _: &Inbound<'_>, _: &[u8]) -> Vec<(String, String)> {
        Vec::new()
    }
    fn credential_headers(&self) -> Vec<String> {
        Vec::new()
    }
}

type SchemeParts = (
    &'static str,
    Box<dyn Scheme>,
    Option<Secrets>,
    Option<Tenant>,
);

fn scheme_of(cfg: &Verify, errors: &mut Vec<ConfigProblem>) -> Option<SchemeParts> {
    let section = *cfg.sections().first()?;
    let secret = |s: &Secrets| Some(s.clone());
    // No catch-all: a new `Section` does not compile until it is built here.
    let (scheme, secrets, tenant): (Box<dyn Scheme>, _, _) = match section {
        Section::Twilio(t) => {
            if t.secret.is_none() && t.tenant.is_none() {
                errors.push((
                    "/twilio".into(),
                    "set `secret` (the auth token), `tenant` (per-tenant tokens), or both".into(),
                ));
            }
            (Box::new(twilio::Twilio), t.secret.clone(), t.tenant.clone())
        }
        Section::Stripe(s) => {
            let scheme = stripe::Stripe {
                tolerance: s.tolerance_secs,
            };
            (Box::new(scheme), secret(&s.secret), None)
        }
        Section::Github(s) => (Box::new(github::Github), secret(&s.secret), None),
        Section::StandardWebhooks(s) => {
            let scheme = standard_webhooks::StandardWebhooks {
                tolerance: s.tolerance_secs,
            };
            (Box::new(scheme), secret(&s.secret), None)
        }
        Section::Slack(s) => {
            let scheme = slack::Slack {
                tolerance: s.tolerance_secs,
            };
            (Box::new(scheme), secret(&s.secret), None)
        }
        Section::Shopify(s) => (Box::new(shopify::Shopify), secret(&s.secret), None),
        Section::Vapi(v) => {
            let scheme = vapi_scheme(v).map_err(|e| errors.push(e)).ok()?;
            (scheme, secret(&v.secret), None)
        }
        Section::Hmac(h) => {
            let scheme = hmac_scheme(h).map_err(|e| errors.push(e)).ok()?;
            (Box::new(scheme), secret(&h.secret), None)
        }
        Section::Bearer(b) => {
            let scheme = token::Token {
                header: b.header.to_ascii_lowercase(),
                bearer_prefix: b.bearer_prefix,
            };
            (Box::new(scheme), secret(&b.secret), None)
        }
        Section::Basic(b) => {
            let scheme = token::Basic {
                username: b.username.clone(),
            };
            (Box::new(scheme), secret(&b.password), None)
        }
        Section::Header(h) => {
            let scheme = token::Token {
                header: h.name.to_ascii_lowercase(),
                bearer_prefix: false,
            };
            (Box::new(scheme), secret(&h.secret), None)
        }
    };
    Some((section.name(), scheme, secrets, tenant))
}

/// Vapi's scheme: its credential as a bearer token (or in a header of its own), or an HMAC of
/// the payload it is configured to sign.
fn vapi_scheme(v: &crate::config::verify::Vapi) -> Result<Box<dyn Scheme>, ConfigProblem> {
    Ok(match v.mode {
        VapiMode::Bearer => Box::new(token::Token {
            header: v
                .header
                .clone()
                .unwrap_or_else(|| "authorization".into())
                .to_ascii_lowercase(),
            bearer_prefix: v.bearer_prefix,
        }),
        VapiMode::Hmac => {
            let payload = hmac::Template::parse(&v.payload)
                .map_err(|e| ("/vapi/payload".to_string(), e.to_string()))?;
            // Vapi sends the timestamp header only with `includeTimestamp` (a payload without
            // `{timestamp}`, e.g. `{body}`, comes without one)
            Box::new(hmac::HmacScheme {
                timestamp_header: payload
                    .signs_timestamp()
                    .then(|| v.timestamp_header.to_ascii_lowercase()),
                algorithm: v.algorithm,
                header: v
                    .header
                    .clone()
                    .unwrap_or_else(|| "x-signature".into())
                    .to_ascii_lowercase(),
                prefix: v.prefix.clone(),
                encoding: v.encoding,
                secret_encoding: v.secret_encoding,
                payload,
                id_header: None,
                tolerance: v.tolerance_secs,
            })
        }
    })
}

/// The generic HMAC scheme, as configured.
fn hmac_scheme(h: &crate::config::verify::Hmac) -> Result<hmac::HmacScheme, ConfigProblem> {
    let payload = hmac::Template::parse(&h.payload)
        .map_err(|e| ("/hmac/payload".to_string(), e.to_string()))?;
    Ok(hmac::HmacScheme {
        algorithm: h.algorithm,
        header: h.header.to_ascii_lowercase(),
        prefix: h.prefix.clone(),
        encoding: h.encoding,
        secret_encoding: h.secret_encoding,
        payload,
        timestamp_header: h.timestamp_header.as_ref().map(|s| s.to_ascii_lowercase()),
        id_header: h.id_header.as_ref().map(|s| s.to_ascii_lowercase()),
        tolerance: h.tolerance_secs,
    })
}

fn secret_pointer(scheme: &str, field: &str, secrets: &Secrets, i: usize) -> String {
    match secrets {
        Secrets::One(_) => format!("/{scheme}/{field}"),
        Secrets::Many(_) => format!("/{scheme}/{field}/{i}"),
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::verify::{Plain, Timestamped};
    use salvo::http::HeaderMap;

    fn secrets(v: &[&str]) -> Secrets {
        Secrets::Many(v.iter().map(|s| s.to_string()).collect())
    }

    fn ctx() -> Context<'static> {
        Context {
            client_ip: "127.0.0.1".parse().unwrap(),
            tenant_id: None,
            tenants: None,
        }
    }

    #[test]
    fn twilio_tenant_shape_is_compiled_once() {
        let (a, b) = (shape_of(TWILIO_ACCOUNT_SID), shape_of(TWILIO_ACCOUNT_SID));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.is_match("AC0123456789abcdef0123456789abcdef"));
        assert!(!a.is_match("AC0123456789ABCDEF0123456789ABCDEF"));
        // another pattern is its own
        let other = shape_of("^t-[0-9]+$").unwrap();
        assert!(!Arc::ptr_eq(&a, &other) && other.is_match("t-42"));
        assert!(shape_of("^(unclosed$").is_err());
    }

    #[tokio::test]
    async fn rotation_any_secret_matches() {
        let cfg = Verify {
            github: Some(Plain {
                secret: secrets(&["new-secret", "old-secret"]),
            }),
            ..Default::default()
        };
        let v = Verifier::build(&cfg).unwrap();
        let old_only = Verifier::build(&Verify {
            github: Some(Plain {
                secret: secrets(&["old-secret"]),
            }),
            ..Default::default()
        })
        .unwrap();
        let h = HeaderMap::new();
        let req = Inbound {
            method: "POST",
            url: "",
            headers: &h,
            body: b"x",
            now: 0,
        };
        let mut signed = HeaderMap::new();
        for (k, val) in old_only.sign(&req) {
            signed.insert(
                salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                val.parse().unwrap(),
            );
        }
        let req = Inbound {
            headers: &signed,
            ..req
        };
        assert_eq!(v.verify(&req, &ctx()).await, Ok(()));
        let neither = Verifier::build(&Verify {
            github: Some(Plain {
                secret: secrets(&["other"]),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            neither.verify(&req, &ctx()).await,
            Err(VerifyError::Rejected(Reject::BadSignature))
        );
    }

    #[tokio::test]
    async fn ip_allow() {
        let cfg = Verify {
            ip_allow: Some(vec!["10.0.0.0/8".into(), "192.168.1.7".into()]),
            ..Default::default()
        };
        let v = Verifier::build(&cfg).unwrap();
        let h = HeaderMap::new();
        let req = Inbound {
            method: "POST",
            url: "",
            headers: &h,
            body: b"",
            now: 0,
        };
        let at = |ip: &str| Context {
            client_ip: ip.parse().unwrap(),
            tenant_id: None,
            tenants: None,
        };
        assert_eq!(v.verify(&req, &at("10.1.2.3")).await, Ok(()));
        assert_eq!(v.verify(&req, &at("192.168.1.7")).await, Ok(()));
        assert_eq!(
            v.verify(&req, &at("192.168.1.8")).await,
            Err(VerifyError::Rejected(Reject::IpNotAllowed))
        );
    }

    #[test]
    fn build_errors_are_located() {
        let two = Verify {
            github: Some(Plain {
                secret: secrets(&["a"]),
            }),
            slack: Some(Timestamped {
                secret: secrets(&["b"]),
                tolerance_secs: 300,
            }),
            ip_allow: Some(vec!["nope".into()]),
            ..Default::default()
        };
        let errs = Verifier::build(&two).unwrap_err();
        assert!(
            errs.iter()
                .any(|(p, m)| p == "/slack" && m.contains("already uses `github`")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|(p, _)| p == "/ip_allow/0"), "{errs:?}");

        let bad_whsec = Verify {
            standard_webhooks: Some(Timestamped {
                secret: secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***"]),
                tolerance_secs: 300,
            }),
            ..Default::default()
        };
        let errs = Verifier::build(&bad_whsec).unwrap_err();
        assert_eq!(errs[0].0, "/standard_webhooks/secret/1");

        let unset = Verify {
            github: Some(Plain {
                secret: Secrets::One(String::new()),
            }),
            ..Default::default()
        };
        assert_eq!(Verifier::build(&unset).unwrap_err()[0].0, "/github/secret");
        assert!(Verifier::build(&Verify::default()).is_err());
    }
}
