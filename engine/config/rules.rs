//! The rules a schema cannot express, across a pipeline's sections and across files: secrets
//! are references to declared `x-secret` variables and the verifier builds; an OAuth pipeline's
//! routes, endpoints and token sink; connections' base URLs, tokens and callers; unique names;
//! the settings file's own rules; CORS origins a browser can send.

use serde_json::Value;

use super::*;
use crate::diagnostics::Diagnostic;
use crate::env::{ENV_SCHEMA_FILE, Env, EnvSchema};
use crate::yaml::{self};

/// A secret field's text must be exactly `${NAME}` of a declared `x-secret` variable: the name,
/// or `None` with the problem pushed to `out` (an undeclared name is left to the reference check).
pub(super) fn secret_reference<'t>(
    c: &Checked,
    pointer: &str,
    text: &'t str,
    schema: &EnvSchema,
    out: &mut Vec<Diagnostic>,
) -> Option<&'t str> {
    let pos = c.doc.value_pos(pointer);
    let name = text
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .filter(|n| schema.declares(n));
    let Some(name) = name else {
        if !text.contains("${") {
            out.push(Diagnostic::new(
                &c.file,
                pos,
                pointer,
                "a secret must be a `${VAR}` reference to a variable marked `x-secret: true`, never a literal value (it would live in the repository)",
            ));
        }
        return None;
    };
    if !schema.is_secret(name) {
        out.push(Diagnostic::new(
            &c.file,
            pos,
            pointer,
            format!("`{name}` holds a secret: mark it `x-secret: true` in {ENV_SCHEMA_FILE}"),
        ));
        return None;
    }
    Some(name)
}

/// Secrets are `${VAR}` references to set `x-secret` variables; the verifier must build.
pub(super) fn check_verify(
    c: &Checked,
    schema: &EnvSchema,
    env: Option<&Env>,
    settings: &Settings,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let Some(raw) = c.doc.value.get("verify").and_then(Value::as_object) else {
        return out;
    };
    for (scheme, body) in raw {
        let uses_tenant = body.get("tenant").is_some();
        for field in ["secret", "password"] {
            let base = format!("/verify/{}/{field}", yaml::escape_token(scheme));
            let refs: Vec<(String, &str)> = match body.get(field) {
                Some(Value::String(s)) => vec![(base.clone(), s.as_str())],
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, x)| Some((format!("{base}/{i}"), x.as_str()?)))
                    .collect(),
                _ => Vec::new(),
            };
            for (pointer, text) in refs {
                let Some(name) = secret_reference(c, &pointer, text, schema, &mut out) else {
                    continue;
                };
                if env.is_some_and(|e| e.get(name).is_none()) && !uses_tenant {
                    out.push(Diagnostic::new(
                        &c.file,
                        c.doc.value_pos(&pointer),
                        &pointer,
                        format!("`{name}` is not set, and this verifier needs it: set it (or give it an `x-dev-default` for development)"),
                    ));
                }
            }
        }
        if uses_tenant
            && settings.database_url.is_some()
            && env.is_some_and(|e| e.get("ENCRYPTION_KEY").is_none())
        {
            let pointer = format!("/verify/{}/tenant", yaml::escape_token(scheme));
            out.push(Diagnostic::new(
                &c.file,
                c.doc.key_pos(&pointer),
                &pointer,
                "per-tenant secrets are stored encrypted: set ENCRYPTION_KEY to read them",
            ));
        }
    }
    out
}

/// The OAuth flow's token sink: a postgres sink writing `oauth_tokens` keyed by
/// `[tenant, provider]` (connections read tokens there, each sealed to that row key:
/// `sink::postgres::row_context`), both tokens encrypted. (pointer, message) pairs.
fn token_sink_problems(p: &Pipeline, o: &oauth::OAuth) -> Vec<(String, String)> {
    let here = format!("/sinks/{}/postgres", yaml::escape_token(&o.sink));
    let pg = match p.sinks.get(&o.sink) {
        None => {
            return vec![(
                "/oauth/sink".into(),
                format!(
                    "no sink named `{}`: declare a postgres sink for the tokens",
                    o.sink
                ),
            )];
        }
        Some(sink::SinkConfig::Postgres(pg)) => pg,
        Some(_) => {
            return vec![(
                "/oauth/sink".into(),
                "the tokens' sink must be a `postgres` sink".into(),
            )];
        }
    };
    let mut out = Vec::new();
    let missing: Vec<&str> = ["access_token", "refresh_token"]
        .into_iter()
        .filter(|f| !pg.encrypt.iter().any(|e| e == f))
        .collect();
    if !missing.is_empty() {
        out.push((
            here.clone(),
            format!(
                "tokens are stored encrypted: add {} to `encrypt`",
                missing.join(" and ")
            ),
        ));
    }
    if pg.table != "oauth_tokens" || pg.key != ["tenant", "provider"] {
        out.push((
            here,
            "the tokens' sink writes `table: oauth_tokens` with `key: [tenant, provider]`: connections read them there, and each token is sealed to its row's tenant and provider".into(),
        ));
    }
    out
}

