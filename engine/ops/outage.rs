//! Outages of what the engine depends on (the Redis queue), logged as events, not as a stream.
//!
//! Every worker retries a dependency it cannot reach. Logging each retry buried the one line that
//! matters under thousands (12 WARN lines a second with Redis down). Instead, per dependency and
//! scope (below), for the whole process:
//!
//! ```text
//! first failure        -> one ERROR: "<dependency> unreachable" (or "is full":
//!                         Redis answers but refuses writes at its maxmemory; or "failover in
//!                         progress": a Redis Cluster master does not answer) and what to do
//! while it lasts       -> one WARN summary after 30 s, then 1, 2, 4 ... minutes (at most every
//!                         10 minutes): how long, how many failed attempts, the last error
//! first success after  -> one INFO: "reachable again" (or "takes writes again", "failover
//!                         over") with the duration and attempts
//! ```
//!
//! Workers report `redis` (their reads); the request path reports `redis_enqueue` (its writes):
//! a full Redis refuses the writes while the workers' reads, acks and deletes go on, so the two
//! are separate outages. The scope ([`scope_of`]) is the whole Redis for queues on one node (they
//! stand and fall together: one line, however many pipelines), and the queue itself ("<dependency>
//! for queue `q`") on a Redis Cluster, whose queues live on different masters, and for a queue
//! with `durability: replicated`, which fails alone: there one queue's success must not end
//! another's outage (the log flapped "reachable again" / "unreachable" through a failover while
//! other queues were served).
//!
//! The start and the end of each outage are also a line of the next Slack message
//! (`ops::alerts`, when SLACK_WEBHOOK_URL is set), so the alarm reaches people who do not watch
//! the logs; summaries are not sent there.
//!
//! `engine_dependency_up{dependency}` (0 while any queue's outage lasts) and
//! `engine_dependency_failures_total{dependency}` carry the rest. The state is one entry per
//! dependency name and queue, both from the code and the configuration, so it is bounded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

const FIRST_SUMMARY: Duration = Duration::from_secs(30);
const MAX_SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// What is wrong with a dependency, as the log lines name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// It does not answer (refused, reset, timed out).
    Unreachable,
    /// Redis answers but refuses writes: `maxmemory` reached under `noeviction`.
    Full,
    /// A Redis Cluster master holding the queue's slots does not answer and no replica has
    /// taken over yet (MOVED to the dead node, CLUSTERDOWN, TRYAGAIN).
    Failover,
    /// Redis stores events but too few replicas confirm them (`queue.durability: replicated`).
    Unreplicated,
}

impl Condition {
    fn started(self) -> &'static str {
        match self {
            Condition::Unreachable => {
                "unreachable; retrying with backoff (a summary follows while it lasts, and a line when it is back)"
            }
            Condition::Full => {
                "is full: Redis reached its maxmemory and refuses writes (maxmemory-policy noeviction); requests are answered 503 with Retry-After and nothing answered 2xx is lost. Add workers to drain the backlog, or give Redis more memory (a summary follows while it lasts, and a line when it is back)"
            }
            Condition::Unreplicated => {
                "is not replicated: fewer replicas than `queue.replication.replicas` confirm events within `queue.replication.timeout` (`durability: replicated`); requests are answered 503 with Retry-After. Check the replicas (`INFO replication` on the master: connected_slaves, lag) (a summary follows while it lasts, and a line when it is back)"
            }
            Condition::Failover => {
                "is failing over: the Redis Cluster master holding the queue's slots does not answer and no replica has taken over yet (redirects to the dead node are expected meanwhile); requests are answered 503 with Retry-After and nothing answered 2xx is lost. A replica is promoted after the cluster's node timeout; if this lasts, the master has no replica to promote: restart it (a summary follows while it lasts, and a line when it is over)"
            }
        }
    }

    fn still(self) -> &'static str {
        match self {
            Condition::Unreachable => "still unreachable",
            Condition::Full => "still full (maxmemory reached, writes refused)",
            Condition::Failover => "still failing over (the queue's master does not answer)",
            Condition::Unreplicated => "still not replicated (too few replicas confirm)",
        }
    }

    /// The Slack line's words (`ops::alerts`): what it is and what clients see, shortly.
    fn alert(self) -> &'static str {
        match self {
            Condition::Unreachable => {
                "unreachable: its requests are answered 503 and providers retry"
            }
            Condition::Full => {
                "is full (maxmemory reached under noeviction): requests are answered 503; add workers to drain it, or give Redis more memory"
            }
            Condition::Failover => {
                "is failing over (its Redis Cluster master does not answer): requests are answered 503 until a replica takes over"
            }
            Condition::Unreplicated => {
                "is not replicated (too few replicas confirm, durability: replicated): requests are answered 503"
            }
        }
    }

    fn back(self) -> &'static str {
        match self {
            Condition::Unreachable => "reachable again",
            Condition::Full => "takes writes again",
            Condition::Failover => "failover over: the queue's master answers again",
            Condition::Unreplicated => "replicated again",
        }
    }

    /// Whether a failure in `self` while the outage is in `was` is worth a line of its own. A
    /// failover is also refused connections to the dead node and timeouts: saying "unreachable"
    /// and "failing over" in turn would be the flapping these lines exist to stop.
    fn tells_more_than(self, was: Condition) -> bool {
        self != was && !(was == Condition::Failover && self == Condition::Unreachable)
    }
}

