//! The `engine` command line: `serve`, `worker`, `validate`, `replay`, `schema`, `queue`, `dlq`,
//! `migrate`, `secrets`, `tenants`.
//!
//! Exit codes: 0 success, 1 invalid configuration (or a server that could not start), 2 usage
//! errors (clap's own convention, also used for an unreadable `--env-file` or directory).
//!
//! This file holds the arguments ([`Cli`], [`Command`]), [`run`] (one line per command) and what
//! the commands share (reading the environment and the project, a runtime, the keyring); each
//! command group has its own file: `serve`, `validate` (+ `schema`), `replay`, `queue` (+ `dlq`),
//! `migrate`, `secrets` (+ `tenants`).

/// What a command stops on: its own words (a `String`) or an error with its causes; printed
/// once at the command's top as `engine: <the chain>` ([`crate::diagnostics::chain`]).
pub(crate) type CommandError = Box<dyn std::error::Error + Send + Sync>;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod erase;
mod events;
mod migrate;
mod queue;
mod replay;
mod secrets;
mod serve;
mod validate;

use migrate::{MigrateStep, migrate};
use queue::{dlq, queue_stats};
use replay::replay;
use secrets::{secrets_decrypt, secrets_set, tenants};
use serve::{Mode, serve};
use validate::{schema, validate};

use crate::diagnostics::{self, Format};
use crate::env::EnvSource;

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Webhook pipeline engine: YAML pipelines in, verified and durable events out",
    after_help = "\
Examples:
  engine serve                                   the pipelines in ./pipelines on port 3001 (PORT)
  engine validate pipelines --format github      every problem, file:line:col, for CI
  engine replay fixtures                         recorded webhooks through the pipelines, no server
  engine events list --pipeline vapi --since 2h --outcome dropped
  engine migrate                                 the database's tables, then their check

Environment (declared in pipelines/env.schema.yaml; every variable in docs/env.md):
  PORT, HOST        where to listen (default 0.0.0.0:3001)
  NODE_ENV          production turns on the production rules and JSON logs
  REDIS_URL         the durable queue and shared rate limits (without it: in process)
  DATABASE_URL      sinks, tenant secrets, the event archive (without it: JSON lines under data/)
  ENCRYPTION_KEY    64 hex characters: tenant secrets, OAuth tokens, archived bodies

