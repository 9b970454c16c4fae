//! Rate-limit checks per second: in memory (governor) and through Redis (one Lua call per check).
//! `cargo bench --bench rate_limit` (the Redis part needs Redis on 127.0.0.1:6379).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::config::rate_limit::RateLimit;
use engine::rate_limit::Rule;
use engine::rate_limit::memory::Memory;
use engine::rate_limit::redis::RedisGcra;

fn bench(c: &mut Criterion) {
    // A limit that never refuses, so every check does the full read-modify-write.
    let rule = Rule::new(
        "bench",
        &RateLimit::per_ip(1_000_000_000, Duration::from_secs(1)),
    );
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();

    let mut group = c.benchmark_group("rate_limit_check");
    group.throughput(Throughput::Elements(1));

    let memory = Memory::new();
    let mut i = 0;
    group.bench_function("memory_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            memory.check(&rule, &keys[i])
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisGcra::new(
        "redis://127.0.0.1:6379",
        &format!("bench:{}", std::process::id()),
    )
    .unwrap();
    // skipped without a local Redis: one check is the probe
    if rt.block_on(redis.check(&rule, "probe", None)).is_ok() {
        let mut j = 0;
        group.bench_function("redis_sequential", |b| {
            b.to_async(&rt).iter(|| {
                j = (j + 1) % keys.len();
                let key = keys[j].clone();
                let (redis, rule) = (&redis, &rule);
                async move { redis.check(rule, &key, None).await.unwrap() }
            })
        });
        // 64 checks in flight, as under concurrent webhook traffic (the multiplexed connection
        // pipelines them).
        group.throughput(Throughput::Elements(64));
        group.bench_function("redis_64_concurrent", |b| {
            b.to_async(&rt).iter(|| {
                let (redis, rule, keys) = (&redis, &rule, &keys);
                async move {
                    let checks = (0..64).map(|k| redis.check(rule, &keys[k], None));
                    for d in futures::future::join_all(checks).await {
                        d.unwrap();
                    }
                }
            })
        });
    } else {
        eprintln!("no Redis at 127.0.0.1:6379: skipping the Redis benches");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
