//! Rate limiting: GCRA in Redis with an injected clock, and through real sockets (the seed's
//! 150-request check, two instances sharing Redis, trusted and forged X-Forwarded-For, fail modes).

use crate::common;

use std::time::{Duration, Instant};

use common::{Dir, spawn_app};
use engine::config::rate_limit::RateLimit;
use engine::rate_limit::Rule;
use engine::rate_limit::redis::RedisGcra;
use serde_json::Value;

fn prefix() -> String {
    format!(
        "test:{}:{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

#[tokio::test]
async fn redis_gcra_exact_counts_with_injected_clock() {
    let gcra = RedisGcra::new(common::redis(), &prefix()).unwrap();
    let rule = Rule::new("api", &RateLimit::per_ip(100, Duration::from_secs(60)));
    let t0: u64 = 1_700_000_000_000_000; // µs
    for i in 0..100 {
        let d = gcra.check(&rule, "1.2.3.4", Some(t0)).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 99 - i);
    }
    let d = gcra.check(&rule, "1.2.3.4", Some(t0)).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_millis(600));
    assert_eq!(d.reset, Duration::from_secs(60));
    // 599 ms later still refused, at 600 ms exactly one more
    assert!(
        !gcra
            .check(&rule, "1.2.3.4", Some(t0 + 599_000))
            .await
            .unwrap()
            .allowed
    );
    let d = gcra
        .check(&rule, "1.2.3.4", Some(t0 + 600_000))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert!(
        !gcra
            .check(&rule, "1.2.3.4", Some(t0 + 600_000))
            .await
            .unwrap()
            .allowed
    );
    // other clients are independent
    assert!(
        gcra.check(&rule, "5.6.7.8", Some(t0))
            .await
            .unwrap()
            .allowed
    );
    // a full period after the last allowed request, the whole burst again
    let later = t0 + 600_000 + 60_000_000;
    let mut allowed = 0;
    for _ in 0..150 {
        if gcra
            .check(&rule, "1.2.3.4", Some(later))
            .await
            .unwrap()
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
}

/// Checks sent at once share the group script's calls, which read a key once and write it once per
/// call: the answers must be those of the checks one by one, and the key what the last allowed
/// check left.
#[tokio::test]
async fn redis_gcra_checks_of_one_key_grouped_in_one_call_count_exactly() {
    let shared = engine::redis_conn::group_commit::GroupCommit::open(common::redis()).unwrap();
    let gcra = RedisGcra::on(shared.clone(), &prefix());
    let rule = Rule::new("api", &RateLimit::per_ip(100, Duration::from_secs(60)));
    let t0: u64 = 1_700_000_000_000_000; // µs
    let checks = (0..150).map(|_| gcra.check(&rule, "1.2.3.4", Some(t0)));
    let decisions = futures::future::join_all(checks).await;
    let mut remaining: Vec<u32> = decisions
        .iter()
        .map(|d| d.as_ref().unwrap())
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..100).collect::<Vec<u32>>());
    for d in decisions.iter().map(|d| d.as_ref().unwrap()) {
        if !d.allowed {
            assert_eq!(d.retry_after, Duration::from_millis(600));
        }
    }
    let (calls, ops) = shared.grouped();
    assert!(calls < ops, "the checks went {ops} in {calls} calls");
    // the key: the theoretical arrival time after 100 allowed checks, 600 ms apart
    let client = redis::Client::open(common::redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = gcra.key(&rule, "1.2.3.4");
    let tat: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(tat, t0 + 100 * 600_000);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 59_000 && ttl <= 60_000, "ttl {ttl}");
    // and the next check, one interval later, is allowed once
    let d = gcra
        .check(&rule, "1.2.3.4", Some(t0 + 600_000))
        .await
        .unwrap();
    assert!(d.allowed);
    assert!(
        !gcra
            .check(&rule, "1.2.3.4", Some(t0 + 600_000))
            .await
            .unwrap()
            .allowed
    );
}

