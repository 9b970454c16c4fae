//! Running one fixture through the real pipeline code, in process.
//!
//! ```text
//! fixture env -> plan::load (cached per env) -> App with a frozen clock and capturing sinks
//!   -> request built from the fixture (signed by the pipeline's own verifier when `sign`)
//!   -> server::chain (route, maintenance, CORS, size limit, rate limit, verify, respond, enqueue)
//!   -> drain the in-memory queue through the pipeline's worker (transform -> sinks)
//!   -> Actual: status, headers, body, the event's outcome, rows per sink, connection calls,
//!      alerts
//! ```
//!
//! No socket, Redis, Postgres or HTTP sink is touched: REDIS_URL and DATABASE_URL are cleared,
//! every sink captures its rows, and connections meet the fixture's stand-ins (`connections`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use salvo::http::{HeaderMap, HeaderName, HeaderValue, ReqBody, ResBody};
use serde_json::Value;

use crate::config::Project;
use crate::connection::Backing;
use crate::connection::tenant::MemoryTenants;
use crate::connection::token::{MemoryTokens, StoredConnection};
use crate::connection::transport::{Canned, Standin};
use crate::fixture::{Body, DEFAULT_CLOCK, Fixture, FixtureOutcome, millis};
use crate::queue::Outcomes;
use crate::queue::{Delivery, Queue, QueueError};
use crate::route::Lookup;
use crate::server::{App, AppContext};
use crate::sink::capture::Captured;
use crate::verify::Inbound;
use crate::worker::{Handled, Worker};

/// What came out of a case.
#[derive(Debug, Clone)]
pub struct Actual {
    pub status: u16,
    /// Response headers, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub outcome: FixtureOutcome,
    /// Why the event was dropped or dead-lettered.
    pub reason: Option<String>,
    /// Rows per sink, in the order written, over all repeats.
    pub sinks: BTreeMap<String, Vec<Value>>,
    /// Connection requests, `METHOD url`, over all repeats.
    pub calls: Vec<String>,
    /// Alerts raised, over all repeats.
    pub alerts: Vec<String>,
}

impl Actual {
    /// A response header's values joined by `, `, as HTTP reads repeated headers.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// The worker's outcomes under replay: nothing is re-sent on a timer (the runner re-handles a
/// retried delivery at once), dead letters are kept with their reason.
#[derive(Default)]
struct Ledger {
    dead: Mutex<Vec<String>>,
}

impl Outcomes for Ledger {
    fn name(&self) -> &str {
        "replay"
    }
    fn ack<'a>(&'a self, _: &'a Delivery) -> crate::queue::QueueFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn retry<'a>(&'a self, _: &'a Delivery, _: Duration) -> crate::queue::QueueFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn dead_letter<'a>(
        &'a self,
        _: &'a Delivery,
        reason: &'a str,
    ) -> crate::queue::QueueFuture<'a> {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reason.to_string());
        Box::pin(async { Ok(()) })
    }
}