/// Every transform step's `sink` names one of the pipeline's `sinks`.
pub(super) fn check_sink_names(c: &Checked, p: &Pipeline) -> Vec<Diagnostic> {
    let known: Vec<&str> = p.sinks.keys().map(String::as_str).collect();
    p.transform
        .iter()
        .enumerate()
        .filter_map(|(i, step)| {
            let sink = step.sink.as_ref().filter(|s| !p.sinks.contains_key(*s))?;
            let pointer = format!("/transform/{i}/sink");
            Some(Diagnostic::new(
                &c.file,
                c.doc.value_pos(&pointer),
                &pointer,
                if known.is_empty() {
                    format!("no sink named `{sink}`: declare it under `sinks`")
                } else {
                    format!(
                        "no sink named `{sink}`; this pipeline's sinks: {}",
                        known.join(", ")
                    )
                },
            ))
        })
        .collect()
}

/// A pipeline's own `rate_limit`: no `exempt` (a settings key), `counts: verified` only with a
/// `verify` section, and a warning for a key a sender can rotate (no `ip`, not `counts:
/// verified`): the settings' per-IP default is kept under it (`server::route`'s floor).
pub(super) fn check_rate_limit(
    c: &Checked,
    p: &Pipeline,
    settings: Option<&Settings>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let Some(r) = &p.rate_limit else { return out };
    if !r.exempt.is_empty() {
        out.push(Diagnostic::new(
            &c.file,
            c.doc.key_pos("/rate_limit/exempt"),
            "/rate_limit/exempt",
            "`exempt` belongs in the settings' default rate limit; to turn a pipeline's limit off write `enabled: false`",
        ));
    }
    if r.counts_verified() && p.verify.is_none() {
        out.push(Diagnostic::new(
            &c.file,
            c.doc.value_pos("/rate_limit/counts"),
            "/rate_limit/counts",
            "`counts: verified` needs a `verify` section (only verified requests would count, and this pipeline verifies none): add `verify`, or remove `counts`",
        ));
    }
    if r.keyed_by_sender() {
        let message = match settings.and_then(Settings::ip_floor) {
            Some(d) => format!(
                "this key does not count the client IP, so a sender rotating its value gets a fresh budget each request; the settings' per-IP limit ({}) still applies under it. Add `ip` to the key, or `counts: verified` when only signed requests should count",
                d.limit
            ),
            None => "this key does not count the client IP, so a sender rotating its value gets a fresh budget each request, and the settings have no per-IP limit to keep under it: add `ip` to the key, `counts: verified`, or a per-IP `rate_limit` in the settings".to_string(),
        };
        out.push(
            Diagnostic::new(
                &c.file,
                c.doc.key_pos("/rate_limit/key"),
                "/rate_limit/key",
                message,
            )
            .warning(),
        );
    }
    out
}