#[tokio::test]
async fn redis_keys_expire_on_their_own() {
    let p = prefix();
    let gcra = RedisGcra::new(common::redis(), &p).unwrap();
    let rule = Rule::new("api", &RateLimit::per_ip(10, Duration::from_secs(2)));
    for _ in 0..3 {
        gcra.check(&rule, "9.9.9.9", None).await.unwrap();
    }
    let client = redis::Client::open(common::redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(gcra.key(&rule, "9.9.9.9"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // three slots used of a 10-per-2s bucket: full again in 3 × 200 ms
    assert!(ttl > 0 && ttl <= 600, "ttl {ttl}");
}

/// A copy of the shipped pipelines with Redis keys under a private prefix.
fn dir_with(settings_extra: &str) -> Dir {
    let dir = Dir::shipped_copy();
    let shipped = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    // top-level keys set by `settings_extra` replace the shipped ones
    let key = |l: &str| l.split(':').next().unwrap_or_default().to_string();
    let overridden: Vec<String> = settings_extra.lines().map(key).collect();
    let base: String = shipped
        .lines()
        .filter(|l| l.starts_with([' ', '#']) || !overridden.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    dir.write(
        "engine.yaml",
        &format!("{base}redis_key_prefix: '{}'\n{settings_extra}", prefix()),
    );
    dir
}

#[tokio::test]
async fn seed_check_150_requests_to_health_allow_exactly_100() {
    let app = spawn_app(&common::shipped(), &[]).await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..150 {
        let res = app.client.get(app.url("/health")).send().await.unwrap();
        statuses.push(res.status().as_u16());
        last = Some(res);
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_exact_100(allowed, started.elapsed());
    assert_eq!(allowed + refused, 150);
    let res = last.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["ratelimit-limit"], "100");
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1, "600 ms rounds up to 1 s");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    app.stop().await;
}

/// 100/1m lets one more request through every 600 ms: a run slower than that may see one more.
fn assert_exact_100(allowed: usize, elapsed: Duration) {
    let extra = (elapsed.as_millis() / 600) as usize;
    assert!(
        (100..=100 + extra).contains(&allowed),
        "allowed {allowed} in {elapsed:?}"
    );
    if extra == 0 {
        assert_eq!(allowed, 100);
    }
}

#[tokio::test]
async fn allowed_responses_carry_the_headers() {
    let app = spawn_app(&common::shipped(), &[]).await;
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit-limit"], "100");
    assert_eq!(res.headers()["ratelimit-remaining"], "99");
    assert_eq!(res.headers()["ratelimit-reset"], "1");
    assert_eq!(res.headers()["ratelimit-policy"], "100;w=60");
    app.stop().await;
}

#[tokio::test]
async fn two_instances_share_one_redis() {
    let dir = dir_with("");
    let env = [("REDIS_URL", common::redis())];
    let a = spawn_app(dir.path(), &env).await;
    let b = spawn_app(dir.path(), &env).await;
    let started = Instant::now();
    let mut allowed = 0;
    for i in 0..150 {
        let app = if i % 2 == 0 { &a } else { &b };
        if app
            .client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            allowed += 1;
        }
    }
    assert_exact_100(allowed, started.elapsed());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_trusted_proxies() {
    let pipeline =
        "name: limited\nroute: {method: POST, path: /limited}\nrate_limit: {limit: 2/1h}\n";
    let send = |app: &common::TestApp, xff: &'static str| {
        app.client
            .post(app.url("/limited"))
            .header("x-forwarded-for", xff)
            .send()
    };

    // trusted: each forwarded client has its own budget
    let trusted = dir_with("trusted_proxies: [127.0.0.1]\n");
    trusted.write("limited.yaml", pipeline);
    let app = spawn_app(trusted.path(), &[]).await;
    for xff in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(send(&app, xff).await.unwrap().status(), 200);
        assert_eq!(send(&app, xff).await.unwrap().status(), 200);
        assert_eq!(send(&app, xff).await.unwrap().status(), 429);
    }
    // a client prepending a forged address is still counted by the address the proxy saw
    assert_eq!(
        send(&app, "6.6.6.6, 198.51.100.1").await.unwrap().status(),
        429
    );
    app.stop().await;

    // untrusted: the header is ignored; every request counts against the socket peer
    let untrusted = dir_with("");
    untrusted.write("limited.yaml", pipeline);
    let app = spawn_app(untrusted.path(), &[]).await;
    assert_eq!(send(&app, "198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(send(&app, "198.51.100.2").await.unwrap().status(), 200);
    assert_eq!(send(&app, "198.51.100.3").await.unwrap().status(), 429);
    app.stop().await;
}

#[tokio::test]
async fn key_by_tenant_field_and_disabled_pipelines() {
    let dir = dir_with("");
    dir.write(
        "per-tenant.yaml",
        "name: per-tenant\nroute: {method: POST, path: /t}\nrate_limit:\n  limit: 1/1h\n  key: [{form: AccountSid}]\n",
    );
    dir.write("unlimited.yaml", "name: unlimited\nroute: {method: POST, path: /u}\nrate_limit: {enabled: false, limit: 1/1h}\n");
    let app = spawn_app(dir.path(), &[("REDIS_URL", common::redis())]).await;
    let post = |path: &'static str, body: &'static str| {
        app.client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(post("/t", "AccountSid=AC1").await.unwrap().status(), 200);
    assert_eq!(post("/t", "AccountSid=AC1").await.unwrap().status(), 429);
    assert_eq!(post("/t", "AccountSid=AC2").await.unwrap().status(), 200);
    for _ in 0..120 {
        let res = post("/u", "x=1").await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit-limit").is_none());
    }
    app.stop().await;
}

#[tokio::test]
async fn redis_unreachable_fails_open_or_closed() {
    let dir = dir_with("");
    dir.write("closed.yaml", "name: closed\nroute: {method: POST, path: /closed}\nrate_limit: {limit: 100/1m, fail: closed}\n");
    let app = spawn_app(dir.path(), &[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    // the default (fail: open): served, without RateLimit headers
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("ratelimit-limit").is_none());
    // fail: closed
    let res = app.client.post(app.url("/closed")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_runs_before_verification() {
    // a flood of forged Vapi requests is refused at the limiter: the 101st is a 429, not a 401
    let app = spawn_app(&common::shipped(), &[]).await;
    let mut last = 0;
    for _ in 0..101 {
        last = app
            .client
            .post(app.url("/api/webhooks/vapi"))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    app.stop().await;
}

#[tokio::test]
async fn with_redis_the_limit_rides_in_the_enqueue_and_refused_events_are_not_stored() {
    // Redis limiter + Redis queue + bearer verification: a verified request's limit is checked in
    // its enqueue's script. What clients see must be what "rate limit, then verify" says.
    let dir = dir_with("");
    let vapi = std::fs::read_to_string(dir.path().join("vapi.yaml")).unwrap();
    // the shipped per-org limit replaced by a small per-IP one that counts every request
    let start = vapi.find("\nrate_limit:\n").unwrap();
    let end =
        start + vapi[start..].find("counts: verified\n").unwrap() + "counts: verified\n".len();
    dir.write(
        "vapi.yaml",
        &format!(
            "{}{}\nrate_limit: {{limit: 3/1m, key: [ip]}}\n",
            &vapi[..start],
            &vapi[end..]
        ),
    );
    let prefix = common::redis_key_prefix(dir.path());
    let secret = "limit-rides-secret";
    let app = common::spawn_ingest_only(
        dir.path(),
        &[
            ("REDIS_URL", common::redis()),
            ("VAPI_WEBHOOK_SECRET", secret),
        ],
    )
    .await;
    let post = |token: &str, n: u32| {
        app.client
            .post(app.url("/api/webhooks/vapi"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"message":{{"type":"status-update","status":"in-progress","timestamp":{n},"call":{{"id":"call-{n}"}}}}}}"#
            ))
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    // a forged request under the limit: 401, and it counts
    let r = post("wrong-token", 1).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("2"));
    // two verified requests: stored, with the limit's headers from the enqueue's round trip
    for (n, remaining) in [(2, "1"), (3, "0")] {
        let r = post(secret, n).await.unwrap();
        assert_eq!(r.status(), 200, "request {n}");
        assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            header(&r, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
    // over the limit: 429 for a verified request (and nothing stored) as for a forged one
    for token in [secret, "wrong-token"] {
        let r = post(token, 4).await.unwrap();
        assert_eq!(r.status(), 429, "{token}");
        assert!(header(&r, "retry-after").is_some());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited");
    }
    let client = redis::Client::open(common::redis()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{prefix}:{{q:vapi}}:stream");
    let stored: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        stored, 2,
        "only the two verified requests under the limit are stored"
    );
    // the refused event's dedupe key was not taken
    let seen: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}:{{q:vapi}}:seen:call-4|status-update|4"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!seen);
    app.stop().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// The seed's deployment under a busy hour: Vapi sends every org's messages from a handful of
/// addresses. The shipped pipeline counts them per org once verified, so 500 signed messages from
/// one address in a few seconds are all accepted, while the per-IP 100/min still guards /health
/// and forged requests.
#[tokio::test]
async fn burst_of_500_signed_vapi_messages_from_one_ip_is_all_accepted() {
    use futures::StreamExt;
    let dir = dir_with("");
    let prefix = common::redis_key_prefix(dir.path());
    let secret = "busy-hour-vapi-secret";
    let app = common::spawn_ingest_only(
        dir.path(),
        &[
            ("REDIS_URL", common::redis()),
            ("VAPI_WEBHOOK_SECRET", secret),
        ],
    )
    .await;
    let org = "4b3a2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d";
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..500u32)
        .map(|n| {
            // status updates and transcripts of 50 concurrent calls, as Vapi sends them
            let body = if n % 2 == 0 {
                format!(
                    r#"{{"message":{{"type":"status-update","status":"in-progress","timestamp":{},"call":{{"id":"00000000-0000-4000-8000-{:012}","orgId":"{org}"}}}}}}"#,
                    1_732_550_400_000u64 + u64::from(n),
                    n % 50
                )
            } else {
                format!(
                    r#"{{"message":{{"type":"transcript","role":"user","transcriptType":"final","transcript":"utterance {n}","timestamp":{},"call":{{"id":"00000000-0000-4000-8000-{:012}","orgId":"{org}"}}}}}}"#,
                    1_732_550_400_000u64 + u64::from(n),
                    n % 50
                )
            };
            let req = app
                .client
                .post(app.url("/api/webhooks/vapi"))
                .header("authorization", format!("Bearer {secret}"))
                .header("content-type", "application/json")
                .body(body);
            async move { req.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let accepted = statuses.iter().filter(|s| (200..300).contains(*s)).count();
    assert_eq!(
        accepted,
        500,
        "{:?} in {:?}",
        statuses.iter().filter(|s| **s >= 300).collect::<Vec<_>>(),
        started.elapsed()
    );

    let client = redis::Client::open(common::redis()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let stored: usize = redis::cmd("XLEN")
        .arg(format!("{prefix}:{{q:vapi}}:stream"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(stored, 500, "every accepted message is queued");

    // forged requests from the same address count against the per-IP default, not the org: the
    // 101st is refused, and the next signed message is still accepted
    let mut forged = Vec::new();
    for n in 0..101 {
        let r = app
            .client
            .post(app.url("/api/webhooks/vapi"))
            .header("authorization", "Bearer forged")
            .header("content-type", "application/json")
            .body(format!(r#"{{"message":{{"type":"status-update","status":"x","timestamp":{n},"call":{{"id":"f","orgId":"{org}"}}}}}}"#))
            .send()
            .await
            .unwrap();
        forged.push(r.status().as_u16());
    }
    assert_eq!(forged[..100].iter().filter(|s| **s == 401).count(), 100);
    assert_eq!(forged[100], 429);
    let signed = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"message":{{"type":"status-update","status":"ended","timestamp":1,"call":{{"id":"after-flood","orgId":"{org}"}}}}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    assert_eq!(signed.headers()["ratelimit-limit"], "20000");

    // the seed's check still holds on /health: 150 requests from one address meet 429s
    let mut refused = None;
    let mut count_429 = 0;
    for _ in 0..150 {
        let r = app.client.get(app.url("/health")).send().await.unwrap();
        if r.status() == 429 {
            count_429 += 1;
            refused = Some(r);
        }
    }
    // 100 allowed at once, then one more every 600 ms: a slow run lets a few more through
    assert!(count_429 >= 40, "{count_429} × 429 of 150");
    let r = refused.unwrap();
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(r.headers()["ratelimit-limit"], "100");
    app.stop().await;
    delete_prefix(&mut c, &prefix).await;
}

/// Remove a test's keys from the shared Redis.
async fn delete_prefix(c: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(c).await.unwrap();
    }
}

/// `counts: verified` has its own validation: a pipeline without `verify` cannot use it, nor can
/// the settings' default.
#[test]
fn counts_verified_needs_a_verifier_and_a_pipeline() {
    let problems = common::problems(
        &[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\nrate_limit: {limit: 10/1s, key: [{header: x-org}], counts: verified}\n",
        )],
        &[],
    );
    assert!(
        problems.iter().any(|p| p.starts_with("x.yaml:3:")
            && p.contains("`counts: verified` needs a `verify` section")),
        "{problems:?}"
    );
    let dir = Dir::shipped_copy();
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    dir.write(
        "engine.yaml",
        &base.replace("  fail: open\n", "  fail: open\n  counts: verified\n"),
    );
    let err = engine::plan::load(dir.path(), &engine::env::EnvSource::default()).unwrap_err();
    assert!(
        err.iter()
            .any(|d| d.message.contains("belongs in a pipeline's own rate limit")),
        "{err:?}"
    );
}

#[test]
fn validation_of_rate_limit_sections() {
    let dir = Dir::shipped_copy();
    dir.write(
        "x.yaml",
        "name: x\nroute: {method: POST, path: /x}\nrate_limit: {limit: 100/1w, exempt: [/x]}\n",
    );
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    dir.write(
        "engine.yaml",
        &base.replace(
            "  fail: open\n",
            "  fail: open\n  exempt: [/health, /nope]\n",
        ),
    );
    let prefix = format!("{}/", dir.path().display());
    let l: Vec<String> = engine::plan::load(dir.path(), &engine::env::EnvSource::default())
        .unwrap_err()
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect();
    assert!(
        l.iter()
            .any(|x| x.starts_with("x.yaml:3:21: must be a rate such as `100/1m`")),
        "{l:#?}"
    );
    assert!(
        l.iter()
            .any(|x| x.contains("`/nope` is neither /health nor a pipeline's route path")),
        "{l:#?}"
    );
}

/// On a Redis Cluster the rate-limit keys spread over the nodes (each key its own slot) and a
/// limit stays exact per key, with the checks of many keys grouped per slot in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_limits_are_exact_per_key_across_nodes() {
    let cluster = common::PrivateCluster::start();
    let p = prefix();
    let gcra = std::sync::Arc::new(RedisGcra::new(&cluster.url(), &p).unwrap());
    assert!(gcra.is_cluster());
    let rule = Rule::new("api", &RateLimit::per_ip(100, Duration::from_secs(60)));
    let t0: u64 = 1_700_000_000_000_000;
    let clients: Vec<String> = (0..20).map(|i| format!("10.0.0.{i}")).collect();
    let nodes: std::collections::BTreeSet<u16> = clients
        .iter()
        .map(|c| engine::redis_conn::slot(&gcra.key(&rule, c)) / 5461)
        .collect();
    assert_eq!(nodes.len(), 3, "the keys spread over the three masters");
    let mut checks = tokio::task::JoinSet::new();
    for c in &clients {
        for _ in 0..150 {
            let (gcra, rule, c) = (gcra.clone(), rule.clone(), c.clone());
            checks.spawn(async move { (c.clone(), gcra.check(&rule, &c, Some(t0)).await) });
        }
    }
    let mut allowed: std::collections::HashMap<String, u32> = Default::default();
    while let Some(r) = checks.join_next().await {
        let (c, d) = r.unwrap();
        if d.unwrap().allowed {
            *allowed.entry(c).or_default() += 1;
        }
    }
    for c in &clients {
        assert_eq!(allowed.get(c), Some(&100), "{c}");
    }
}
