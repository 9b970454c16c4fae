//! One Redis connection shared by every request in flight, and group commit over it.
//!
//! The request path talks to Redis once or twice per request (the rate-limit check, the
//! dedupe + append). Each of those is a Lua script, and Redis spends more on calling a script
//! (parsing the call, setting up Lua, the reply) than on the few commands inside it; the engine
//! pays a write, a read and a task wake-up per call. So the operations of concurrent requests go
//! to Redis together:
//!
//! ```text
//! request  -> Op (GcraCheck | Append | LimitedAppend) -> queue of the group commit (bounded)
//! committer: take every op waiting (≤ 256) -> one EVALSHA of GROUP running each op in order,
//!            each under pcall -> one answer per op -> each request's own reply
//! ```
//!
//! On a Redis Cluster a script may only touch keys of one slot: a group is split by the slot of
//! its ops' keys (a queue's keys share one; a rate-limit key has its own) and the per-slot calls
//! go at once. (`LimitedAppend`, whose keys span two slots, is only made on one node:
//! `server::route` decides.)
//!
//! A group is whatever arrived while the previous call was in flight: when idle, a request's op
//! leaves at once in a group of one (no added wait); under load, groups grow with the load. Each
//! request still gets its own answer (allowed or 429, duplicate, the stream id) and answers its
//! client only after that answer, so a 2xx always follows its event's `XADD`. One op failing
//! (a wrong key type, Redis out of memory) fails that op only; a call that fails as a whole (Redis
//! gone, no answer within 2 s) fails every op of its group, and their requests get 503 — the ops
//! may still have run, which a retried delivery's dedupe key makes harmless, as before.
//!
//! An `App` opens one [`GroupCommit`] and hands clones to the rate limiter, every Redis queue and
//! `/ready`, so readiness probes the very connection requests use. Workers' blocking reads have
//! connections of their own (a blocked connection serves nothing else); the queue's other
//! operations use a pool on one node, this connection on a cluster.
//!
//! redis's `ConnectionManager` (the cluster client, on a cluster) replaces the connection when
//! Redis goes away (a restart, a failover); commands in flight at that moment fail and the callers' own bounds (a timeout, the
//! rate limit's `fail` mode, a 503 for an enqueue) decide what the client sees. The connection is
//! made on first use, so the engine starts, and reports not-ready, while Redis is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{ErrorKind, RedisError, Value};
use tokio::sync::{OnceCell, mpsc, oneshot};

use super::{Conn, Target};

/// Operations sent in one call at most (a bound on the call's size and on the wait of the
/// group's last op behind the others).
const GROUP_MAX: usize = 256;
/// Operations waiting for the committer at most; a request finding the queue full waits for room
/// (under its own timeout).
const WAITING_MAX: usize = 8192;
/// How long a group's call may take before every op in it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The group script: `ARGV[1]` ops, each a kind then its arguments, its keys in order in KEYS.
/// `L` = the GCRA check (1 key; interval, burst, now); `A` = dedupe + append (stream, seen key;
/// event meta, raw body, dedupe flag, window); `LA` = the check, then the append only when it allows. Every op
/// runs under pcall, so one failing op answers an error and the others still run.
///
/// `gcra(key, interval µs, burst, now µs or '' for Redis's clock)` is `rate_limit::redis`'s
/// algorithm: it returns {allowed, retry_after_ms, reset_ms, remaining} and updates the key only
/// when allowed. An op answers that verdict as one string (see [`verdict`]), not as an array:
/// redis-rs's reply parser spends ~1,000 instructions on each value it reads, and a rate-limited
/// append's answer was six values where it is now one.
///
/// Redis spends more on a `redis.call` than on the arithmetic around it, so a group makes as
/// few as the answers allow: Redis's clock is read once per call (the script runs atomically,
/// so every op of the group happens at that instant anyway), and a rate-limit key is read once
/// and written once per call however many ops of the group count against it — its state in
/// between is kept in `tats`, and the one `SET` at the end leaves the key exactly as the ops'
/// own `SET`s in order would have (the last allowed op's value and expiry). A provider's
/// webhooks share one key (the org, the account), so under load most ops of a group do.
const GROUP: &str = r"
local clock
local function now_us(now)
  if now ~= '' then return tonumber(now) end
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return clock
end
local tats, writes = {}, {}
local function gcra(key, interval, burst, now)
  interval = tonumber(interval)
  burst = tonumber(burst)
  now = now_us(now)
  local tat = tats[key]
  if tat == nil then
    -- a key of another type fails the op, saying which key and what to do; a string that is
    -- not a time counts as an empty bucket and is overwritten
    local stored = redis.pcall('GET', key)
    if type(stored) == 'table' and stored.err then
      error({err = 'WRONGTYPE rate-limit key ' .. key .. ' holds another type of value: delete it (DEL); only the engine writes under its key prefix'})
    end
    tat = stored and tonumber(stored) or now
    tats[key] = tat
  end
  if tat < now then tat = now end
  local span = interval * burst
  local new_tat = tat + interval
  local allow_at = new_tat - span
  if now < allow_at then
    return {0, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000), 0}
  end
  local ttl = math.max(1, math.ceil((new_tat - now) / 1000))
  tats[key] = new_tat
  writes[key] = ttl
  return {1, 0, ttl, math.floor((span - (new_tat - now)) / interval)}