Docs: README.md and docs/ in the repository (docs/pipelines.md: every pipeline field)."
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
        /// Listen on this interface (an IP address), overriding `HOST` and engine.yaml's `host`.
        #[arg(long, value_name = "IP")]
        host: Option<String>,
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
        /// The migrations the table check applies first, in a transaction it rolls back, to
        /// judge the tables as `engine migrate` will leave them (default: `migrations/` beside
        /// DIR).
        #[arg(long)]
        migrations: Option<PathBuf>,
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
        #[arg(long, value_enum, default_value_t = crate::replay::report::ReportFormat::Text)]
        format: crate::replay::report::ReportFormat,
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
    /// The event archive: find events (`list`, `show`), run them through the pipeline as it is
    /// now (`replay`, `jobs`, `cancel`), and erase a person's events (`erase`). docs/events.md
    Events {
        #[command(subcommand)]
        action: events::EventsAction,
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
        target: Deployment,
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
pub struct Deployment {
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
        target: Deployment,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// The dead letters of a pipeline, oldest first.
    List {
        /// The pipeline's name (its `name:`, not a directory).
        #[arg(long)]
        pipeline: String,
        #[command(flatten)]
        target: Deployment,
    },
    /// One dead letter with its event.
    Show {
        /// The pipeline's name (its `name:`, not a directory).
        #[arg(long)]
        pipeline: String,
        /// The dead letter's id, as `engine dlq list` prints it.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        target: Deployment,
    },
    /// Put dead letters back on the queue with a fresh attempt count.
    Replay {
        /// The pipeline's name (its `name:`, not a directory).
        #[arg(long)]
        pipeline: String,
        /// One dead letter, by the id `engine dlq list` prints.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every dead letter of the pipeline.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Deployment,
    },
    /// Delete dead letters.
    Purge {
        /// The pipeline's name (its `name:`, not a directory).
        #[arg(long)]
        pipeline: String,
        /// One dead letter, by the id `engine dlq list` prints.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every dead letter of the pipeline.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Deployment,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantsAction {
    /// Link an id to a tenant (insert or replace).
    Link {
        /// What the id is: `vapi_assistant`, `vapi_phone_number`, ...
        #[arg(long)]
        source: String,
        /// The id as the provider's payload carries it.
        #[arg(long)]
        id: String,
        /// The tenant it belongs to (as OAuth and `tenant_of` name it).
        #[arg(long)]
        tenant: String,
    },
    /// Remove a link.
    Unlink {
        /// What the id is: `vapi_assistant`, `vapi_phone_number`, ...
        #[arg(long)]
        source: String,
        /// The id as the provider's payload carries it.
        #[arg(long)]
        id: String,
    },
    /// List the links (of one tenant).
    List {
        /// Only this tenant's links.
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
        /// Where the value is stored (it was sealed to it): `tenant_credentials/<tenant>/
        /// <credential>`, `<table>.<column>/<key values>`, `engine_events/<pipeline>/<event id>`.
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

/// Parse arguments and run; `version` is what `--version` prints (the binary's build).
pub fn run(version: &'static str) -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().version(version).get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => dispatch(cli.command),
        Err(e) => e.exit(),
    }
}

/// `engine serve`: its options, with SIGHUP reloading from where it loaded.
fn serve_command(
    pipelines: PathBuf,
    env_file: Option<PathBuf>,
    no_worker: bool,
    record: Option<PathBuf>,
    watch: bool,
    host: Option<String>,
) -> ExitCode {
    let reload = crate::server::reload::Source {
        dir: pipelines.clone(),
        env: match &env_file {
            Some(f) => crate::server::reload::EnvOrigin::File(f.clone()),
            None => crate::server::reload::EnvOrigin::Process,
        },
    };
    let opts = crate::server::ServeOptions {
        workers: !no_worker,
        record,
        reload: Some(reload),
        watch,
        host,
    };
    serve(&pipelines, env_file.as_deref(), Mode::Serve(opts))
}

/// Run one command.
fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            pipelines,
            env_file,
            no_worker,
            record,
            watch,
            host,
        } => serve_command(pipelines, env_file, no_worker, record, watch, host),
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
            migrations,
        } => validate_command(
            &dir,
            env_file.as_deref(),
            format,
            database_url.as_deref(),
            (fixtures, migrations),
        ),
        Command::Replay {
            fixtures,
            pipelines,
            filter,
            format,
            update,
        } => replay(
            crate::replay::ReplayOptions {
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
        Command::Events { action } => events::events(action),
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
                .unwrap_or_else(|| crate::table_check::default_fixtures(&target.pipelines));
            let step = match (status, check) {
                (true, _) => MigrateStep::Status,
                (_, true) => MigrateStep::Check,
                _ => MigrateStep::Apply,
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

/// `engine validate`: the table check's fixtures (default: `fixtures/` beside DIR) and
/// migrations (default: `migrations/` beside DIR; one named that is no directory is a usage
/// error, never a check judged without it).
fn validate_command(
    dir: &Path,
    env_file: Option<&Path>,
    format: Format,
    database_url: Option<&str>,
    (fixtures, migrations): (Option<PathBuf>, Option<PathBuf>),
) -> ExitCode {
    if let Some(m) = migrations.as_ref().filter(|m| !m.is_dir()) {
        eprintln!("engine: --migrations {}: not a directory", m.display());
        return ExitCode::from(2);
    }
    let fixtures = fixtures
        .map(|f| vec![f])
        .unwrap_or_else(|| crate::table_check::default_fixtures(dir));
    let migrations = migrations.or_else(|| crate::table_check::default_migrations(dir));
    let options = crate::table_check::CheckOptions {
        fixtures: &fixtures,
        memo: crate::table_check::Memo::Off,
        migrations: migrations.as_deref(),
    };
    validate(
        dir,
        env_file,
        format,
        database_url.map(|url| (url, options)),
    )
}

fn env_source(env_file: Option<&Path>) -> Result<EnvSource, ExitCode> {
    match env_file {
        None => Ok(EnvSource::process()),
        Some(f) => EnvSource::from_file(f).map_err(|e| {
            eprintln!("engine: {}", crate::diagnostics::chain(&e));
            ExitCode::from(2)
        }),
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
    match project.ops.keyring() {
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

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    started(tokio::runtime::Builder::new_current_thread())
}

fn started(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("engine: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every option and argument of every command says what it is for in `--help`.
    #[test]
    fn every_option_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "engine", &mut missing);
        assert!(
            missing.is_empty(),
            "options without a description: {missing:?}"
        );
    }
}
