//! The loading stages of a pipelines directory, in order ([`load_with`] reads as that list).
//!
//! ```text
//! env.schema.yaml -> the environment checked against it        (later stages run without a
//! engine.yaml     -> settings, environment overrides applied     valid one, so every file
//! *.yaml          -> pipelines, parsed, schema-checked, typed    problem is reported too)
//! per pipeline    -> verifier and scripts built (`Compile`), the rules of `rules.rs`
//! across files    -> exempt paths, unique names, connections, the route table
//! the deployment  -> misspelt and unused variables, production rules
//! ```
//!
//! Every stage adds its problems to one list ([`Loading::problems`]) and goes on: the result is
//! a [`Project`] only when the list is empty, else the whole list, each with file, line and
//! column. Warnings (findings that do not stop a boot) wait until the errors are fixed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::read::*;
use super::rules::*;
use super::*;
use crate::config::units::HttpMethod;

/// [`load`], with `compile` called for every pipeline that parsed.
pub fn load_with(
    dir: &Path,
    source: &EnvSource,
    compile: &mut dyn Compile,
) -> Result<Project, Vec<Diagnostic>> {
    let files = list_yaml_files(dir).map_err(|d| vec![d])?;
    let mut l = Loading::new(dir, source);
    let schema = l.env_schema();
    let env = l.environment(schema.as_ref());
    let values = env.clone().unwrap_or_default();
    let (settings_doc, settings) = l.settings(schema.as_ref(), &values);
    let pipelines = l.pipelines(&files, schema.as_ref(), &values);
    let context = LoadContext {
        schema: schema.as_ref(),
        env: env.as_ref(),
        values: &values,
        settings: settings.as_ref(),
    };
    l.per_pipeline(&pipelines, &context, compile);
    l.across_files(&pipelines, &context, settings_doc.as_ref());
    let routes = l.routes(&pipelines);
    l.deployment(&context, settings_doc.as_ref(), &pipelines);
    l.finish(env, settings, routes, pipelines)
}

/// What the stages after the environment and the settings read.
struct LoadContext<'a> {
    schema: Option<&'a EnvSchema>,
    /// The environment, when it is valid.
    env: Option<&'a Env>,
    /// The values `${VAR}`s take (empty where the environment is not valid).
    values: &'a Env,
    settings: Option<&'a Settings>,
}

