//! One compiled route per pipeline: everything the request path needs for it, built once at boot
//! (and on reload) by [`Route::wire`], so the request path takes a `&Route` and decides nothing
//! twice.
//!
//! ```text
//! plan::Built { verifier, program, responder }             compiled, per pipeline (the plan)
//!   -> PipelineParts { verifier, responder, queued, oauth }  wired to the world (App::build_in)
//!   -> Route { config, verifier, limit, responder, queued, oauth }   served
//! ```
//!
//! ```text
//!   limit: None                      no rate limit
//!          First(rule)               checked before verification, on its own
//!          InEnqueue(riding)         checked inside the enqueue's Redis script (one round trip);
//!                                    a request failing verification is checked on its own first
//!          Verified{rule, unverified, riding}
//!                                    `counts: verified`: checked after verification (in the
//!                                    enqueue when `riding`); failed verification counts against
//!                                    `unverified`, the per-IP default
//! ```

use std::sync::Arc;

use crate::config::Project;
use crate::queue::redis::RedisQueue;
use crate::rate_limit::{RateLimiter, Rule};
use crate::respond::Responder;
use crate::verify::Verifier;

use super::queueing::Queued;
use crate::queue::Queue;

/// A pipeline, ready to answer.
pub struct Route {
    /// The pipeline's index in the project (its metrics, the console's rows).
    pub pipeline: usize,
    /// Its configuration, shared with the loaded project.
    pub config: Arc<crate::config::pipeline::Pipeline>,
    /// The largest body it accepts: its own `body_limit`, else the settings'.
    pub body_limit: u64,
    pub verifier: Option<Verifier>,
    pub limit: Limit,
    /// The settings' per-IP default, kept under a pipeline's own limit whose key does not count
    /// the client (a header or field a sender could rotate for a fresh budget each request);
    /// checked first. None for `counts: verified` limits, whose forged requests already count
    /// per IP (`Limit::Verified::unverified`).
    pub floor: Option<Rule>,
    pub responder: Responder,
    /// Its queue and worker, when it has `transform` steps.
    pub queued: Option<Queued>,
    /// Its OAuth flow, or why it cannot run (503 with the reason).
    pub oauth: Option<Result<crate::oauth::Flow, crate::oauth::FlowSetupError>>,
    /// Every JSON pointer the request path reads after verification (the rate-limit key checked
    /// in the enqueue, `respond.when`'s field, the event id, the dedupe key): read in one pass,
    /// compiled once here.
    pub json_fields: crate::request_field::JsonPointers,
    /// The archive's index fields are read in that pass too, and carried with the event
    /// (`EventInput::index`): the worker's archive then does not read the body again.
    pub index_in_pass: bool,
    /// Its request metrics, their handles looked up once.
    pub metrics: crate::ops::metrics::PipelineMetrics,
}

/// How a route's rate limit is checked; decided once, here.
pub enum Limit {
    None,
    First(Rule),
    InEnqueue(EnqueueLimit),
    Verified {
        rule: Rule,
        /// What a request failing verification counts against.
        unverified: Option<Rule>,
        /// The check rides in the enqueue when it can.
        in_enqueue: Option<EnqueueLimit>,
    },
}

/// A limit checked inside the enqueue's Redis script.
pub struct EnqueueLimit {
    pub rule: Rule,
    pub queue: Arc<RedisQueue>,
    /// The limiter's Redis key prefix (the same keys a separate check would use).
    pub prefix: String,
}

impl Limit {
    /// The limit checked first, before verification.
    pub fn first(&self) -> Option<&Rule> {
        match self {
            Limit::First(rule) => Some(rule),
            _ => None,
        }
    }

    /// The limit a request that failed verification is counted against before its 401.
    pub fn when_unverified(&self) -> Option<&Rule> {
        match self {
            Limit::InEnqueue(r) => Some(&r.rule),
            Limit::Verified { unverified, .. } => unverified.as_ref(),
            Limit::None | Limit::First(_) => None,
        }
    }

    /// The limit checked on its own once the request is verified.
    pub fn after_verify(&self) -> Option<&Rule> {
        match self {
            Limit::Verified {
                rule,
                in_enqueue: None,
                ..
            } => Some(rule),
            _ => None,
        }
    }

    /// The limit checked inside the enqueue.
    pub fn in_enqueue(&self) -> Option<&EnqueueLimit> {
        match self {
            Limit::InEnqueue(r) => Some(r),
            Limit::Verified { in_enqueue, .. } => in_enqueue.as_ref(),
            Limit::None | Limit::First(_) => None,
        }
    }
}

/// One pipeline's compiled parts wired to the running world: what its [`Route`] is made of.
pub struct PipelineParts {
    pub verifier: Option<Verifier>,
    pub responder: Responder,
    pub queued: Option<Queued>,
    pub oauth: Option<Result<crate::oauth::Flow, crate::oauth::FlowSetupError>>,
}

