//! Transforms: Rhai scripts that turn an event into rows.
//!
//! A pipeline's `transform` steps are compiled once (at boot and by `engine validate`) into a
//! [`Program`]. The queue worker calls [`Program::run`] on a blocking thread for each event:
//!
//! ```text
//! event (read-only) -> step 1: when? -> script -> (no sink: result becomes event.body)
//!                   -> step 2: when? -> script -> sink "call_logs": rows, done
//!                   -> no routed step matched: dropped
//! ```
//!
//! A script returns a map (one row), an array of maps (several rows) or `()` (drop). Errors are
//! [`Failure`]s: permanent (script error, limit exceeded, `fail_permanent`) or retry
//! (`fail_retry`), with a reason naming the script, line and column.

pub mod event;
pub mod fields;
mod map;
pub mod meter;
pub mod sandbox;
mod shared;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rhai::{AST, Dynamic, Engine, Scope};

use crate::config::Pipeline;
use crate::config::transform::When;
use crate::config::verify::KeySource;
use crate::request_field::JsonPointers;
pub use event::EventInput;
pub use sandbox::FailureKind;

/// A script problem found while compiling, located for `file:line:col` reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// The script file, or `None` for an inline script in the pipeline file.
    pub script: Option<PathBuf>,
    /// Pointer of the pipeline value the error belongs to (`/transform/0/inline`).
    pub pointer: String,
    /// Line and column inside the script, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

/// Where a script's text comes from.
pub enum ScriptSource<'a> {
    File(&'a str),
    Inline(&'a str),
}

/// Read and compile one script (`kind` is "script" or "expression").
pub fn compile(
    engine: &Engine,
    pipeline_file: &Path,
    root: &Path,
    source: ScriptSource<'_>,
    pointer: &str,
    expression: bool,
) -> Result<(Arc<AST>, String), ScriptError> {
    let err = |script: Option<PathBuf>, at, message: String| ScriptError {
        script,
        pointer: pointer.to_string(),
        at,
        message,
    };
    let (text, label, file) = match source {
        ScriptSource::Inline(t) => (
            t.to_string(),
            format!("{} ({pointer})", pipeline_file.display()),
            None,
        ),
        ScriptSource::File(rel) => {
            let path = resolve(pipeline_file, root, rel)
                .map_err(|m| err(None, None, crate::diagnostics::chain(&m)))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(None, None, format!("cannot read script `{rel}`: {e}")))?;
            let shown = pipeline_file.parent().unwrap_or(Path::new(".")).join(rel);
            (text, shown.display().to_string(), Some(shown))
        }
    };
    let parsed = if expression {
        engine.compile_expression(&text)
    } else {
        engine.compile(&text)
    };
    match parsed {
        Ok(ast) => Ok((shared::held_once(ast, text, expression), label)),
        Err(e) => {
            let pos = e.position();
            let at = pos.line().map(|l| (l, pos.position().unwrap_or(1)));
            Err(err(file, at, e.err_type().to_string()))
        }
    }
}

/// What is wrong with a `script:` path.
#[derive(Debug, thiserror::Error)]
pub enum ScriptPathError {
    #[error("script `{0}` must be a path relative to the pipeline file")]
    Absolute(String),
    #[error("script `{0}` does not exist")]
    Missing(String),
    #[error("cannot resolve the pipelines directory")]
    Root(#[source] std::io::Error),
    #[error("script `{0}` is outside the pipelines directory; keep scripts under it")]
    Outside(String),
}

/// A script path relative to the pipeline file, which must stay inside the pipelines directory.
pub fn resolve(pipeline_file: &Path, root: &Path, rel: &str) -> Result<PathBuf, ScriptPathError> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute() {
        return Err(ScriptPathError::Absolute(rel.to_string()));
    }
    let joined = pipeline_file
        .parent()
        .unwrap_or(Path::new("."))
        .join(rel_path);
    let real = joined
        .canonicalize()
        .map_err(|_| ScriptPathError::Missing(rel.to_string()))?;
    let root = root.canonicalize().map_err(ScriptPathError::Root)?;
    if !real.starts_with(&root) {
        return Err(ScriptPathError::Outside(rel.to_string()));
    }
    Ok(real)
}

