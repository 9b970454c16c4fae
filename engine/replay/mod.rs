//! `engine replay`: recorded webhooks run through the real pipelines, with no server, Redis or
//! Postgres.
//!
//! ```text
//! fixtures/**/*.yaml -> fixture::load (schema-checked, file:line:col)
//!   -> case::run (in process: route, verify, respond, queue, transform, capturing sinks)
//!   -> expect::compare -> one line per case, every difference of a failing one
//!   -> report (text | json | junit); --update writes `expect` back from what happened
//! ```
//!
//! Pipelines are loaded once per distinct `env` of the fixtures (a fixture's env is all the
//! environment it gets); each case gets a fresh app (in-memory rate limits and dedupe windows
//! start empty), so cases never see each other.

pub mod case;
pub mod expect;
use crate::fixture;
pub mod report;
pub mod update;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Project;
use crate::diagnostics::Diagnostic;
use crate::env::EnvSource;
use crate::plan::Plan;

/// What to run.
pub struct ReplayOptions {
    /// Fixture files or directories (searched recursively for `*.yaml` / `*.yml`).
    pub fixtures: Vec<PathBuf>,
    pub pipelines: PathBuf,
    /// Run only cases whose name contains this text.
    pub filter: Option<String>,
    /// Rewrite each case's `expect` from what it produced.
    pub update: bool,
}

/// One case's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// The fixture's path relative to the directory it was found under, without extension:
    /// `vapi/end-of-call-report`.
    pub name: String,
    pub file: String,
    pub description: Option<String>,
    pub passed: bool,
    /// Every difference, or why the case could not run.
    pub problems: Vec<String>,
    /// Whether `--update` rewrote the fixture.
    pub updated: bool,
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// All results, in file order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub cases: Vec<CaseResult>,
    pub passed: usize,
    pub failed: usize,
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
}

/// Why fixtures could not be listed, or an update written.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}: no such file or directory")]
    NoSuchRoot(String),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the expectation")]
    Render(#[source] serde_json::Error),
}