end
local function append(stream, seen, payload, body, dedupe, window)
  if dedupe ~= '' then
    if not redis.call('SET', seen, '1', 'NX', 'EX', window) then return '' end
  end
  local id = redis.call('XADD', stream, 'NOMKSTREAM', '*', 'e', payload, 'b', body)
  if id then return id end
  -- a new stream is made with its workers' consumer group (the queue's GROUP): a worker that
  -- starts when Redis is already full could not create the group then (XGROUP CREATE needs
  -- memory), and would never drain the stream
  redis.call('XGROUP', 'CREATE', stream, 'engine', '0', 'MKSTREAM')
  return redis.call('XADD', stream, '*', 'e', payload, 'b', body)
end
-- a GCRA verdict as one string, then the entry id ('' for a check, a refusal or a duplicate)
local function verdict(d, id)
  return string.format('%d %d %d %d %s', d[1], d[2], d[3], d[4], id)
end
local function check(key, interval, burst, now)
  return verdict(gcra(key, interval, burst, now), '')
end
local function limited_append(key, interval, burst, now, stream, seen, payload, body, dedupe, window)
  local d = gcra(key, interval, burst, now)
  if d[1] == 0 then return verdict(d, '') end
  return verdict(d, append(stream, seen, payload, body, dedupe, window))
end
local function answer(ok, r)
  if ok then return r end
  if type(r) == 'table' and r.err then return {err = r.err} end
  return {err = tostring(r)}
end
local out = {}
local k, a = 1, 2
for i = 1, tonumber(ARGV[1]) do
  local kind = ARGV[a]
  if kind == 'L' then
    out[i] = answer(pcall(check, KEYS[k], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]))
    k = k + 1
    a = a + 4
  elseif kind == 'A' then
    out[i] = answer(pcall(append, KEYS[k], KEYS[k + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]))
    k = k + 2
    a = a + 5
  else
    out[i] = answer(pcall(limited_append, KEYS[k], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
      KEYS[k + 1], KEYS[k + 2], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]))
    k = k + 3
    a = a + 8
  end
end
for key, ttl in pairs(writes) do
  -- (under pcall: a key that cannot be written, Redis out of memory, loses this group's counts,
  -- never the answers of ops that already ran)
  pcall(redis.call, 'SET', key, string.format('%.0f', tats[key]), 'PX', ttl)
end
return out
";

/// A GCRA check of the request path: the Redis key, the rule's emission interval and burst, and
/// a clock for tests (`None`: Redis's `TIME`).
#[derive(Debug, Clone)]
pub struct GcraCheck {
    pub key: String,
    pub interval_us: u64,
    pub burst: u32,
    pub now_us: Option<u64>,
}

/// Dedupe + append: the stream, the dedupe key, the entry's payload (the event without its body)
/// and raw body (stored as fields `e` and `b`: no base64, no JSON escaping of the body), whether
/// to dedupe, and the dedupe window in seconds; with `replication`, the append is answered only
/// once that many replicas confirm it (`queue.durability: replicated`).
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: String,
    pub seen: String,
    pub payload: String,
    pub body: bytes::Bytes,
    pub dedupe: bool,
    pub window_secs: u64,
    pub replication: Option<ReplicaWait>,
}

