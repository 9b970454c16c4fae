//! Loading and validating a pipelines directory.
//!
//! A deployment is one directory:
//!
//! ```text
//! pipelines/
//!   env.schema.yaml   the environment variables it reads (JSON Schema)    -> crate::env
//!   engine.yaml       server-wide settings (optional)                     -> settings
//!   *.yaml            one pipeline per file                               -> pipeline
//! ```
//!
//! [`load`] is pure apart from reading those files: given the directory and an [`EnvSource`] it
//! returns a [`Project`] or every problem found, each with file, line and column. The stages are
//! YAML parsing with positions, JSON-schema checks (schemas generated from the Rust types here),
//! `${VAR}` reference checks, typed deserialization, then semantic rules across files (unique
//! names, non-overlapping routes). `engine validate` and `engine serve` both call it.

pub mod connection;
pub mod deployment;
pub mod env_refs;
pub mod oauth;
pub mod operations;
pub mod pipeline;
pub mod queue;
pub mod rate_limit;
pub mod settings;
pub mod sink;
pub mod transform;
pub mod units;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jsonschema::Validator;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diagnostics::Diagnostic;
use crate::env::{ENV_SCHEMA_FILE, Env, EnvSchema, EnvSource};
use crate::route::RouteTable;
use crate::yaml::{self, Document, Pos};
pub use pipeline::Pipeline;
pub use settings::Settings;

/// File name of the settings file inside the pipelines directory.
pub const SETTINGS_FILE: &str = "engine.yaml";

/// A pipeline, the file it came from and where each of its values is written (for positioned
/// errors of the build step, `crate::plan`).
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub file: PathBuf,
    pub doc: Document,
    pub config: Pipeline,
}

/// What loading hands the build step for each pipeline that parsed: its index among them, file,
/// positions and typed configuration. The build step (`crate::plan`) compiles what loading only
/// describes — verifiers, transform programs, responders — and keeps the results: loading itself
/// builds no runtime object.
pub struct Unit<'a> {
    pub index: usize,
    pub file: &'a Path,
    pub doc: &'a Document,
    pub pipeline: &'a Pipeline,
    /// The pipelines directory (scripts must stay inside it).
    pub root: &'a Path,
}

/// The build step, called by [`load_with`] while it checks, so its problems are reported with
/// loading's, every one at once and in file order.
pub trait Compile {
    /// The pipeline's scripts (transform steps, respond template or script).
    fn scripts(&mut self, unit: &Unit<'_>) -> Vec<Diagnostic>;
    /// Its verifier, once everything it reads (the environment, the `verify` section) is valid.
    fn verifier(&mut self, unit: &Unit<'_>, verify: &verify::Verify) -> Vec<Diagnostic>;
}

/// No build step: only what the files declare is checked.
struct Declarative;

impl Compile for Declarative {
    fn scripts(&mut self, _: &Unit<'_>) -> Vec<Diagnostic> {
        Vec::new()
    }
    fn verifier(&mut self, _: &Unit<'_>, _: &verify::Verify) -> Vec<Diagnostic> {
        Vec::new()
    }
}

/// A validated pipelines directory, ready to serve.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    /// Findings that do not stop the engine (unused or doubly set variables): printed by
    /// `validate`, logged at boot.
    pub warnings: Vec<Diagnostic>,
    pub env: Env,
    pub settings: Settings,
    /// What operating the engine needs from the environment, typed, secrets wrapped.
    pub ops: operations::Operations,
    pub pipelines: Vec<LoadedPipeline>,
    pub routes: RouteTable,
}

impl Project {
    /// Largest body a pipeline accepts.
    pub fn body_limit(&self, pipeline: usize) -> u64 {
        self.pipelines[pipeline]
            .config
            .body_limit
            .unwrap_or(self.settings.body_limit)
            .bytes()
    }
}

/// The pipeline and settings schemas, by the file name `engine schema` writes them to.
pub fn generated_schemas() -> Vec<(&'static str, Value)> {
    vec![
        ("pipeline.schema.json", PIPELINE_SCHEMA.0.clone()),
        ("settings.schema.json", SETTINGS_SCHEMA.0.clone()),
    ]
}

/// A type's JSON schema and its compiled validator.
pub fn generate<T: schemars::JsonSchema>() -> (Value, Validator) {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("schemas serialize");
    crate::schema::standardize(&mut schema);
    let validator = crate::schema::compile(&schema).expect("generated schemas compile");
    (schema, validator)
}

// Compiled once per process: validating 50 pipelines must not compile the schema 50 times.
static PIPELINE_SCHEMA: LazyLock<(Value, Validator)> = LazyLock::new(generate::<Pipeline>);
static SETTINGS_SCHEMA: LazyLock<(Value, Validator)> = LazyLock::new(generate::<Settings>);

/// A parsed file that passed its schema and reference checks.
struct Checked {
    file: PathBuf,
    doc: Document,
}

/// Load and validate `dir`, reading variables from `source`: what the files declare, without
/// compiling anything (`crate::plan::load` adds the build step).
pub fn load(dir: &Path, source: &EnvSource) -> Result<Project, Vec<Diagnostic>> {
    load_with(dir, source, &mut Declarative)
}

/// [`load`], with `compile` called for every pipeline that parsed.
pub fn load_with(
    dir: &Path,
    source: &EnvSource,
    compile: &mut dyn Compile,
) -> Result<Project, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let files = list_yaml_files(dir).map_err(|d| vec![d])?;

