//! The build step: a loaded [`Project`] (data and positions) → a [`Plan`] holding every
//! pipeline's compiled verifier, transform program and responder, each compiled once, every
//! problem reported with its file, line and column. `engine validate` is load + build; `engine
//! serve`, a reload and `engine replay` build from the very same step and hand the plan to
//! [`crate::server::App`], which only wires the compiled parts to the running world (queues,
//! sinks, connections).
//!
//! ```text
//! config::load_with(dir, env, &mut Compiler)   what the files declare, checked
//!   └ per parsed pipeline: Compiler::scripts   transform steps, respond template / script,
//!                                              literal `request("name")` of declared connections
//!                          Compiler::verifier  the `verify` section (once the environment is valid)
//! → (Project, Plan)                            or every diagnostic at once, in file order
//! ```

use std::path::Path;

use crate::config::{Compile, LoadedPipeline, Project, Unit};
use crate::diagnostics::Diagnostic;
use crate::env::EnvSource;
use crate::respond::Responder;
use crate::transform::{Program, ScriptError};
use crate::verify::Verifier;
use crate::yaml::Pos;

/// Every pipeline's compiled parts, in the project's pipeline order (`App::build_in` joins each
/// to its pipeline once).
pub struct Plan {
    pub pipelines: Vec<Built>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("pipelines", &self.pipelines.len())
            .finish()
    }
}

/// One pipeline's compiled parts.
#[derive(Default)]
pub struct Built {
    pub verifier: Option<Verifier>,
    pub program: Option<Program>,
    pub responder: Option<Responder>,
}

/// Load `dir` and build it: what `validate`, `serve` and a reload run.
pub fn load(dir: &Path, source: &EnvSource) -> Result<(Project, Plan), Vec<Diagnostic>> {
    let mut compiler = Compiler::default();
    let project = crate::config::load_with(dir, source, &mut compiler)?;
    let plan = compiler.plan(project.pipelines.len());
    Ok((project, plan))
}

/// Build an already loaded project again (`engine replay` builds one app per case from one
/// loaded project).
pub fn build(project: &Project) -> Result<Plan, Vec<Diagnostic>> {
    let mut compiler = Compiler::default();
    let mut diags = Vec::new();
    for (index, p) in project.pipelines.iter().enumerate() {
        let unit = unit(index, p, &project.dir);
        if let Some(v) = &p.config.verify {
            diags.extend(compiler.verifier(&unit, v));
        }
        diags.extend(compiler.scripts(&unit));
    }
    if diags.is_empty() {
        Ok(compiler.plan(project.pipelines.len()))
    } else {
        Err(diags)
    }
}

fn unit<'a>(index: usize, p: &'a LoadedPipeline, root: &'a Path) -> Unit<'a> {
    Unit {
        index,
        file: &p.file,
        doc: &p.doc,
        pipeline: &p.config,
        root,
    }
}

/// Compiles what loading hands it and keeps the results.
#[derive(Default)]
struct Compiler {
    built: Vec<Built>,
}

impl Compiler {
    fn slot(&mut self, index: usize) -> &mut Built {
        if self.built.len() <= index {
            self.built.resize_with(index + 1, Built::default);
        }
        &mut self.built[index]
    }

    fn plan(mut self, pipelines: usize) -> Plan {
        self.built.resize_with(pipelines, Built::default);
        Plan {
            pipelines: self.built,
        }
    }
}

impl Compile for Compiler {
    fn scripts(&mut self, unit: &Unit<'_>) -> Vec<Diagnostic> {
        let p = unit.pipeline;
        let mut errors = Vec::new();
        match Program::compile(p, unit.file, unit.root) {
            Ok(program) => self.slot(unit.index).program = Some(program),
            Err(e) => errors.extend(e),
        }
        match Responder::compile(p, unit.file, unit.root) {
            Ok(responder) => self.slot(unit.index).responder = Some(responder),
            Err(e) => errors.extend(e),
        }
        let mut out: Vec<Diagnostic> = errors.into_iter().map(|e| positioned(unit, e)).collect();
        out.extend(undeclared_connections(unit));
        out
    }

    fn verifier(
        &mut self,
        unit: &Unit<'_>,
        verify: &crate::config::verify::Verify,
    ) -> Vec<Diagnostic> {
        match Verifier::build(verify) {
            Ok(v) => {
                self.slot(unit.index).verifier = Some(v);
                Vec::new()
            }
            Err(errors) => errors
                .into_iter()
                .map(|(sub, message)| {
                    let pointer = format!("/verify{sub}");
                    Diagnostic::new(unit.file, unit.doc.value_pos(&pointer), &pointer, message)
                })
                .collect(),
        }
    }
}

/// A script error where it is: a script file's own line and column, or the pipeline value of
/// inline code with the position inside it.
fn positioned(unit: &Unit<'_>, e: ScriptError) -> Diagnostic {
    match (&e.script, e.at) {
        (Some(file), Some((line, col))) => Diagnostic::new(file, Pos { line, col }, "", e.message),
        (None, Some((line, col))) => Diagnostic::new(
            unit.file,
            unit.doc.value_pos(&e.pointer),
            &e.pointer,
            format!("{} (line {line}, column {col} of the script)", e.message),
        ),
        _ => Diagnostic::new(
            unit.file,
            unit.doc.value_pos(&e.pointer),
            &e.pointer,
            e.message,
        ),
    }
}

/// Every `request("name", ...)` of the respond script names a declared connection.
fn undeclared_connections(unit: &Unit<'_>) -> Vec<Diagnostic> {
    let p = unit.pipeline;
    let declared: Vec<&str> = p.connections.keys().map(String::as_str).collect();
    let (text, script) = match (&p.respond.script, &p.respond.inline) {
        (Some(rel), _) => match crate::transform::resolve(unit.file, unit.root, rel)
            .ok()
            .and_then(|path| std::fs::read_to_string(&path).ok().map(|t| (t, path)))
        {
            // a missing script is reported where scripts are compiled
            None => return Vec::new(),
            Some((t, path)) => (t, Some(path)),
        },
        (None, Some(t)) => (t.clone(), None),
        (None, None) => return Vec::new(),
    };
    crate::connection::requested_in(&text)
        .into_iter()
        .filter(|(name, _, _)| !declared.contains(&name.as_str()))
        .map(|(name, line, col)| {
            let message = if declared.is_empty() {
                format!(
                    "`{name}` is not a connection of this pipeline: declare it under `connections`"
                )
            } else {
                format!(
                    "`{name}` is not a connection of this pipeline (declared: {})",
                    declared.join(", ")
                )
            };
            match &script {
                Some(path) => Diagnostic::new(path, Pos { line, col }, "", message),
                None => Diagnostic::new(
                    unit.file,
                    unit.doc.value_pos("/respond/inline"),
                    "/respond/inline",
                    format!("{message} (line {line}, column {col} of the script)"),
                ),
            }
        })
        .collect()
}
