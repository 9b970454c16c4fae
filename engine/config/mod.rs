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

pub mod archive;
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

mod read;
mod rules;

pub use read::read_typed;
use read::*;
pub use rules::origin_problem;
use rules::*;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;

use crate::diagnostics::Diagnostic;
use crate::env::{ENV_SCHEMA_FILE, Env, EnvSchema, EnvSource};
use crate::route::RouteTable;
use crate::yaml::{Document, Pos};
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
    let mut pipeline_warnings: Vec<Diagnostic> = Vec::new();
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
        diags.extend(check_sink_names(checked, p));
        diags.extend(rules::check_queue(checked, p));
        let (warned, refused): (Vec<_>, Vec<_>) = check_rate_limit(checked, p, settings.as_ref())
            .into_iter()
            .partition(Diagnostic::is_warning);
        diags.extend(refused);
        pipeline_warnings.extend(warned);
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
    let route_of = |i: usize| &pipelines[i].1.route;
    let routes = match RouteTable::build_indexed(
        &listed
            .iter()
            .map(|(m, path, i, _)| crate::route::Spec {
                method: *m,
                path,
                pipeline: *i,
                strict_slash: !route_of(*i).trailing_slash.is_match(),
                case_sensitive: route_of(*i).case_sensitive,
            })
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
    let mut warnings = pipeline_warnings;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_schemas_compile() {
        for (name, schema) in generated_schemas() {
            crate::schema::compile(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
