//! The HTTP server: salvo, one dispatch handler, CORS, graceful shutdown.
//!
//! [`App::build`] turns a validated [`Project`] (configuration) into runtime components: a
//! verifier per pipeline, the tenant secret store, the trusted proxies. [`start`] binds a listener
//! (port 0 in tests), puts the app in a [`Live`] set (swapped whole on reload) whose handler
//! [`chain`] is CORS then [`dispatch::Dispatch`], and serves in a background task;
//! [`Running::shutdown`] stops accepting and lets in-flight requests finish.
//! `engine serve` calls [`serve`], which also waits for SIGTERM (what Render sends on deploys) or
//! SIGINT.

mod answer;
mod console;
pub mod dispatch;
mod limit;
mod oauth;
mod own;
pub mod queueing;
pub mod reload;
pub mod route;
mod seen;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use salvo::conn::{Acceptor, Listener};
use salvo::cors::{AllowHeaders, AllowOrigin, Cors};
use salvo::http::Method;
use salvo::prelude::*;
use salvo::server::ServerHandle;

use crate::client_ip::TrustedProxies;
use crate::config::Project;
use crate::rate_limit::{RateLimiter, Rule};
use crate::shared_redis::SharedRedis;
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
    #[error("database: {0}")]
    Database(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("connections: {0}")]
    Connections(String),
    /// A pipeline's queue, worker or sinks.
    #[error("queues: {0}")]
    Queues(String),
    /// The plan lacks a part (it was built for another project).
    #[error(
        "{file}: {part} was not compiled (build the project with `plan::load` or `plan::build`)"
    )]
    NotCompiled { file: String, part: &'static str },
}

impl From<BuildError> for std::io::Error {
    fn from(e: BuildError) -> Self {
        std::io::Error::other(e.to_string())
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
    pub recorder: Option<crate::record::Recorder>,
    /// What `/ready` checks.
    pub ready: crate::ops::ready::Checks,
    /// The bearer token `/metrics` needs (METRICS_TOKEN).
    pub metrics_token: Option<crate::config::operations::Secret>,
    /// The sinks' Postgres pool (for the pool gauges).
    pub pool: Option<deadpool_postgres::Pool>,
    /// The operator console, when CONSOLE_TOKEN is set.
    pub console: Option<crate::console::Console>,
    /// When this set was built (boot or the last reload), Unix milliseconds.
    pub built_at_ms: i64,
}

/// What an app reads time from and writes rows to: the system clock and the configured sinks
/// when serving; a frozen clock and capturing sinks under `engine replay`.
#[derive(Default)]
pub struct Surroundings {
    pub clock: crate::clock::Clock,
    pub sinks: crate::sink::Target,
    /// Record accepted requests as fixtures under this directory.
    pub record: Option<std::path::PathBuf>,
    /// What connections send through and read tokens from (`engine replay`: a fixture's
    /// stand-ins); `None` for the network and the database.
    pub connections: Option<crate::connection::Backing>,
    /// In-process queues to keep using (by name) instead of new ones: a reload carries them
    /// over so events waiting in them are not lost.
    pub memory_queues: Vec<Arc<crate::queue::memory::MemoryQueue>>,
}

impl App {
    /// Build the runtime components of a validated project from its plan.
    pub fn build(project: Project, plan: crate::plan::Plan) -> Result<App, BuildError> {
        App::build_in(project, plan, Surroundings::default())
    }

