//! Rules on a deployment's environment that the env schema alone cannot express, checked by
//! `engine validate` and at boot after the schema has typed the variables:
//!
//! ```text
//! set variables ──> misspelt?   an undeclared name one or two letters from a declared one
//!                               (CORS_ORIGINS, REDIS_URI, ENCRYPTON_KEY): an error while the
//!                               declared one is unset (the value would be silently ignored),
//!                               a warning when both are set
//!               ──> unused?     declared and set, but nothing reads it: neither the engine's
//!                               own settings nor a `${VAR}` in a pipeline (a warning)
//! production    ──> DATABASE_URL to a non-local host without `sslmode=require` or stronger
//!               ──> CORS origins: every allowed origin https and not local (the development
//!                               origin in engine.yaml must not be what production serves)
//! SUPABASE_URL  ──> DATABASE_URL must point at the same Supabase project
//! ```
//!
//! Like every diagnostic, these name variables and rules, never values.

use std::collections::BTreeSet;

use crate::diagnostics::Diagnostic;
use crate::env::{Env, EnvSchema, EnvSource};

use super::settings::{ENV_OVERRIDES, Settings};

/// Variables the engine itself reads, besides the settings overrides and `${VAR}` references.
pub const ENGINE_READS: &[&str] = &[
    "NODE_ENV",
    "ENCRYPTION_KEY",
    "ENCRYPTION_KEY_PREVIOUS",
    "METRICS_TOKEN",
    "CONSOLE_TOKEN",
    "SENTRY_DSN",
    "SLACK_WEBHOOK_URL",
    "ALERT_SINK_OUTAGE_SECS",
    // checked against DATABASE_URL: both must name one Supabase project
    "SUPABASE_URL",
];

/// Undeclared variables that look like a misspelt declared one: (set name, declared name).
pub fn near_misses(schema: &EnvSchema, source: &EnvSource) -> Vec<(String, String)> {
    let declared: Vec<&str> = schema.names().collect();
    let mut out = Vec::new();
    for name in source.names() {
        if schema.declares(name) {
            continue;
        }
        let best = declared
            .iter()
            .map(|d| (strsim::damerau_levenshtein(name, d), *d))
            .filter(|(distance, d)| *distance <= allowed_distance(name.len().min(d.len())))
            .min();
        if let Some((_, d)) = best {
            out.push((name.to_string(), d.to_string()));
        }
    }
    out
}

/// Edits a misspelling may be from its name: short names are left alone (`PWD` is not `PORT`).
fn allowed_distance(len: usize) -> usize {
    match len {
        0..=4 => 0,
        5..=7 => 1,
        _ => 2,
    }
}

/// Misspelt variables: errors where the declared twin is unset, warnings where it is set too.
pub fn check_misspelt(schema: &EnvSchema, source: &EnvSource) -> Vec<Diagnostic> {
    near_misses(schema, source)
        .into_iter()
        .map(|(set, declared)| {
            // the misspelt line of a dotenv file, else the declaration it was meant for
            let at = if source.line_of(&set).is_some() {
                set.as_str()
            } else {
                declared.as_str()
            };
            if source.get(&declared).is_some() {
                schema
                    .locate(
                        source,
                        at,
                        format!("{set} is set but not declared, and {declared} is set too: the engine reads only {declared}; remove {set}"),
                    )
                    .warning()
            } else {
                schema.locate(
                    source,
                    at,
                    format!("{set} is set but not declared: did you mean {declared}? The engine reads only declared variables, so {set} is ignored; rename it to {declared}"),
                )
            }
        })
        .collect()
}

/// Declared, set, and read by nothing: warnings (the deployment works without them).
pub fn check_unused(
    schema: &EnvSchema,
    source: &EnvSource,
    referenced: &BTreeSet<String>,
) -> Vec<Diagnostic> {
    let read_by_engine = |name: &str| {
        ENGINE_READS.contains(&name)
            || super::operations::TRACE_VARIABLES.contains(&name)
            || ENV_OVERRIDES.iter().any(|(var, _)| *var == name)
    };
    schema
        .names()
        .filter(|name| source.get(name).is_some())
        .filter(|name| !read_by_engine(name) && !referenced.contains(*name))
        .map(|name| {
            schema
                .locate(
                    source,
                    name,
                    format!("{name} is set, but nothing in this deployment reads it (no pipeline refers to `${{{name}}}`): remove it from the environment, or use it in a pipeline"),
                )
                .warning()
        })
        .collect()
}

