//! `engine events list|show|replay|jobs|cancel|erase`: the event archive from the command line
//! (docs/events.md). The archive is the deployment's (DATABASE_URL, else `<data_dir>/archive`);
//! a replay runs here, in this process, as a job kept in the archive so it can be resumed.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{env_source, started};
use crate::archive::replay::{Job, Runner};
use crate::archive::{Filter, Store, Stored};
use crate::config::Project;

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Archived events, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One event: its request (redacted by the pipeline's `redact`) and its whole story.
    Show {
        /// The pipeline's name (its `name:`, not a directory).
        #[arg(long)]
        pipeline: String,
        /// The event id, as `engine events list` prints it.
        #[arg(long)]
        id: String,
        /// Print the request whole, without the pipeline's `redact` (for when someone must see
        /// a value; the command logs that it did, with the pipeline and event id).
        #[arg(long)]
        unredacted: bool,
        #[command(flatten)]
        at: At,
    },
    /// Run the matched events through the pipeline as it is now (a job that can be resumed).
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Write nothing: print how many match and what a sample of them would do.
        #[arg(long)]
        dry_run: bool,
        /// Events a second at most, so live traffic keeps the database.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Write even events whose rows are what they last wrote.
        #[arg(long)]
        force: bool,
        /// Go on with a job whose process stopped (`engine events jobs` lists them).
        #[arg(long, value_name = "JOB", conflicts_with = "dry_run")]
        resume: Option<String>,
    },
    /// Replay jobs, newest first.
    Jobs {
        /// Only this pipeline's jobs (its `name:`).
        #[arg(long)]
        pipeline: Option<String>,
        #[command(flatten)]
        at: At,
    },
    /// Ask a running replay job to stop after its current page.
    Cancel {
        /// The job id, as `engine events jobs` prints it.
        job: String,
        #[command(flatten)]
        at: At,
    },
    /// Remove every stored trace of the matching events (archive and dead letters), for a
    /// deletion request; the erasure itself is recorded without the value.
    Erase {
        /// Only this pipeline's events (default: every pipeline indexing the field).
        #[arg(long)]
        pipeline: Option<String>,
        /// FIELD=VALUE of an `archive.index` field (repeatable: all must hold).
        #[arg(long = "where", value_name = "FIELD=VALUE", required = true)]
        conditions: Vec<String>,
        #[command(flatten)]
        at: At,
    },
}

/// Where the deployment is.
#[derive(Debug, Clone, Args)]
pub struct At {
    /// The pipelines directory.
    #[arg(long, default_value = "pipelines")]
    pub pipelines: std::path::PathBuf,
    /// Read variables from this dotenv file instead of the process environment.
    #[arg(long)]
    pub env_file: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which events.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// The pipeline's name (its `name:`, not a directory).
    #[arg(long)]
    pub pipeline: String,
    /// Received since: a span back from now (`2h`, `7d`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Received before: a span back from now or an RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// written, dropped, dead or retrying (the event's latest outcome).
    #[arg(long)]
    pub outcome: Option<String>,
    /// FIELD=VALUE of an `archive.index` field (repeatable: all must hold).
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    pub conditions: Vec<String>,
    /// One event id.
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub at: At,
}

/// The archived pipeline named `name`, or why not.
fn archived<'p>(
    project: &'p Project,
    name: &str,
) -> Result<&'p crate::config::LoadedPipeline, super::CommandError> {
    let p = project
        .pipelines
        .iter()
        .find(|p| p.config.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = project
                .pipelines
                .iter()
                .map(|p| p.config.name.as_str())
                .collect();
            format!("no pipeline `{name}` (pipelines: {})", names.join(", "))
        })?;
    if p.config.archive.kept().is_none() {
        return Err(format!("pipeline `{name}` has `archive: off`: nothing is archived").into());
    }
    Ok(p)
}

impl FilterArgs {
    fn filter(&self, project: &Project) -> Result<Filter, super::CommandError> {
        let p = archived(project, &self.pipeline)?;
        crate::archive::search::filter(
            &p.config,
            self.since.as_deref(),
            self.until.as_deref(),
            self.outcome.as_deref(),
            &self.conditions,
            self.id.as_deref(),
        )
        .map_err(Into::into)
    }
}

/// Why a command stops when its deployment did not load (the loader printed the problems).
pub(super) fn not_loaded(_: ExitCode) -> String {
    "the pipelines directory or its environment did not load (the problems above): fix them, or pass --pipelines / --env-file, and run it again".into()
}

/// The deployment's archive and project.
pub(super) struct ArchiveDeployment {
    pub(super) project: Project,
    plan: Option<crate::plan::Plan>,
    pub(super) store: Arc<Store>,
    pool: Option<deadpool_postgres::Pool>,
    pub(super) json: bool,
}

