//! The pipeline set being served and its swap: [`Live`] holds the current set (app + workers)
//! behind an `ArcSwap`, so a reload replaces it whole while requests that started on the old set
//! finish on it; [`Running`] is a server in the background with its handle; [`chain`] is the
//! handler chain every request goes through (CORS, then dispatch).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use salvo::prelude::*;
use salvo::server::ServerHandle;

use super::*;
use crate::config::Project;

/// A server running in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub(super) handle: ServerHandle,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) live: Arc<Live>,
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
    pub(super) fn new(app: Arc<App>, run_workers: bool) -> Live {
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
    ) -> Result<(), super::BuildError> {
        let old = self.app();
        let carried = old
            .queues()
            .filter_map(|q| match &q.handle {
                crate::queue::Queue::Memory(m) => Some(m.clone()),
                crate::queue::Queue::Redis(_) => None,
            })
            .collect();
        let app = Arc::new(App::build_in(
            project,
            plan,
            AppContext {
                record: old.recorder.as_ref().map(|r| r.dir.clone()),
                memory_queues: carried,
                console_samples: old.console.as_ref().map(|c| c.samples.clone()),
                ..AppContext::default()
            },
        )?);
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
pub(super) fn service(live: Arc<Live>) -> Service {
    let router = Router::new()
        .push(Router::with_path("{**rest}").goal(LiveHandler { live: live.clone() }))
        .goal(LiveHandler { live });
    Service::new(router)
}

/// The handlers a request passes through, in order, as the service runs them: CORS (when
/// origins are configured), then dispatch. `engine replay` runs this chain without a socket.
pub fn chain(app: Arc<App>) -> Vec<Arc<dyn Handler>> {
    let mut out: Vec<Arc<dyn Handler>> = Vec::new();
    if let Some(c) = super::cors::Cors::new(&app.project.settings.cors.allow_origins) {
        out.push(Arc::new(c));
    }
    out.push(Arc::new(dispatch::Dispatch { app }));
    out
}