/// Production rules on the settings the environment produced.
pub fn check_production(
    schema: &EnvSchema,
    source: &EnvSource,
    env: &Env,
    settings: &Settings,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if !env.is_production() {
        return out;
    }
    if let Some(url) = &settings.database_url
        && let Some(problem) = database_tls_problem(url)
    {
        out.push(schema.locate(source, "DATABASE_URL", format!("DATABASE_URL: {problem}")));
    }
    if settings
        .cors
        .allow_origins
        .iter()
        .any(|o| o.starts_with("http://") || is_local_origin(o))
    {
        let message = if source.get("CORS_ORIGIN").is_none() {
            "CORS_ORIGIN: is required in production: the allowed origins would be engine.yaml's development ones (http:// or local); name your web app's origins, e.g. CORS_ORIGIN=https://voxanne.ai".to_string()
        } else {
            "CORS_ORIGIN: production allows only https:// origins that are not local: list your web app's public origins, e.g. CORS_ORIGIN=https://voxanne.ai".to_string()
        };
        out.push(schema.locate(source, "CORS_ORIGIN", message));
    }
    out
}

/// SUPABASE_URL and DATABASE_URL must name the same project when both are Supabase's.
pub fn check_supabase_project(
    schema: &EnvSchema,
    source: &EnvSource,
    env: &Env,
    settings: &Settings,
) -> Vec<Diagnostic> {
    let (Some(project_url), Some(database_url)) =
        (env.get_string("SUPABASE_URL"), &settings.database_url)
    else {
        return Vec::new();
    };
    match (
        supabase_ref_of_project_url(&project_url),
        supabase_ref_of_database_url(database_url),
    ) {
        (Some(a), Some(b)) if a != b => vec![schema.locate(
            source,
            "DATABASE_URL",
            "DATABASE_URL: connects to a different Supabase project than SUPABASE_URL names: copy the connection string from the same project (Supabase → Connect)".to_string(),
        )],
        _ => Vec::new(),
    }
}

/// Why a production DATABASE_URL may travel unencrypted, if it may.
pub fn database_tls_problem(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str().unwrap_or("");
    let query_host = parsed
        .query_pairs()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.into_owned());
    // A socket directory (`?host=/var/run/postgresql`) or a loopback address never leaves the
    // machine.
    let effective = query_host.as_deref().unwrap_or(host);
    if effective.is_empty() || effective.starts_with('/') || is_local_host(effective) {
        return None;
    }
    let mode = parsed
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.into_owned());
    match mode.as_deref() {
        Some("require" | "verify-ca" | "verify-full") => None,
        Some(other) => Some(format!(
            "`sslmode={other}` to a non-local database lets the connection fall back to plain text in production: use `sslmode=require` (or `verify-full` with `sslrootcert=<CA file>`)"
        )),
        None => Some("connects to a non-local database without TLS being required: add `?sslmode=require` to the connection string (or `verify-full` with `sslrootcert=<CA file>`; Supabase requires TLS)".to_string()),
    }
}

fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_local_origin(origin: &str) -> bool {
    url::Url::parse(origin)
        .ok()
        .and_then(|u| u.host_str().map(is_local_host))
        .unwrap_or(false)
}

/// `https://<ref>.supabase.co` → `<ref>`.
fn supabase_ref_of_project_url(url: &str) -> Option<String> {
    let host = url::Url::parse(url).ok()?.host_str()?.to_string();
    host.strip_suffix(".supabase.co")
        .filter(|r| !r.contains('.'))
        .map(str::to_string)
}

