//! Queues and workers of a running engine: built from the pipelines that have `transform` steps,
//! started with `engine serve` (or alone by `engine worker`), stopped after the HTTP side has
//! drained so every event answered 2xx is in the queue before the workers stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Project;
use crate::config::queue::{Durability, QueueConfig};
use crate::queue::Queue;
use crate::queue::memory::MemoryQueue;
use crate::queue::redis::{QueuePool, RedisQueue};
use crate::redis_conn::group_commit::GroupCommit;
use crate::sink::SinkTarget;
use crate::transform::Program;
use crate::worker::{Options, PartitionWorkers, Worker};

/// One pipeline's queue and the workers that drain it.
pub struct Queued {
    pub config: QueueConfig,
    pub handle: Queue,
    pub worker: Arc<Worker>,
    /// Its enqueue outages' scope (`ops::outage::scope_of`), decided once here rather than on
    /// every request.
    pub outage_scope: String,
}

/// The sinks' Postgres pool, when DATABASE_URL is set and sinks write there.
pub fn sink_pool(
    project: &Project,
    target: &SinkTarget,
) -> Result<Option<deadpool_postgres::Pool>, crate::db::DbError> {
    match &project.settings.database_url {
        Some(url) if matches!(target, SinkTarget::Configured) => Ok(Some(crate::db::pool(
            url,
            project.settings.database_pool_size,
        )?)),
        _ => Ok(None),
    }
}

/// Why a pipeline's queue, worker or sinks could not be wired.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("ENCRYPTION_KEY")]
    Keyring(#[source] crate::crypto::CryptoError),
    #[error("pipeline `{pipeline}`")]
    Sinks {
        pipeline: String,
        #[source]
        source: crate::sink::SinkBuildError,
    },
    #[error("{0}: transform was not compiled")]
    NotCompiled(String),
    #[error("queue `{queue}`")]
    Queue {
        queue: String,
        #[source]
        source: crate::queue::QueueError,
    },
    #[error("pipeline `{0}` has `archive: off`")]
    ArchiveOff(String),
    #[error("no pipeline `{0}`")]
    NoPipeline(String),
    #[error("pipeline `{0}` has no transform steps")]
    NoTransform(String),
}

/// What every queued pipeline's queue and worker are wired to: sinks writing to `target`
/// (through `pool` for postgres sinks), Redis queues sharing one set of connections and
/// enqueueing over `redis` (the app's request-path connection, given to `new`), in-process queues
/// a reload keeps (`reuse`), the event archive.
pub struct QueueWiring<'a> {
    pub target: &'a SinkTarget,
    pub pool: Option<&'a deadpool_postgres::Pool>,
    pub reuse: &'a [Arc<MemoryQueue>],
    pub archive: Option<&'a Arc<crate::archive::Store>>,
    /// ENCRYPTION_KEY's keyring (checked once here; sinks, the archive and OAuth flows share it).
    pub keyring: Option<crate::crypto::Keyring>,
    consumer: String,
    /// The connections every Redis queue of this set shares.
    redis_pool: Option<QueuePool>,
}