/// Why a case could not be run: a mistake in the fixture, said as its author fixes it, or what
/// stopped the run, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{0} is not an RFC 3339 time")]
    Time(String),
    #[error("the app")]
    App(#[source] crate::server::BuildError),
    #[error("the queue")]
    Queue(#[source] QueueError),
    #[error("no request was sent")]
    NoRequest,
    #[error("the answer for {0} has both `json` and `text`")]
    BothBodies(String),
    #[error("the JSON body")]
    Json(#[source] serde_json::Error),
    #[error("cannot read {path}")]
    ReadBody {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the request")]
    Request(#[source] salvo::hyper::http::Error),
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    #[error("header `{0}` has a value that cannot be sent")]
    HeaderValue(String),
    #[error("`sign: true`, but pipeline `{0}` has no `verify` section")]
    NoVerify(String),
}

/// Run `fixture` (from `file`) against `project`.
pub async fn run(
    project: &Project,
    plan: crate::plan::Plan,
    fixture: &Fixture,
    file: &Path,
) -> Result<Actual, CaseError> {
    let clock_ms = millis(fixture.clock.as_deref().unwrap_or(DEFAULT_CLOCK))
        .ok_or_else(|| CaseError::Time("`clock`".into()))?;
    let mut project = project.clone();
    project.settings.redis_url = None;
    project.settings.database_url = None;
    let captured = Arc::new(Captured::default());
    let (backing, standin, alerts) = standins(&fixture.connections, clock_ms)?;
    let mut app = App::build_in(
        project,
        plan,
        AppContext {
            clock: crate::clock::Clock::frozen(clock_ms),
            sinks: crate::sink::SinkTarget::Capture(captured.clone()),
            record: None,
            connections: Some(backing),
            memory_queues: Vec::new(),
            console_samples: None,
        },
    )
    .map_err(CaseError::App)?;
    let ledger = Arc::new(Ledger::default());
    for q in app.routes.iter_mut().filter_map(|r| r.queued.as_mut()) {
        let w = &q.worker;
        q.worker = Arc::new(Worker {
            outcomes: ledger.clone(),
            program: w.program.clone(),
            sinks: w.sinks.clone(),
            options: w.options,
            archive: None,
        });
    }
    let app = Arc::new(app);
    let chain = crate::server::chain(app.clone());
    let (body, content_type) = body_bytes(fixture, file)?;
    let r = &fixture.request;
    let pipeline = match app.project.routes.lookup(Some(r.method), &r.path) {
        Lookup::Found { pipeline, .. } => Some(pipeline),
        _ => None,
    };
    let queued = pipeline.is_some_and(|p| app.routes[p].queued.is_some());
    let prepared = prepare(&app, fixture, pipeline, body, content_type, clock_ms)?;
    let mut last = None;
    for _ in 0..fixture.repeat.max(1) {
        let mut req = prepared.request()?;
        let before = CountersBefore::of(&app, &captured, &ledger);
        let mut res = salvo::Response::new();
        salvo::FlowCtrl::new(chain.clone())
            .call_next(&mut req, &mut salvo::Depot::new(), &mut res)
            .await;
        let status = res.status_code.map_or(200, |s| s.as_u16());
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response_body(res.take_body());
        let handled = drain(&app).await.map_err(CaseError::Queue)?;
        let (outcome, reason) = outcome(
            &app, queued, status, &body, handled, &before, &captured, &ledger,
        );
        last = Some(Actual {
            status,
            headers,
            body,
            outcome,
            reason,
            sinks: BTreeMap::new(),
            calls: Vec::new(),
            alerts: Vec::new(),
        });
    }
    let mut actual = last.ok_or(CaseError::NoRequest)?;
    for b in captured.batches() {
        actual.sinks.entry(b.sink).or_default().extend(b.rows);
    }
    actual.calls = standin.asked();
    actual.alerts = alerts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(actual)
}

type Alerts = Arc<std::sync::Mutex<Vec<String>>>;

/// The fixture's stand-ins as what connections send through, read tokens from and look
/// tenants up in; the stand-in network (what was asked of it) and the alerts raised.
fn standins(
    s: &crate::fixture::Standins,
    clock_ms: i64,
) -> Result<(Backing, Arc<Standin>, Alerts), CaseError> {
    let mut answers = Vec::new();
    for a in &s.answers {
        let body = match (&a.json, &a.text) {
            (Some(j), None) => Bytes::from(j.to_string()),
            (None, Some(t)) => Bytes::from(t.clone()),
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => {
                return Err(CaseError::BothBodies(a.url.clone()));
            }
        };
        answers.push(Canned {
            method: a.method.as_str().to_string(),
            url: a.url.clone(),
            status: a.status,
            body,
            delay: a.delay.map_or(Duration::ZERO, |d| d.0),
            times: a.times,
        });
    }
    let mut tokens = Vec::new();
    for t in &s.tokens {
        let expires_at = match &t.expires_at {
            Some(at) => Some(
                millis(at)
                    .ok_or_else(|| {
                        CaseError::Time(format!("`expires_at` of {}'s token", t.tenant))
                    })?
                    .div_euclid(1000),
            ),
            None => None,
        };
        tokens.push((
            (t.provider.clone(), t.tenant.clone()),
            StoredConnection {
                access_token: t.access_token.clone(),
                refresh_token: t.refresh_token.clone(),
                expires_at,
                disconnected: t
                    .disconnected
                    .then(|| "disconnected before the case".to_string()),
            },
        ));
    }
    let directory = s
        .tenants
        .iter()
        .map(|a| ((a.source.clone(), a.id.clone()), a.tenant.clone()))
        .collect();
    let standin = Arc::new(Standin::new(answers));
    let alerts: Alerts = Arc::default();
    let raised = alerts.clone();
    let backing = Backing {
        transport: standin.clone(),
        tokens: Some(Arc::new(MemoryTokens::new(tokens))),
        directory: Some(Arc::new(MemoryTenants(directory))),
        alert: Arc::new(move |text| raised.lock().unwrap_or_else(|e| e.into_inner()).push(text)),
        clock_ms: Some(clock_ms),
    };
    Ok((backing, standin, alerts))
}

/// The body bytes and the content type its kind implies.
fn body_bytes(fixture: &Fixture, file: &Path) -> Result<(Bytes, Option<&'static str>), CaseError> {
    Ok(match &fixture.request.body {
        None => (Bytes::new(), None),
        Some(Body::Json(v)) => (
            Bytes::from(serde_json::to_vec(v).map_err(CaseError::Json)?),
            Some("application/json"),
        ),
        Some(Body::Text(t)) => (Bytes::from(t.clone()), Some("text/plain; charset=utf-8")),
        Some(Body::Form(fields)) => {
            let mut enc = form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                for value in v.values() {
                    enc.append_pair(k, value);
                }
            }
            (
                Bytes::from(enc.finish()),
                Some("application/x-www-form-urlencoded"),
            )
        }
        Some(Body::File(rel)) => {
            let path = file.parent().unwrap_or(Path::new(".")).join(rel);
            let bytes = std::fs::read(&path).map_err(|source| CaseError::ReadBody {
                path: path.display().to_string(),
                source,
            })?;
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => "application/json",
                Some("form") => "application/x-www-form-urlencoded",
                Some("xml") => "text/xml",
                Some("txt") => "text/plain; charset=utf-8",
                _ => "application/octet-stream",
            };
            (Bytes::from(bytes), Some(kind))
        }
        Some(Body::Size(n)) => (
            Bytes::from(vec![b'x'; usize::try_from(*n).unwrap_or(usize::MAX)]),
            Some("application/octet-stream"),
        ),
    })
}

/// The request of a case, built (and signed) once and sent `repeat` times.
struct Prepared {
    method: &'static str,
    path_and_query: String,
    headers: HeaderMap,
    peer: IpAddr,
    body: Bytes,
}

impl Prepared {
    /// A fresh copy of the request, as the server will see it.
    fn request(&self) -> Result<salvo::Request, CaseError> {
        let mut builder = salvo::hyper::Request::builder()
            .method(self.method)
            .uri(&self.path_and_query);
        if let Some(h) = builder.headers_mut() {
            *h = self.headers.clone();
        }
        let hyper_req = builder
            .body(ReqBody::Once(self.body.clone()))
            .map_err(CaseError::Request)?;
        let mut req = salvo::Request::from_hyper(hyper_req, salvo::http::uri::Scheme::HTTP);
        *req.remote_addr_mut() = std::net::SocketAddr::new(self.peer, 40000).into();
        Ok(req)
    }
}

/// The request the fixture describes, signed by `pipeline`'s verifier when it asks.
fn prepare(
    app: &App,
    fixture: &Fixture,
    pipeline: Option<usize>,
    body: Bytes,
    content_type: Option<&'static str>,
    clock_ms: i64,
) -> Result<Prepared, CaseError> {
    let r = &fixture.request;
    let mut path_and_query = r.path.clone();
    if !r.query.is_empty() {
        let mut enc = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &r.query {
            for value in v.values() {
                enc.append_pair(k, value);
            }
        }
        path_and_query = format!("{path_and_query}?{}", enc.finish());
    }
    let mut headers = HeaderMap::new();
    for (name, v) in &r.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CaseError::HeaderName(name.clone()))?;
        for value in v.values() {
            let value = HeaderValue::from_str(value)
                .map_err(|_| CaseError::HeaderValue(name.to_string()))?;
            headers.append(name.clone(), value);
        }
    }
    if !headers.contains_key("host") {
        headers.insert("host", HeaderValue::from_static("localhost"));
    }
    if let Some(ct) = content_type
        && !headers.contains_key("content-type")
    {
        headers.insert("content-type", HeaderValue::from_static(ct));
    }
    if !headers.contains_key("content-length") {
        headers.insert("content-length", HeaderValue::from(body.len()));
    }
    let peer = r.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if let Some(at) = r.sign.when() {
        let now_ms = match at {
            Some(t) => millis(t).ok_or_else(|| CaseError::Time("`sign.at`".into()))?,
            None => clock_ms,
        };
        if let Some(pipeline) = pipeline {
            let Some(verifier) = &app.routes[pipeline].verifier else {
                return Err(CaseError::NoVerify(
                    app.project.pipelines[pipeline].config.name.clone(),
                ));
            };
            let url = app.public_url(peer, &headers, &path_and_query);
            let signed = verifier.sign(&Inbound {
                method: r.method.as_str(),
                url: &url,
                headers: &headers,
                body: &body,
                now: now_ms.div_euclid(1000),
            });
            for (name, value) in signed {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(n, v);
                }
            }
        }
    }
    Ok(Prepared {
        method: r.method.as_str(),
        path_and_query,
        headers,
        peer,
        body,
    })
}

