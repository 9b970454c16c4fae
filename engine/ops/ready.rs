//! `/ready`: whether this instance can do its work now, for load balancers and deploy checks.
//!
//! 200 only when the pipelines are loaded (always, once serving) and every configured dependency
//! answers within [`TIMEOUT`]: Redis (`PING`) when REDIS_URL is set, each Redis queue (`EXISTS`
//! on each of its streams, so on a cluster every master that owns a queue's slots answers: a
//! `PING` reaches any one node, and said ready while every request to a dead master's queue got
//! 503), Postgres (`SELECT 1`) when DATABASE_URL is set. Otherwise 503 with a JSON body naming
//! what is down. `/health` stays the cheap liveness check (Render restarts an instance whose
//! health check fails; a Redis outage should not restart every instance, so Render's health
//! check is `/health`, not `/ready`).

use std::time::Duration;

use mobc_redis::redis;
use serde_json::{Value, json};

use crate::redis_conn::group_commit::GroupCommit;

/// How long each dependency may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The dependencies a ready instance needs.
pub struct Checks {
    /// The connection requests use (not a new TCP connection per `/ready`); a PING on it fails
    /// while Redis is down, and it reconnects by itself when Redis is back.
    redis: Option<GroupCommit>,
    /// Each Redis queue's name and stream keys.
    queues: Vec<(String, Vec<String>)>,
    postgres: Option<deadpool_postgres::Pool>,
}

impl Checks {
    /// Checks for the configured dependencies: the app's shared Redis connection, and Postgres
    /// (its URL already validated at load).
    pub fn new(
        redis: Option<GroupCommit>,
        database_url: Option<&str>,
    ) -> Result<Checks, crate::db::DbError> {
        let postgres = database_url
            .map(|url| crate::db::pool(url, 1))
            .transpose()?;
        Ok(Checks {
            redis,
            queues: Vec::new(),
            postgres,
        })
    }

    /// Also check that each of these Redis queues (name, stream keys) answers.
    pub fn with_queues(mut self, queues: Vec<(String, Vec<String>)>) -> Checks {
        self.queues = queues;
        self
    }

    /// Every dependency's state, and whether all are up.
    pub async fn run(&self) -> (bool, Value) {
        let (redis, postgres, queues) = tokio::join!(self.redis(), self.postgres(), self.queues());
        let mut checks = serde_json::Map::new();
        checks.insert("pipelines".into(), json!("ok"));
        let mut ready = true;
        let named = [
            ("redis".to_string(), redis),
            ("postgres".to_string(), postgres),
        ];
        for (name, state) in named.into_iter().chain(queues) {
            match state {
                None => {}
                Some(Ok(())) => {
                    checks.insert(name, json!("ok"));
                }
                Some(Err(why)) => {
                    ready = false;
                    checks.insert(name, json!(format!("down: {why}")));
                }
            }
        }
        let status = if ready { "ready" } else { "not_ready" };
        (ready, json!({"status": status, "checks": checks}))
    }

    async fn redis(&self) -> Option<Result<(), String>> {
        let shared = self.redis.as_ref()?;
        let ping = async {
            let mut c = shared.get().await.map_err(|e| describe(&e.to_string()))?;
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(|_| ())
                .map_err(|e| describe(&e.to_string()))
        };
        Some(
            tokio::time::timeout(TIMEOUT, ping)
                .await
                .unwrap_or_else(|_| Err("no answer within 2 s".into())),
        )
    }

    /// `queue:<name>` for each Redis queue: `EXISTS` on each of its streams, at once.
    async fn queues(&self) -> Vec<(String, Option<Result<(), String>>)> {
        let Some(shared) = self.redis.as_ref() else {
            return Vec::new();
        };
        let checks = self.queues.iter().map(|(name, streams)| async move {
            let exists = async {
                let mut c = shared.get().await.map_err(|e| describe(&e.to_string()))?;
                for stream in streams {
                    redis::cmd("EXISTS")
                        .arg(stream)
                        .query_async::<i64>(&mut c)
                        .await
                        .map_err(|e| describe(&e.to_string()))?;
                }
                Ok(())
            };
            let state = tokio::time::timeout(TIMEOUT, exists)
                .await
                .unwrap_or_else(|_| Err("no answer within 2 s".into()));
            (format!("queue:{name}"), Some(state))
        });
        futures_util::future::join_all(checks).await
    }

    async fn postgres(&self) -> Option<Result<(), String>> {
        let pool = self.postgres.as_ref()?;
        let select = async {
            let client = pool
                .get()
                .await
                .map_err(|e| describe(&crate::diagnostics::chain(&e)))?;
            client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| describe(&crate::diagnostics::chain(&e)))
        };
        Some(
            tokio::time::timeout(TIMEOUT, select)
                .await
                .unwrap_or_else(|_| Err("no answer within 2 s".into())),
        )
    }
}

/// A driver error as a short reason without connection details (URLs can carry passwords).
fn describe(error: &str) -> String {
    tracing::debug!(error, "dependency check failed");
    let lower = error.to_ascii_lowercase();
    let reason = if lower.contains("refused") {
        "connection refused"
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "timed out"
    } else if lower.contains("auth") || lower.contains("password") {
        "authentication failed"
    } else if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        "host not found"
    } else if lower.contains("tls") || lower.contains("certificate") {
        "TLS failed"
    } else {
        "unreachable"
    };
    reason.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_never_carry_the_error_text() {
        assert_eq!(
            describe(
                "error connecting to postgres://u:hunter2@db:5432: Connection refused (os error 111)"
            ),
            "connection refused"
        );
        assert_eq!(
            describe("password authentication failed for user \"u\""),
            "authentication failed"
        );
        assert_eq!(describe("something odd with hunter2"), "unreachable");
    }

    #[tokio::test]
    async fn nothing_configured_is_ready() {
        let (ready, body) = Checks::new(None, None).unwrap().run().await;
        assert!(ready);
        assert_eq!(
            body,
            json!({"status": "ready", "checks": {"pipelines": "ok"}})
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_down() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let checks = Checks::new(
            Some(GroupCommit::open(&format!("redis://127.0.0.1:{port}")).unwrap()),
            Some(&format!(
                "postgres://postgres@127.0.0.1:{port}/test?sslmode=disable"
            )),
        )
        .unwrap();
        let (ready, body) = checks.run().await;
        assert!(!ready);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"]["redis"], "down: connection refused");
        assert_eq!(body["checks"]["postgres"], "down: connection refused");
    }
}