    /// [`App::build`] with another clock or sink target. The plan's compiled parts are wired to
    /// the running world here (queues, sinks, connections); nothing is compiled again.
    pub fn build_in(
        project: Project,
        plan: crate::plan::Plan,
        around: Surroundings,
    ) -> Result<App, BuildError> {
        let mut verifiers = Vec::new();
        let mut programs = Vec::new();
        let mut compiled = Vec::new();
        for b in plan.pipelines {
            verifiers.push(b.verifier);
            programs.push(b.program);
            compiled.push(b.responder);
        }
        let tenants = if verifiers.iter().flatten().any(Verifier::uses_tenants) {
            match &project.settings.database_url {
                Some(url) => {
                    let keyring = project.ops.keyring().ok_or(BuildError::NoEncryptionKey)??;
                    let pool = crate::db::pool(url, 4).map_err(BuildError::Database)?;
                    Some(TenantSecrets::new(
                        pool,
                        keyring,
                        TENANT_CACHE_TTL,
                        TENANT_CACHE_ENTRIES,
                    ))
                }
                None => {
                    tracing::warn!(
                        "no DATABASE_URL: per-tenant secrets are not looked up; verifiers use their configured secrets only"
                    );
                    None
                }
            }
        } else {
            None
        };
        let pool = queueing::sink_pool(&project, &around.sinks).map_err(BuildError::Database)?;
        let backing = match around.connections {
            Some(b) => b,
            None => crate::connection::Backing::live(&project, pool.as_ref())
                .map_err(BuildError::Connections)?,
        };
        let connections =
            crate::connection::build(&project, &backing).map_err(BuildError::Connections)?;
        let mut responders = Vec::new();
        for ((p, conns), r) in project.pipelines.iter().zip(connections).zip(compiled) {
            let r = r.ok_or_else(|| BuildError::NotCompiled {
                file: p.file.display().to_string(),
                part: "respond",
            })?;
            responders.push(r.with_connections(conns));
        }
        // One Redis connection for the whole request path: rate limits, enqueues, `/ready`.
        let redis = project
            .settings
            .redis_url
            .as_deref()
            .map(SharedRedis::open)
            .transpose()
            .map_err(BuildError::Redis)?;
        let queued = queueing::build(
            &project,
            programs,
            &around.sinks,
            pool.as_ref(),
            &around.memory_queues,
            redis.as_ref(),
        )
        .map_err(BuildError::Queues)?;
        let ready =
            crate::ops::ready::Checks::new(redis.clone(), project.settings.database_url.as_deref())
                .map_err(BuildError::Database)?;
        let metrics_token = project.ops.metrics_token.clone();
        let console = crate::console::Console::new(project.ops.console_token.as_ref());
        let oauth = oauth_flows(&project, pool.as_ref());
        let proxies = TrustedProxies::parse(&project.settings.trusted_proxies);
        let default = project.settings.rate_limit.as_ref().filter(|r| r.enabled);
        let health_rule = default
            .filter(|d| !d.exempt.iter().any(|e| e == "/health"))
            .map(|d| Rule::new("health", d));
        let limiter = match redis {
            Some(conn) => RateLimiter::Redis(crate::rate_limit::redis::RedisGcra::on(
                conn,
                &project.settings.redis_key_prefix,
            )),
            None => RateLimiter::Memory(crate::rate_limit::memory::Memory::new()),
        };
        let routes = route::build(&project, verifiers, responders, queued, oauth, &limiter);
        Ok(App {
            project,
            routes,
            tenants,
            proxies,
            limiter,
            health_rule,
            clock: around.clock,
            recorder: around.record.map(|dir| crate::record::Recorder { dir }),
            ready,
            metrics_token,
            pool,
            console,
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
        let base = match &self.project.settings.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => self.proxies.public_base(peer, headers),
        };
        format!("{base}{path_and_query}")
    }
}

/// The OAuth flows of the pipelines that declare one, their tokens written through their
/// postgres sink.
fn oauth_flows(
    project: &Project,
    pool: Option<&deadpool_postgres::Pool>,
) -> Vec<Option<Result<crate::oauth::Flow, String>>> {
    let keyring = project.ops.keyring().and_then(Result::ok);
    project
        .pipelines
        .iter()
        .map(|p| {
            let cfg = p.config.oauth.as_ref()?;
            let flow = match p.config.sinks.get(&cfg.sink) {
                Some(crate::config::sink::Sink::Postgres(sink)) => {
                    crate::oauth::Flow::build(&p.config.name, cfg, sink, keyring.as_ref(), pool)
                }
                // validation refuses this; say so rather than panic if it ever gets here
                _ => Err(format!(
                    "`{}`: `oauth.sink` must name a `postgres` sink of this pipeline",
                    p.config.name
                )),
            };
            if let Err(why) = &flow {
                tracing::warn!(pipeline = %p.config.name, "{why}: its routes answer 503");
            }
            Some(flow)
        })
        .collect()
}

/// A server running in the background.
pub struct Running {
    pub addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<()>,
    live: Arc<Live>,
}

/// The pipeline set being served, swapped whole by a reload: requests that started on the old
/// set finish on it (they hold its `Arc`), new ones see the new set.
pub struct Live {
    current: ArcSwap<Serving>,
    /// The running workers of the current set (`None` once stopped).
    workers: std::sync::Mutex<Option<queueing::Workers>>,
    /// Whether this process runs queue workers at all.
    run_workers: bool,
    /// The previous sets' workers, finishing their in-flight events after a swap.
    retiring: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// One built set: the app and its handler chain.
struct Serving {
    app: Arc<App>,
    chain: Vec<Arc<dyn Handler>>,
}

impl Live {
    fn new(app: Arc<App>, run_workers: bool) -> Live {
        let workers = run_workers.then(|| queueing::start(app.queues()));
        Live {
            current: ArcSwap::from_pointee(Serving {
                chain: chain(app.clone()),
                app,
            }),
            workers: std::sync::Mutex::new(workers),
            run_workers,
            retiring: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The app serving now.
    pub fn app(&self) -> Arc<App> {
        self.current.load().app.clone()
    }

    /// Build `project` into a new set (in-process queues carried over, so no queued event is
    /// dropped), start its workers, swap it in, then let the old workers finish within `grace`.
    pub fn swap(
        &self,
        project: Project,
        plan: crate::plan::Plan,
        grace: Duration,
    ) -> Result<(), String> {
        let old = self.app();
        let carried = old
            .queues()
            .filter_map(|q| match &q.handle {
                crate::queue::Queue::Memory(m) => Some(m.clone()),
                crate::queue::Queue::Redis(_) => None,
            })
            .collect();
        let app = Arc::new(
            App::build_in(
                project,
                plan,
                Surroundings {
                    record: old.recorder.as_ref().map(|r| r.dir.clone()),
                    memory_queues: carried,
                    ..Surroundings::default()
                },
            )
            .map_err(|e| e.to_string())?,
        );
        let workers = self.run_workers.then(|| queueing::start(app.queues()));
        self.current.store(Arc::new(Serving {
            chain: chain(app.clone()),
            app,
        }));
        let previous = std::mem::replace(
            &mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()),
            workers,
        );
        if let Some(w) = previous {
            let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
            retiring.retain(|h| !h.is_finished());
            retiring.push(tokio::spawn(w.stop(grace)));
        }
        Ok(())
    }

    /// Wait until the workers of the sets swapped out have stopped: from then on only the
    /// current set's workers take events (what replaying dead letters after a fix relies on).
    pub async fn retired(&self) {
        let handles = std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }

    async fn stop_workers(&self, grace: Duration) {
        let w = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = w {
            w.stop(grace).await;
        }
    }
}

/// The salvo handler in front of the live set.
struct LiveHandler {
    live: Arc<Live>,
}

#[async_trait]
impl Handler for LiveHandler {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _: &mut FlowCtrl,
    ) {
        let serving = self.live.current.load_full();
        FlowCtrl::new(serving.chain.clone())
            .call_next(req, depot, res)
            .await;
    }
}

impl Running {
    /// Stop accepting connections, give in-flight requests `grace` to finish, then stop the
    /// workers (after the HTTP side, so every event answered 2xx is queued first).
    pub async fn shutdown(self, grace: Duration) {
        self.handle.stop_graceful(Some(grace));
        let _ = self.task.await;
        self.live.stop_workers(grace).await;
    }

