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

mod load;
mod read;
mod rules;

pub use load::load_with;
pub use read::read_typed;
use read::*;
pub use rules::origin_problem;

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
    /// The YAML as read, with its positions; empty in a running app ([`Project::served`]).
    pub doc: Document,
    /// Shared with the pipeline's served route (`server::route::Route::config`), so the request
    /// path reads its own pipeline's settings, never another list's element by index.
    pub config: std::sync::Arc<Pipeline>,
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
    /// The project as a running app keeps it. Each pipeline's YAML document (its values and their
    /// positions: ~32 KiB for a shipped pipeline) serves only the diagnostics of loading, the
    /// build step and the boot-time table check, all reported before an app is built, so it is
    /// dropped here (docs/benchmarks.md, "Many pipelines").
    pub fn served(mut self) -> Project {
        for p in &mut self.pipelines {
            p.doc = Document::default();
        }
        self
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
