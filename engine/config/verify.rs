//! The `verify` section: how a pipeline decides a request is genuine.
//!
//! Exactly one scheme key (`twilio`, `stripe`, `github`, `standard_webhooks`, `slack`,
//! `shopify`, `vapi`, `hmac`, `bearer`, `basic`, `header`), optionally with `ip_allow`.
//! Secrets are `${VAR}` references to variables marked `x-secret` in the env schema, one or a list
//! (rotation: a request is genuine if any matches). A scheme may also take its secret per tenant
//! from the encrypted `tenant_credentials` table (`tenant:`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Request verification. Name exactly one scheme.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// Twilio's `X-Twilio-Signature` (HMAC-SHA1 over the public URL and the form parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twilio: Option<TwilioConfig>,
    /// Stripe's `Stripe-Signature` (`t=...,v1=...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<Timestamped>,
    /// GitHub's `X-Hub-Signature-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<Plain>,
    /// Standard Webhooks / Svix (`webhook-*` or `svix-*` headers, `whsec_` secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_webhooks: Option<Timestamped>,
    /// Slack's `X-Slack-Signature` (v0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<Timestamped>,
    /// Shopify's `X-Shopify-Hmac-Sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shopify: Option<Plain>,
    /// Vapi's server credential: a bearer token or an HMAC signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapi: Option<Vapi>,
    /// A generic HMAC signature for any other provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<Hmac>,
    /// `Authorization: Bearer <secret>` (or another header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<Bearer>,
    /// HTTP Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicConfig>,
    /// A static shared secret in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<StaticHeader>,
    /// Client IP addresses or CIDR ranges allowed to call (checked before any signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_allow: Option<Vec<String>>,
}

/// One secret or several (rotation), each a `${VAR}` reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Secrets {
    One(String),
    Many(Vec<String>),
}

impl Secrets {
    /// The secret values that are set.
    pub fn values(&self) -> Vec<String> {
        match self {
            Secrets::One(s) => vec![s.clone()],
            Secrets::Many(v) => v.clone(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    }
}

/// Where a request names its tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeySource {
    /// A request header, e.g. `x-tenant-id`.
    Header(String),
    /// A form field of an `application/x-www-form-urlencoded` body, e.g. Twilio's `AccountSid`.
    Form(String),
    /// A JSON pointer into a JSON body, e.g. `/message/call/orgId`.
    Json(String),
    /// A path parameter of the route, e.g. `tenant` for `/hooks/{tenant}`.
    Path(String),
    /// A query-string parameter.
    Query(String),
}

/// Per-tenant secrets from the `tenant_credentials` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Where the request names its tenant.
    pub key: KeySource,
    /// Credential name in the table, e.g. `twilio_auth_token`.
    pub credential: String,
    /// A regular expression a tenant id must match before it is looked up (anchor it with `^`
    /// and `$`); a request naming an id of another shape is refused without a database query.
    /// Twilio's default: `^AC[0-9a-f]{32}$` (an AccountSid). Whatever the pattern, an id over
    /// 128 bytes or holding control characters is never looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// A scheme with only a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plain {
    /// `${VAR}` reference(s) to the signing secret.
    pub secret: Secrets,
}

/// A scheme with a signed timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timestamped {
    /// `${VAR}` reference(s) to the signing secret.
    pub secret: Secrets,
    /// Largest difference, in seconds, between the signed timestamp and the engine's clock: in
    /// either direction (Slack, Standard Webhooks), or only its age (Stripe, whose SDKs accept a
    /// timestamp ahead of the clock). Always checked: at least 1.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 1, max = 86400))]
    pub tolerance_secs: u64,
}

fn default_tolerance() -> u64 {
    300
}

/// Twilio request validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Twilio")]
pub struct TwilioConfig {
    /// `${VAR}` reference(s) to the auth token (optional when `tenant` is set: then a fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secrets>,
    /// Each tenant's own auth token, looked up by a request field (Twilio sends `AccountSid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
}

/// HMAC algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// How a signature is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

/// How the configured secret is turned into key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The text itself.
    Utf8,
    /// Base64-decoded.
    Base64,
}

/// Vapi credential modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VapiMode {
    Bearer,
    Hmac,
}

/// Vapi's server credential. Defaults follow Vapi's: bearer token in `Authorization` with the
/// `Bearer ` prefix; HMAC-SHA256 in `x-signature` over `{timestamp}.{body}` with `x-timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vapi {
    /// `bearer` (default) or `hmac`.
    #[serde(default = "default_vapi_mode")]
    pub mode: VapiMode,
    /// `${VAR}` reference(s) to the credential's secret.
    pub secret: Secrets,
    /// Header carrying the token or signature (bearer: `authorization`, hmac: `x-signature`).
    /// The legacy `X-Vapi-Secret` header is bearer mode with `header: x-vapi-secret` and
    /// `bearer_prefix: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Bearer mode: the header value starts with `Bearer `.
    #[serde(default = "yes")]
    pub bearer_prefix: bool,
    /// HMAC mode: algorithm.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// HMAC mode: header with the signed timestamp.
    #[serde(default = "default_vapi_timestamp_header")]
    pub timestamp_header: String,
    /// HMAC mode: what is signed (see `hmac.payload`).
    #[serde(default = "default_vapi_payload")]
    pub payload: String,
    /// HMAC mode: text before the signature in the header, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: String,
    /// HMAC mode: `hex` (default) or `base64`.
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// HMAC mode: `utf8` (default) or `base64` when the secret is base64 text.
    #[serde(default = "default_secret_encoding")]
    pub secret_encoding: SecretEncoding,
    /// HMAC mode: accepted clock difference, seconds.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 1, max = 86400))]
    pub tolerance_secs: u64,
}

