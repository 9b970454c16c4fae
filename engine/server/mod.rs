//! The HTTP server: salvo, one dispatch handler, CORS, graceful shutdown.
//!
//! [`App::build`] turns a validated [`Project`] (configuration) into runtime components: a
//! verifier per pipeline, the tenant secret store, the trusted proxies. [`start`] binds a listener
//! (port 0 in tests), puts the app in a [`Live`] set (swapped whole on reload) whose handler
//! [`chain`] is CORS then [`dispatch::Dispatch`], and serves in a background task;
//! [`Running::shutdown`] stops accepting and lets in-flight requests finish.
//! `engine serve` calls [`serve`], which also waits for SIGTERM (what Render sends on deploys) or
//! SIGINT.

mod admit;
pub mod answer;
mod aside;
mod console;
mod cors;
pub mod dispatch;
mod enqueue;
pub(crate) mod events;
mod incoming;
mod limit;
mod oauth;
mod own;
pub mod queueing;
pub mod reload;
pub mod route;

mod lifecycle;
mod live;

pub use lifecycle::*;
pub use live::*;
use std::sync::Arc;
use std::time::Duration;

use crate::client_ip::TrustedProxies;
use crate::config::Project;
use crate::rate_limit::{RateLimiter, Rule};
use crate::redis_conn::group_commit::GroupCommit;
use crate::verify::{TenantSecrets, Verifier};
/// How long a looked-up tenant secret is reused, and how many are kept.
const TENANT_CACHE_TTL: Duration = Duration::from_secs(60);
const TENANT_CACHE_ENTRIES: u64 = 10_000;