/// Transform steps and computed responses compile; scripts stay inside the directory.
/// An OAuth pipeline: only a callback route; endpoints known; the sink stores tokens encrypted;
/// secrets come from `x-secret` variables; the redirect URI is this route at BACKEND_URL, https in
/// production.
pub(super) fn check_oauth(
    c: &Checked,
    p: &Pipeline,
    o: &oauth::OAuth,
    settings: &Settings,
    schema: &EnvSchema,
    env: &Env,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut at = |pointer: &str, message: String| {
        let pos = c.doc.value_pos(pointer);
        out.push(Diagnostic::new(&c.file, pos, pointer, message));
    };
    for (key, present) in [
        ("verify", p.verify.is_some()),
        ("queue", p.queue.is_some()),
        ("transform", !p.transform.is_empty()),
    ] {
        if present {
            at(
                &format!("/{key}"),
                format!("an `oauth` pipeline answers its own routes: remove `{key}`"),
            );
        }
    }
    if p.route.method != units::HttpMethod::Get {
        at(
            "/route/method",
            "an OAuth callback is a GET: the provider redirects the browser there".into(),
        );
    }
    if o.provider.is_none() && (o.authorize_url.is_none() || o.token_url.is_none()) {
        at(
            "/oauth",
            "give `provider: google`, or both `authorize_url` and `token_url`".into(),
        );
    }
    let production = env.is_production();
    for (key, url) in [
        ("authorize_url", &o.authorize_url),
        ("token_url", &o.token_url),
    ] {
        // empty: its variable is not set (reported with the environment)
        if let Some(u) = url.as_ref().filter(|u| !u.is_empty()) {
            match url::Url::parse(u) {
                Err(_) => at(&format!("/oauth/{key}"), "must be an absolute URL".into()),
                Ok(parsed) if production && parsed.scheme() != "https" => at(
                    &format!("/oauth/{key}"),
                    "must be https in production".into(),
                ),
                Ok(_) => {}
            }
        }
    }
    for (pointer, message) in token_sink_problems(p, o) {
        at(&pointer, message);
    }
    if !o.redirect_uri.is_empty() {
        match url::Url::parse(&o.redirect_uri) {
            Err(_) => at("/oauth/redirect_uri", "must be an absolute URL".into()),
            Ok(u) => {
                if u.path() != p.route.path {
                    at(
                        "/oauth/redirect_uri",
                        format!(
                            "its path `{}` is not this pipeline's route `{}`: the provider would redirect elsewhere",
                            u.path(),
                            p.route.path
                        ),
                    );
                }
                if let Some(base) = &settings.public_url {
                    let want = format!("{}{}", base.trim_end_matches('/'), p.route.path);
                    if o.redirect_uri.trim_end_matches('/') != want {
                        at(
                            "/oauth/redirect_uri",
                            format!(
                                "is not BACKEND_URL + the route (`{want}`); register that URL at the provider"
                            ),
                        );
                    }
                }
                if production && u.scheme() != "https" {
                    at("/oauth/redirect_uri", "must be https in production".into());
                }
            }
        }
    }
    for pointer in ["/oauth/client_secret", "/oauth/start/jwt/secret"] {
        if let Some(text) = c.doc.value.pointer(pointer).and_then(Value::as_str) {
            secret_reference(c, pointer, text, schema, &mut out);
        }
    }
    out
}

/// Connections: an absolute http(s) base URL (https in production) with no query; OAuth tokens
/// of an existing `oauth` pipeline; a bearer token from an `x-secret` variable; only a pipeline
/// that answers with a script can call them.
pub(super) fn check_connections(
    c: &Checked,
    p: &Pipeline,
    all: &[(Checked, Pipeline)],
    schema: &EnvSchema,
    env: Option<&Env>,
) -> Vec<Diagnostic> {
    use connection::Auth;
    let mut out = Vec::new();
    let mut secrets = Vec::new();
    let mut at = |pointer: &str, message: String| {
        let pos = c.doc.value_pos(pointer);
        out.push(Diagnostic::new(&c.file, pos, pointer, message));
    };
    if !p.connections.is_empty() && p.respond.script.is_none() && p.respond.inline.is_none() {
        at(
            "/connections",
            "only a respond `script` or `inline` can call connections: add one, or remove `connections`".into(),
        );
    }
    for (name, conn) in &p.connections {
        let pointer = format!("/connections/{name}");
        // a base URL built from variables is only known once the environment is valid
        match url::Url::parse(&conn.base_url) {
            _ if env.is_none() => {}
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if env.is_some_and(Env::is_production) && u.scheme() != "https" {
                    at(
                        &format!("{pointer}/base_url"),
                        "must be https in production".into(),
                    );
                }
                if u.query().is_some() || u.fragment().is_some() {
                    at(
                        &format!("{pointer}/base_url"),
                        "must have no `?query` or `#fragment`: a call gives its own `query`".into(),
                    );
                }
            }
            _ => at(
                &format!("{pointer}/base_url"),
                "must be an absolute http(s) URL, e.g. `https://www.googleapis.com/calendar/v3`"
                    .into(),
            ),
        }
        match &conn.auth {
            Auth::Oauth(provider) => {
                let found = all.iter().find(|(_, q)| &q.name == provider);
                if found.is_none_or(|(_, q)| q.oauth.is_none()) {
                    let oauth: Vec<&str> = all
                        .iter()
                        .filter(|(_, q)| q.oauth.is_some())
                        .map(|(_, q)| q.name.as_str())
                        .collect();
                    at(
                        &format!("{pointer}/auth/oauth"),
                        format!(
                            "`{provider}` is not a pipeline with an `oauth` section{}",
                            if oauth.is_empty() {
                                String::new()
                            } else {
                                format!(" (those are: {})", oauth.join(", "))
                            }
                        ),
                    );
                }
            }
            Auth::Bearer(_) => {
                let bearer = format!("{pointer}/auth/bearer");
                if let Some(text) = c.doc.value.pointer(&bearer).and_then(Value::as_str) {
                    secret_reference(c, &bearer, text, schema, &mut secrets);
                }
            }
            Auth::None => {}
        }
    }
    out.extend(secrets);
    out
}