impl<'a> QueueWiring<'a> {
    pub fn new(
        project: &Project,
        target: &'a SinkTarget,
        pool: Option<&'a deadpool_postgres::Pool>,
        reuse: &'a [Arc<MemoryQueue>],
        redis: Option<&'a GroupCommit>,
        archive: Option<&'a Arc<crate::archive::Store>>,
    ) -> Result<QueueWiring<'a>, WiringError> {
        Ok(QueueWiring {
            target,
            pool,
            reuse,
            archive,
            keyring: keyring(project)?,
            consumer: crate::queue::consumer_name(),
            redis_pool: redis.map(QueuePool::new),
        })
    }

    /// The queue and worker of pipeline `p`, running its compiled `program`; `None` for a
    /// pipeline without a transform (it answers and keeps nothing).
    pub fn queued(
        &self,
        project: &Project,
        p: &crate::config::LoadedPipeline,
        program: Option<Program>,
    ) -> Result<Option<Queued>, WiringError> {
        if p.config.transform.is_empty() {
            return Ok(None);
        }
        let config = p.config.queue.clone().unwrap_or_default();
        let handle = self.queue_of(project, p, &config)?;
        let sinks = match self.target {
            SinkTarget::Configured => {
                sinks(project, &p.config, self.pool, self.keyring.as_ref(), false)?
            }
            SinkTarget::Capture(c) => p
                .config
                .sinks
                .keys()
                .map(|k| (k.clone(), c.sink()))
                .collect(),
        };
        let recorder = self
            .archive
            .zip(p.config.archive.kept())
            .map(|(store, kept)| {
                Arc::new(crate::archive::Recorder::new(
                    store.clone(),
                    &p.config.name,
                    &kept.index,
                    self.keyring.clone(),
                ))
            });
        let program =
            program.ok_or_else(|| WiringError::NotCompiled(p.file.display().to_string()))?;
        let outcomes: Arc<dyn crate::queue::Outcomes> = match &handle {
            Queue::Redis(q) => q.clone(),
            Queue::Memory(q) => q.clone(),
        };
        let worker = Arc::new(Worker {
            outcomes,
            program: Arc::new(program),
            sinks,
            options: options(&config),
            archive: recorder,
        });
        Ok(Some(Queued {
            config,
            outage_scope: crate::ops::outage::scope_of(&handle).to_string(),
            handle,
            worker,
        }))
    }

    /// Once every pipeline is wired: say at boot what is not durable or not where it seems.
    pub fn announce(&self, project: &Project, any_queued: bool) {
        if !matches!(self.target, SinkTarget::Configured) || !any_queued {
            return;
        }
        let postgres_sinks = project.pipelines.iter().any(|p| {
            !p.config.transform.is_empty()
                && p.config
                    .sinks
                    .values()
                    .any(|s| matches!(s, crate::config::sink::SinkConfig::Postgres(_)))
        });
        if self.pool.is_none() && postgres_sinks {
            tracing::warn!(dir = %project.settings.data_dir, "no DATABASE_URL: postgres sinks write JSON lines to <data_dir>/<table>.jsonl");
        }
        if project.settings.redis_url.is_none() {
            tracing::warn!(
                "no REDIS_URL: events are queued in process and are NOT durable (lost on restart); set REDIS_URL in production"
            );
        }
    }

    /// The queue of pipeline `p` (`config` its queue section): on Redis over the set's shared
    /// connections, or in process (one of `reuse` when a reload keeps it).
    fn queue_of(
        &self,
        project: &Project,
        p: &crate::config::LoadedPipeline,
        config: &QueueConfig,
    ) -> Result<Queue, WiringError> {
        if let Some(queue) =
            redis_queue(project, &p.config, &self.consumer, self.redis_pool.as_ref())?
        {
            return Ok(Queue::Redis(Arc::new(queue)));
        }
        if config.durability == Durability::Replicated {
            tracing::warn!(pipeline = %p.config.name, "`durability: replicated` needs REDIS_URL: the in-process queue keeps events in this process only");
        }
        let name = config.name.clone().unwrap_or_else(|| p.config.name.clone());
        Ok(Queue::Memory(
            self.reuse
                .iter()
                .find(|q| crate::queue::Outcomes::name(&***q) == name)
                .cloned()
                .unwrap_or_else(|| Arc::new(MemoryQueue::new(&name))),
        ))
    }
}

/// A worker's options from its queue section.
fn options(config: &QueueConfig) -> Options {
    Options {
        max_attempts: config.max_attempts,
        backoff_initial: config.backoff.initial.0,
        backoff_max: config.backoff.max.0,
        lease: config.lease.0,
        batch: config.batch_size as usize,
        batch_wait: config.batch_wait.map_or(crate::worker::BATCH_WAIT, |w| w.0),
        ..Options::default()
    }
}

/// ENCRYPTION_KEY (and its predecessors) as a keyring, when set.
pub fn keyring(project: &Project) -> Result<Option<crate::crypto::Keyring>, WiringError> {
    project
        .ops
        .keyring()
        .transpose()
        .map_err(WiringError::Keyring)
}