fn response_body(body: ResBody) -> Bytes {
    match body {
        ResBody::Once(b) => b,
        ResBody::Chunks(chunks) => {
            let mut out = Vec::new();
            for c in chunks {
                out.extend_from_slice(&c);
            }
            Bytes::from(out)
        }
        _ => Bytes::new(),
    }
}

/// Counters read before a request, to tell what it caused.
struct CountersBefore {
    batches: usize,
    dead: usize,
    duplicates: u64,
}

impl CountersBefore {
    fn of(app: &App, captured: &Captured, ledger: &Ledger) -> CountersBefore {
        let mut dead = ledger.dead.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut duplicates = 0;
        for q in app.queues() {
            if let Queue::Memory(m) = &q.handle {
                dead += m.dead_count();
                duplicates += m.duplicates();
            }
        }
        CountersBefore {
            batches: captured.len(),
            dead,
            duplicates,
        }
    }
}

/// Process every queued event to its end (a retry is handled again at once, until the
/// pipeline's `max_attempts`); the last event's end state.
async fn drain(app: &App) -> Result<Option<Handled>, QueueError> {
    let mut last = None;
    for q in app.queues() {
        let Queue::Memory(m) = &q.handle else {
            continue;
        };
        while let Some(mut d) = m.try_next().await {
            loop {
                match q.worker.handle(&d).await? {
                    Handled::Retried { attempt } => d.attempts = attempt,
                    done => {
                        last = Some(done);
                        break;
                    }
                }
            }
        }
    }
    Ok(last)
}