    /// Wait until the server stops.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// The live pipeline set (for reloads).
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }
}

/// The salvo service in front of the live set.
fn service(live: Arc<Live>) -> Service {
    let router = Router::new()
        .push(Router::with_path("{**rest}").goal(LiveHandler { live: live.clone() }))
        .goal(LiveHandler { live });
    Service::new(router)
}

/// The handlers a request passes through, in order, as the service runs them: CORS (when
/// origins are configured), then dispatch. `engine replay` runs this chain without a socket.
pub fn chain(app: Arc<App>) -> Vec<Arc<dyn Handler>> {
    let mut out: Vec<Arc<dyn Handler>> = Vec::new();
    if let Some(c) = cors(&app) {
        out.push(Arc::new(c));
    }
    out.push(Arc::new(dispatch::Dispatch { app }));
    out
}

/// The CORS hoop for the configured origins; `None` allows no cross-origin calls.
fn cors(app: &App) -> Option<salvo::cors::CorsHandler> {
    let origins = &app.project.settings.cors.allow_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    let cors = Cors::new()
        .allow_origin(allow)
        .allow_methods(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(600)
        .into_handler();
    Some(cors)
}

/// Build `project` into an app, bind `addr` and serve in a background task, with queue workers.
pub async fn start(
    project: Project,
    plan: crate::plan::Plan,
    addr: SocketAddr,
) -> std::io::Result<Running> {
    start_with(project, plan, addr, true, Surroundings::default()).await
}

/// [`start`], choosing whether this process also runs the queue workers, and its surroundings.
pub async fn start_with(
    project: Project,
    plan: crate::plan::Plan,
    addr: SocketAddr,
    workers: bool,
    around: Surroundings,
) -> std::io::Result<Running> {
    // install the recorder before the first request, so no count is recorded into the void
    let _ = crate::ops::metrics::handle();
    let app = Arc::new(App::build_in(project, plan, around)?);
    let queues = app.queues().count();
    if queues > 0 {
        let backend = if app.project.settings.redis_url.is_some() {
            "redis"
        } else {
            "in-process"
        };
        tracing::info!(queues, backend, "queues initialised");
    }
    let acceptor = TcpListener::new(addr)
        .try_bind()
        .await
        .map_err(std::io::Error::other)?;
    let local = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .unwrap_or(addr);
    let t = app.project.settings.timeouts;
    let fuse = salvo::fuse::FuseConfig::default()
        .with_http1_header_timeout(Duration::from_secs(t.header_secs))
        .with_request_body_timeout(Duration::from_secs(t.body_secs))
        .with_connection_idle_timeout(Duration::from_secs(t.idle_secs));
    let server = Server::new(acceptor).fuse_config(fuse);
    let handle = server.handle();
    let live = Arc::new(Live::new(app, workers));
    // In-memory rate-limit keys of clients that went quiet carry no information: drop them.
    let housekeeping = Arc::downgrade(&live);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            match housekeeping.upgrade() {
                Some(live) => live.app().limiter.housekeeping(),
                None => break,
            }
        }
    });
    let sampled = Arc::downgrade(&live);
    crate::ops::metrics::start_sampler(move || sampled.upgrade().map(|l| l.app().sources()));
    let service = service(live.clone());
    let task = tokio::spawn(async move { server.serve(service).await });
    Ok(Running {
        addr: local,
        handle,
        task,
        live,
    })
}

