//! What `REDIS_URL` names: one Redis node, or a Redis Cluster (Valkey in cluster mode too), and
//! the connections the engine makes to it.
//!
//! ```text
//! redis://host:6379[/db], rediss://...            one node (Render Key Value, a local redis-server)
//! redis+cluster://host1:7000,host2:7001,...        a cluster: seed nodes; the client learns the rest
//! rediss+cluster://...                             the same over TLS
//!   -> Target::Single(Client) | Target::Cluster(ClusterClient)
//!   -> Conn: one type the queue, the rate limiter, the group commit and `/ready` send commands
//!      through, whichever the target
//! ```
//!
//! On a cluster, redis's cluster client routes each command by its key's slot and follows
//! `MOVED` / `ASK` redirections and topology changes (a failover, a node back); the engine only
//! keeps every multi-key operation inside one slot (the queue's keys share the `{q:<name>}` hash
//! tag) and never combines keys of different slots in one script (see [`group_commit`]).

pub mod group_commit;

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the engine's Redis is.
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// The forms REDIS_URL takes, for error messages.
const FORMS: &str = "redis://[user:password@]host:port[/db], rediss://... (TLS), or redis+cluster://host:port,host:port,... for a cluster";

/// How long a cluster command may wait (retries included) before it fails; callers add their
/// own, shorter bounds where a request waits.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a `REDIS_URL` cannot be used. Never repeats the URL (it may hold a password); the
/// client's own complaint is kept as the cause.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("REDIS_URL is not a valid Redis URL: use {FORMS}")]
    NotValid(#[source] redis::RedisError),
    #[error("REDIS_URL names a cluster without any node: use {FORMS}")]
    NoClusterNode,
    #[error("REDIS_URL is not a valid Redis Cluster URL: use {FORMS}")]
    NotValidCluster(#[source] redis::RedisError),
}

impl Target {
    /// Parse a `REDIS_URL`.
    pub fn parse(url: &str) -> Result<Target, RedisUrlError> {
        let cluster = |scheme: &str| url.strip_prefix(scheme).map(str::to_string);
        let (seeds, tls) = match (cluster("redis+cluster://"), cluster("rediss+cluster://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return redis::Client::open(url)
                    .map(Target::Single)
                    .map_err(RedisUrlError::NotValid);
            }
        };
        // `user:pass@` given once applies to every seed
        let (auth, hosts) = match seeds.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts.to_string()),
            None => (String::new(), seeds),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let nodes: Vec<String> = hosts
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{auth}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err(RedisUrlError::NoClusterNode);
        }
        ClusterClient::builder(nodes)
            // a down master answers at once with an error rather than after minutes of retries:
            // the request path turns it into a 503 the provider retries
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
            .build()
            .map(Target::Cluster)
            .map_err(RedisUrlError::NotValidCluster)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// A new connection of its own (a worker's blocking reads hold theirs).
    pub async fn dedicated(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(c) => Ok(Conn::Multiplexed(
                c.get_multiplexed_async_connection().await?,
            )),
            Target::Cluster(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
        }
    }

    /// A connection that replaces itself when the server goes away: a `ConnectionManager` on one
    /// node (one attempt per reconnection, so callers are not held up by its backoff), the
    /// cluster client's own connection on a cluster (it reconnects per node by itself).
    pub async fn self_healing(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(c) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_number_of_retries(0);
                Ok(Conn::Manager(
                    ConnectionManager::new_with_config(c.clone(), config).await?,
                ))
            }
            Target::Cluster(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
        }
    }
}

/// A connection to the target, whichever it is; cheap to clone (all three are multiplexed).
#[derive(Clone)]
pub enum Conn {
    Multiplexed(MultiplexedConnection),
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Redis's `WAIT`: block until `replicas` replicas have every write this connection sent
    /// so far, or `timeout` passes; the replicas that have them. On a cluster it goes to the
    /// master of `key`'s slot, the node that took those writes (redis-rs would send a keyless
    /// `WAIT` to every master and answer the least).
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis().max(1) as u64);
        match self {
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::new(slot(key), SlotAddr::Master);
                let v = c
                    .route_command(
                        &cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(&v)
            }
            _ => cmd.query_async(self).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The cluster slot of a key (its `{hash tag}` when it has one).
pub fn slot(key: &str) -> u16 {
    redis::cluster_routing::get_slot(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_nodes_and_clusters_are_told_apart() {
        assert!(
            !Target::parse("redis://127.0.0.1:6379")
                .unwrap()
                .is_cluster()
        );
        assert!(
            !Target::parse("rediss://u:p@host:6380/0")
                .unwrap()
                .is_cluster()
        );
        assert!(
            Target::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
                .unwrap()
                .is_cluster()
        );
        assert!(
            Target::parse("redis+cluster://default:secret@10.0.0.1:7000,10.0.0.2:7000/")
                .unwrap()
                .is_cluster()
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://,",
            "redis+cluster://default:secret@",
            "redis://default:secret@host:notaport",
            "http://x",
            "nonsense",
        ] {
            let e = crate::diagnostics::chain(&Target::parse(bad).err().unwrap());
            assert!(e.starts_with("REDIS_URL "), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_queue_s_keys_share_a_slot() {
        let s = slot("engine:{q:vapi}:stream");
        assert_eq!(slot("engine:{q:vapi}:seen:abc"), s);
        assert_eq!(slot("engine:{q:vapi}:dead"), s);
        assert_ne!(slot("engine:{q:twilio-sms}:stream"), s);
    }
}