/// One compiled step.
struct CompiledStep {
    name: String,
    when: Option<StepWhen>,
    body: StepBody,
    label: String,
    sink: Option<String>,
}

/// What decides whether a step runs.
enum StepWhen {
    /// A Rhai expression.
    Script(Arc<AST>),
    /// A request field's value is one of `values`.
    Field {
        source: KeySource,
        values: Vec<String>,
        json: Option<FieldRead>,
    },
}

/// How a `when` field's JSON pointer is read.
enum FieldRead {
    /// On its own pass over the body (a step with a script: what it reads is the script's).
    Own(JsonPointers),
    /// In the pass of the step's own `map`, at this slot: the body is scanned once for both, and
    /// the values the step copies are in hand when it runs (an event the step does not take
    /// builds the few of them its body holds; docs/benchmarks.md measures what that costs).
    Map(usize),
}

/// What a step does.
enum StepBody {
    /// A Rhai script's result.
    Script(Arc<AST>),
    /// A row read by pointers (`map`), its pointers read together in one pass.
    Map(map::Mapping, JsonPointers),
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Rows for a sink, from the named step.
    Rows {
        sink: String,
        step: String,
        rows: Vec<serde_json::Value>,
    },
    /// Nothing to write, and why.
    Dropped { reason: String },
}

/// A failed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    fn permanent(reason: String) -> Failure {
        Failure {
            kind: FailureKind::Permanent,
            reason,
        }
    }
}

/// A pipeline's compiled transform.
pub struct Program {
    engine: Arc<Engine>,
    steps: Vec<CompiledStep>,
    vars: Dynamic,
    timeout: Duration,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("steps", &self.steps.len())
            .finish()
    }
}

/// Compiles the steps of one pipeline file with one engine.
struct StepCompiler<'a> {
    engine: &'a Engine,
    file: &'a Path,
    root: &'a Path,
}

/// A problem of a step's configuration (no script involved) at `pointer`.
fn step_error(pointer: String, message: String) -> ScriptError {
    ScriptError {
        script: None,
        pointer,
        at: None,
        message,
    }
}

impl StepCompiler<'_> {
    /// A step's `when` (`base` its pointer): a script expression, or a field and the values it
    /// must have (a JSON field of a map step is read in the map's own pass: its slot in
    /// `pointers`, added before the map's fields).
    fn when(
        &self,
        step: &crate::config::transform::StepConfig,
        base: &str,
        pointers: &mut map::Pointers,
    ) -> Result<Option<StepWhen>, ScriptError> {
        match &step.when {
            None => Ok(None),
            Some(When::Script(w)) => {
                let pointer = format!("{base}/when");
                let (ast, _) = compile(
                    self.engine,
                    self.file,
                    self.root,
                    ScriptSource::Inline(w),
                    &pointer,
                    true,
                )?;
                Ok(Some(StepWhen::Script(ast)))
            }
            Some(When::Field(f)) => {
                let json = match &f.field {
                    KeySource::Json(ptr) => {
                        map::check_pointer(ptr).map_err(|e| {
                            step_error(format!("{base}/when/field/json"), e.to_string())
                        })?;
                        Some(if step.map.is_some() {
                            FieldRead::Map(pointers.slot(ptr))
                        } else {
                            FieldRead::Own(JsonPointers::new(&[ptr]))
                        })
                    }
                    _ => None,
                };
                Ok(Some(StepWhen::Field {
                    source: f.field.clone(),
                    values: f.values.clone(),
                    json,
                }))
            }
        }
    }

    /// A step's body and the label its errors name: a `map` (fields read without a script,
    /// into `pointers`), or a script from a file or inline.
    fn body(
        &self,
        step: &crate::config::transform::StepConfig,
        base: &str,
        pointers: &mut map::Pointers,
    ) -> Result<(StepBody, String), Vec<ScriptError>> {
        match (&step.script, &step.inline, &step.map) {
            (None, None, Some(fields)) => {
                if step.sink.is_none() {
                    return Err(vec![step_error(
                        format!("{base}/map"),
                        "a `map` step makes a row: name the sink that receives it (`sink:`)"
                            .into(),
                    )]);
                }
                let m = map::Mapping::compile(fields, pointers).map_err(|es| {
                    es.into_iter()
                        .map(|(sub, m)| step_error(format!("{base}/map{sub}"), m))
                        .collect::<Vec<_>>()
                })?;
                Ok((
                    StepBody::Map(m, pointers.compile()),
                    format!("{} ({base}/map)", self.file.display()),
                ))
            }
            (script, inline, None) if script.is_some() != inline.is_some() => {
                let (source, pointer) = match (script, inline) {
                    (Some(f), _) => (ScriptSource::File(f), format!("{base}/script")),
                    (_, Some(t)) => (ScriptSource::Inline(t), format!("{base}/inline")),
                    _ => unreachable!("one of the two is set"),
                };
                let (ast, label) =
                    compile(self.engine, self.file, self.root, source, &pointer, false)
                        .map_err(|e| vec![e])?;
                Ok((StepBody::Script(ast), label))
            }
            _ => Err(vec![step_error(
                base.to_string(),
                "give the step one of `script` (a file), `inline` (the code) or `map` (row fields read without a script)".into(),
            )]),
        }
    }
}