/// A pipeline's configured sinks (`replay`: built to overwrite an event's earlier rows).
pub fn sinks(
    project: &Project,
    pipeline: &crate::config::pipeline::Pipeline,
    pool: Option<&deadpool_postgres::Pool>,
    keyring: Option<&crate::crypto::Keyring>,
    replay: bool,
) -> Result<std::collections::HashMap<String, Arc<dyn crate::sink::Sink>>, WiringError> {
    crate::sink::build(
        &pipeline.sinks,
        pool,
        keyring,
        &project.settings.data_dir,
        Duration::from_millis(project.settings.statement_timeout_ms),
        replay,
    )
    .map_err(|source| WiringError::Sinks {
        pipeline: pipeline.name.clone(),
        source,
    })
}

/// The Redis queue of a queued pipeline, over `pool` (the connections a served set shares) or
/// connections of its own (the CLI's `queue`, `dlq` and `events erase`): `None` without
/// REDIS_URL or transform steps.
pub fn redis_queue(
    project: &Project,
    pipeline: &crate::config::pipeline::Pipeline,
    consumer: &str,
    pool: Option<&QueuePool>,
) -> Result<Option<RedisQueue>, WiringError> {
    let Some(url) = &project.settings.redis_url else {
        return Ok(None);
    };
    if pipeline.transform.is_empty() {
        return Ok(None);
    }
    let config = pipeline.queue.clone().unwrap_or_default();
    let name = config.name.clone().unwrap_or_else(|| pipeline.name.clone());
    let pool = match pool {
        Some(p) => p.clone(),
        None => QueuePool::open(url).map_err(|source| WiringError::Queue {
            queue: name.clone(),
            source,
        })?,
    };
    let queue = RedisQueue::on(
        &pool,
        &project.settings.redis_key_prefix,
        &name,
        consumer,
        config.partitions,
    );
    Ok(Some(match config.durability {
        Durability::Local => queue,
        Durability::Replicated => queue.replicated(crate::redis_conn::group_commit::ReplicaWait {
            replicas: config.replication.replicas,
            timeout: config.replication.timeout.0,
        }),
    }))
}

/// A replay runner for `pipeline` (archived, with `program` compiled from its transform steps):
/// its sinks built to overwrite, its archive recorder; what `engine events replay` and the
/// console's replays run.
pub fn replay_runner(
    project: &Project,
    pipeline: &crate::config::pipeline::Pipeline,
    program: Arc<Program>,
    pool: Option<&deadpool_postgres::Pool>,
    store: &Arc<crate::archive::Store>,
) -> Result<crate::archive::replay::Runner, WiringError> {
    let kept = pipeline
        .archive
        .kept()
        .ok_or_else(|| WiringError::ArchiveOff(pipeline.name.clone()))?;
    let keyring = keyring(project)?;
    let sinks = sinks(project, pipeline, pool, keyring.as_ref(), true)?;
    Ok(crate::archive::replay::Runner {
        store: store.clone(),
        recorder: Arc::new(crate::archive::Recorder::new(
            store.clone(),
            &pipeline.name,
            &kept.index,
            keyring,
        )),
        program,
        sinks,
        page: 500,
    })
}

/// Running workers, stopped together.
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Start `concurrency` workers per queued pipeline, and at least one per partition of a
/// partitioned Redis queue (worker `i` reads partition `i` modulo the partitions); the first
/// worker of each partition leads its [`PartitionWorkers`] (runs its reaper and promoter, and calls the
/// others in when it finds a backlog).
pub fn start<'a>(queued: impl Iterator<Item = &'a Queued>) -> Workers {
    let (stop, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for q in queued {
        let partitions = match &q.handle {
            Queue::Redis(r) => r.partitions(),
            Queue::Memory(_) => 1,
        };
        let workers = (q.config.concurrency.max(1) as usize).max(partitions);
        // the first worker of each partition leads its team, the others help it
        let mut teams: Vec<PartitionWorkers> =
            (0..partitions).map(|_| PartitionWorkers::lead()).collect();
        let helpers: Vec<PartitionWorkers> = (partitions..workers)
            .map(|i| teams[i % partitions].helper())
            .collect();
        teams.extend(helpers);
        for (i, team) in teams.into_iter().enumerate() {
            tasks.spawn(
                q.worker
                    .clone()
                    .run(q.handle.clone(), i % partitions, team, rx.clone()),
            );
        }
    }
    Workers { stop, tasks }
}

impl Workers {
    /// Stop reading; let in-flight events finish within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                "workers did not finish within the grace period; unfinished events stay pending and are redelivered"
            );
            self.tasks.abort_all();
        }
    }
}
