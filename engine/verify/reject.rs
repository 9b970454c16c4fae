//! The reasons a request is refused: one code per thing that can be wrong, for the log line,
//! the `reason` label of `engine_verify_failures_total` and the console's refused requests,
//! never for the caller (who gets the same 401 whatever failed).

/// Why a request was not accepted. The code goes to logs and metrics, never to the caller; each
/// names what is actually wrong (docs/verify.md has the table, checked against [`Reject::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No signature or token header at all.
    MissingCredentials,
    /// Another header the scheme requires is missing or empty (Slack's timestamp, Standard
    /// Webhooks' id, Shopify's topic, shop, API version or webhook id).
    MissingHeader,
    /// A header is there but cannot be read (not base64, no `sha256=` prefix, a timestamp that
    /// is no number, a Bearer/Basic header of another scheme).
    MalformedHeader,
    /// The scheme signs the body, and there is none (Shopify and GitHub refuse those).
    EmptyBody,
    /// Read fine, and not the signature of this request under any of the secrets.
    BadSignature,
    StaleTimestamp,
    BodyHashMismatch,
    UnknownTenant,
    IpNotAllowed,
}

impl Reject {
    /// Every reason, in the order docs/verify.md lists them.
    pub const ALL: [Reject; 9] = [
        Reject::MissingCredentials,
        Reject::MissingHeader,
        Reject::MalformedHeader,
        Reject::EmptyBody,
        Reject::BadSignature,
        Reject::StaleTimestamp,
        Reject::BodyHashMismatch,
        Reject::UnknownTenant,
        Reject::IpNotAllowed,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reject::MissingCredentials => "missing_credentials",
            Reject::MissingHeader => "missing_header",
            Reject::MalformedHeader => "malformed_header",
            Reject::EmptyBody => "empty_body",
            Reject::BadSignature => "bad_signature",
            Reject::StaleTimestamp => "stale_timestamp",
            Reject::BodyHashMismatch => "body_hash_mismatch",
            Reject::UnknownTenant => "unknown_tenant",
            Reject::IpNotAllowed => "ip_not_allowed",
        }
    }
}