/// Every fixture under `roots`, with the name it is reported by.
pub fn discover(roots: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, ReplayError> {
    let mut out = Vec::new();
    for root in roots {
        if root.is_file() {
            let name = root.with_extension("").display().to_string();
            out.push((name, root.clone()));
            continue;
        }
        if !root.is_dir() {
            return Err(ReplayError::NoSuchRoot(root.display().to_string()));
        }
        let mut found = Vec::new();
        walk(root, &mut found).map_err(|source| ReplayError::Io {
            path: root.display().to_string(),
            source,
        })?;
        found.sort();
        for f in found {
            let rel = f.strip_prefix(root).unwrap_or(&f).with_extension("");
            out.push((rel.to_string_lossy().replace('\\', "/"), f));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// One loaded case against its project: the problems found (none after `--update`), and whether
/// the file was rewritten. `Err` only when an update cannot be written.
async fn run_case(
    opts: &ReplayOptions,
    (project, plan): (&Result<Project, Vec<Diagnostic>>, Option<Plan>),
    f: &fixture::Fixture,
    file: &Path,
) -> Result<(Vec<String>, bool), ReplayError> {
    let not_loaded = |diags: &[Diagnostic]| {
        let mut problems = vec![format!(
            "the pipelines in {} do not load with this fixture's env:",
            opts.pipelines.display()
        )];
        problems.extend(diags.iter().map(|d| format!("  {d}")));
        (problems, false)
    };
    let project = match project {
        Ok(p) => p,
        Err(diags) => return Ok(not_loaded(diags)),
    };
    let plan = match plan.map_or_else(|| crate::plan::build(project), Ok) {
        Ok(plan) => plan,
        Err(diags) => return Ok(not_loaded(&diags)),
    };
    let actual = match case::run(project, plan, f, file).await {
        Ok(a) => a,
        Err(e) => return Ok((vec![crate::diagnostics::chain(&e)], false)),
    };
    if !opts.update {
        return Ok((expect::compare(&f.expect, &actual), false));
    }
    let new = expect::updated(&f.expect, &actual, &opts.pipelines.to_string_lossy());
    let changed = new != f.expect;
    if changed {
        update::write_expect(file, &new)?;
    }
    Ok((Vec::new(), changed))
}

/// The pipelines directory loaded and built once per distinct fixture `env` (a fixture's env is
/// all the environment it gets). Every case runs its own app, which consumes a plan: the first
/// case of an env takes the one loading built, the others build their own from the project.
struct Projects<'a> {
    dir: &'a Path,
    loaded: HashMap<BTreeMap<String, String>, Result<Project, Vec<Diagnostic>>>,
    spare: HashMap<BTreeMap<String, String>, Plan>,
}

impl<'a> Projects<'a> {
    fn new(dir: &'a Path) -> Projects<'a> {
        Projects {
            dir,
            loaded: HashMap::new(),
            spare: HashMap::new(),
        }
    }

    /// The project for `env`, and a plan when one is left from loading it.
    fn get(
        &mut self,
        env: &BTreeMap<String, String>,
    ) -> (&Result<Project, Vec<Diagnostic>>, Option<Plan>) {
        if !self.loaded.contains_key(env) {
            let loaded = crate::plan::load(self.dir, &EnvSource::from_pairs(env.clone()));
            let project = loaded.map(|(project, plan)| {
                self.spare.insert(env.clone(), plan);
                project
            });
            self.loaded.insert(env.clone(), project);
        }
        let plan = self.spare.remove(env);
        (&self.loaded[env], plan)
    }
}

/// Rows a pipeline's fixtures write, by sink: what the table check compares each postgres sink's
/// table with. Each batch's `event_id` names the fixture it came from.
pub type Written = BTreeMap<String, BTreeMap<String, Vec<crate::sink::Batch>>>;

/// Run every fixture under `roots` against the pipelines in `dir`, loaded with each fixture's own
/// env as `engine replay` does, and keep the rows each (pipeline, sink) received. Fixtures that do
/// not load or run are skipped: `engine replay` reports them.
pub async fn rows_written(dir: &Path, roots: &[PathBuf]) -> Result<Written, ReplayError> {
    let mut written = Written::new();
    let mut projects = Projects::new(dir);
    for (name, file) in discover(roots)? {
        let Ok(loaded) = fixture::load(&file) else {
            continue;
        };
        let f = &loaded.fixture;
        let (Ok(project), plan) = projects.get(&f.env) else {
            continue;
        };
        let Ok(plan) = plan.map_or_else(|| crate::plan::build(project), Ok) else {
            continue;
        };
        let crate::route::Lookup::Found { pipeline, .. } = project
            .routes
            .lookup(Some(f.request.method), &f.request.path)
        else {
            continue;
        };
        let Ok(actual) = case::run(project, plan, f, &file).await else {
            continue;
        };
        let pipeline = &project.pipelines[pipeline].config.name;
        for (sink, rows) in actual.sinks {
            if rows.is_empty() {
                continue;
            }
            written
                .entry(pipeline.clone())
                .or_default()
                .entry(sink.clone())
                .or_default()
                .push(crate::sink::Batch {
                    event_id: format!("fixture:{name}"),
                    pipeline: pipeline.clone(),
                    sink,
                    step: String::new(),
                    rows,
                });
        }
    }
    Ok(written)
}

/// Run every selected case. `Err` only when the fixtures cannot be listed.
pub async fn run(opts: &ReplayOptions) -> Result<Report, ReplayError> {
    let started = Instant::now();
    let mut cases = Vec::new();
    let mut projects = Projects::new(&opts.pipelines);
    for (name, file) in discover(&opts.fixtures)? {
        if opts
            .filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            continue;
        }
        let t = Instant::now();
        let mut result = CaseResult {
            name,
            file: file.display().to_string(),
            description: None,
            passed: false,
            problems: Vec::new(),
            updated: false,
            duration: Duration::ZERO,
        };
        let loaded = fixture::load(&file);
        if let Ok(l) = &loaded {
            result.description = l.fixture.description.clone();
        }
        match loaded {
            Err(diags) => result.problems = diags.iter().map(ToString::to_string).collect(),
            Ok(l) => {
                let project = projects.get(&l.fixture.env);
                (result.problems, result.updated) =
                    run_case(opts, project, &l.fixture, &file).await?;
            }
        }
        result.passed = result.problems.is_empty();
        result.duration = t.elapsed();
        cases.push(result);
    }
    let passed = cases.iter().filter(|c| c.passed).count();
    Ok(Report {
        failed: cases.len() - passed,
        passed,
        cases,
        duration: started.elapsed(),
    })
}