/// Replicas that must confirm an append (Redis's `WAIT`), and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

/// One operation of the request path. Answers: `GcraCheck` → "allowed retry_ms reset_ms
/// remaining " (the id after the space empty); `Append` → the entry id, or "" for a duplicate;
/// `LimitedAppend` → the verdict's four numbers, a space, then the entry id ("" when refused or
/// a duplicate). [`verdict`] reads the first and the last.
#[derive(Debug, Clone)]
pub enum Op {
    GcraCheck(GcraCheck),
    Append(Append),
    LimitedAppend(GcraCheck, Append),
}

impl Op {
    /// The key the op's call is routed by (on a cluster, every key of an op must share its slot).
    fn first_key(&self) -> &str {
        match self {
            Op::GcraCheck(l) | Op::LimitedAppend(l, _) => &l.key,
            Op::Append(a) => &a.stream,
        }
    }

    /// The replicas its append must reach before it is answered.
    fn replication(&self) -> Option<ReplicaWait> {
        match self {
            Op::GcraCheck(_) => None,
            Op::Append(a) | Op::LimitedAppend(_, a) => a.replication,
        }
    }

    /// How many keys it adds to the group's `KEYS`.
    fn key_count(&self) -> usize {
        match self {
            Op::GcraCheck(_) => 1,
            Op::Append(_) => 2,
            Op::LimitedAppend(..) => 3,
        }
    }

    /// About the bytes it adds to the group's command: its keys and arguments with their
    /// framing (a sizing hint, so the command is allocated once).
    fn size(&self) -> usize {
        let limit = |l: &GcraCheck| l.key.len() + 80;
        let append =
            |a: &Append| a.stream.len() + a.seen.len() + a.payload.len() + a.body.len() + 100;
        match self {
            Op::GcraCheck(l) => limit(l),
            Op::Append(a) => append(a),
            Op::LimitedAppend(l, a) => limit(l) + append(a),
        }
    }

    /// Its keys onto the group's command, in the order the script takes them from `KEYS`.
    fn encode_keys(&self, cmd: &mut redis::Cmd) {
        if let Op::GcraCheck(l) | Op::LimitedAppend(l, _) = self {
            cmd.arg(&l.key);
        }
        if let Op::Append(a) | Op::LimitedAppend(_, a) = self {
            cmd.arg(&a.stream).arg(&a.seen);
        }
    }

    /// Its kind and arguments onto the group's command (`ARGV`, after the op count).
    fn encode_args(&self, cmd: &mut redis::Cmd) {
        fn limit(cmd: &mut redis::Cmd, l: &GcraCheck) {
            cmd.arg(l.interval_us).arg(l.burst);
            match l.now_us {
                Some(now) => cmd.arg(now),
                None => cmd.arg(""),
            };
        }
        fn append(cmd: &mut redis::Cmd, a: &Append) {
            cmd.arg(&a.payload)
                .arg(a.body.as_ref())
                .arg(if a.dedupe { "1" } else { "" })
                .arg(a.window_secs.max(1));
        }
        match self {
            Op::GcraCheck(l) => {
                cmd.arg("L");
                limit(cmd, l);
            }
            Op::Append(a) => {
                cmd.arg("A");
                append(cmd, a);
            }
            Op::LimitedAppend(l, a) => {
                cmd.arg("LA");
                limit(cmd, l);
                append(cmd, a);
            }
        }
    }
}

/// The group's call as one `EVALSHA`, built in place and sized once. (redis's
/// `ScriptInvocation` would keep each argument in a buffer of its own and copy them all into the
/// command: one more copy of every body on the request path, and ten allocations an op.)
fn group_command(script: &redis::Script, jobs: &[Waiting]) -> redis::Cmd {
    let keys: usize = jobs.iter().map(|j| j.op.key_count()).sum();
    let bytes: usize = jobs.iter().map(|j| j.op.size()).sum();
    let mut cmd = redis::Cmd::with_capacity(4 + keys + jobs.len() * 10, bytes + 64);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    for job in jobs {
        job.op.encode_keys(&mut cmd);
    }
    cmd.arg(jobs.len());
    for job in jobs {
        job.op.encode_args(&mut cmd);
    }
    cmd
}