/// What became of the request: an engine error answer names it; otherwise the queue does.
#[allow(clippy::too_many_arguments)]
fn outcome(
    app: &App,
    queued: bool,
    status: u16,
    body: &[u8],
    handled: Option<Handled>,
    before: &CountersBefore,
    captured: &Captured,
    ledger: &Ledger,
) -> (FixtureOutcome, Option<String>) {
    if let Some(o) = engine_error(status, body) {
        return (o, None);
    }
    if !queued {
        return (FixtureOutcome::Responded, None);
    }
    let after = CountersBefore::of(app, captured, ledger);
    if after.duplicates > before.duplicates {
        return (FixtureOutcome::Duplicate, None);
    }
    match handled {
        Some(Handled::Acked) => (FixtureOutcome::Written, None),
        Some(Handled::Dropped { reason }) => (FixtureOutcome::Dropped, Some(reason)),
        Some(Handled::DeadLettered { reason }) => (FixtureOutcome::DeadLettered, Some(reason)),
        // `ack: processed`: the answer came after the worker's attempt, recorded in place
        Some(Handled::Retried { .. }) | None => {
            if after.dead > before.dead {
                (FixtureOutcome::DeadLettered, last_dead_reason(app, ledger))
            } else if after.batches > before.batches {
                (FixtureOutcome::Written, None)
            } else {
                (FixtureOutcome::Dropped, None)
            }
        }
    }
}

fn last_dead_reason(app: &App, ledger: &Ledger) -> Option<String> {
    app.queues()
        .filter_map(|q| match &q.handle {
            Queue::Memory(m) => m.dead_letters().pop().map(|d| d.reason),
            Queue::Redis(_) => None,
        })
        .last()
        .or_else(|| {
            ledger
                .dead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last()
                .cloned()
        })
}

/// The engine's own error answers: `{"error": code, ...}` with the code's status.
fn engine_error(status: u16, body: &[u8]) -> Option<FixtureOutcome> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    Some(match (status, code) {
        (401, "unauthorized") => FixtureOutcome::Rejected,
        (429, "rate_limited") => FixtureOutcome::RateLimited,
        (413, "payload_too_large") => FixtureOutcome::TooLarge,
        (404, "not_found") => FixtureOutcome::NotFound,
        (405, "method_not_allowed") => FixtureOutcome::MethodNotAllowed,
        (503, "maintenance") => FixtureOutcome::Maintenance,
        (503, "unavailable") => FixtureOutcome::Unavailable,
        (400, "bad_request") => FixtureOutcome::BadRequest,
        _ => return None,
    })
}