    let env_schema = match EnvSchema::load(&dir.join(ENV_SCHEMA_FILE)) {
        Ok(s) => Some(s),
        Err(d) => {
            diags.extend(d);
            None
        }
    };
    let env = match env_schema.as_ref().map(|s| s.validate(source)) {
        Some(Ok(env)) => Some(env),
        Some(Err(d)) => {
            diags.extend(d);
            None
        }
        None => None,
    };
    // Later stages still run without a valid environment so every file problem is reported too.
    let env_for_values = env.clone().unwrap_or_default();

    let settings_path = dir.join(SETTINGS_FILE);
    let settings_doc = if settings_path.exists() {
        check_file(
            &settings_path,
            &SETTINGS_SCHEMA,
            env_schema.as_ref(),
            &mut diags,
        )
    } else {
        None
    };
    let settings_value = settings_doc.as_ref().map(|c| {
        let mut v = c.doc.value.clone();
        env_refs::interpolate(&mut v, &env_for_values);
        v
    });
    let settings = match settings::layer(settings_value.as_ref(), &env_for_values) {
        Ok(s) => Some(s),
        Err((key, expected)) => {
            let pointer = format!("/{}", key.replace('.', "/"));
            let (file, pos) = match &settings_doc {
                Some(c) => (c.file.clone(), c.doc.value_pos(&pointer)),
                None => (settings_path.clone(), Pos::START),
            };
            diags.push(Diagnostic::new(
                file,
                pos,
                &pointer,
                format!("setting `{key}` {expected} (after applying environment overrides)"),
            ));
            None
        }
    };
    if let (Some(s), Some(c)) = (&settings, &settings_doc) {
        diags.extend(check_settings(s, c, &env_for_values));
    }

    let mut pipelines: Vec<(Checked, Pipeline)> = Vec::new();
    for file in files
        .iter()
        .filter(|f| !is_named(f, SETTINGS_FILE) && !is_named(f, ENV_SCHEMA_FILE))
    {
        let Some(checked) = check_file(file, &PIPELINE_SCHEMA, env_schema.as_ref(), &mut diags)
        else {
            continue;
        };
        let mut value = checked.doc.value.clone();
        env_refs::interpolate(&mut value, &env_for_values);
        match typed::<Pipeline>(value, &checked) {
            Ok(p) => pipelines.push((checked, p)),
            Err(d) => diags.push(d),
        }
    }
    if files
        .iter()
        .all(|f| is_named(f, SETTINGS_FILE) || is_named(f, ENV_SCHEMA_FILE))
    {
        diags.push(Diagnostic::new(
            dir,
            Pos::START,
            "",
            "no pipeline files here: add one YAML file per webhook route",
        ));
    }