pub(super) fn check_unique_names(pipelines: &[(Checked, Pipeline)]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, (c, p)) in pipelines.iter().enumerate() {
        if let Some((first, _)) = pipelines[..i].iter().find(|(_, q)| q.name == p.name) {
            let pos = first.doc.value_pos("/name");
            out.push(Diagnostic::new(
                &c.file,
                c.doc.value_pos("/name"),
                "/name",
                format!(
                    "pipeline name `{}` is already used by {}:{}:{}; names must be unique",
                    p.name,
                    first.file.display(),
                    pos.line,
                    pos.col
                ),
            ));
        }
    }
    out
}

/// Rules on the settings file that its schema cannot express.
pub(super) fn check_settings(s: &Settings, c: &Checked, env: &Env) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if s.rate_limit.as_ref().is_some_and(|r| r.counts_verified()) {
        out.push(Diagnostic::new(
            &c.file,
            c.doc.value_pos("/rate_limit/counts"),
            "/rate_limit/counts",
            "`counts: verified` belongs in a pipeline's own rate limit: the default also guards /health and unauthenticated requests, which are never verified",
        ));
    }
    let file_origins = c
        .doc
        .value
        .pointer("/cors/allow_origins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, origin) in file_origins.iter().enumerate() {
        let origin = origin.as_str().unwrap_or_default();
        let pointer = format!("/cors/allow_origins/{i}");
        if let Some(problem) = origin_problem(origin) {
            out.push(Diagnostic::new(
                &c.file,
                c.doc.value_pos(&pointer),
                &pointer,
                problem,
            ));
        }
        if origin == "*" && env.is_production() {
            out.push(Diagnostic::new(
                &c.file,
                c.doc.value_pos(&pointer),
                &pointer,
                "`*` allows every origin; in production (NODE_ENV=production) list the allowed origins",
            ));
        }
    }
    for (i, proxy) in s.trusted_proxies.iter().enumerate() {
        if proxy.parse::<ipnet::IpNet>().is_err() && proxy.parse::<std::net::IpAddr>().is_err() {
            let pointer = format!("/trusted_proxies/{i}");
            out.push(Diagnostic::new(
                &c.file,
                c.doc.value_pos(&pointer),
                &pointer,
                "must be an IP address or CIDR range, e.g. `10.0.0.0/8`",
            ));
        }
    }
    out
}

/// Browsers send `Origin: scheme://host[:port]`, never a path or trailing slash, so an entry with
/// one never matches.
/// The queue's promises that the schema cannot check: a replication wait inside the request
/// path's 2 s Redis budget, and `durability` only where there is a queued 2xx to promise.
pub(super) fn check_queue(c: &Checked, p: &Pipeline) -> Vec<Diagnostic> {
    use super::queue::{Ack, Durability};
    let Some(q) = &p.queue else {
        return Vec::new();
    };
    let at = |pointer: &str, message: &str| {
        Diagnostic::new(&c.file, c.doc.value_pos(pointer), pointer, message)
    };
    let mut out = Vec::new();
    if q.replication.timeout.0 > std::time::Duration::from_millis(1500) {
        out.push(at(
            "/queue/replication/timeout",
            "at most `1500ms`: the wait for replicas is part of the request's 2 s Redis budget",
        ));
    }
    if q.durability == Durability::Replicated && q.ack == Ack::Processed {
        out.push(at(
            "/queue/durability",
            "`ack: processed` answers once the rows are written, not once the event is queued: remove `durability`, or use `ack: queued`",
        ));
    }
    out
}

pub fn origin_problem(origin: &str) -> Option<String> {
    if origin == "*" {
        return None;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Some("an origin is `scheme://host[:port]`, e.g. `https://app.example.com`".into());
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return Some("an origin is `http(s)://host[:port]`, e.g. `https://app.example.com`".into());
    }
    if rest.contains('/') {
        return Some(
            "an origin has no path or trailing `/` (browsers send `https://app.example.com`)"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_problem("https://voxanne.ai"), None);
        assert_eq!(origin_problem("http://localhost:3000"), None);
        assert!(origin_problem("https://voxanne.ai/").is_some());
        assert!(origin_problem("voxanne.ai").is_some());
        assert!(origin_problem("ftp://x").is_some());
    }
}
