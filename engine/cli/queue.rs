//! `engine queue stats` and `engine dlq list|show|replay|purge`: the Redis queues of the queued
//! pipelines.

use std::process::ExitCode;

use super::{Deployment, DlqAction, project, runtime};

/// The Redis queues of the queued pipelines, by pipeline name.
pub(super) fn queues(
    target: &Deployment,
) -> Result<Vec<(String, crate::queue::redis::RedisQueue)>, ExitCode> {
    let project = project(&target.pipelines, target.env_file.as_deref())?;
    if project.settings.redis_url.is_none() {
        eprintln!(
            "engine: REDIS_URL is not set: without Redis, events are queued inside `engine serve` and are not visible here"
        );
        return Err(ExitCode::from(1));
    }
    let mut out = Vec::new();
    for p in &project.pipelines {
        let queue = crate::server::queueing::redis_queue(&project, &p.config, "engine-cli", None)
            .map_err(|e| {
            eprintln!("engine: {}", crate::diagnostics::chain(&e));
            ExitCode::from(1)
        })?;
        if let Some(q) = queue {
            out.push((p.config.name.clone(), q));
        }
    }
    Ok(out)
}

pub(super) fn queue_stats(target: &Deployment) -> ExitCode {
    let (queues, rt) = match (queues(target), runtime()) {
        (Ok(q), Ok(r)) => (q, r),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let result: Result<Vec<(String, crate::queue::Stats)>, _> =
        rt.block_on(async { futures_stats(&queues).await });
    match result {
        Ok(stats) if target.json => {
            let v: serde_json::Map<String, serde_json::Value> = stats
                .into_iter()
                .map(|(n, s)| (n, serde_json::to_value(s).unwrap_or_default()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(stats) => {
            println!(
                "{:<20} {:>8} {:>8} {:>8} {:>8} {:>12}",
                "pipeline", "depth", "pending", "delayed", "dead", "oldest"
            );
            for (n, s) in stats {
                let oldest = s
                    .oldest_age_ms
                    .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                println!(
                    "{n:<20} {:>8} {:>8} {:>8} {:>8} {oldest:>12}",
                    s.depth, s.pending, s.delayed, s.dead
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {}", crate::diagnostics::chain(&e));
            ExitCode::from(1)
        }
    }
}

pub(super) async fn futures_stats(
    queues: &[(String, crate::queue::redis::RedisQueue)],
) -> Result<Vec<(String, crate::queue::Stats)>, crate::queue::QueueError> {
    let mut out = Vec::new();
    for (name, q) in queues {
        out.push((name.clone(), q.stats().await?));
    }
    Ok(out)
}

pub(super) fn dlq(action: DlqAction) -> ExitCode {
    let (pipeline, target) = match &action {
        DlqAction::List { pipeline, target }
        | DlqAction::Show {
            pipeline, target, ..
        }
        | DlqAction::Replay {
            pipeline, target, ..
        }
        | DlqAction::Purge {
            pipeline, target, ..
        } => (pipeline.clone(), target),
    };
    let (queues, rt) = match (queues(target), runtime()) {
        (Ok(q), Ok(r)) => (q, r),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let Some((_, q)) = queues.iter().find(|(n, _)| *n == pipeline) else {
        eprintln!("engine: `{pipeline}` is not a queued pipeline (it needs transform steps)");
        return ExitCode::from(2);
    };
    let json = target.json;
    let result: Result<(), super::CommandError> = rt.block_on(async {
        match &action {
            DlqAction::List { .. } => {
                let letters = q.dead_letters(1000).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&letters).unwrap_or_default());
                } else {
                    for l in &letters {
                        println!("{}  event {}  attempts {}  {}", l.id, l.event_id, l.attempts, l.reason);
                    }
                    println!("{} dead letter{}", letters.len(), if letters.len() == 1 { "" } else { "s" });
                }
                Ok(())
            }
            DlqAction::Show { id, .. } => {
                let letters = q.dead_letters(10_000).await?;
                let l = letters.iter().find(|l| &l.id == id).ok_or_else(|| format!("no dead letter `{id}`"))?;
                let event = l.event.as_ref().map(|e| {
                    serde_json::json!({
                        "id": e.id, "pipeline": e.pipeline, "received_at_ms": e.received_at_ms,
                        "method": e.method, "path": e.path, "query": e.query, "headers": e.headers,
                        "body": String::from_utf8_lossy(&e.body),
                    })
                });
                let v = serde_json::json!({"id": l.id, "event_id": l.event_id, "attempts": l.attempts, "reason": l.reason, "event": event});
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                Ok(())
            }
            DlqAction::Replay { id, .. } => {
                let ids: Vec<String> = id.iter().cloned().collect();
                let n = q.replay_dead(&ids).await?;
                if json { println!("{{\"replayed\": {n}}}") } else { println!("replayed {n}") }
                Ok(())
            }
            DlqAction::Purge { id, .. } => {
                let ids: Vec<String> = id.iter().cloned().collect();
                let n = q.purge_dead(&ids).await?;
                if json { println!("{{\"purged\": {n}}}") } else { println!("purged {n}") }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine: {}", crate::diagnostics::chain(&*e));
            ExitCode::from(1)
        }
    }
}