impl Condition {
    /// The outage a queue failure is, if it is one (a failure of Redis itself, not of an
    /// event or a transform).
    pub fn of(e: &crate::queue::QueueError) -> Option<Condition> {
        use crate::queue::QueueError;
        match e {
            QueueError::RedisFull => Some(Condition::Full),
            QueueError::Failover(_) => Some(Condition::Failover),
            QueueError::NotReplicated(_) => Some(Condition::Unreplicated),
            QueueError::Unavailable(_) => Some(Condition::Unreachable),
            _ => None,
        }
    }
}

/// The scope of `queue`'s outages: the queue's name on a Redis Cluster or with `durability:
/// replicated`, where it can fail while others are served; "" (the whole Redis) otherwise.
pub fn scope_of(queue: &crate::queue::Queue) -> &str {
    match queue {
        crate::queue::Queue::Redis(r) if r.is_cluster() || r.is_replicated() => r.name(),
        _ => "",
    }
}

/// What the lines call `dependency` in `scope`.
fn subject(dependency: &str, scope: &str) -> String {
    if scope.is_empty() {
        dependency.to_string()
    } else {
        format!("{dependency} for queue `{scope}`")
    }
}

/// One dependency's outage in progress.
#[derive(Debug, Clone)]
struct Down {
    condition: Condition,
    since: Instant,
    /// The latest failed attempt: a full Redis is over only once writes stop failing.
    last_failure: Instant,
    failures: u64,
    next_summary: Instant,
    summary_every: Duration,
}

/// Outages in progress: per dependency, per queue.
static DOWN: LazyLock<Mutex<BTreeMap<&'static str, BTreeMap<String, Down>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Whether any outage is in progress: [`ok`] runs on every queue read, and while all is well it
/// reads this flag instead of taking the lock.
static ANY_DOWN: AtomicBool = AtomicBool::new(false);

/// What a report changed, for the caller's tests and the log lines above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The outage starts: logged.
    Started,
    /// Still down, and a summary was due: logged.
    Summary { failures: u64 },
    /// Still down; nothing logged.
    Quiet,
    /// Back after an outage: logged.
    Ended { failures: u64 },
    /// Up, and was up.
    Up,
}

/// A failed attempt at `dependency` for `queue`, in `condition`: `error`'s whole chain is what
/// the log lines say.
pub fn failed(
    dependency: &'static str,
    queue: &str,
    condition: Condition,
    error: &dyn std::error::Error,
) -> Change {
    let error = crate::diagnostics::chain(error);
    failed_at(dependency, queue, condition, &error, Instant::now())
}

fn failed_at(
    dependency: &'static str,
    queue: &str,
    condition: Condition,
    error: &dyn std::fmt::Display,
    now: Instant,
) -> Change {
    metrics::counter!("engine_dependency_failures_total", "dependency" => dependency).increment(1);
    metrics::gauge!("engine_dependency_up", "dependency" => dependency).set(0.0);
    let mut all = DOWN.lock().unwrap_or_else(|e| e.into_inner());
    ANY_DOWN.store(true, Ordering::Release);
    let down = all.entry(dependency).or_default();
    match down.get_mut(queue) {
        None => {
            down.insert(
                queue.to_string(),
                Down {
                    condition,
                    since: now,
                    last_failure: now,
                    failures: 1,
                    next_summary: now + FIRST_SUMMARY,
                    summary_every: FIRST_SUMMARY,
                },
            );
            started(dependency, queue, condition, error);
            Change::Started
        }
        // the same outage, turned into another (a full Redis restarted and not yet answering):
        // said once, counted on
        Some(d) if condition.tells_more_than(d.condition) => {
            d.failures += 1;
            d.last_failure = now;
            d.condition = condition;
            started(dependency, queue, condition, error);
            Change::Started
        }
        Some(d) => {
            d.failures += 1;
            d.last_failure = now;
            if now < d.next_summary {
                return Change::Quiet;
            }
            d.summary_every = (d.summary_every * 2).min(MAX_SUMMARY_EVERY);
            d.next_summary = now + d.summary_every;
            let secs = now.duration_since(d.since).as_secs();
            let subject = subject(dependency, queue);
            tracing::warn!(dependency, queue, down_secs = secs, failed_attempts = d.failures, last_error = %error, "{subject} {}", d.condition.still());
            Change::Summary {
                failures: d.failures,
            }
        }
    }
}