impl Route {
    /// The route of pipeline `p` (the `index`th of `project`), from its parts: its rate limit
    /// decided (where it is checked, against which rule) and the fields it reads compiled.
    pub fn wire(
        project: &Project,
        (index, p): (usize, &crate::config::LoadedPipeline),
        parts: PipelineParts,
        limiter: &RateLimiter,
    ) -> Route {
        let PipelineParts {
            verifier,
            responder,
            queued,
            oauth,
        } = parts;
        let default = project.settings.rate_limit.as_ref().filter(|r| r.enabled);
        let exempt = default.is_some_and(|d| d.exempt.iter().any(|e| *e == p.config.route.path));
        let rule = match &p.config.rate_limit {
            Some(own) => own.enabled.then(|| Rule::new(&p.config.name, own)),
            None if exempt => None,
            None => default.map(|d| Rule::new(&p.config.name, d)),
        };
        let limit = match rule {
            None => Limit::None,
            Some(rule) => {
                let in_enqueue = in_enqueue(limiter, &queued, &verifier, &rule);
                if rule.verified_only {
                    let unverified =
                        default.map(|d| Rule::new(&format!("{}:unverified", rule.bucket), d));
                    Limit::Verified {
                        rule,
                        unverified,
                        in_enqueue,
                    }
                } else {
                    match in_enqueue {
                        Some(r) => Limit::InEnqueue(r),
                        None => Limit::First(rule),
                    }
                }
            }
        };
        let floor = p
            .config
            .rate_limit
            .as_ref()
            .filter(|own| own.keyed_by_sender())
            .and(project.settings.ip_floor())
            .map(|d| Rule::new(&format!("{}:ip", p.config.name), d));
        let (json_fields, index_in_pass) = json_fields(&p.config, &queued, &limit);
        Route {
            floor,
            json_fields,
            index_in_pass,
            pipeline: index,
            metrics: crate::ops::metrics::PipelineMetrics::new(&p.config.name),
            config: p.config.clone(),
            body_limit: p
                .config
                .body_limit
                .unwrap_or(project.settings.body_limit)
                .bytes(),
            verifier,
            limit,
            responder,
            queued,
            oauth,
        }
    }
}

/// The JSON pointers of the fields read after verification, each once, and whether the
/// archive's index fields are among them ([`Route::index_in_pass`]).
fn json_fields<'a>(
    p: &'a crate::config::Pipeline,
    q: &'a Option<Queued>,
    limit: &'a Limit,
) -> (crate::request_field::JsonPointers, bool) {
    use crate::config::rate_limit::KeyPart;
    use crate::config::verify::KeySource;
    let when = p.respond.when.iter().map(|w| &w.field);
    let queue = q.iter().flat_map(|q| {
        q.config
            .event_id
            .iter()
            .chain(q.config.dedupe.iter().flat_map(|d| d.key.iter()))
    });
    let in_enqueue = limit.in_enqueue().into_iter().flat_map(|r| {
        r.rule.key.iter().filter_map(|k| match k {
            KeyPart::Field(f) => Some(f),
            _ => None,
        })
    });
    let add = |out: &mut Vec<&'a str>, source: &'a KeySource| {
        if let KeySource::Json(ptr) = source
            && !out.contains(&ptr.as_str())
        {
            out.push(ptr);
        }
    };
    let mut out: Vec<&str> = Vec::new();
    when.chain(queue)
        .chain(in_enqueue)
        .for_each(|s| add(&mut out, s));
    // the archive's JSON index fields ride the same pass, when there is one (a route that reads
    // no JSON leaves them to the worker rather than walk the body here for them alone)
    let index = archive_index(p, q);
    let in_pass = !out.is_empty()
        && index.is_some_and(|i| i.values().any(|s| matches!(s, KeySource::Json(_))));
    if in_pass {
        index
            .into_iter()
            .flat_map(|i| i.values())
            .for_each(|s| add(&mut out, s));
    }
    (crate::request_field::JsonPointers::new(&out), in_pass)
}

/// The archive's index fields of a queued pipeline that keeps its events.
fn archive_index<'a>(
    p: &'a crate::config::Pipeline,
    q: &Option<Queued>,
) -> Option<&'a std::collections::BTreeMap<String, crate::config::verify::KeySource>> {
    q.as_ref()?;
    p.archive.kept().map(|k| &k.index).filter(|i| !i.is_empty())
}

/// The limit rides in the enqueue's round trip when the limiter and the queue are both on one
/// Redis node (on a cluster the rate-limit key and the queue's keys lie in different slots, which
/// one script cannot touch together), the pipeline acknowledges once `queued`, and its verifier
/// needs no lookup (tenant secrets come from Postgres, which must not be read for a request the
/// limit would refuse).
fn in_enqueue(
    limiter: &RateLimiter,
    queued: &Option<Queued>,
    verifier: &Option<Verifier>,
    rule: &Rule,
) -> Option<EnqueueLimit> {
    let RateLimiter::Redis(gcra) = limiter else {
        return None;
    };
    if gcra.is_cluster() {
        return None;
    }
    let q = queued.as_ref()?;
    let Queue::Redis(queue) = &q.handle else {
        return None;
    };
    if q.config.ack != crate::config::queue::Ack::Queued
        || verifier.as_ref().is_some_and(Verifier::uses_tenants)
    {
        return None;
    }
    Some(EnqueueLimit {
        rule: rule.clone(),
        queue: queue.clone(),
        prefix: gcra.prefix().to_string(),
    })
}