/// Why an app could not be built from a project and its plan: what failed, and for which part.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("per-tenant secrets need ENCRYPTION_KEY")]
    NoEncryptionKey,
    #[error("ENCRYPTION_KEY: {0}")]
    Keyring(#[from] crate::crypto::CryptoError),
    #[error("database")]
    Database(#[source] crate::db::DbError),
    #[error("redis")]
    Redis(#[source] crate::redis_conn::RedisUrlError),
    #[error("connections")]
    Connections(#[source] crate::connection::ConnectionBuildError),
    /// A pipeline's queue, worker or sinks.
    #[error("queues")]
    Queues(#[source] queueing::WiringError),
    /// The plan lacks a part (it was built for another project).
    #[error(
        "{file}: {part} was not compiled (build the project with `plan::load` or `plan::build`)"
    )]
    NotCompiled { file: String, part: &'static str },
}

impl From<BuildError> for std::io::Error {
    fn from(e: BuildError) -> Self {
        std::io::Error::other(crate::diagnostics::chain(&e))
    }
}

/// Everything a request needs, built once at boot.
pub struct App {
    pub project: Project,
    /// One per pipeline, by index: its verifier, rate limit, responder, queue, OAuth flow.
    pub routes: Vec<route::Route>,
    pub tenants: Option<TenantSecrets>,
    pub proxies: TrustedProxies,
    pub limiter: RateLimiter,
    /// The default limit on `/health`, unless exempt.
    pub health_rule: Option<Rule>,
    /// The time and minted event ids requests see (frozen by `engine replay`).
    pub clock: crate::clock::Clock,
    /// Writes accepted requests as fixtures (`engine serve --record DIR`).
    pub recorder: Option<crate::fixture::record::FixtureRecorder>,
    /// What `/ready` checks.
    pub ready: crate::ops::ready::Checks,
    /// The bearer token `/metrics` needs (METRICS_TOKEN).
    pub metrics_token: Option<crate::config::operations::Secret>,
    /// The sinks' Postgres pool (for the pool gauges).
    pub pool: Option<deadpool_postgres::Pool>,
    /// The operator console, when CONSOLE_TOKEN is set.
    pub console: Option<crate::console::Console>,
    /// The event archive (none under `engine replay`).
    pub archive: Option<Arc<crate::archive::Store>>,
    /// When this set was built (boot or the last reload), Unix milliseconds.
    pub built_at_ms: i64,
}

/// What an app reads time from and writes rows to: the system clock and the configured sinks
/// when serving; a frozen clock and capturing sinks under `engine replay`.
#[derive(Default)]
pub struct AppContext {
    pub clock: crate::clock::Clock,
    pub sinks: crate::sink::SinkTarget,
    /// Record accepted requests as fixtures under this directory.
    pub record: Option<std::path::PathBuf>,
    /// What connections send through and read tokens from (`engine replay`: a fixture's
    /// stand-ins); `None` for the network and the database.
    pub connections: Option<crate::connection::Backing>,
    /// In-process queues to keep using (by name) instead of new ones: a reload carries them
    /// over so events waiting in them are not lost.
    pub memory_queues: Vec<Arc<crate::queue::memory::MemoryQueue>>,
    /// The console's samples to keep showing (a reload carries them over).
    pub console_samples: Option<Arc<crate::console::Samples>>,
}

/// What `/ready` checks: the request path's Redis connection, each Redis queue's streams (on a
/// cluster, the masters that own them), and Postgres.
fn ready_checks(
    project: &Project,
    redis: Option<GroupCommit>,
    routes: &[route::Route],
) -> Result<crate::ops::ready::Checks, BuildError> {
    let streams = routes
        .iter()
        .filter_map(|r| r.queued.as_ref())
        .filter_map(|q| match &q.handle {
            crate::queue::Queue::Redis(r) => Some((
                r.name().to_string(),
                r.streams().map(str::to_string).collect(),
            )),
            _ => None,
        })
        .collect();
    Ok(
        crate::ops::ready::Checks::new(redis, project.settings.database_url.as_deref())
            .map_err(BuildError::Database)?
            .with_queues(streams),
    )
}

/// The tenant secrets store, when a verifier looks secrets up per tenant: on the deployment's
/// database, sealed with ENCRYPTION_KEY (without DATABASE_URL verifiers use their configured
/// secrets only, with a warning).
fn tenant_secrets<'a>(
    project: &Project,
    mut built: impl Iterator<Item = &'a crate::plan::Built>,
) -> Result<Option<TenantSecrets>, BuildError> {
    if !built.any(|b| b.verifier.as_ref().is_some_and(Verifier::uses_tenants)) {
        return Ok(None);
    }
    let Some(url) = &project.settings.database_url else {
        tracing::warn!(
            "no DATABASE_URL: per-tenant secrets are not looked up; verifiers use their configured secrets only"
        );
        return Ok(None);
    };
    let keyring = project.ops.keyring().ok_or(BuildError::NoEncryptionKey)??;
    let pool = crate::db::pool(url, 4).map_err(BuildError::Database)?;
    Ok(Some(TenantSecrets::new(
        pool,
        keyring,
        TENANT_CACHE_TTL,
        TENANT_CACHE_ENTRIES,
    )))
}

/// Each pipeline with its own compiled parts, wired to the world and made its route, in one
/// pass: its connections, responder, queue and worker, OAuth flow.
fn wire_routes(
    project: &Project,
    plan: crate::plan::Plan,
    queues: &queueing::QueueWiring<'_>,
    backing: &crate::connection::Backing,
    limiter: &RateLimiter,
) -> Result<Vec<route::Route>, BuildError> {
    let mut connections = crate::connection::ConnectionsBuilder::new(backing);
    let mut routes = Vec::with_capacity(project.pipelines.len());
    for ((index, p), built) in project.pipelines.iter().enumerate().zip(plan.pipelines) {
        let conns = connections
            .for_pipeline(project, p)
            .map_err(BuildError::Connections)?;
        let responder = built.responder.ok_or_else(|| BuildError::NotCompiled {
            file: p.file.display().to_string(),
            part: "respond",
        })?;
        let parts = route::PipelineParts {
            verifier: built.verifier,
            responder: responder.with_connections(conns),
            queued: queues
                .queued(project, p, built.program)
                .map_err(BuildError::Queues)?,
            oauth: oauth_flow(p, queues.keyring.as_ref(), queues.pool),
        };
        routes.push(route::Route::wire(project, (index, p), parts, limiter));
    }
    queues.announce(project, routes.iter().any(|r| r.queued.is_some()));
    Ok(routes)
}

impl App {
    /// Build the runtime components of a validated project from its plan.
    pub fn build(project: Project, plan: crate::plan::Plan) -> Result<App, BuildError> {
        App::build_in(project, plan, AppContext::default())
    }

    /// [`App::build`] with another clock or sink target. The plan's compiled parts are wired to
    /// the running world here (queues, sinks, connections); nothing is compiled again.
    pub fn build_in(
        project: Project,
        plan: crate::plan::Plan,
        around: AppContext,
    ) -> Result<App, BuildError> {
        if plan.pipelines.len() != project.pipelines.len() {
            return Err(BuildError::NotCompiled {
                file: project.dir.display().to_string(),
                part: "every pipeline",
            });
        }
        let tenants = tenant_secrets(&project, plan.pipelines.iter())?;
        let pool = queueing::sink_pool(&project, &around.sinks).map_err(BuildError::Database)?;
        let backing = match around.connections {
            Some(b) => b,
            None => crate::connection::Backing::live(&project, pool.as_ref())
                .map_err(BuildError::Connections)?,
        };
        // One Redis connection for the whole request path: rate limits, enqueues, `/ready`.
        let redis = project
            .settings
            .redis_url
            .as_deref()
            .map(GroupCommit::open)
            .transpose()
            .map_err(BuildError::Redis)?;
        // the event archive, beside the configured sinks (none for `engine replay`'s captures)
        let archive = matches!(around.sinks, crate::sink::SinkTarget::Configured)
            .then(|| Arc::new(crate::archive::Store::new(pool.as_ref(), &project.settings)));
        let limiter = match &redis {
            Some(conn) => RateLimiter::Redis(crate::rate_limit::redis::RedisGcra::on(
                conn.clone(),
                &project.settings.redis_key_prefix,
            )),
            None => RateLimiter::Memory(crate::rate_limit::memory::Memory::new()),
        };
        let queues = queueing::QueueWiring::new(
            &project,
            &around.sinks,
            pool.as_ref(),
            &around.memory_queues,
            redis.as_ref(),
            archive.as_ref(),
        )
        .map_err(BuildError::Queues)?;
        let routes = wire_routes(&project, plan, &queues, &backing, &limiter)?;
        let ready = ready_checks(&project, redis.clone(), &routes)?;
        let metrics_token = project.ops.metrics_token.clone();
        let console = crate::console::Console::new(
            project.ops.console_token.as_ref(),
            redis
                .clone()
                .map(|r| (r, project.settings.redis_key_prefix.clone())),
            around.console_samples.unwrap_or_default(),
        );
        let proxies = TrustedProxies::parse(&project.settings.trusted_proxies);
        let default = project.settings.rate_limit.as_ref().filter(|r| r.enabled);
        let health_rule = default
            .filter(|d| !d.exempt.iter().any(|e| e == "/health"))
            .map(|d| Rule::new("health", d));
        Ok(App {
            project: project.served(),
            routes,
            tenants,
            proxies,
            limiter,
            health_rule,
            clock: around.clock,
            recorder: around
                .record
                .map(|dir| crate::fixture::record::FixtureRecorder { dir }),
            ready,
            metrics_token,
            pool,
            console,
            archive,
            built_at_ms: chrono::Utc::now().timestamp_millis(),
        })
    }

    /// What the metrics sampler reads: the queues and the database pool.
    pub fn sources(&self) -> crate::ops::metrics::Sources {
        crate::ops::metrics::Sources {
            queues: self.queues().map(|q| q.handle.clone()).collect(),
            pool: self.pool.clone(),
        }
    }

    /// The queued pipelines' queues and workers.
    pub fn queues(&self) -> impl Iterator<Item = &queueing::Queued> {
        self.routes.iter().filter_map(|r| r.queued.as_ref())
    }

    /// The URL a provider called (and signed): `PUBLIC_URL` when set, else what trusted proxies
    /// say, else the Host header.
    pub fn public_url(
        &self,
        peer: std::net::IpAddr,
        headers: &salvo::http::HeaderMap,
        path_and_query: &str,
    ) -> String {
        let mut url = match &self.project.settings.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => self.proxies.public_base(peer, headers),
        };
        url.push_str(path_and_query);
        url
    }
}

/// Pipeline `p`'s OAuth flow when it declares one, its tokens written through its postgres
/// sink; or why it cannot run (its routes answer 503 with that).
fn oauth_flow(
    p: &crate::config::LoadedPipeline,
    keyring: Option<&crate::crypto::Keyring>,
    pool: Option<&deadpool_postgres::Pool>,
) -> Option<Result<crate::oauth::Flow, crate::oauth::FlowSetupError>> {
    let cfg = p.config.oauth.as_ref()?;
    let flow = match p.config.sinks.get(&cfg.sink) {
        Some(crate::config::sink::SinkConfig::Postgres(sink)) => {
            crate::oauth::Flow::build(&p.config.name, cfg, sink, keyring, pool)
        }
        // validation refuses this; say so rather than panic if it ever gets here
        _ => Err(crate::oauth::FlowSetupError::NoPostgresSink(
            p.config.name.clone(),
        )),
    };
    if let Err(why) = &flow {
        let why = crate::diagnostics::chain(why);
        tracing::warn!(pipeline = %p.config.name, "{why}: its routes answer 503");
    }
    Some(flow)
}