impl Program {
    /// Compile a pipeline's steps. `root` is the pipelines directory. Every step is compiled,
    /// so every problem is reported at once.
    pub fn compile(
        p: &Pipeline,
        pipeline_file: &Path,
        root: &Path,
    ) -> Result<Program, Vec<ScriptError>> {
        let engine = Arc::new(sandbox::engine(&p.script_limits));
        let steps_of = StepCompiler {
            engine: &engine,
            file: pipeline_file,
            root,
        };
        let mut errors = Vec::new();
        let mut steps = Vec::new();
        for (i, step) in p.transform.iter().enumerate() {
            let base = format!("/transform/{i}");
            // the pointers of a map step: its `when` field's, then its fields'
            let mut pointers = map::Pointers::default();
            let when = steps_of
                .when(step, &base, &mut pointers)
                .map_err(|e| errors.push(e))
                .ok()
                .flatten();
            let Ok((body, label)) = steps_of
                .body(step, &base, &mut pointers)
                .map_err(|e| errors.extend(e))
            else {
                continue;
            };
            steps.push(CompiledStep {
                name: step
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("step {}", i + 1)),
                when,
                body,
                label,
                sink: step.sink.clone(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let vars = rhai::serde::to_dynamic(&p.vars)
            .unwrap_or_else(|_| Dynamic::from_map(rhai::Map::new()));
        Ok(Program {
            engine,
            steps,
            vars,
            timeout: Duration::from_millis(p.script_limits.timeout_ms),
        })
    }

    /// What the rows `sink` receives carry, read from the scripts of the steps that route to it,
    /// with the names of the steps whose rows could not be read whole (none: no step does).
    pub fn fields(&self, sink: &str) -> Option<(fields::Fields, Vec<String>)> {
        let mut steps = self
            .steps
            .iter()
            .filter(|s| s.sink.as_deref() == Some(sink))
            .peekable();
        steps.peek()?;
        let mut all = fields::Fields::none();
        let mut unread = Vec::new();
        for step in steps {
            let f = match &step.body {
                StepBody::Script(ast) => fields::Fields::of(ast),
                StepBody::Map(m, _) => fields::Fields {
                    known: m.names().map(str::to_string).collect(),
                    complete: true,
                    converts: m.converts().map(|(n, c)| (n.to_string(), c)).collect(),
                },
            };
            if !f.complete {
                unread.push(format!("step `{}` ({})", step.name, step.label));
            }
            all.merge(f);
        }
        Some((all, unread))
    }

    /// Whether the pipeline has any step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Run the steps on one event. Blocking: call it on a blocking thread.
    pub fn run(&self, input: &EventInput) -> Result<Output, Failure> {
        let mut run = Run {
            program: self,
            input,
            json: input.is_json(),
            scope: None,
            reshaped: None,
            parsed: None,
        };
        sandbox::with_deadline(self.timeout, || {
            for step in &self.steps {
                // a map step's values, when its `when` field was read in the same pass
                let mut read = None;
                if !run.passes(step, &mut read)? {
                    continue;
                }
                let result = match &step.body {
                    StepBody::Map(mapping, reads) => {
                        let sink = step.sink.clone().expect("a map step has a sink (compile)");
                        let mut values = match read.take() {
                            Some(values) => values,
                            None => run.read(reads, &step.label)?,
                        };
                        let row = mapping
                            .row(&mut values, input)
                            .map_err(|e| Failure::permanent(format!("{}: {e}", step.label)))?;
                        return Ok(Output::Rows {
                            sink,
                            step: step.name.clone(),
                            rows: vec![row],
                        });
                    }
                    StepBody::Script(ast) => self
                        .engine
                        .eval_ast_with_scope::<Dynamic>(run.scope()?, ast)
                        .map_err(|e| failure(&e, &step.label))?,
                };
                match &step.sink {
                    None if result.is_unit() => {
                        return Ok(Output::Dropped {
                            reason: format!("{} returned ()", step.name),
                        });
                    }
                    None => run.reshape(result),
                    Some(sink) => {
                        return rows(result, &step.label).map(|rows| match rows {
                            Some(rows) => Output::Rows {
                                sink: sink.clone(),
                                step: step.name.clone(),
                                rows,
                            },
                            None => Output::Dropped {
                                reason: format!("{} returned ()", step.name),
                            },
                        });
                    }
                }
            }
            Ok(Output::Dropped {
                reason: "no step with a sink matched".into(),
            })
        })
        .or_else(|f| match f.kind {
            FailureKind::Discard => {
                tracing::debug!(pipeline = %input.pipeline, event_id = %input.id, reason = %f.reason, "event discarded by its script: nothing written");
                Ok(Output::Dropped { reason: f.reason })
            }
            _ => Err(f),
        })
    }
}

/// One event going through the steps: what its scripts see, built only when a script (or a
/// script `when`) is reached, so an event a `map` step takes never has its body made into Rhai
/// values.
struct Run<'a> {
    program: &'a Program,
    input: &'a EventInput,
    /// Whether the request's body is read as JSON (its content type, read once per event).
    json: bool,
    /// `event` for scripts: one map per event, shared by every step's `when` and script (a
    /// clone is a pointer copy); rebuilt only when a step without a sink reshapes the body.
    scope: Option<Scope<'static>>,
    /// The body as the last step without a sink returned it.
    reshaped: Option<Dynamic>,
    /// A body that is not raw JSON (a form, a reshaped body) as JSON, for pointers: made once,
    /// whichever of a step's `when` field and `map` reads it first.
    parsed: Option<serde_json::Value>,
}

impl Run<'_> {
    /// Whether `step`'s `when` lets the event through (no `when`: it does). A map step's `when`
    /// field is read in the map's own pass: its values are left in `read` for the map.
    fn passes(
        &mut self,
        step: &CompiledStep,
        read: &mut Option<Vec<Option<serde_json::Value>>>,
    ) -> Result<bool, Failure> {
        match &step.when {
            None => Ok(true),
            Some(StepWhen::Script(when)) => {
                let engine = &self.program.engine;
                let r = engine
                    .eval_ast_with_scope::<Dynamic>(self.scope()?, when)
                    .map_err(|e| failure(&e, &format!("{} (when)", step.label)))?;
                r.as_bool().map_err(|t| {
                    Failure::permanent(format!(
                        "{} (when): must be true or false, got {t}",
                        step.label
                    ))
                })
            }
            Some(StepWhen::Field {
                source,
                values: wanted,
                json,
            }) => {
                let value = match (json, &step.body) {
                    (Some(FieldRead::Own(reads)), _) => self.read(reads, &step.label)?[0]
                        .take()
                        .and_then(crate::request_field::key_text),
                    (Some(FieldRead::Map(slot)), StepBody::Map(_, reads)) => read
                        .insert(self.read(reads, &step.label)?)[*slot]
                        .clone()
                        .and_then(crate::request_field::key_text),
                    (Some(FieldRead::Map(_)), StepBody::Script(_)) => {
                        unreachable!("compile reads a when field in the map pass of map steps only")
                    }
                    (None, _) => self.input.field(source),
                };
                Ok(value.is_some_and(|v| wanted.contains(&v)))
            }
        }
    }

    /// The scope holding `event`, rewound to it.
    fn scope(&mut self) -> Result<&mut Scope<'static>, Failure> {
        if self.scope.is_none() {
            let body = match &self.reshaped {
                Some(b) => b.clone(),
                None => self.body()?,
            };
            let event = self.input.to_dynamic(body, &self.program.vars);
            let mut scope = Scope::new();
            scope.push_constant_dynamic("event", event.into_shared());
            self.scope = Some(scope);
        }
        let scope = self.scope.as_mut().expect("built above");
        scope.rewind(1);
        Ok(scope)
    }

