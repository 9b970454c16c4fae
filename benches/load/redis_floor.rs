//! `cargo bench --bench load -- --redis-floor`: what Redis alone spends per request-path op,
//! the group commit driven directly (no HTTP), at several group sizes.

use super::*;

/// What Redis alone spends per request-path op: the engine's own group commit
/// (`redis_conn::group_commit`) driven with 2.7 KiB payloads, from a given number of concurrent callers
/// (the group sizes follow), Redis's CPU (`INFO cpu`) per op. No HTTP, no engine work.
pub async fn run() {
    use engine::redis_conn::group_commit::{Append, GcraCheck, GroupCommit, Op};
    let shared = GroupCommit::open("redis://127.0.0.1:6379").unwrap();
    let prefix = format!("floor{}", std::process::id());
    // the stored form: the event's JSON without its body (~300 bytes) and the 2 KiB body raw
    let payload = "x".repeat(300);
    let body = bytes::Bytes::from(vec![b'y'; 2048]);
    for (callers, limited) in [(1, true), (10, true), (32, true), (10, false), (32, false)] {
        let per_caller = 2000;
        let cpu0 = redis_cpu_secs().await;
        let (calls0, ops0) = shared.grouped();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..callers {
            let (shared, prefix, payload, body) = (
                shared.clone(),
                prefix.clone(),
                payload.clone(),
                body.clone(),
            );
            tasks.spawn(async move {
                for i in 0..per_caller {
                    let append = Append {
                        stream: format!("{prefix}:{{q}}:stream"),
                        seen: format!("{prefix}:{{q}}:seen:{c}:{i}"),
                        payload: payload.clone(),
                        body: body.clone(),
                        dedupe: true,
                        window_secs: 60,
                        replication: None,
                    };
                    let op = match limited {
                        true => Op::LimitedAppend(
                            GcraCheck {
                                key: format!("{prefix}:rl:{}", c % 4),
                                interval_us: 1,
                                burst: 1_000_000,
                                now_us: None,
                            },
                            append,
                        ),
                        false => Op::Append(append),
                    };
                    shared.run(op).await.unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let ops = (callers * per_caller) as f64;
        let cpu = redis_cpu_secs().await - cpu0;
        let (calls, grouped) = shared.grouped();
        println!(
            "{} from {callers} callers: Redis {:.1} µs per op, {:.1} ops per call",
            if limited {
                "rate check + dedupe + append"
            } else {
                "dedupe + append"
            },
            cpu * 1e6 / ops,
            (grouped - ops0) as f64 / (calls - calls0).max(1) as f64
        );
        support::remove_keys(&format!("{prefix}:")).await;
    }
}

/// The engine's mean group size on the request path's Redis connection (ops per call), from
/// its `/metrics` (0 when it exports none: a build before group commit).
pub async fn redis_group_size(port: u16) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let calls = value("engine_redis_group_calls_total");
    if calls == 0.0 {
        return 0.0;
    }
    value("engine_redis_group_operations_total") / calls
}
