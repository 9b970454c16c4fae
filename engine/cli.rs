//! The `engine` command line: `serve`, `worker`, `validate`, `replay`, `schema`, `queue`, `dlq`,
//! `migrate`, `secrets`, `tenants`.
//!
//! Exit codes: 0 success, 1 invalid configuration (or a server that could not start), 2 usage
//! errors (clap's own convention, also used for an unreadable `--env-file` or directory).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::diagnostics::{self, Diagnostic, Format};
use crate::env::EnvSource;

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Webhook pipeline engine: YAML pipelines in, verified and durable events out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the pipelines directory and the environment, then serve the routes.
    Serve {
        /// The pipelines directory.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Read variables from this dotenv file instead of the process environment.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Do not run queue workers in this process (run `engine worker` elsewhere).
        #[arg(long)]
        no_worker: bool,
        /// Write each accepted request as a replay fixture under DIR/<pipeline>/ (credentials
        /// removed, each pipeline's `redact` fields redacted).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// Reload the pipelines whenever a file in the directory changes (SIGHUP always reloads).
        #[arg(long)]
        watch: bool,
    },
    /// Run only the queue workers: dequeue, transform, write to sinks.
    Worker {
        /// The pipelines directory.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Read variables from this dotenv file instead of the process environment.
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
    /// Check the pipelines directory and the environment; print every problem.
    Validate {
        /// The pipelines directory.
        #[arg(default_value = "pipelines")]
        dir: PathBuf,
        /// Validate this dotenv file instead of the process environment.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also check each postgres sink's table in this live database against what its
        /// pipeline writes (its fixtures' rows, tried in a transaction that is rolled back).
        #[arg(long)]
        database_url: Option<String>,
        /// The fixtures whose rows the table check tries (default: `fixtures/` beside DIR).
        #[arg(long)]
        fixtures: Option<PathBuf>,
    },
    /// Run recorded requests (fixtures) through the pipelines in process and compare what comes
    /// out: no server, Redis or Postgres. Exit 1 when a case fails.
    Replay {
        /// Fixture files or directories (searched recursively for *.yaml).
        #[arg(default_value = "fixtures")]
        fixtures: Vec<PathBuf>,
        /// The pipelines directory.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Run only the cases whose name (`vapi/end-of-call-report`) contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::replay::report::Format::Text)]
        format: crate::replay::report::Format,
        /// Rewrite each case's `expect` from what it produced (review the change in a diff).
        #[arg(long)]
        update: bool,
    },
    /// Queue counts per queued pipeline: depth, pending, delayed, dead, oldest age (needs REDIS_URL).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Inspect, replay or purge dead-lettered events (needs REDIS_URL).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Apply the SQL migrations in order (each in a transaction, recorded in a history table),
    /// say which existing tables were left as they were, then check every postgres sink's table
    /// against what its pipeline writes (exit 1 on a mismatch, before traffic arrives).
    Migrate {
        /// The database (default: DATABASE_URL through the pipelines directory's env schema).
        #[arg(long)]
        database_url: Option<String>,
        /// The migrations directory.
        #[arg(long, default_value = "migrations")]
        migrations: PathBuf,
        /// List migrations and whether each is applied, without applying anything.
        #[arg(long)]
        status: bool,
        /// Apply nothing: list pending migrations and run the table check only.
        #[arg(long, conflicts_with = "status")]
        check: bool,
        /// The fixtures whose rows the table check tries (default: `fixtures/` beside the
        /// pipelines directory).
        #[arg(long)]
        fixtures: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Manage per-tenant secrets in the database.
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Say which tenant an id in a provider's payload belongs to (`tenant_of` in respond
    /// scripts): a Vapi assistant or phone number -> the organisation whose calendar it uses.
    Tenants {
        #[command(subcommand)]
        action: TenantsAction,
        /// The pipelines directory (for DATABASE_URL's declaration and settings).
        #[arg(long, default_value = "pipelines", global = true)]
        pipelines: PathBuf,
        /// Read variables from this dotenv file instead of the process environment.
        #[arg(long, global = true)]
        env_file: Option<PathBuf>,
    },
    /// Write the JSON schemas generated from the engine's types.
    Schema {
        /// Directory to write into.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// Do not write: exit 1 if the files in `--out` differ from the generated schemas.
        #[arg(long)]
        check: bool,
    },
}

/// Where the queue commands find the deployment.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The pipelines directory.
    #[arg(long, default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// Read variables from this dotenv file instead of the process environment.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Counts for every queued pipeline.
    Stats {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// The dead letters of a pipeline, oldest first.
    List {
        #[arg(long)]
        pipeline: String,
        #[command(flatten)]
        target: Target,
    },
    /// One dead letter with its event.
    Show {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Put dead letters back on the queue with a fresh attempt count.
    Replay {
        #[arg(long)]
        pipeline: String,
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete dead letters.
    Purge {
        #[arg(long)]
        pipeline: String,
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantsAction {
    /// Link an id to a tenant (insert or replace).
    Link {
        /// What the id is: `vapi_assistant`, `vapi_phone_number`, ...
        #[arg(long)]
        source: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        tenant: String,
    },
    /// Remove a link.
    Unlink {
        #[arg(long)]
        source: String,
        #[arg(long)]
        id: String,
    },
    /// List the links (of one tenant).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Decrypt a value read from standard input (`v1:...`), for support staff. The context is
    /// where it is stored: `tenant_credentials/<tenant>/<credential>`, or `<table>.<column>`
    /// for a sink's encrypted field.
    Decrypt {
        #[arg(long)]
        context: String,
        /// The pipelines directory (for the env schema: ENCRYPTION_KEY).
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Read variables from this dotenv file instead of the process environment.
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
    /// Encrypt a secret read from standard input and store it for a tenant (insert or replace).
    /// The value never goes on the command line, where shell history and `ps` would see it.
    Set {
        /// Tenant id, as the request names it (e.g. a Twilio AccountSid).
        #[arg(long)]
        tenant: String,
        /// Credential name, as the pipeline's `tenant.credential` says (e.g. twilio_auth_token).
        #[arg(long)]
        credential: String,
        /// The pipelines directory (for the env schema and settings).
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Read variables from this dotenv file instead of the process environment.
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
}

/// Parse arguments and run.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            pipelines,
            env_file,
            no_worker,
            record,
            watch,
        } => {
            let reload = crate::ops::reload::Source {
                dir: pipelines.clone(),
                env: match &env_file {
                    Some(f) => crate::ops::reload::EnvOrigin::File(f.clone()),
                    None => crate::ops::reload::EnvOrigin::Process,
                },
            };
            let opts = crate::server::ServeOptions {
                workers: !no_worker,
                record,
                reload: Some(reload),
                watch,
            };
            serve(&pipelines, env_file.as_deref(), Mode::Serve(opts))
        }
        Command::Worker {
            pipelines,
            env_file,
        } => serve(&pipelines, env_file.as_deref(), Mode::Worker),
        Command::Validate {
            dir,
            env_file,
            format,
            database_url,
            fixtures,
        } => {
            let fixtures = fixtures
                .map(|f| vec![f])
                .unwrap_or_else(|| crate::sink::table_check::default_fixtures(&dir));
            validate(
                &dir,
                env_file.as_deref(),
                format,
                database_url
                    .as_deref()
                    .map(|url| (url, fixtures.as_slice())),
            )
        }
        Command::Replay {
            fixtures,
            pipelines,
            filter,
            format,
            update,
        } => replay(
            crate::replay::Options {
                fixtures,
                pipelines,
                filter,
                update,
            },
            format,
        ),
        Command::Schema { out, check } => schema(&out, check),
        Command::Queue {
            action: QueueAction::Stats { target },
        } => queue_stats(&target),
        Command::Dlq { action } => dlq(action),
        Command::Migrate {
            database_url,
            migrations,
            status,
            check,
            fixtures,
            target,
        } => {
            let fixtures = fixtures
                .map(|f| vec![f])
                .unwrap_or_else(|| crate::sink::table_check::default_fixtures(&target.pipelines));
            let step = if status {
                MigrateStep::Status
            } else if check {
                MigrateStep::Check
            } else {
                MigrateStep::Apply
            };
            migrate(database_url, &migrations, step, &fixtures, &target)
        }
        Command::Secrets {
            action:
                SecretsAction::Set {
                    tenant,
                    credential,
                    pipelines,
                    env_file,
                },
        } => secrets_set(&tenant, &credential, &pipelines, env_file.as_deref()),
        Command::Secrets {
            action:
                SecretsAction::Decrypt {
                    context,
                    pipelines,
                    env_file,
                },
        } => secrets_decrypt(&context, &pipelines, env_file.as_deref()),
        Command::Tenants {
            action,
            pipelines,
            env_file,
        } => tenants(action, &pipelines, env_file.as_deref()),
    }
}

fn tenants(action: TenantsAction, dir: &Path, env_file: Option<&Path>) -> ExitCode {
    use crate::connection::tenant;
    let project = match project(dir, env_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(url) = project.settings.database_url.clone() else {
        eprintln!("engine: DATABASE_URL is not set: tenant links live in the database");
        return ExitCode::from(1);
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let pool = crate::db::pool(&url, 1)?;
        match action {
            TenantsAction::Link { source, id, tenant } => {
                tenant::link(&pool, &source, &id, &tenant).await?;
                println!("{source} {id} -> {tenant}");
            }
            TenantsAction::Unlink { source, id } => {
                let found = tenant::unlink(&pool, &source, &id).await?;
                println!("{}", if found { "unlinked" } else { "no such link" });
            }
            TenantsAction::List { tenant } => {
                for (source, id, t) in tenant::list(&pool, tenant.as_deref()).await? {
                    println!("{source}\t{id}\t{t}");
                }
            }
        }
        Ok::<_, String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

fn env_source(env_file: Option<&Path>) -> Result<EnvSource, ExitCode> {
    match env_file {
        None => Ok(EnvSource::process()),
        Some(f) => EnvSource::from_file(f).map_err(|e| {
            eprintln!("engine: {e}");
            ExitCode::from(2)
        }),
    }
}

fn validate(
    dir: &Path,
    env_file: Option<&Path>,
    format: Format,
    database: Option<(&str, &[PathBuf])>,
) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("engine: {}: not a directory", dir.display());
        return ExitCode::from(2);
    }
    let source = match env_source(env_file) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut result = crate::config::load(dir, &source);
    if let (Ok(project), Some((url, fixtures))) = (&result, database) {
        match table_problems(project, url, fixtures) {
            Ok(d) if d.is_empty() => {}
            Ok(d) => result = Err(d),
            Err(e) => {
                eprintln!("engine: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let diags: &[Diagnostic] = match &result {
        Ok(p) => &p.warnings,
        Err(d) => d,
    };
    print!("{}", diagnostics::render(diags, format));
    let errors = diags.iter().filter(|d| !d.is_warning()).count();
    match (&result, format) {
        (Ok(p), Format::Text) => {
            println!(
                "{}: {} pipeline{} valid",
                dir.display(),
                p.pipelines.len(),
                if p.pipelines.len() == 1 { "" } else { "s" }
            );
        }
        (Err(_), Format::Text | Format::Github) => {
            eprintln!(
                "{errors} problem{} found",
                if errors == 1 { "" } else { "s" }
            );
        }
        _ => {}
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn init_tracing(production: bool, sentry: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // JSON lines in production (Render's log search and any shipper parse them); readable
    // lines elsewhere. The Sentry layer only with SENTRY_DSN: even with no client bound it
    // clones a scope on every span entered, a few percent of a request's time.
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(sentry.then(sentry::integrations::tracing::layer));
    let _ = if production {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}

/// What `serve` runs.
#[derive(Debug, Clone)]
enum Mode {
    Serve(crate::server::ServeOptions),
    Worker,
}

fn serve(dir: &Path, env_file: Option<&Path>, mode: Mode) -> ExitCode {
    let source = match env_source(env_file) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let production = source.get("NODE_ENV") == Some("production");
    init_tracing(production, source.get("SENTRY_DSN").is_some());
    let project = match crate::config::load(dir, &source) {
        Ok(p) => p,
        Err(diags) => return refuse_to_start(&diags, dir, production),
    };
    for w in &project.warnings {
        tracing::warn!(file = %w.file, line = w.line, column = w.column, "{}", w.message);
    }
    let runtime = match started(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Err(code) = check_tables_at_boot(&runtime, &project, dir) {
        return code;
    }
    let result = runtime.block_on(async move {
        match mode {
            Mode::Serve(opts) => crate::server::serve(project, opts).await,
            Mode::Worker => crate::server::serve_workers(project).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::from(1)
        }
    }
}

/// In production, every postgres sink's table is checked before the engine takes traffic: a table
/// that would dead-letter every event refuses the boot (the deploy fails, the previous version
/// keeps serving). A database that cannot be reached does not: ingest still works without it (the
/// queue holds events), and `/ready` reports the database.
fn check_tables_at_boot(
    runtime: &tokio::runtime::Runtime,
    project: &crate::config::Project,
    dir: &Path,
) -> Result<(), ExitCode> {
    let Some(url) = project
        .settings
        .database_url
        .as_deref()
        .filter(|_| project.env.is_production())
    else {
        return Ok(());
    };
    let fixtures = crate::sink::table_check::default_fixtures(dir);
    match runtime.block_on(crate::sink::table_check::check_project(
        project, url, &fixtures,
    )) {
        Ok(problems) if problems.is_empty() => {
            tracing::info!(
                "table check: every postgres sink's table takes what its pipeline writes"
            );
            Ok(())
        }
        Ok(problems) => Err(refuse_to_start(&problems, dir, true)),
        Err(e) => {
            tracing::error!(error = %e, "table check could not run; starting anyway (events queue until the database answers)");
            Ok(())
        }
    }
}

/// Every problem, then one line saying the engine will not start: readable text in
/// development, JSON lines in production like every other production log line (Render's log
/// search and any shipper index them).
fn refuse_to_start(diags: &[Diagnostic], dir: &Path, production: bool) -> ExitCode {
    let errors = diags.iter().filter(|d| !d.is_warning()).count();
    let summary = format!(
        "refusing to start: {errors} problem{} in {}",
        if errors == 1 { "" } else { "s" },
        dir.display()
    );
    if !production {
        eprint!("{}", diagnostics::render(diags, Format::Text));
        eprintln!("engine: {summary}");
        return ExitCode::from(1);
    }
    for d in diags {
        if d.is_warning() {
            tracing::warn!(file = %d.file, line = d.line, column = d.column, pointer = %d.pointer, "{}", d.message);
        } else {
            tracing::error!(file = %d.file, line = d.line, column = d.column, pointer = %d.pointer, "{}", d.message);
        }
    }
    tracing::error!(problems = errors, "{summary}");
    ExitCode::from(1)
}

fn schema(out: &Path, check: bool) -> ExitCode {
    let mut stale = Vec::new();
    for (name, value) in crate::config::generated_schemas() {
        let path = out.join(name);
        let mut text = serde_json::to_string_pretty(&value).expect("schemas serialize");
        text.push('\n');
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path);
            }
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("engine: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in stale {
            eprintln!(
                "{}: differs from the generated schema; run `engine schema`",
                p.display()
            );
        }
        ExitCode::from(1)
    }
}

/// The validated project, or the exit code after printing every problem.
fn project(dir: &Path, env_file: Option<&Path>) -> Result<crate::config::Project, ExitCode> {
    let source = env_source(env_file)?;
    crate::config::load(dir, &source).map_err(|diags| {
        eprint!("{}", diagnostics::render(&diags, Format::Text));
        ExitCode::from(1)
    })
}

/// The project's keyring (ENCRYPTION_KEY, and ENCRYPTION_KEY_PREVIOUS when set).
fn keyring(project: &crate::config::Project) -> Result<crate::crypto::Keyring, ExitCode> {
    match crate::crypto::Keyring::from_env(&project.env) {
        Some(Ok(k)) => Ok(k),
        Some(Err(e)) => {
            eprintln!("engine: ENCRYPTION_KEY: {e}");
            Err(ExitCode::from(1))
        }
        None => {
            eprintln!("engine: ENCRYPTION_KEY is not set: stored secrets are encrypted with it");
            Err(ExitCode::from(1))
        }
    }
}

fn secrets_set(tenant: &str, credential: &str, dir: &Path, env_file: Option<&Path>) -> ExitCode {
    let project = match project(dir, env_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(url) = project.settings.database_url.clone() else {
        eprintln!("engine: DATABASE_URL is not set: secrets are stored in the database");
        return ExitCode::from(1);
    };
    let keyring = match keyring(&project) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let mut value = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut value) {
        eprintln!("engine: cannot read the secret from standard input: {e}");
        return ExitCode::from(2);
    }
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        eprintln!(
            "engine: no secret on standard input (e.g. `printf %s \"$TOKEN\" | engine secrets set ...`)"
        );
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let pool = crate::db::pool(&url, 1)?;
        crate::verify::tenant::store(&pool, &keyring, tenant, credential, value)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            println!(
                "stored {credential} for tenant {tenant} (encrypted with key {})",
                keyring.current_id()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

/// The Redis queues of the queued pipelines, by pipeline name.
fn queues(target: &Target) -> Result<Vec<(String, crate::queue::redis::RedisQueue)>, ExitCode> {
    let project = project(&target.pipelines, target.env_file.as_deref())?;
    let Some(url) = project.settings.redis_url.clone() else {
        eprintln!(
            "engine: REDIS_URL is not set: without Redis, events are queued inside `engine serve` and are not visible here"
        );
        return Err(ExitCode::from(1));
    };
    let mut out = Vec::new();
    for p in project
        .pipelines
        .iter()
        .filter(|p| !p.config.transform.is_empty())
    {
        let name = p
            .config
            .queue
            .as_ref()
            .and_then(|q| q.name.clone())
            .unwrap_or_else(|| p.config.name.clone());
        let q = crate::queue::redis::RedisQueue::new(
            &url,
            &project.settings.redis_key_prefix,
            &name,
            "engine-cli",
        )
        .map_err(|e| {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        })?;
        out.push((p.config.name.clone(), q));
    }
    Ok(out)
}

/// The single-threaded runtime of the one-shot commands.
fn replay(opts: crate::replay::Options, format: crate::replay::report::Format) -> ExitCode {
    if !opts.pipelines.is_dir() {
        eprintln!("engine: {}: not a directory", opts.pipelines.display());
        return ExitCode::from(2);
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match rt.block_on(crate::replay::run(&opts)) {
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(2)
        }
        Ok(report) => {
            print!("{}", crate::replay::report::render(&report, format));
            if report.cases.is_empty() {
                eprintln!("engine: no fixtures matched");
                return ExitCode::from(1);
            }
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    started(tokio::runtime::Builder::new_current_thread())
}

fn started(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("engine: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

fn queue_stats(target: &Target) -> ExitCode {
    let (queues, rt) = match (queues(target), runtime()) {
        (Ok(q), Ok(r)) => (q, r),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let result: Result<Vec<(String, crate::queue::Stats)>, _> =
        rt.block_on(async { futures_stats(&queues).await });
    match result {
        Ok(stats) if target.json => {
            let v: serde_json::Map<String, serde_json::Value> = stats
                .into_iter()
                .map(|(n, s)| (n, serde_json::to_value(s).unwrap_or_default()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(stats) => {
            println!(
                "{:<20} {:>8} {:>8} {:>8} {:>8} {:>12}",
                "pipeline", "depth", "pending", "delayed", "dead", "oldest"
            );
            for (n, s) in stats {
                let oldest = s
                    .oldest_age_ms
                    .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                println!(
                    "{n:<20} {:>8} {:>8} {:>8} {:>8} {oldest:>12}",
                    s.depth, s.pending, s.delayed, s.dead
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

async fn futures_stats(
    queues: &[(String, crate::queue::redis::RedisQueue)],
) -> Result<Vec<(String, crate::queue::Stats)>, crate::queue::QueueError> {
    let mut out = Vec::new();
    for (name, q) in queues {
        out.push((name.clone(), q.stats().await?));
    }
    Ok(out)
}

fn dlq(action: DlqAction) -> ExitCode {
    let (pipeline, target) = match &action {
        DlqAction::List { pipeline, target }
        | DlqAction::Show {
            pipeline, target, ..
        }
        | DlqAction::Replay {
            pipeline, target, ..
        }
        | DlqAction::Purge {
            pipeline, target, ..
        } => (pipeline.clone(), target),
    };
    let (queues, rt) = match (queues(target), runtime()) {
        (Ok(q), Ok(r)) => (q, r),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let Some((_, q)) = queues.iter().find(|(n, _)| *n == pipeline) else {
        eprintln!("engine: `{pipeline}` is not a queued pipeline (it needs transform steps)");
        return ExitCode::from(2);
    };
    let json = target.json;
    let result: Result<(), String> = rt.block_on(async {
        match &action {
            DlqAction::List { .. } => {
                let letters = q.dead_letters(1000).await.map_err(|e| e.to_string())?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&letters).unwrap_or_default());
                } else {
                    for l in &letters {
                        println!("{}  event {}  attempts {}  {}", l.id, l.event_id, l.attempts, l.reason);
                    }
                    println!("{} dead letter{}", letters.len(), if letters.len() == 1 { "" } else { "s" });
                }
                Ok(())
            }
            DlqAction::Show { id, .. } => {
                let letters = q.dead_letters(10_000).await.map_err(|e| e.to_string())?;
                let l = letters.iter().find(|l| &l.id == id).ok_or_else(|| format!("no dead letter `{id}`"))?;
                let event = l.event.as_ref().map(|e| {
                    serde_json::json!({
                        "id": e.id, "pipeline": e.pipeline, "received_at_ms": e.received_at_ms,
                        "method": e.method, "path": e.path, "query": e.query, "headers": e.headers,
                        "body": String::from_utf8_lossy(&e.body),
                    })
                });
                let v = serde_json::json!({"id": l.id, "event_id": l.event_id, "attempts": l.attempts, "reason": l.reason, "event": event});
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                Ok(())
            }
            DlqAction::Replay { id, .. } => {
                let ids: Vec<String> = id.iter().cloned().collect();
                let n = q.replay_dead(&ids).await.map_err(|e| e.to_string())?;
                if json { println!("{{\"replayed\": {n}}}") } else { println!("replayed {n}") }
                Ok(())
            }
            DlqAction::Purge { id, .. } => {
                let ids: Vec<String> = id.iter().cloned().collect();
                let n = q.purge_dead(&ids).await.map_err(|e| e.to_string())?;
                if json { println!("{{\"purged\": {n}}}") } else { println!("purged {n}") }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `engine migrate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MigrateStep {
    Apply,
    Check,
    Status,
}

fn migrate(
    database_url: Option<String>,
    dir: &Path,
    step: MigrateStep,
    fixtures: &[PathBuf],
    target: &Target,
) -> ExitCode {
    // The pipelines give DATABASE_URL when --database-url is not passed, and the table check
    // needs them; `--status` with --database-url needs neither, so they are not even read.
    let wanted = database_url.is_none() || step != MigrateStep::Status;
    let loaded = if wanted && target.pipelines.is_dir() {
        Some(project(&target.pipelines, target.env_file.as_deref()))
    } else {
        None
    };
    let url = match (database_url, &loaded) {
        (Some(u), _) => u,
        (None, Some(Ok(p))) => match &p.settings.database_url {
            Some(u) => u.clone(),
            None => {
                eprintln!("engine: no database: pass --database-url or set DATABASE_URL");
                return ExitCode::from(2);
            }
        },
        (None, Some(Err(code))) => return *code,
        (None, None) => {
            eprintln!(
                "engine: {}: not a directory (pass --pipelines, or --database-url)",
                target.pipelines.display()
            );
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    match step {
        MigrateStep::Status => migrate_status(&rt, &url, dir, target.json),
        MigrateStep::Check => {
            match rt.block_on(crate::migrate::status(&url, dir)) {
                Ok(list) => {
                    let pending: Vec<_> = list.iter().filter(|m| m.applied_on.is_none()).collect();
                    for m in &pending {
                        println!("pending V{} {}", m.version, m.name);
                    }
                    println!(
                        "{} migration{} pending",
                        pending.len(),
                        if pending.len() == 1 { "" } else { "s" }
                    );
                }
                Err(e) => {
                    eprintln!("engine: {e}");
                    return ExitCode::from(1);
                }
            }
            migrate_table_check(&rt, loaded.as_ref(), &url, fixtures)
        }
        MigrateStep::Apply => match rt.block_on(crate::migrate::run(&url, dir)) {
            Ok(report) => {
                for (v, n) in &report.applied {
                    println!("applied V{v} {n}");
                }
                println!(
                    "{} migration{} applied",
                    report.applied.len(),
                    if report.applied.len() == 1 { "" } else { "s" }
                );
                for (table, v, n) in &report.left_alone {
                    println!(
                        "left alone: table `{table}` existed before V{v} {n}, whose CREATE TABLE IF NOT EXISTS keeps an existing table exactly as it is (its columns are checked below)"
                    );
                }
                migrate_table_check(&rt, loaded.as_ref(), &url, fixtures)
            }
            Err(e) => {
                eprintln!("engine: migration failed: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn migrate_status(rt: &tokio::runtime::Runtime, url: &str, dir: &Path, json: bool) -> ExitCode {
    match rt.block_on(crate::migrate::status(url, dir)) {
        Ok(list) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(list) => {
            for m in list {
                println!(
                    "V{:<4} {:<40} {}",
                    m.version,
                    m.name,
                    m.applied_on.as_deref().unwrap_or("pending")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

/// The table check after `migrate`: exit 1 when a sink's table does not take what its pipeline
/// writes, so a pre-deploy step stops the deploy before traffic arrives.
fn migrate_table_check(
    rt: &tokio::runtime::Runtime,
    loaded: Option<&Result<crate::config::Project, ExitCode>>,
    url: &str,
    fixtures: &[PathBuf],
) -> ExitCode {
    let Some(Ok(project)) = loaded else {
        println!("table check skipped: no pipelines directory loaded (pass --pipelines)");
        return ExitCode::SUCCESS;
    };
    match rt.block_on(crate::sink::table_check::check_project(
        project, url, fixtures,
    )) {
        Ok(problems) if problems.is_empty() => {
            println!("tables: every postgres sink's table takes what its pipeline writes");
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            eprint!("{}", diagnostics::render(&problems, Format::Text));
            eprintln!(
                "engine: {} table problem{}: the pipelines would dead-letter these events",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("engine: table check: {e}");
            ExitCode::from(1)
        }
    }
}

fn secrets_decrypt(context: &str, dir: &Path, env_file: Option<&Path>) -> ExitCode {
    let project = match project(dir, env_file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let keyring = match keyring(&project) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let mut value = String::new();
    if std::io::Read::read_to_string(&mut std::io::stdin(), &mut value).is_err()
        || value.trim().is_empty()
    {
        eprintln!("engine: no encrypted value on standard input");
        return ExitCode::from(2);
    }
    match keyring.decrypt(value.trim(), context) {
        Ok(plain) => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(&plain);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::from(1)
        }
    }
}

/// [`crate::sink::table_check::check_project`] on a runtime of its own (one-shot commands).
fn table_problems(
    project: &crate::config::Project,
    url: &str,
    fixtures: &[PathBuf],
) -> Result<Vec<Diagnostic>, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(crate::sink::table_check::check_project(
            project, url, fixtures,
        ))
}