    if let (Some(schema), Some(settings)) = (&env_schema, &settings) {
        for (index, (checked, p)) in pipelines.iter().enumerate() {
            if let Some(v) = &p.verify {
                let found = check_verify(checked, schema, env.as_ref(), settings);
                // built from interpolated values, which mean something only once the
                // environment is valid
                let built = if found.is_empty() && env.is_some() {
                    compile.verifier(&unit(index, checked, p, dir), v)
                } else {
                    Vec::new()
                };
                diags.extend(found);
                diags.extend(built);
            }
        }
    }
    for (index, (checked, p)) in pipelines.iter().enumerate() {
        diags.extend(compile.scripts(&unit(index, checked, p, dir)));
        if let (Some(o), Some(settings), Some(schema)) = (&p.oauth, &settings, &env_schema) {
            diags.extend(check_oauth(
                checked,
                p,
                o,
                settings,
                schema,
                &env_for_values,
            ));
        }
        for (i, step) in p.transform.iter().enumerate() {
            if let Some(sink) = step.sink.as_ref().filter(|s| !p.sinks.contains_key(*s)) {
                let pointer = format!("/transform/{i}/sink");
                let known: Vec<&str> = p.sinks.keys().map(String::as_str).collect();
                diags.push(Diagnostic::new(
                    &checked.file,
                    checked.doc.value_pos(&pointer),
                    &pointer,
                    if known.is_empty() {
                        format!("no sink named `{sink}`: declare it under `sinks`")
                    } else {
                        format!(
                            "no sink named `{sink}`; this pipeline's sinks: {}",
                            known.join(", ")
                        )
                    },
                ));
            }
        }
        if p.rate_limit.as_ref().is_some_and(|r| !r.exempt.is_empty()) {
            diags.push(Diagnostic::new(
                &checked.file,
                checked.doc.key_pos("/rate_limit/exempt"),
                "/rate_limit/exempt",
                "`exempt` belongs in the settings' default rate limit; to turn a pipeline's limit off write `enabled: false`",
            ));
        }
        if p.rate_limit.as_ref().is_some_and(|r| r.counts_verified()) && p.verify.is_none() {
            diags.push(Diagnostic::new(
                &checked.file,
                checked.doc.value_pos("/rate_limit/counts"),
                "/rate_limit/counts",
                "`counts: verified` needs a `verify` section (only verified requests would count, and this pipeline verifies none): add `verify`, or remove `counts`",
            ));
        }
    }
    if let (Some(s), Some(c)) = (&settings, &settings_doc) {
        let known: Vec<&str> = std::iter::once("/health")
            .chain(pipelines.iter().map(|(_, p)| p.route.path.as_str()))
            .collect();
        for (i, path) in s
            .rate_limit
            .iter()
            .flat_map(|r| r.exempt.iter())
            .enumerate()
        {
            if !known.contains(&path.as_str()) {
                let pointer = format!("/rate_limit/exempt/{i}");
                diags.push(Diagnostic::new(
                    &c.file,
                    c.doc.value_pos(&pointer),
                    &pointer,
                    format!("`{path}` is neither /health nor a pipeline's route path"),
                ));
            }
        }
    }
    diags.extend(check_unique_names(&pipelines));
    if let Some(schema) = &env_schema {
        for (checked, p) in &pipelines {
            diags.extend(check_connections(
                checked,
                p,
                &pipelines,
                schema,
                env.as_ref(),
            ));
        }
    }
    // every route with its pipeline and where it is written: `route`, and an OAuth start path
    let mut listed: Vec<(crate::config::units::HttpMethod, &str, usize, &str)> = Vec::new();
    for (i, (_, p)) in pipelines.iter().enumerate() {
        listed.push((p.route.method, p.route.path.as_str(), i, "/route/path"));
        if let Some(o) = &p.oauth {
            listed.push((
                crate::config::units::HttpMethod::Get,
                o.start.path.as_str(),
                i,
                "/oauth/start/path",
            ));
        }
    }
    let strict = |i: usize| !pipelines[i].1.route.trailing_slash.is_match();
    let routes = match RouteTable::build_indexed(
        &listed
            .iter()
            .map(|(m, path, i, _)| (*m, *path, *i, strict(*i)))
            .collect::<Vec<_>>(),
    ) {
        Ok(t) => Some(t),
        Err(conflicts) => {
            for c in conflicts {
                let (_, _, at, pointer) = listed[c.pipeline];
                let (checked, _) = &pipelines[at];
                let mut message = c.message;
                if let Some(other) = c.with {
                    let (_, _, o_at, o_pointer) = listed[other];
                    let (o, _) = &pipelines[o_at];
                    let pos = o.doc.value_pos(o_pointer);
                    message.push_str(&format!(
                        " by {}:{}:{}",
                        o.file.display(),
                        pos.line,
                        pos.col
                    ));
                }
                diags.push(Diagnostic::new(
                    &checked.file,
                    checked.doc.value_pos(pointer),
                    pointer,
                    message,
                ));
            }
            None
        }
    };