/// Run `command` (an `EVALSHA` of `script`); when Redis does not hold the script (a restart,
/// a failover to a replica that never saw it, `SCRIPT FLUSH`), load it and run the command
/// again, as redis's own script invocation does.
async fn evalsha(
    script: &redis::Script,
    command: &redis::Cmd,
    c: &mut Conn,
) -> redis::RedisResult<Vec<Value>> {
    match command.query_async(c).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            script.prepare_invoke().load_async(c).await?;
            command.query_async(c).await
        }
        answered => answered,
    }
}

/// A rate-limit verdict as the group script answers it ([`Op::GcraCheck`], [`Op::LimitedAppend`]):
/// allowed (0/1), retry-after ms, reset ms and remaining, then what follows the fourth number's
/// space (a limited append's entry id, "" when refused or a duplicate; "" for a check).
pub fn verdict(answer: &Value) -> redis::RedisResult<([i64; 4], &str)> {
    let malformed = || {
        RedisError::from((
            ErrorKind::TypeError,
            "the group script's verdict is not four numbers",
            format!("{answer:?}"),
        ))
    };
    let text = match answer {
        Value::BulkString(b) => std::str::from_utf8(b).map_err(|_| malformed())?,
        Value::SimpleString(s) => s.as_str(),
        _ => return Err(malformed()),
    };
    let mut parts = text.splitn(5, ' ');
    let mut numbers = [0i64; 4];
    for n in &mut numbers {
        *n = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(malformed)?;
    }
    Ok((numbers, parts.next().unwrap_or("")))
}

/// An op waiting for its group's call, and where its answer goes.
struct Waiting {
    op: Op,
    reply: oneshot::Sender<redis::RedisResult<Value>>,
}

/// A lazily connected, self-reconnecting, shared connection; clones share it.
#[derive(Clone)]
pub struct GroupCommit {
    /// Behind an `Arc`: a cluster client with its settings is large, and every clone shares it.
    target: Arc<Target>,
    conn: Arc<OnceCell<Conn>>,
    /// The committer's queue, made (and the committer started) on the first op.
    group: Arc<OnceLock<mpsc::Sender<Waiting>>>,
    /// Calls made and ops they carried, for [`GroupCommit::grouped`].
    counts: Arc<[AtomicU64; 2]>,
}

impl GroupCommit {
    pub fn new(target: Target) -> GroupCommit {
        GroupCommit {
            target: Arc::new(target),
            conn: Arc::new(OnceCell::new()),
            group: Arc::new(OnceLock::new()),
            counts: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
        }
    }

    /// A shared connection to `url`, one node or a cluster (not connected yet).
    pub fn open(url: &str) -> Result<GroupCommit, super::RedisUrlError> {
        Target::parse(url).map(GroupCommit::new)
    }

    /// The Redis it talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether it talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    /// The shared connection (a cheap clone), connecting first if no connection was made yet.
    /// Callers bound the wait with their own timeout.
    pub async fn get(&self) -> redis::RedisResult<Conn> {
        connect(&self.target, &self.conn).await
    }

