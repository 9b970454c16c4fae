//! The HTTP server: salvo, one dispatch handler, CORS, graceful shutdown.
//!
//! [`start`] binds a listener (port 0 in tests), builds the salvo service around
//! [`dispatch::Dispatch`] and serves in a background task; [`Running::shutdown`] stops accepting
//! and lets in-flight requests finish. `engine serve` calls [`serve`], which also waits for
//! SIGTERM (what Render sends on deploys) or SIGINT.

pub mod dispatch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use salvo::conn::{Acceptor, Listener};
use salvo::cors::{AllowHeaders, AllowOrigin, Cors};
use salvo::http::Method;
use salvo::prelude::*;
use salvo::server::ServerHandle;

use crate::config::Project;

/// A server running in the background.
pub struct Running {
    pub addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting connections, give in-flight requests `grace` to finish, then return.
    pub async fn shutdown(self, grace: Duration) {
        self.handle.stop_graceful(Some(grace));
        let _ = self.task.await;
    }

    /// Wait until the server stops.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Build the salvo service for a project.
pub fn service(project: Arc<Project>) -> Service {
    let origins = project.settings.cors.allow_origins.clone();
    let router = Router::new()
        .push(Router::with_path("{**rest}").goal(dispatch::Dispatch {
            project: project.clone(),
        }))
        .goal(dispatch::Dispatch { project });
    let service = Service::new(router);
    if origins.is_empty() {
        return service;
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
    service.hoop(cors)
}

/// Bind `addr` and serve `project` in a background task.
pub async fn start(project: Arc<Project>, addr: SocketAddr) -> std::io::Result<Running> {
    let acceptor = TcpListener::new(addr)
        .try_bind()
        .await
        .map_err(std::io::Error::other)?;
    let local = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .unwrap_or(addr);
    let server = Server::new(acceptor);
    let handle = server.handle();
    let service = service(project);
    let task = tokio::spawn(async move { server.serve(service).await });
    Ok(Running {
        addr: local,
        handle,
        task,
    })
}

/// Serve until SIGTERM/SIGINT, then shut down gracefully.
pub async fn serve(project: Project) -> std::io::Result<()> {
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
    let running = start(Arc::new(project), addr).await?;
    tracing::info!(
        port = running.addr.port(),
        "Server listening on port {}",
        running.addr.port()
    );
    let signal = shutdown_signal().await;
    tracing::info!(
        signal,
        grace_secs = grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    running.shutdown(grace).await;
    tracing::info!("server stopped");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
