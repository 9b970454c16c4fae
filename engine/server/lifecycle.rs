//! The server's life: [`start`] binds a listener (port 0 in tests) and serves in a background
//! task; [`serve`] is `engine serve` (announce Redis and the database, serve until SIGTERM or
//! SIGINT, then drain); [`serve_workers`] is `engine worker` (queue workers, no listener).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use salvo::conn::{Acceptor, Listener};
use salvo::prelude::*;

use super::*;
use crate::config::Project;

/// Build `project` into an app, bind `addr` and serve in a background task, with queue workers.
pub async fn start(
    project: Project,
    plan: crate::plan::Plan,
    addr: SocketAddr,
) -> std::io::Result<Running> {
    start_with(project, plan, addr, true, AppContext::default()).await
}

/// [`start`], choosing whether this process also runs the queue workers, and its surroundings.
pub async fn start_with(
    project: Project,
    plan: crate::plan::Plan,
    addr: SocketAddr,
    workers: bool,
    around: AppContext,
) -> std::io::Result<Running> {
    // install the recorder before the first request, so no count is recorded into the void
    let _ = crate::ops::metrics::handle();
    let app = Arc::new(App::build_in(project, plan, around)?);
    // the archive's days made before the first worker writes (a day's partition created while
    // rows of that day are being inserted could refuse them)
    tend_archive_now(&app).await;
    let queues = app.queues().count();
    if queues > 0 {
        let backend = if app.project.settings.redis_url.is_some() {
            "redis"
        } else {
            "in-process"
        };
        tracing::info!(queues, backend, "queues initialised");
    }
    // each Redis queue's consumer group made now, while Redis still has room: a worker started
    // later on a full Redis could not make it (XGROUP CREATE needs memory) and would never drain
    // (in the background: a Redis that does not answer must not hold the boot)
    for q in app.queues() {
        if let crate::queue::Queue::Redis(r) = &q.handle {
            tokio::spawn(make_group(r.clone()));
        }
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
    let admission = super::admit::Admission::new(
        app.project.settings.connections,
        crate::client_ip::TrustedProxies::parse(&app.project.settings.trusted_proxies),
        fuse,
    );
    let server = Server::new(acceptor).fuse_policy(admission);
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
    tend_archive(&live.app(), {
        let live = Arc::downgrade(&live);
        move || live.strong_count() > 0
    });
    // replays whose process stopped are taken over: at start, then every 30 s
    let adopting = Arc::downgrade(&live);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            match adopting.upgrade() {
                Some(live) => super::events::adopt_stopped_replays(&live.app()).await,
                None => break,
            }
        }
    });
    let service = service(live.clone());
    let task = tokio::spawn(async move { server.serve(service).await });
    Ok(Running {
        addr: local,
        handle,
        task,
        live,
    })
}

/// Make the archive's days now (within 5 s: a database that does not answer does not hold the
/// boot up; the hourly round tries again).
async fn tend_archive_now(app: &App) {
    let Some(store) = &app.archive else {
        return;
    };
    let keeps = crate::archive::retention::keeps(&app.project);
    if keeps.is_empty() {
        return;
    }
    match tokio::time::timeout(
        Duration::from_secs(5),
        crate::archive::retention::tend(store, &keeps),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "archive upkeep failed"),
        Err(_) => {
            tracing::warn!("archive upkeep did not finish within 5 s at start; retried hourly")
        }
    }
}

/// Keep the archive's days (partitions made ahead, expired days dropped) every hour while
/// `alive`.
fn tend_archive(app: &App, alive: impl Fn() -> bool + Send + 'static) {
    if let Some(store) = &app.archive {
        let keeps = crate::archive::retention::keeps(&app.project);
        if !keeps.is_empty() {
            tokio::spawn(crate::archive::retention::run(store.clone(), keeps, alive));
        }
    }
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
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "Redis unreachable: webhooks of queued pipelines will be answered 503 until it is back"
            )
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
    tend_archive_now(&app).await;
    tend_archive(&app, {
        let app = Arc::downgrade(&app);
        move || app.strong_count() > 0
    });
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
    /// The interface to listen on (`--host`), over the settings' `host`.
    pub host: Option<String>,
}

/// Serve until SIGTERM/SIGINT, then shut down gracefully.
pub async fn serve(
    project: Project,
    plan: crate::plan::Plan,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(project.settings.shutdown_grace_secs);
    let host = opts
        .host
        .clone()
        .unwrap_or_else(|| project.settings.host.clone());
    let addr: SocketAddr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, project.settings.port),
        Err(_) => {
            return Err(std::io::Error::other(format!(
                "cannot listen on host `{host}`: not an IP address (HOST, --host or engine.yaml's `host`)"
            )));
        }
    };
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
    let around = AppContext {
        record: opts.record.clone(),
        ..AppContext::default()
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

/// Create a Redis queue's consumer group (and its stream) if missing; a failure is said once,
/// and the queue's first event makes it.
async fn make_group(r: std::sync::Arc<crate::queue::redis::RedisQueue>) {
    if let Err(e) = r.ensure_group().await {
        tracing::warn!(
            queue = r.name(),
            error = &e as &dyn std::error::Error,
            "cannot create the queue's consumer group yet (its first event will)"
        );
    }
}