    /// Run `op` in the next group's call and return its answer. Callers bound the wait with
    /// their own timeout; an op given up on may still run.
    pub async fn run(&self, op: Op) -> redis::RedisResult<Value> {
        let queue = self.group.get_or_init(|| {
            let (tx, rx) = mpsc::channel(WAITING_MAX);
            tokio::spawn(commit(
                self.target.clone(),
                self.conn.clone(),
                self.counts.clone(),
                rx,
            ));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Waiting { op, reply })
            .await
            .map_err(|_| failed("the group commit stopped".into()))?;
        answer
            .await
            .map_err(|_| failed("the group commit stopped".into()))?
    }

    /// (calls made, ops they carried) on this connection so far.
    pub fn grouped(&self) -> (u64, u64) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

async fn connect(target: &Target, conn: &OnceCell<Conn>) -> redis::RedisResult<Conn> {
    // One attempt per (re)connection, no backoff (`Target::self_healing`): redis's retries wait
    // a second or more between attempts, longer than a request or `/ready` should hang on a
    // Redis that refuses. A failed attempt fails the commands waiting on it at once, and the
    // next command makes the next attempt.
    conn.get_or_try_init(|| target.self_healing())
        .await
        .cloned()
}

fn failed(detail: String) -> RedisError {
    RedisError::from((ErrorKind::IoError, "Redis group commit", detail))
}

/// The committer: one call at a time, carrying every op that waited for it (on a cluster, one
/// call per slot the ops' keys fall in, those calls at once: a script may only touch keys of
/// one slot). Ends when every [`GroupCommit`] clone is gone.
async fn commit(
    target: Arc<Target>,
    conn: Arc<OnceCell<Conn>>,
    counts: Arc<[AtomicU64; 2]>,
    mut queue: mpsc::Receiver<Waiting>,
) {
    let script = redis::Script::new(GROUP);
    // the metrics' handles looked up once (the committer starts on the first op, after boot
    // installed the recorder), not in the registry on every call (~1,000 instructions a call)
    let tally = Tally {
        counts,
        calls: metrics::counter!("engine_redis_group_calls_total"),
        ops: metrics::counter!("engine_redis_group_operations_total"),
    };
    let mut jobs: Vec<Waiting> = Vec::with_capacity(GROUP_MAX);
    while queue.recv_many(&mut jobs, GROUP_MAX).await > 0 {
        if !target.is_cluster() {
            call(&script, &target, &conn, &tally, &mut jobs).await;
            continue;
        }
        let mut by_slot: std::collections::BTreeMap<u16, Vec<Waiting>> = Default::default();
        for job in jobs.drain(..) {
            by_slot
                .entry(super::slot(job.op.first_key()))
                .or_default()
                .push(job);
        }
        let calls = by_slot.into_values().map(|mut group| {
            let (script, target, conn, tally) = (&script, &target, &conn, &tally);
            async move { call(script, target, conn, tally, &mut group).await }
        });
        futures_util::future::join_all(calls).await;
    }
}

/// The committer's counts of calls and of the ops they carried: for [`GroupCommit::grouped`]
/// and as metrics.
struct Tally {
    counts: Arc<[AtomicU64; 2]>,
    calls: metrics::Counter,
    ops: metrics::Counter,
}

/// One call of the group script carrying `jobs`; each job gets its answer.
async fn call(
    script: &redis::Script,
    target: &Target,
    conn: &OnceCell<Conn>,
    tally: &Tally,
    jobs: &mut Vec<Waiting>,
) {
    let command = group_command(script, jobs);
    tally.counts[0].fetch_add(1, Ordering::Relaxed);
    tally.counts[1].fetch_add(jobs.len() as u64, Ordering::Relaxed);
    tally.calls.increment(1);
    tally.ops.increment(jobs.len() as u64);
    let answered = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut c = connect(target, conn).await?;
        evalsha(script, &command, &mut c).await
    })
    .await
    .unwrap_or_else(|_| Err(failed("Redis did not answer within 2 s".into())));
    match answered {
        Ok(answers) if answers.len() == jobs.len() => {
            let replicated = replicated(target, conn, jobs).await;
            for (job, answer) in jobs.drain(..).zip(answers) {
                let answer = match answer {
                    Value::ServerError(e) => Err(RedisError::from(e)),
                    v => match (job.op.replication(), &replicated) {
                        (Some(want), Ok(got)) if *got < i64::from(want.replicas) => Err(coded(
                            "NOREPL",
                            &format!(
                                "{got} of {} replicas confirmed the event within {} ms",
                                want.replicas,
                                want.timeout.as_millis()
                            ),
                        )),
                        (Some(_), Err(e)) => {
                            Err(failed(format!("cannot confirm replication: {e}")))
                        }
                        _ => Ok(v),
                    },
                };
                let _ = job.reply.send(answer);
            }
        }
        // the call as a whole failed: so does every op it carried
        Ok(answers) => {
            let why = format!("{} answers for {} operations", answers.len(), jobs.len());
            fail_all(jobs, &why);
        }
        // Redis full (`OOM`, the whole script refused under noeviction): every op gets that
        // code, so the request path tells a full Redis from one that does not answer
        Err(e) if e.code() == Some("OOM") => {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(full(e.detail().unwrap_or_default())));
            }
        }
        Err(e) => fail_all(jobs, &e.to_string()),
    }
}