/// A generic HMAC signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hmac {
    /// `${VAR}` reference(s) to the signing secret.
    pub secret: Secrets,
    /// `utf8` (default) or `base64`.
    #[serde(default = "default_secret_encoding")]
    pub secret_encoding: SecretEncoding,
    /// `sha1`, `sha256` (default) or `sha512`.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// Header carrying the signature.
    pub header: String,
    /// Text before the signature, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: String,
    /// `hex` (default) or `base64`.
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// What is signed: `{body}` (raw bytes), `{timestamp}`, `{id}`, `{method}`, `{url}`, and
    /// `{header:NAME}`, around literal text. Default `{body}`.
    #[serde(default = "default_payload")]
    pub payload: String,
    /// Header with the signed timestamp (seconds or milliseconds since the epoch); when set,
    /// `tolerance_secs` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// Header with the message id used by `{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// Accepted clock difference, seconds, in either direction.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 1, max = 86400))]
    pub tolerance_secs: u64,
}

/// A bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bearer {
    /// `${VAR}` reference(s) to the token.
    pub secret: Secrets,
    /// Header carrying it (default `authorization`).
    #[serde(default = "default_authorization")]
    pub header: String,
    /// The header value starts with `Bearer `.
    #[serde(default = "yes")]
    pub bearer_prefix: bool,
}

/// HTTP Basic authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Basic")]
pub struct BasicConfig {
    /// User name (not secret).
    pub username: String,
    /// `${VAR}` reference(s) to the password.
    pub password: Secrets,
}

/// A static shared secret in a header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticHeader {
    /// Header name, e.g. `x-webhook-token`.
    pub name: String,
    /// `${VAR}` reference(s) to the expected value.
    pub secret: Secrets,
}

fn yes() -> bool {
    true
}
fn default_vapi_mode() -> VapiMode {
    VapiMode::Bearer
}
fn default_algorithm() -> Algorithm {
    Algorithm::Sha256
}
fn default_encoding() -> Encoding {
    Encoding::Hex
}
fn default_secret_encoding() -> SecretEncoding {
    SecretEncoding::Utf8
}
fn default_vapi_timestamp_header() -> String {
    "x-timestamp".into()
}
fn default_vapi_payload() -> String {
    "{timestamp}.{body}".into()
}
fn default_payload() -> String {
    "{body}".into()
}
fn default_authorization() -> String {
    "authorization".into()
}

impl Verify {
    /// The scheme sections set, in the order of the fields (validation requires exactly one,
    /// or none with `ip_allow`).
    pub fn sections(&self) -> Vec<Section<'_>> {
        // Every field named, none left to `..`: a new scheme's section does not compile until
        // it is listed here, and then `Section::name` and `verify::scheme_of` (which builds
        // it) ask for it in turn.
        let Verify {
            twilio,
            stripe,
            github,
            standard_webhooks,
            slack,
            shopify,
            vapi,
            hmac,
            bearer,
            basic,
            header,
            ip_allow: _,
        } = self;
        [
            twilio.as_ref().map(Section::Twilio),
            stripe.as_ref().map(Section::Stripe),
            github.as_ref().map(Section::Github),
            standard_webhooks.as_ref().map(Section::StandardWebhooks),
            slack.as_ref().map(Section::Slack),
            shopify.as_ref().map(Section::Shopify),
            vapi.as_ref().map(Section::Vapi),
            hmac.as_ref().map(Section::Hmac),
            bearer.as_ref().map(Section::Bearer),
            basic.as_ref().map(Section::Basic),
            header.as_ref().map(Section::Header),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Names of the schemes set.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.sections().iter().map(Section::name).collect()
    }
}

/// One scheme's section of a `verify` block.
#[derive(Debug, Clone, Copy)]
pub enum Section<'a> {
    Twilio(&'a TwilioConfig),
    Stripe(&'a Timestamped),
    Github(&'a Plain),
    StandardWebhooks(&'a Timestamped),
    Slack(&'a Timestamped),
    Shopify(&'a Plain),
    Vapi(&'a Vapi),
    Hmac(&'a Hmac),
    Bearer(&'a Bearer),
    Basic(&'a BasicConfig),
    Header(&'a StaticHeader),
}

impl Section<'_> {
    /// The section's key in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            Section::Twilio(_) => "twilio",
            Section::Stripe(_) => "stripe",
            Section::Github(_) => "github",
            Section::StandardWebhooks(_) => "standard_webhooks",
            Section::Slack(_) => "slack",
            Section::Shopify(_) => "shopify",
            Section::Vapi(_) => "vapi",
            Section::Hmac(_) => "hmac",
            Section::Bearer(_) => "bearer",
            Section::Basic(_) => "basic",
            Section::Header(_) => "header",
        }
    }
}