    /// The request's body as scripts see it (shared: `event.body` in a `when` copies a pointer).
    fn body(&self) -> Result<Dynamic, Failure> {
        Ok(self
            .input
            .parsed_body()
            .map_err(|e| Failure::permanent(crate::diagnostics::chain(&e)))?
            .into_shared())
    }

    /// A step without a sink returned `body`: the next steps see it as `event.body`.
    fn reshape(&mut self, body: Dynamic) {
        self.reshaped = Some(body.into_shared());
        self.scope = None;
        self.parsed = None;
    }

    /// The values at `reads`' pointers in the body as scripts see it: straight from the raw
    /// text of a JSON body (one pass), else from the parsed or reshaped body.
    fn read(
        &mut self,
        reads: &JsonPointers,
        label: &str,
    ) -> Result<Vec<Option<serde_json::Value>>, Failure> {
        if self.reshaped.is_none() && self.json {
            if let Some(values) = reads.read(&self.input.body) {
                return Ok(values);
            }
            // not JSON after all: the reason, as a script step gives it
            return Err(self
                .body()
                .err()
                .unwrap_or_else(|| Failure::permanent("the body is not valid JSON".into())));
        }
        if self.parsed.is_none() {
            let body = match &self.reshaped {
                Some(b) => b.clone(),
                None => self.body()?,
            };
            // (the serde bridge reads no shared values: a copy, on this path for forms and
            // bodies earlier steps reshaped)
            let value = rhai::serde::from_dynamic(&body.flatten_clone()).map_err(|e| {
                Failure::permanent(format!("{label}: the body cannot be read: {e}"))
            })?;
            self.parsed = Some(value);
        }
        Ok(reads.read_value(self.parsed.as_ref().expect("made above")))
    }
}

fn failure(err: &rhai::EvalAltResult, label: &str) -> Failure {
    let (kind, reason) = sandbox::explain(err, label);
    Failure { kind, reason }
}

/// A script result as rows: a map, an array of maps, or `()` (`None`).
fn rows(result: Dynamic, label: &str) -> Result<Option<Vec<serde_json::Value>>, Failure> {
    if result.is_unit() {
        return Ok(None);
    }
    let value: serde_json::Value = rhai::serde::from_dynamic(&result)
        .map_err(|e| Failure::permanent(format!("{label}: the result cannot be stored: {e}")))?;
    let rows = match value {
        serde_json::Value::Object(_) => vec![value],
        serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_object) => items,
        other => {
            return Err(Failure::permanent(format!(
                "{label}: must return a map (one row), an array of maps, or () to drop the event; got {}",
                crate::schema::value_kind(&other)
            )));
        }
    };
    Ok(Some(rows))
}