/// The lines of an outage's start (or its turn into another condition): the log's and Slack's.
fn started(dependency: &str, queue: &str, condition: Condition, error: &dyn std::fmt::Display) {
    let subject = subject(dependency, queue);
    tracing::error!(dependency, queue, error = %error, "{subject} {}", condition.started());
    super::alerts::note(&format!("{subject} {}", condition.alert()));
}

/// A successful use of `dependency` for `queue`.
pub fn ok(dependency: &'static str, queue: &str) -> Change {
    ok_at(dependency, queue, Instant::now())
}

/// A Redis at its `maxmemory` takes a write now and then (memory is freed and used again), so
/// a full Redis is over only once writes have not failed for this long: its lines do not flap
/// "takes writes again" / "is full" while it stays at the edge.
const FULL_SETTLES: Duration = Duration::from_secs(5);

fn ok_at(dependency: &'static str, queue: &str, now: Instant) -> Change {
    if !ANY_DOWN.load(Ordering::Acquire) {
        return Change::Up;
    }
    let mut all = DOWN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(down) = all.get_mut(dependency) else {
        return Change::Up;
    };
    if down.get(queue).is_some_and(|d| {
        d.condition == Condition::Full && now.duration_since(d.last_failure) < FULL_SETTLES
    }) {
        return Change::Quiet;
    }
    let removed = down.remove(queue);
    if down.is_empty() {
        all.remove(dependency);
        if removed.is_some() {
            metrics::gauge!("engine_dependency_up", "dependency" => dependency).set(1.0);
        }
    }
    ANY_DOWN.store(!all.is_empty(), Ordering::Release);
    match removed {
        None => Change::Up,
        Some(d) => {
            let secs = d.since.elapsed().as_secs();
            let subject = subject(dependency, queue);
            tracing::info!(
                dependency,
                queue,
                down_secs = secs,
                failed_attempts = d.failures,
                "{subject} {}",
                d.condition.back()
            );
            super::alerts::note(&format!("{subject} {} after {secs} s", d.condition.back()));
            Change::Ended {
                failures: d.failures,
            }
        }
    }
}