/// Start-up lines about the queue's Redis (the seed's "Redis connected"), with warnings for
/// settings that can lose events.
async fn announce_redis(project: &Project) {
    let Some(url) = &project.settings.redis_url else {
        return;
    };
    match crate::queue::redis::configuration_warnings(url).await {
        Ok(warnings) => {
            tracing::info!("Redis connected");
            for w in warnings {
                tracing::warn!("{w}");
                if project.env.is_production() {
                    crate::ops::alerts::note(&w);
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "Redis unreachable: webhooks of queued pipelines will be answered 503 until it is back")
        }
    }
}

/// The seed's "Supabase connection established" start-up line, or an error naming the problem,
/// from the app's own readiness check.
async fn announce_database(app: &App) {
    if app.project.settings.database_url.is_none() {
        return;
    }
    let (_, body) = app.ready.run().await;
    match body["checks"]["postgres"].as_str() {
        Some("ok") => tracing::info!("database connected"),
        state => tracing::error!(
            state = state.unwrap_or("unknown"),
            "database unreachable: sinks retry until it is back"
        ),
    }
}

/// Run only the queue workers until SIGTERM/SIGINT (`engine worker`).
pub async fn serve_workers(project: Project, plan: crate::plan::Plan) -> std::io::Result<()> {
    let _ops = crate::ops::start(&project);
    announce_redis(&project).await;
    let grace = Duration::from_secs(project.settings.shutdown_grace_secs);
    let _ = crate::ops::metrics::handle();
    let app = Arc::new(App::build(project, plan)?);
    let sampled = Arc::downgrade(&app);
    crate::ops::metrics::start_sampler(move || sampled.upgrade().map(|app| app.sources()));
    let queues = app.queues().count();
    let workers = queueing::start(app.queues());
    let stop = shutdown_signal();
    tracing::info!(queues, "workers running");
    let signal = stop.await;
    tracing::info!(
        signal,
        grace_secs = grace.as_secs(),
        "stopping workers: finishing in-flight events"
    );
    workers.stop(grace).await;
    tracing::info!("workers stopped");
    Ok(())
}

/// How `engine serve` runs.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Run queue workers in this process.
    pub workers: bool,
    /// Write accepted requests as fixtures under this directory.
    pub record: Option<std::path::PathBuf>,
    /// Where SIGHUP (and `watch`) reload the pipelines from.
    pub reload: Option<crate::server::reload::Source>,
    /// Reload whenever a file under the pipelines directory changes.
    pub watch: bool,
}