pub(super) fn deployment(at: &At, compile: bool) -> Result<ArchiveDeployment, ExitCode> {
    let source = env_source(at.env_file.as_deref())?;
    let fail = |diags: Vec<crate::diagnostics::Diagnostic>| {
        eprint!(
            "{}",
            crate::diagnostics::render(&diags, crate::diagnostics::Format::Text)
        );
        ExitCode::from(1)
    };
    let (project, plan) = match compile {
        true => crate::plan::load(&at.pipelines, &source)
            .map(|(p, plan)| (p, Some(plan)))
            .map_err(fail)?,
        false => (
            crate::config::load(&at.pipelines, &source).map_err(fail)?,
            None,
        ),
    };
    let pool = match &project.settings.database_url {
        Some(url) => Some(crate::db::pool(url, 4).map_err(|e| {
            eprintln!("engine: {}", crate::diagnostics::chain(&e));
            ExitCode::from(1)
        })?),
        None => None,
    };
    let store = Arc::new(Store::new(pool.as_ref(), &project.settings));
    Ok(ArchiveDeployment {
        project,
        plan,
        store,
        pool,
        json: at.json,
    })
}

fn time(ms: i64) -> String {
    crate::transform::sandbox::format_time(ms)
}

fn print_list(events: &[Stored], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(events).unwrap_or_default()
        );
        return;
    }
    for e in events {
        let last = e.story.last();
        let why = last
            .and_then(|s| s.reason.clone().or_else(|| s.sink.clone()))
            .unwrap_or_default();
        let fields: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{}  {}  {:<9} attempts {}  {}  {}",
            time(e.received_at_ms),
            e.event_id,
            e.outcome.as_str(),
            e.attempts,
            fields.join(" "),
            why
        );
    }
    println!(
        "{} event{}",
        events.len(),
        if events.len() == 1 { "" } else { "s" }
    );
}

pub(super) fn events(action: EventsAction) -> ExitCode {
    let rt = match started(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let result = rt.block_on(run(action));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("engine: {}", crate::diagnostics::chain(&*e));
            ExitCode::from(1)
        }
    }
}

async fn run(action: EventsAction) -> Result<ExitCode, super::CommandError> {
    match action {
        EventsAction::List { filter, limit } => {
            let d = deployment(&filter.at, false).map_err(not_loaded)?;
            let f = filter.filter(&d.project)?;
            let events = d.store.list(&f, limit).await?;
            print_list(&events, d.json);
        }
        EventsAction::Show {
            pipeline,
            id,
            unredacted,
            at,
        } => show(&pipeline, &id, unredacted, &at).await?,
        EventsAction::Replay {
            filter,
            dry_run,
            rate,
            force,
            resume,
        } => {
            // a replay's spans go where the deployment's traces go (OTEL_*), linked to the
            // replayed events' original traces
            let _traces = match dry_run {
                false => env_source(filter.at.env_file.as_deref())
                    .ok()
                    .and_then(|source| super::serve::init_traces_only(&source)),
                true => None,
            };
            return replay(filter, dry_run, rate.max(1), force, resume).await;
        }
        EventsAction::Jobs { pipeline, at } => {
            let d = deployment(&at, false).map_err(not_loaded)?;
            let jobs = d.store.jobs().list(pipeline.as_deref()).await?;
            if d.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&jobs).unwrap_or_default()
                );
            } else {
                for j in &jobs {
                    println!(
                        "{}  {}  {:<10} {}/{}  written {} dropped {} unchanged {} failed {}  started {}",
                        j.id,
                        j.pipeline,
                        j.status.as_str(),
                        j.done,
                        j.matched,
                        j.counts.written,
                        j.counts.dropped,
                        j.counts.unchanged,
                        j.counts.failed,
                        time(j.started_at_ms)
                    );
                }
            }
        }
        EventsAction::Cancel { job, at } => {
            let d = deployment(&at, false).map_err(not_loaded)?;
            if !d.store.jobs().cancel(&job).await? {
                return Err(format!("replay job `{job}` is not running").into());
            }
            println!("replay job {job}: asked to stop");
        }
        EventsAction::Erase {
            pipeline,
            conditions: list,
            at,
        } => return super::erase::erase(pipeline, list, at).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// What a dry run found: how many match, and what the first of them would do.