/// The project of a Supabase connection string: the direct host `db.<ref>.supabase.co`, or the
/// pooler's user `postgres.<ref>` on `*.pooler.supabase.com`.
fn supabase_ref_of_database_url(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    if let Some(r) = host
        .strip_prefix("db.")
        .and_then(|h| h.strip_suffix(".supabase.co"))
    {
        return Some(r.to_string());
    }
    if host.ends_with(".pooler.supabase.com") {
        return parsed
            .username()
            .split_once('.')
            .map(|(_, r)| r.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_required_for_remote_databases_only() {
        assert!(database_tls_problem("postgres://u:p@db.abc.supabase.co:5432/postgres").is_some());
        assert!(
            database_tls_problem("postgres://u:p@db.abc.supabase.co/postgres?sslmode=prefer")
                .unwrap()
                .contains("sslmode=prefer")
        );
        assert!(
            database_tls_problem("postgres://u:p@db.abc.supabase.co/postgres?sslmode=disable")
                .is_some()
        );
        for ok in [
            "postgres://u:p@db.abc.supabase.co/postgres?sslmode=require",
            "postgresql://u:p@x.pooler.supabase.com:6543/postgres?sslmode=verify-full&sslrootcert=ca.pem",
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://postgres@localhost/test",
            "postgres://postgres@[::1]:5432/test",
            "postgres:///test?host=/var/run/postgresql",
        ] {
            assert_eq!(database_tls_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn problems_never_quote_the_url() {
        let url = "postgres://user:hunter2@db.abc.supabase.co:5432/postgres?sslmode=allow";
        let p = database_tls_problem(url).unwrap();
        assert!(!p.contains("hunter2") && !p.contains("db.abc"), "{p}");
    }

    #[test]
    fn supabase_projects() {
        assert_eq!(
            supabase_ref_of_project_url("https://lbjymlodxprzqgtyqtcq.supabase.co").as_deref(),
            Some("lbjymlodxprzqgtyqtcq")
        );
        assert_eq!(
            supabase_ref_of_database_url(
                "postgresql://postgres:pw@db.lbjymlodxprzqgtyqtcq.supabase.co:5432/postgres"
            )
            .as_deref(),
            Some("lbjymlodxprzqgtyqtcq")
        );
        assert_eq!(
            supabase_ref_of_database_url(
                "postgresql://postgres.lbjymlodxprzqgtyqtcq:pw@aws-0-us-west-1.pooler.supabase.com:6543/postgres"
            )
            .as_deref(),
            Some("lbjymlodxprzqgtyqtcq")
        );
        assert_eq!(
            supabase_ref_of_database_url("postgres://u@127.0.0.1/x"),
            None
        );
    }

    #[test]
    fn misspellings_are_found_and_short_or_distant_names_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env.schema.yaml");
        std::fs::write(
            &file,
            "properties:\n  CORS_ORIGIN: {type: string}\n  REDIS_URL: {type: string}\n  ENCRYPTION_KEY: {type: string}\n  PORT: {type: integer}\n",
        )
        .unwrap();
        let schema = EnvSchema::load(&file).unwrap();
        let source = EnvSource::from_pairs([
            ("CORS_ORIGINS", "https://a.example"),
            ("REDIS_URI", "redis://r"),
            ("ENCRYPTON_KEY", "k"),
            ("PWD", "/root"),
            ("HOME", "/root"),
            ("REDIS_URL", "redis://r"),
        ]);
        let mut found = near_misses(&schema, &source);
        found.sort();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            found,
            [
                pair("CORS_ORIGINS", "CORS_ORIGIN"),
                pair("ENCRYPTON_KEY", "ENCRYPTION_KEY"),
                pair("REDIS_URI", "REDIS_URL"),
            ]
        );
        // REDIS_URL is set too: a warning; the others hide an unset variable: errors
        let diags = check_misspelt(&schema, &source);
        let warnings: Vec<&str> = diags
            .iter()
            .filter(|d| d.is_warning())
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("REDIS_URI is set but not declared, and REDIS_URL is set too")
        );
        assert_eq!(diags.iter().filter(|d| !d.is_warning()).count(), 2);
    }
}