/// Serve until SIGTERM/SIGINT, then shut down gracefully.
pub async fn serve(
    project: Project,
    plan: crate::plan::Plan,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(project.settings.shutdown_grace_secs);
    let addr: SocketAddr = format!("{}:{}", project.settings.host, project.settings.port)
        .parse()
        .map_err(|_| {
            std::io::Error::other(format!(
                "cannot listen on host `{}`: not an IP address",
                project.settings.host
            ))
        })?;
    for p in &project.pipelines {
        tracing::info!(
            pipeline = %p.config.name,
            method = %p.config.route.method,
            path = %p.config.route.path,
            file = %p.file.display(),
            "pipeline loaded"
        );
    }
    if project.settings.maintenance.enabled {
        tracing::warn!("maintenance mode is on: pipeline routes answer 503");
    }
    let _ops = crate::ops::start(&project);
    announce_redis(&project).await;
    if let Some(dir) = &opts.record {
        tracing::warn!(dir = %dir.display(), "recording accepted requests as fixtures: they hold real payloads minus credentials and redacted fields; keep the directory private");
    }
    let around = Surroundings {
        record: opts.record.clone(),
        ..Surroundings::default()
    };
    let running = start_with(project, plan, addr, opts.workers, around).await?;
    announce_database(&running.live().app()).await;
    if let Some(source) = opts.reload {
        if opts.watch {
            tracing::info!(dir = %source.dir.display(), "watching the pipelines directory for changes");
        }
        crate::server::reload::spawn(running.live(), source, opts.watch, grace);
    }
    let stop = shutdown_signal();
    tracing::info!(
        port = running.addr.port(),
        "Server listening on port {}",
        running.addr.port()
    );
    let signal = stop.await;
    tracing::info!(
        signal,
        grace_secs = grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    running.shutdown(grace).await;
    tracing::info!("server stopped");
    Ok(())
}

/// The SIGTERM/SIGINT handlers, installed when this is called, not when the returned future is
/// first polled: callers call it before they announce that they run, so a supervisor (or a test)
/// that signals as soon as it reads the announcement gets a graceful stop, never the signal's
/// default action (the process killed mid-request).
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = recv(term) => "SIGTERM",
                _ = recv(int) => "SIGINT",
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
