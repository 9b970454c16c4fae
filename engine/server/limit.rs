//! Rate-limit checks on the request path: a rule's decision for a request, its RateLimit
//! headers, 429 over the limit, and the rule's fail mode when the backend is down. Which rule is
//! checked where was decided at boot ([`super::route::Limit`]).

use salvo::http::HeaderValue;
use salvo::prelude::*;

use super::App;
use super::answer::{ErrorAnswer, Stop};
use super::incoming::Incoming;
use crate::config::rate_limit::FailMode;
use crate::rate_limit::{Decision, Rule, ceil_secs};

/// Count the request against `rule` (if any): 429 over the limit, 503 when the backend is down
/// and the rule fails closed; RateLimit headers on every counted answer.
pub async fn check_rate(
    app: &App,
    rule: Option<&Rule>,
    incoming: &Incoming<'_>,
    params: &[(String, String)],
    res: &mut Response,
) -> Result<(), Stop> {
    let Some(rule) = rule else { return Ok(()) };
    let key = rule.key_of(incoming.client_ip, &incoming.inbound(), params);
    let decision = match app.limiter.check(rule, &key).await {
        Ok(d) => d,
        Err(e) => {
            metrics::counter!("engine_rate_limit_backend_errors_total", "bucket" => rule.bucket.clone()).increment(1);
            warn_throttled(&rule.bucket, &e.0);
            return match rule.fail {
                FailMode::Open => Ok(()),
                FailMode::Closed => Err(super::answer::unavailable(
                    res,
                    "Rate limiting is temporarily unavailable. Please retry.",
                )),
            };
        }
    };
    answer_decision(rule, &decision, res)
}

/// The RateLimit headers of a decision; 429 with Retry-After when it refuses.
pub fn answer_decision(rule: &Rule, decision: &Decision, res: &mut Response) -> Result<(), Stop> {
    let h = res.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(ceil_secs(decision.reset)),
    );
    if let Ok(policy) = HeaderValue::from_str(&format!(
        "{};w={}",
        rule.limit,
        rule.period.as_secs().max(1)
    )) {
        h.insert("ratelimit-policy", policy);
    }
    if decision.allowed {
        return Ok(());
    }
    metrics::counter!("engine_rate_limited_total", "bucket" => rule.bucket.clone()).increment(1);
    let retry = ceil_secs(decision.retry_after).max(1);
    Err(ErrorAnswer::RateLimited { retry_after: retry }.write(res))
}

/// One warning per 10 s while the backend is down, not one per request.
fn warn_throttled(bucket: &str, error: &str) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp();
    let last = LAST.load(Ordering::Relaxed);
    if now - last >= 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            bucket,
            error,
            "rate-limit backend unavailable; applying the rule's fail mode"
        );
    }
}