/// How a dependency that fails is retried: `crate::queue::backoff` from 250 ms, doubling, to
/// 5 s between attempts, with jitter so workers that failed together do not retry together.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between attempts at a dependency that fails ([`RETRY_FIRST`]).
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The pause before attempt `failures` + 1 at a failing dependency.
pub fn pause_after(failures: u32) -> Duration {
    crate::queue::backoff(failures, RETRY_FIRST, RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_at_start_summaries_with_backoff_one_at_the_end() {
        let t0 = Instant::now();
        let dep = "test-dependency";
        let err = "connection refused";
        assert_eq!(
            failed_at(dep, "q", Condition::Unreachable, &err, t0),
            Change::Started
        );
        // 12 attempts a second for 29 seconds: nothing logged
        let quiet = (1..29 * 12)
            .map(|i| {
                failed_at(
                    dep,
                    "q",
                    Condition::Unreachable,
                    &err,
                    t0 + Duration::from_millis(i * 83),
                )
            })
            .filter(|c| *c != Change::Quiet)
            .count();
        assert_eq!(quiet, 0);
        assert!(matches!(
            failed_at(
                dep,
                "q",
                Condition::Unreachable,
                &err,
                t0 + Duration::from_secs(30)
            ),
            Change::Summary { .. }
        ));
        // the next summary comes a minute later, not 30 s later
        assert_eq!(
            failed_at(
                dep,
                "q",
                Condition::Unreachable,
                &err,
                t0 + Duration::from_secs(61)
            ),
            Change::Quiet
        );
        assert!(matches!(
            failed_at(
                dep,
                "q",
                Condition::Unreachable,
                &err,
                t0 + Duration::from_secs(91)
            ),
            Change::Summary { .. }
        ));
        match ok(dep, "q") {
            Change::Ended { failures } => assert_eq!(failures, 29 * 12 + 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(ok(dep, "q"), Change::Up);
    }

    #[test]
    fn a_full_redis_is_its_own_condition_said_once() {
        let t0 = Instant::now();
        let dep = "test-full";
        let full = "OOM command not allowed when used memory > 'maxmemory'";
        assert_eq!(
            failed_at(dep, "q", Condition::Full, &full, t0),
            Change::Started
        );
        assert_eq!(
            failed_at(
                dep,
                "q",
                Condition::Full,
                &full,
                t0 + Duration::from_secs(1)
            ),
            Change::Quiet
        );
        // the outage turning into another (Redis restarting): said once more, counted on
        assert_eq!(
            failed_at(
                dep,
                "q",
                Condition::Unreachable,
                &"refused",
                t0 + Duration::from_secs(2)
            ),
            Change::Started
        );
        assert_eq!(ok(dep, "q"), Change::Ended { failures: 3 });
        assert!(Condition::Full.started().contains("Add workers"));
        assert_eq!(Condition::Full.back(), "takes writes again");
    }

    #[test]
    fn each_queue_has_its_own_outage() {
        let t0 = Instant::now();
        let dep = "test-queues";
        let err = "connection refused";
        assert_eq!(
            failed_at(dep, "vapi", Condition::Unreachable, &err, t0),
            Change::Started
        );
        // another queue, on a master that answers, is served: vapi's outage goes on
        assert_eq!(ok(dep, "twilio"), Change::Up);
        assert_eq!(
            failed_at(dep, "vapi", Condition::Unreachable, &err, t0),
            Change::Quiet
        );
        // a second queue down is its own line, and ends on its own
        assert_eq!(
            failed_at(dep, "sms", Condition::Unreachable, &err, t0),
            Change::Started
        );
        assert_eq!(ok(dep, "sms"), Change::Ended { failures: 1 });
        assert_eq!(ok(dep, "vapi"), Change::Ended { failures: 2 });
        assert_eq!(ok(dep, "vapi"), Change::Up);
    }

    #[test]
    fn a_failover_is_said_once_though_its_node_also_refuses_connections() {
        let t0 = Instant::now();
        let dep = "test-failover";
        let moved = "Moved: 13853 127.0.0.1:7102";
        let refused = "Connection refused (os error 111)";
        assert_eq!(
            failed_at(dep, "q", Condition::Failover, &moved, t0),
            Change::Started
        );
        // redirects to the dead node and refused connections to it, in turn: one outage
        for i in 1..20 {
            let (c, e): (Condition, &dyn std::fmt::Display) = if i % 2 == 0 {
                (Condition::Failover, &moved)
            } else {
                (Condition::Unreachable, &refused)
            };
            assert_eq!(
                failed_at(dep, "q", c, e, t0 + Duration::from_millis(i * 100)),
                Change::Quiet
            );
        }
        assert_eq!(ok(dep, "q"), Change::Ended { failures: 20 });
        // a node that refuses first and then is seen failing over: that is news
        assert_eq!(
            failed_at(dep, "q", Condition::Unreachable, &refused, t0),
            Change::Started
        );
        assert_eq!(
            failed_at(dep, "q", Condition::Failover, &moved, t0),
            Change::Started
        );
        assert_eq!(ok(dep, "q"), Change::Ended { failures: 2 });
        assert!(Condition::Failover.started().contains("replica"));
    }

    #[test]
    fn a_full_redis_is_over_once_writes_stop_failing() {
        let t0 = Instant::now();
        let dep = "test-full-edge";
        let full = "OOM command not allowed when used memory > 'maxmemory'";
        assert_eq!(
            failed_at(dep, "", Condition::Full, &full, t0),
            Change::Started
        );
        // at the edge: a write taken, then refused again, within the settling time
        assert_eq!(
            ok_at(dep, "", t0 + Duration::from_millis(100)),
            Change::Quiet
        );
        assert_eq!(
            failed_at(dep, "", Condition::Full, &full, t0 + Duration::from_secs(2)),
            Change::Quiet
        );
        assert_eq!(ok_at(dep, "", t0 + Duration::from_secs(6)), Change::Quiet);
        assert_eq!(
            ok_at(dep, "", t0 + Duration::from_secs(7)),
            Change::Ended { failures: 2 }
        );
    }

    #[test]
    fn pauses_grow_to_a_cap() {
        assert!(pause_after(1) <= RETRY_FIRST);
        assert!(pause_after(3) >= Duration::from_millis(500));
        assert!(pause_after(50) <= RETRY_MAX);
    }
}