/// A load in progress: where, from what, and what was found so far.
struct Loading<'a> {
    dir: &'a Path,
    source: &'a EnvSource,
    problems: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Loading<'a> {
    fn new(dir: &'a Path, source: &'a EnvSource) -> Loading<'a> {
        Loading {
            dir,
            source,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// `env.schema.yaml`: the variables the deployment reads.
    fn env_schema(&mut self) -> Option<EnvSchema> {
        EnvSchema::load(&self.dir.join(ENV_SCHEMA_FILE))
            .map_err(|d| self.problems.extend(d))
            .ok()
    }

    /// The environment, checked against its schema.
    fn environment(&mut self, schema: Option<&EnvSchema>) -> Option<Env> {
        schema?
            .validate(self.source)
            .map_err(|d| self.problems.extend(d))
            .ok()
    }

    /// `engine.yaml` (optional) with the environment's overrides, and its rules.
    fn settings(
        &mut self,
        schema: Option<&EnvSchema>,
        values: &Env,
    ) -> (Option<Checked>, Option<Settings>) {
        let path = self.dir.join(SETTINGS_FILE);
        let doc = if path.exists() {
            check_file(&path, &SETTINGS_SCHEMA, schema, &mut self.problems)
        } else {
            None
        };
        let value = doc.as_ref().map(|c| {
            let mut v = c.doc.value.clone();
            env_refs::interpolate(&mut v, values);
            v
        });
        let settings = match settings::layer(value.as_ref(), values) {
            Ok(s) => Some(s),
            Err((key, expected)) => {
                let pointer = format!("/{}", key.replace('.', "/"));
                let (file, pos) = match &doc {
                    Some(c) => (c.file.clone(), c.doc.value_pos(&pointer)),
                    None => (path.clone(), Pos::START),
                };
                self.problems.push(Diagnostic::new(
                    file,
                    pos,
                    &pointer,
                    format!("setting `{key}` {expected} (after applying environment overrides)"),
                ));
                None
            }
        };
        if let (Some(s), Some(c)) = (&settings, &doc) {
            self.problems.extend(check_settings(s, c, values));
        }
        (doc, settings)
    }

    /// Every other YAML file: a pipeline, parsed, checked against its schema, typed.
    fn pipelines(
        &mut self,
        files: &[PathBuf],
        schema: Option<&EnvSchema>,
        values: &Env,
    ) -> Vec<(Checked, Pipeline)> {
        let mut out = Vec::new();
        for file in files
            .iter()
            .filter(|f| !is_named(f, SETTINGS_FILE) && !is_named(f, ENV_SCHEMA_FILE))
        {
            let Some(checked) = check_file(file, &PIPELINE_SCHEMA, schema, &mut self.problems)
            else {
                continue;
            };
            let mut value = checked.doc.value.clone();
            env_refs::interpolate(&mut value, values);
            match typed::<Pipeline>(value, &checked) {
                Ok(p) => out.push((checked, p)),
                Err(d) => self.problems.push(d),
            }
        }
        if files
            .iter()
            .all(|f| is_named(f, SETTINGS_FILE) || is_named(f, ENV_SCHEMA_FILE))
        {
            self.problems.push(Diagnostic::new(
                self.dir,
                Pos::START,
                "",
                "no pipeline files here: add one YAML file per webhook route",
            ));
        }
        out
    }

    /// Each pipeline on its own: its verifier and scripts built, and its rules.
    fn per_pipeline(
        &mut self,
        pipelines: &[(Checked, Pipeline)],
        c: &LoadContext<'_>,
        compile: &mut dyn Compile,
    ) {
        let dir = self.dir;
        for (index, (checked, p)) in pipelines.iter().enumerate() {
            if let (Some(v), Some(schema), Some(settings)) = (&p.verify, c.schema, c.settings) {
                let found = check_verify(checked, schema, c.env, settings);
                // built from interpolated values, which mean something only once the
                // environment is valid
                let built = if found.is_empty() && c.env.is_some() {
                    compile.verifier(&unit(index, checked, p, dir), v)
                } else {
                    Vec::new()
                };
                self.problems.extend(found);
                self.problems.extend(built);
            }
        }
        for (index, (checked, p)) in pipelines.iter().enumerate() {
            self.problems
                .extend(compile.scripts(&unit(index, checked, p, dir)));
            if let (Some(o), Some(settings), Some(schema)) = (&p.oauth, c.settings, c.schema) {
                self.problems
                    .extend(check_oauth(checked, p, o, settings, schema, c.values));
            }
            self.problems.extend(check_sink_names(checked, p));
            self.problems.extend(check_queue(checked, p));
            let (warned, refused): (Vec<_>, Vec<_>) = check_rate_limit(checked, p, c.settings)
                .into_iter()
                .partition(Diagnostic::is_warning);
            self.problems.extend(refused);
            self.warnings.extend(warned);
        }
    }

    /// What holds across files: rate-limit exemptions name real paths, names are unique,
    /// connections name pipelines that exist.
    fn across_files(
        &mut self,
        pipelines: &[(Checked, Pipeline)],
        c: &LoadContext<'_>,
        settings_doc: Option<&Checked>,
    ) {
        if let (Some(s), Some(doc)) = (c.settings, settings_doc) {
            let known: Vec<&str> = std::iter::once("/health")
                .chain(pipelines.iter().map(|(_, p)| p.route.path.as_str()))
                .collect();
            let exempt = s.rate_limit.iter().flat_map(|r| r.exempt.iter());
            for (i, path) in exempt.enumerate() {
                if !known.contains(&path.as_str()) {
                    let pointer = format!("/rate_limit/exempt/{i}");
                    self.problems.push(Diagnostic::new(
                        &doc.file,
                        doc.doc.value_pos(&pointer),
                        &pointer,
                        format!("`{path}` is neither /health nor a pipeline's route path"),
                    ));
                }
            }
        }
        self.problems.extend(check_unique_names(pipelines));
        if let Some(schema) = c.schema {
            for (checked, p) in pipelines {
                self.problems
                    .extend(check_connections(checked, p, pipelines, schema, c.env));
            }
        }
    }

    /// The route table of every route (`route`, and an OAuth start path), or its conflicts,
    /// each said where it is written and where the route it meets is.
    fn routes(&mut self, pipelines: &[(Checked, Pipeline)]) -> Option<RouteTable> {
        let mut listed: Vec<(HttpMethod, &str, usize, &str)> = Vec::new();
        for (i, (_, p)) in pipelines.iter().enumerate() {
            listed.push((p.route.method, p.route.path.as_str(), i, "/route/path"));
            if let Some(o) = &p.oauth {
                listed.push((
                    HttpMethod::Get,
                    o.start.path.as_str(),
                    i,
                    "/oauth/start/path",
                ));
            }
        }
        let route_of = |i: usize| &pipelines[i].1.route;
        let specs: Vec<crate::route::Spec> = listed
            .iter()
            .map(|(m, path, i, _)| crate::route::Spec {
                method: *m,
                path,
                pipeline: *i,
                strict_slash: !route_of(*i).trailing_slash.is_match(),
                case_sensitive: route_of(*i).case_sensitive,
            })
            .collect();
        let conflicts = match RouteTable::build_indexed(&specs) {
            Ok(t) => return Some(t),
            Err(conflicts) => conflicts,
        };
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
            self.problems.push(Diagnostic::new(
                &checked.file,
                checked.doc.value_pos(pointer),
                pointer,
                message,
            ));
        }
        None
    }

    /// The deployment's environment as a whole: misspelt and unused variables, production rules.
    fn deployment(
        &mut self,
        c: &LoadContext<'_>,
        settings_doc: Option<&Checked>,
        pipelines: &[(Checked, Pipeline)],
    ) {
        let Some(schema) = c.schema else {
            return;
        };
        let (w, e): (Vec<_>, Vec<_>) = deployment::check_misspelt(schema, self.source)
            .into_iter()
            .partition(Diagnostic::is_warning);
        self.problems.extend(e);
        self.warnings.extend(w);
        let referenced: BTreeSet<String> = settings_doc
            .into_iter()
            .chain(pipelines.iter().map(|(c, _)| c))
            .flat_map(|c| env_refs::referenced(&c.doc.value))
            .collect();
        self.warnings
            .extend(deployment::check_unused(schema, self.source, &referenced));
        if let (Some(env), Some(settings)) = (c.env, c.settings) {
            self.problems.extend(deployment::check_production(
                schema,
                self.source,
                env,
                settings,
            ));
            self.problems.extend(deployment::check_supabase_project(
                schema,
                self.source,
                env,
                settings,
            ));
        }
    }

    /// The project, when nothing was found; else every problem. Warnings wait until the errors
    /// are fixed: the list that refuses a boot stays the list of what must change.
    fn finish(
        self,
        env: Option<Env>,
        settings: Option<Settings>,
        routes: Option<RouteTable>,
        pipelines: Vec<(Checked, Pipeline)>,
    ) -> Result<Project, Vec<Diagnostic>> {
        match (env, settings, routes) {
            (Some(env), Some(settings), Some(routes)) if self.problems.is_empty() => Ok(Project {
                dir: self.dir.to_path_buf(),
                warnings: self.warnings,
                ops: operations::Operations::from_env(&env),
                env,
                settings,
                pipelines: pipelines
                    .into_iter()
                    .map(|(c, config)| LoadedPipeline {
                        file: c.file,
                        doc: c.doc,
                        config: std::sync::Arc::new(config),
                    })
                    .collect(),
                routes,
            }),
            _ => Err(self.problems),
        }
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