    // The deployment's environment as a whole: misspelt and unused variables, production rules.
    let mut warnings = Vec::new();
    if let Some(schema) = &env_schema {
        let (w, e): (Vec<_>, Vec<_>) = deployment::check_misspelt(schema, source)
            .into_iter()
            .partition(Diagnostic::is_warning);
        diags.extend(e);
        warnings.extend(w);
        let referenced: std::collections::BTreeSet<String> = settings_doc
            .iter()
            .chain(pipelines.iter().map(|(c, _)| c))
            .flat_map(|c| env_refs::referenced(&c.doc.value))
            .collect();
        warnings.extend(deployment::check_unused(schema, source, &referenced));
        if let (Some(env), Some(settings)) = (&env, &settings) {
            diags.extend(deployment::check_production(schema, source, env, settings));
            diags.extend(deployment::check_supabase_project(
                schema, source, env, settings,
            ));
        }
    }

    match (env, settings, routes) {
        (Some(env), Some(settings), Some(routes)) if diags.is_empty() => Ok(Project {
            dir: dir.to_path_buf(),
            warnings,
            ops: operations::Operations::from_env(&env),
            env,
            settings,
            pipelines: pipelines
                .into_iter()
                .map(|(c, config)| LoadedPipeline {
                    file: c.file,
                    doc: c.doc,
                    config,
                })
                .collect(),
            routes,
        }),
        // Warnings wait until the errors are fixed: the list that refuses a boot stays the
        // list of what must change.
        _ => Err(diags),
    }
}

fn unit<'a>(index: usize, c: &'a Checked, p: &'a Pipeline, root: &'a Path) -> Unit<'a> {
    Unit {
        index,
        file: &c.file,
        doc: &c.doc,
        pipeline: p,
        root,
    }
}