/// How many replicas confirmed the group's appends, when some op of the group asks for it: one
/// `WAIT` on the connection that carried them, for the most replicas and the longest time any
/// of them asks (`Ok(i64::MAX)` when none asks). `WAIT` covers every write this connection sent
/// before it, so one answers for the whole group; on a cluster it goes to the master that took
/// the group (its first key's slot).
async fn replicated(
    target: &Target,
    conn: &OnceCell<Conn>,
    jobs: &[Waiting],
) -> redis::RedisResult<i64> {
    let Some(want) = jobs
        .iter()
        .filter_map(|j| j.op.replication())
        .reduce(|a, b| ReplicaWait {
            replicas: a.replicas.max(b.replicas),
            timeout: a.timeout.max(b.timeout),
        })
    else {
        return Ok(i64::MAX);
    };
    let mut c = connect(target, conn).await?;
    let key = jobs.first().map(|j| j.op.first_key()).unwrap_or_default();
    tokio::time::timeout(
        want.timeout + Duration::from_millis(250),
        c.wait_for_replicas(key, want.replicas, want.timeout),
    )
    .await
    .unwrap_or_else(|_| Err(failed("no answer to WAIT".into())))
}

/// An error with Redis's `OOM` code, as the server sends it (redis-rs builds a coded error only
/// from a reply).
fn full(detail: &str) -> RedisError {
    coded("OOM", detail)
}

/// An error with `code`, as if Redis had sent it (`NOREPL`: not confirmed by enough replicas,
/// the engine's own code, as Redis's own `NOREPLICAS`).
fn coded(code: &str, detail: &str) -> RedisError {
    let reply = format!("-{code} {}\r\n", detail.replace(['\r', '\n'], " "));
    match redis::parse_redis_value(reply.as_bytes()) {
        Ok(Value::ServerError(e)) => e.into(),
        _ => failed(format!("{code} {detail}")),
    }
}

fn fail_all(jobs: &mut Vec<Waiting>, why: &str) {
    for job in jobs.drain(..) {
        let _ = job.reply.send(Err(failed(why.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_verdict_is_four_numbers_then_the_entry_id() {
        // a check: allowed, 0 ms to wait, the bucket full again in 30,000 ms, 1 left (the
        // script writes an empty id after it; the four numbers alone read the same)
        assert_eq!(
            verdict(&bulk("1 0 30000 1 ")).unwrap(),
            ([1, 0, 30000, 1], "")
        );
        assert_eq!(
            verdict(&bulk("1 0 30000 1")).unwrap(),
            ([1, 0, 30000, 1], "")
        );
        // a limited append that stored its event
        assert_eq!(
            verdict(&bulk("1 0 30000 1 1764086400000-0")).unwrap(),
            ([1, 0, 30000, 1], "1764086400000-0")
        );
        // allowed, a duplicate: nothing after the space
        assert_eq!(
            verdict(&bulk("1 0 30000 0 ")).unwrap(),
            ([1, 0, 30000, 0], "")
        );
        // refused: the wait, the reset, nothing stored
        assert_eq!(
            verdict(&bulk("0 1500 59000 0 ")).unwrap(),
            ([0, 1500, 59000, 0], "")
        );
        // a negative number reads as written (`rate_limit::redis::decision` clamps it)
        assert_eq!(verdict(&bulk("1 0 1 -3")).unwrap().0, [1, 0, 1, -3]);
    }

    #[test]
    fn anything_else_is_a_type_error_naming_the_answer() {
        for answer in [
            bulk(""),
            bulk("1 0 30000"),
            bulk("1 0 x 1 id"),
            bulk("1.5 0 1 1"),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Nil,
            Value::BulkString(vec![0xff, b' ', b'1']),
        ] {
            let e = verdict(&answer).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TypeError, "{answer:?}");
            assert!(e.to_string().contains("not four numbers"), "{e}");
        }
    }
}
