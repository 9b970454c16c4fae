//! The ways a connection goes wrong before any request is sent: at boot, building a pipeline's
//! connections ([`ConnectionBuildError`]), and in a script, a call it got wrong ([`CallError`]).
//! What goes wrong on the wire is an answer (`Answer::failed`), not an error: a script reads it.

/// Why a pipeline's connections could not be made at boot (`validate` refuses most of these
/// first; these are what is left once it passed).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionBuildError {
    #[error("the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{pipeline}: connection `{name}`: `base_url` is not an absolute http(s) URL")]
    BadBaseUrl { pipeline: String, name: String },
    #[error("no `oauth` pipeline named `{0}`")]
    NoProvider(String),
    #[error("`{0}` has no token_url")]
    NoTokenUrl(String),
    #[error("`{provider}`: token_url is not a URL")]
    BadTokenUrl {
        provider: String,
        #[source]
        source: url::ParseError,
    },
}

/// A mistake in a script's call (the script gets this text as its error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("`{name}` is not a connection of pipeline `{pipeline}` (declared: {declared})")]
    Unknown {
        name: String,
        pipeline: String,
        declared: String,
    },
    #[error("connection `{name}` uses a tenant's `{provider}` token: give `tenant` in the call")]
    NoTenant { name: String, provider: String },
    #[error(
        "`path` must start with `/` and hold no `?`, `#` or `\\` (give `query` as a map): `{0}`"
    )]
    PathForm(String),
    #[error(
        "`{0}` holds an encoded `/` or `\\`: a value inside one segment is written with `encode_segment`, which leaves none"
    )]
    EncodedSeparator(String),
    #[error(
        "`{0}` holds a `.` or `..` segment (paths are sent as written, never resolved): write the path without it, and put a caller's value in a segment with `encode_segment`"
    )]
    DotSegment(String),
    #[error("`{0}` does not make a URL with the connection's base_url")]
    NotAUrl(String),
    #[error("`{0}` leaves the connection's base_url: calls stay under it")]
    LeavesBase(String),
    #[error("a call needs a `path`")]
    NoPath,
    #[error("`{0}` must be a string")]
    NotAString(String),
    #[error("`query` must be a map")]
    QueryNotAMap,
    /// `json` that is not JSON (Rhai's words).
    #[error("`json`: {0}")]
    Json(String),
}