/// `*.yaml` / `*.yml` files directly in `dir`, sorted, hidden files skipped.
fn list_yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::new(
            dir,
            Pos::START,
            "",
            format!("cannot read the pipelines directory: {e}"),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

fn is_named(path: &Path, name: &str) -> bool {
    path.file_name().and_then(|n| n.to_str()) == Some(name)
}

/// Parse a file and check it against a schema and the env schema's declared variables.
/// Diagnostics go to `diags`; `None` when the file cannot be used further.
fn check_file(
    file: &Path,
    schema: &(Value, Validator),
    env_schema: Option<&EnvSchema>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Checked> {
    let doc = parse_checked(file, schema, diags)?;
    let refs = env_refs::check(&doc, file, env_schema);
    let clean = refs.is_empty();
    diags.extend(refs);
    clean.then(|| Checked {
        file: file.to_path_buf(),
        doc,
    })
}

/// Read and parse a YAML file and check it against a schema; diagnostics go to `diags`.
fn parse_checked(
    file: &Path,
    schema: &(Value, Validator),
    diags: &mut Vec<Diagnostic>,
) -> Option<Document> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::new(
                file,
                Pos::START,
                "",
                format!("cannot read: {e}"),
            ));
            return None;
        }
    };
    let doc = match yaml::parse_bytes(&bytes) {
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::new(file, e.pos(), "", e.to_string()));
            return None;
        }
    };
    let found = crate::schema::check(&schema.1, &schema.0, &doc, file);
    let clean = found.is_empty();
    diags.extend(found);
    clean.then_some(doc)
}

/// A YAML file of another kind than a pipeline (a replay fixture): parsed with positions,
/// checked against `schema` and deserialized, or every problem found.
pub fn read_typed<T: DeserializeOwned>(
    file: &Path,
    schema: &(Value, Validator),
) -> Result<(Document, T), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let doc = parse_checked(file, schema, &mut diags).ok_or(diags)?;
    let checked = Checked {
        file: file.to_path_buf(),
        doc,
    };
    let value = typed::<T>(checked.doc.value.clone(), &checked).map_err(|d| vec![d])?;
    Ok((checked.doc, value))
}

/// Deserialize a schema-valid document. A failure here means the schema let through something
/// the types refuse; report it at the value's position without repeating the value.
fn typed<T: DeserializeOwned>(value: Value, checked: &Checked) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer: String = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(format!("/{}", yaml::escape_token(key))),
                serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                _ => None,
            })
            .collect();
        Diagnostic::new(
            &checked.file,
            checked.doc.value_pos(&pointer),
            &pointer,
            "this value cannot be used here (after `${VAR}` substitution); check its type in the reference",
        )
    })
}

/// A secret field's text must be exactly `${NAME}` of a declared `x-secret` variable: the name,
/// or `None` with the problem pushed to `out` (an undeclared name is left to the reference check).
fn secret_reference<'t>(
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
fn check_verify(
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

/// Transform steps and computed responses compile; scripts stay inside the directory.
/// An OAuth pipeline: only a callback route; endpoints known; the sink stores tokens encrypted;
/// secrets come from `x-secret` variables; the redirect URI is this route at BACKEND_URL, https in
/// production.
fn check_oauth(
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
    match p.sinks.get(&o.sink) {
        None => at(
            "/oauth/sink",
            format!(
                "no sink named `{}`: declare a postgres sink for the tokens",
                o.sink
            ),
        ),
        Some(sink::Sink::Postgres(pg)) => {
            let missing: Vec<&str> = ["access_token", "refresh_token"]
                .into_iter()
                .filter(|f| !pg.encrypt.iter().any(|e| e == f))
                .collect();
            if !missing.is_empty() {
                at(
                    &format!("/sinks/{}/postgres", yaml::escape_token(&o.sink)),
                    format!(
                        "tokens are stored encrypted: add {} to `encrypt`",
                        missing.join(" and ")
                    ),
                );
            }
        }
        Some(_) => at(
            "/oauth/sink",
            "the tokens' sink must be a `postgres` sink".into(),
        ),
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
fn check_connections(
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

fn check_unique_names(pipelines: &[(Checked, Pipeline)]) -> Vec<Diagnostic> {
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
fn check_settings(s: &Settings, c: &Checked, env: &Env) -> Vec<Diagnostic> {
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

    #[test]
    fn generated_schemas_compile() {
        for (name, schema) in generated_schemas() {
            crate::schema::compile(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