fn print_dry_run(matched: u64, sample: &[crate::archive::replay::Preview], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "matched": matched, "dry_run": true, "sample": sample,
            }))
            .unwrap_or_default()
        );
        return;
    }
    println!(
        "{matched} event(s) match; nothing written (dry run). The first {}:",
        sample.len()
    );
    for s in sample {
        println!(
            "  {}  {}  {} -> {}{}",
            time(s.received_at_ms),
            s.event_id,
            s.was.as_str(),
            s.would.as_str(),
            s.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}

/// One archived event: its story and its request (redacted unless `unredacted`, which logs
/// that it printed the request whole).
async fn show(
    pipeline: &str,
    id: &str,
    unredacted: bool,
    at: &At,
) -> Result<(), super::CommandError> {
    let d = deployment(at, false).map_err(not_loaded)?;
    let p = archived(&d.project, pipeline)?;
    let stored = d
        .store
        .show(pipeline, id)
        .await?
        .ok_or_else(|| format!("no archived event `{id}` in `{pipeline}`"))?;
    let keyring = crate::server::queueing::keyring(&d.project)?;
    let request = match stored.event(keyring.as_ref()) {
        Ok(event) => {
            let redact: &[_] = if unredacted {
                tracing::warn!(pipeline = %pipeline, event_id = %id, "events show --unredacted: the request printed whole, redacted fields included");
                &[]
            } else {
                &p.config.redact
            };
            let shown = crate::console::recent::shown(&event, redact);
            serde_json::json!({
                "method": shown.method, "path": shown.path, "query": shown.query,
                "headers": shown.headers, "body": shown.body, "truncated": shown.truncated,
            })
        }
        Err(err) => serde_json::json!({"unreadable": err.to_string()}),
    };
    let mut v = serde_json::to_value(&stored).unwrap_or_default();
    v["received_at"] = time(stored.received_at_ms).into();
    v["request"] = request;
    let trace_id = stored.trace_id();
    v["trace_id"] = trace_id.clone().into();
    if d.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} {}  received {}  {}",
            pipeline,
            id,
            time(stored.received_at_ms),
            stored.outcome.as_str()
        );
        if let Some(id) = &trace_id {
            println!("  trace {id}");
        }
        for s in &stored.story {
            let run = s
                .run
                .as_deref()
                .map(|r| format!(" (replay {r})"))
                .unwrap_or_default();
            let what = match (&s.sink, s.rows, &s.reason) {
                (Some(sink), Some(rows), _) => format!("{rows} row(s) to {sink}"),
                (_, _, Some(r)) => r.clone(),
                _ => String::new(),
            };
            println!(
                "  {}  attempt {}  {:<9} {what}{run}",
                time(s.at_ms),
                s.attempt,
                s.outcome.as_str()
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&v["request"]).unwrap_or_default()
        );
    }
    Ok(())
}

/// The replay runner of one pipeline, with its program and sinks as they are now.
fn runner(d: &mut ArchiveDeployment, pipeline: &str) -> Result<Runner, super::CommandError> {
    let i = d
        .project
        .pipelines
        .iter()
        .position(|p| p.config.name == pipeline)
        .ok_or_else(|| format!("no pipeline `{pipeline}`"))?;
    let program = d
        .plan
        .as_mut()
        .and_then(|plan| plan.pipelines.get_mut(i))
        .and_then(|b| b.program.take())
        .ok_or_else(|| {
            format!("pipeline `{pipeline}` has no transform steps: nothing to replay")
        })?;
    crate::server::queueing::replay_runner(
        &d.project,
        &d.project.pipelines[i].config,
        Arc::new(program),
        d.pool.as_ref(),
        &d.store,
    )
    .map_err(Into::into)
}

async fn replay(
    filter: FilterArgs,
    dry_run: bool,
    rate: u32,
    force: bool,
    resume: Option<String>,
) -> Result<ExitCode, super::CommandError> {
    let mut d = deployment(&filter.at, true).map_err(not_loaded)?;
    let json = d.json;
    let runner = runner(&mut d, &filter.pipeline)?;
    let mut job = match resume {
        Some(id) => {
            let job = d.store.jobs().claim(&id).await??;
            if job.pipeline != filter.pipeline {
                return Err(format!(
                    "replay job `{id}` replays `{}`, not `{}`",
                    job.pipeline, filter.pipeline
                )
                .into());
            }
            job
        }
        None => {
            let f = filter.filter(&d.project)?;
            if dry_run {
                let (matched, sample) = runner.dry_run(&f, 10, force).await?;
                print_dry_run(matched, &sample, json);
                return Ok(ExitCode::SUCCESS);
            }
            let matched = d.store.count(&f).await?;
            let job = Job::new(f, matched, rate, force);
            d.store.jobs().create(&job).await?;
            job
        }
    };
    if !json {
        eprintln!(
            "replay job {} : {} event(s) of `{}` at most {}/s (resume with --resume {} if stopped)",
            job.id, job.matched, job.pipeline, job.rate, job.id
        );
    }
    let progress = move |j: &Job| {
        if !json {
            eprintln!(
                "  {}/{}  written {} dropped {} unchanged {} failed {}",
                j.done,
                j.matched,
                j.counts.written,
                j.counts.dropped,
                j.counts.unchanged,
                j.counts.failed
            );
        }
    };
    let result = runner.run(&mut job, &progress).await;
    if let Err(err) = &result {
        job.status = crate::archive::replay::Status::Failed;
        job.error = Some(err.to_string());
        let _ = d.store.jobs().progress(&job).await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
    } else {
        println!(
            "replay {} {}: {} of {} event(s): written {}, dropped {}, unchanged {}, failed {}",
            job.id,
            job.status.as_str(),
            job.done,
            job.matched,
            job.counts.written,
            job.counts.dropped,
            job.counts.unchanged,
            job.counts.failed
        );
    }
    result?;
    Ok(match job.counts.failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
