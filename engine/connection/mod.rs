//! Connections: the outbound services a pipeline declares (`connections:`), called by its
//! respond script while the caller waits, e.g. a Vapi tool call answered from the tenant's
//! Google Calendar.
//!
//! ```text
//! respond script: request("google_calendar", #{tenant, method, path, query, json, idempotent})
//!   (`request`, not `call`: Rhai reserves `call` for function pointers)
//!   inline attempt on the async thread? -> stop, run the script on a blocking thread instead
//!   (nothing was sent: a script has no effects before its first call)
//!   -> the declared connection (else a script error) -> URL = base_url + path, on its host and
//!      under its path (else a script error)
//!   -> credential: none | static bearer | the tenant's OAuth token (connection::token: stored,
//!      refreshed, coalesced)
//!   -> send within min(timeout, respond budget left - ANSWER_RESERVE); 401 -> refresh once,
//!      send again; idempotent and 429 / 5xx / timeout / no connection -> retry (`retries`,
//!      backoff) while the budget lasts
//!   -> #{ok, status, body, error, message}: the script words the caller's answer, including
//!      when the budget ran out (`error: "timeout"`) or the tenant is not connected
//! ```
//!
//! Scripts never get raw network access: `request` is the only way out, to declared connections
//! only. `tenant_of(source, id)` maps a payload's id to a tenant (`connection::tenant`).
//! `engine replay` stands the network, the token store and the tenant directory in with a
//! fixture's `connections` section ([`Backing`]).

mod answer;
mod error;
mod path;
pub mod tenant;
pub mod token;
pub mod token_store;
pub use answer::Answer;
use answer::{answer, out_of_time, token_failure};
pub use error::{CallError, ConnectionBuildError};
pub use path::encode_segment;
use path::url_for;
pub mod transport;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Position};
use serde_json::Value;

use crate::config::Project;
use crate::config::connection::{Auth, Connection};
use token::{TokenError, Tokens};
use transport::{NoAnswer, Outbound, Transport};

/// Time kept back from a call so the script can still word its answer.
pub const ANSWER_RESERVE: Duration = Duration::from_millis(50);

/// Raises an alert (Slack when configured; collected by replay).
pub type Alert = Arc<dyn Fn(String) + Send + Sync>;

/// What connections send through, read tokens from and look tenants up in.
#[derive(Clone)]
pub struct Backing {
    pub transport: Arc<dyn Transport>,
    /// `None`: no database (or no ENCRYPTION_KEY): every OAuth connection is "not connected".
    pub tokens: Option<Arc<dyn token::TokenStore>>,
    /// `None`: no database: `tenant_of` finds no one.
    pub directory: Option<Arc<dyn tenant::Directory>>,
    pub alert: Alert,
    /// The time tokens are judged at (Unix ms); `None` for the system clock.
    pub clock_ms: Option<i64>,
}

impl Backing {
    /// The network, `oauth_tokens` and `tenant_aliases` through `pool`, Slack alerts.
    pub fn live(
        project: &Project,
        pool: Option<&deadpool_postgres::Pool>,
    ) -> Result<Backing, ConnectionBuildError> {
        let keyring = project.ops.keyring().and_then(Result::ok);
        let tokens = match (pool, keyring) {
            (Some(pool), Some(keyring)) => Some(Arc::new(token::PostgresTokens {
                pool: pool.clone(),
                keyring,
            }) as Arc<dyn token::TokenStore>),
            _ => None,
        };
        Ok(Backing {
            transport: Arc::new(transport::Network::new()?),
            tokens,
            directory: pool.map(|p| {
                Arc::new(tenant::PostgresTenants::new(p.clone())) as Arc<dyn tenant::Directory>
            }),
            alert: Arc::new(|text: String| crate::ops::alerts::note(&text)),
            clock_ms: None,
        })
    }
}

/// One pipeline's connections, ready to call.
pub struct Connections {
    pipeline: String,
    each: BTreeMap<String, One>,
    directory: Option<Arc<dyn tenant::Directory>>,
    transport: Arc<dyn Transport>,
    clock_ms: Option<i64>,
}

struct One {
    base: url::Url,
    credential: Credential,
    timeout: Duration,
    retries: u32,
}

enum Credential {
    None,
    Bearer(String),
    /// The provider's name, and its tokens (`None` without a token store).
    OAuth(String, Option<Arc<Tokens>>),
}

/// Builds each pipeline's connections in turn; OAuth tokens are shared per provider across
/// pipelines (one refresh, one cache).
pub struct ConnectionsBuilder<'a> {
    backing: &'a Backing,
    providers: HashMap<String, Arc<Tokens>>,
}

impl<'a> ConnectionsBuilder<'a> {
    pub fn new(backing: &'a Backing) -> ConnectionsBuilder<'a> {
        ConnectionsBuilder {
            backing,
            providers: HashMap::new(),
        }
    }

    /// Pipeline `p`'s connections; `None` when it declares none.
    pub fn for_pipeline(
        &mut self,
        project: &Project,
        p: &crate::config::LoadedPipeline,
    ) -> Result<Option<Arc<Connections>>, ConnectionBuildError> {
        let declared = &p.config.connections;
        if declared.is_empty() {
            return Ok(None);
        }
        let backing = self.backing;
        let mut each = BTreeMap::new();
        for (name, c) in declared {
            let credential = match &c.auth {
                Auth::None => Credential::None,
                Auth::Bearer(token) => Credential::Bearer(token.clone()),
                Auth::Oauth(provider) => {
                    let tokens = match (&backing.tokens, self.providers.get(provider)) {
                        (_, Some(t)) => Some(t.clone()),
                        (None, None) => None,
                        (Some(store), None) => {
                            let t = Arc::new(Tokens::new(
                                provider,
                                client_of(project, provider)?,
                                store.clone(),
                                backing.transport.clone(),
                                backing.alert.clone(),
                            ));
                            self.providers.insert(provider.clone(), t.clone());
                            Some(t)
                        }
                    };
                    Credential::OAuth(provider.clone(), tokens)
                }
            };
            each.insert(name.clone(), one(&p.config.name, name, c, credential)?);
        }
        Ok(Some(Arc::new(Connections {
            pipeline: p.config.name.clone(),
            each,
            directory: backing.directory.clone(),
            transport: backing.transport.clone(),
            clock_ms: backing.clock_ms,
        })))
    }
}

fn one(
    pipeline: &str,
    name: &str,
    c: &Connection,
    credential: Credential,
) -> Result<One, ConnectionBuildError> {
    let base = url::Url::parse(c.base_url.trim_end_matches('/'))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ConnectionBuildError::BadBaseUrl {
            pipeline: pipeline.to_string(),
            name: name.to_string(),
        })?;
    Ok(One {
        base,
        credential,
        timeout: c.timeout.0,
        retries: c.retries,
    })
}

/// The token endpoint and client of the `oauth` pipeline named `provider`.
fn client_of(project: &Project, provider: &str) -> Result<token::Client, ConnectionBuildError> {
    let o = project
        .pipelines
        .iter()
        .find(|p| p.config.name == provider)
        .and_then(|p| p.config.oauth.as_ref())
        .ok_or_else(|| ConnectionBuildError::NoProvider(provider.to_string()))?;
    let token_url = o
        .token_url
        .clone()
        .or_else(|| o.provider.map(|p| p.token_url().to_string()))
        .ok_or_else(|| ConnectionBuildError::NoTokenUrl(provider.to_string()))?;
    Ok(token::Client {
        token_url: url::Url::parse(&token_url).map_err(|source| {
            ConnectionBuildError::BadTokenUrl {
                provider: provider.to_string(),
                source,
            }
        })?,
        client_id: o.client_id.clone(),
        client_secret: o.client_secret.clone(),
        client_auth: o.client_auth,
        timeout: o.timeout.0,
    })
}

/// A call, as a script asks for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Call {
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub json: Option<Value>,
    /// Safe to send twice (GET, HEAD, PUT, DELETE are without saying).
    pub idempotent: bool,
}

impl Connections {
    /// The names this pipeline declares.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.each.keys().map(String::as_str)
    }

    fn now_secs(&self) -> i64 {
        self.clock_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
            .div_euclid(1000)
    }

    /// Call connection `name`, answering by `deadline`. `Err` is a mistake in the script (an
    /// undeclared connection, a path off the connection's URL, no tenant for an OAuth one).
    pub async fn call(
        &self,
        name: &str,
        req: Call,
        deadline: Instant,
    ) -> Result<Answer, CallError> {
        let one = self.each.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            CallError::Unknown {
                name: name.to_string(),
                pipeline: self.pipeline.clone(),
                declared: known.join(", "),
            }
        })?;
        let url = url_for(&one.base, &req.path, &req.query)?;
        let started = Instant::now();
        let answer = self.send(name, one, &req, url, deadline).await?;
        let result = if answer.ok { "ok" } else { answer.error };
        metrics::counter!("engine_connection_calls_total", "connection" => name.to_string(), "result" => result).increment(1);
        metrics::histogram!("engine_connection_call_duration_seconds", "connection" => name.to_string())
            .record(started.elapsed().as_secs_f64());
        if !answer.ok {
            tracing::warn!(pipeline = %self.pipeline, connection = %name, status = answer.status, error = answer.error, reason = %answer.message, "connection call failed");
        }
        Ok(answer)
    }

    /// The bearer token a call carries: none, the connection's, or the tenant's OAuth token;
    /// `Err(answer)` when the tenant has none to give (not connected, disconnected, no time).
    async fn bearer(
        &self,
        name: &str,
        one: &One,
        tenant: Option<&str>,
        now: i64,
        deadline: Instant,
    ) -> Result<Result<Option<String>, Answer>, CallError> {
        Ok(match &one.credential {
            Credential::None => Ok(None),
            Credential::Bearer(t) => Ok(Some(t.clone())),
            Credential::OAuth(provider, tokens) => {
                let tenant = tenant.ok_or_else(|| CallError::NoTenant {
                    name: name.to_string(),
                    provider: provider.clone(),
                })?;
                let Some(tokens) = tokens else {
                    return Ok(Err(token_failure(
                        provider,
                        tenant,
                        TokenError::NotConnected,
                    )));
                };
                match tokens.access(tenant, None, now, deadline).await {
                    Ok(t) => Ok(Some(t)),
                    Err(e) => Err(token_failure(provider, tenant, e)),
                }
            }
        })
    }

    async fn send(
        &self,
        name: &str,
        one: &One,
        req: &Call,
        url: url::Url,
        deadline: Instant,
    ) -> Result<Answer, CallError> {
        let method = req.method.to_ascii_uppercase();
        let retryable = req.idempotent
            || matches!(
                method.as_str(),
                "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
            );
        let now = self.now_secs();
        let tenant = req.tenant.as_deref().filter(|t| !t.is_empty());
        let mut bearer = match self.bearer(name, one, tenant, now, deadline).await? {
            Ok(b) => b,
            Err(failed) => return Ok(failed),
        };
        let body = req.json.as_ref().map(|v| {
            (
                "application/json".to_string(),
                serde_json::to_vec(v).unwrap_or_default(),
            )
        });
        let mut attempt = 0;
        let mut refreshed = false;
        // A change (not a read) sent without an answer may have taken effect: once an attempt
        // timed out, running out of time is `unanswered`, so a script tells the caller what is
        // true ("the booking may already be made") instead of "it failed".
        let changes = !matches!(method.as_str(), "GET" | "HEAD");
        let mut sent_unanswered = false;
        let out_of_time = |sent_unanswered: bool| out_of_time(name, sent_unanswered && changes);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(5) {
                return Ok(out_of_time(sent_unanswered));
            }
            let mut headers = vec![("accept".to_string(), "application/json".to_string())];
            if let Some(b) = &bearer {
                headers.push(("authorization".into(), format!("Bearer {b}")));
            }
            let sent = self
                .transport
                .send(Outbound {
                    method: method.clone(),
                    url: url.clone(),
                    headers,
                    body: body.clone(),
                    timeout: one.timeout.min(left),
                })
                .await;
            let again = retryable && attempt < one.retries;
            match sent {
                Ok(r) if r.status == 401 && !refreshed => {
                    if let (Credential::OAuth(provider, Some(tokens)), Some(tenant), Some(stale)) =
                        (&one.credential, tenant, &bearer)
                    {
                        refreshed = true;
                        match tokens.access(tenant, Some(stale), now, deadline).await {
                            Ok(t) => bearer = Some(t),
                            Err(e) => return Ok(token_failure(provider, tenant, e)),
                        }
                        continue;
                    }
                    return Ok(answer(r.status, &r.body));
                }
                Ok(r) if (r.status == 429 || r.status >= 500) && again => {}
                Ok(r) => return Ok(answer(r.status, &r.body)),
                Err(NoAnswer::Timeout) if again => sent_unanswered = true,
                Err(_) if again => {}
                Err(NoAnswer::Timeout) => return Ok(out_of_time(true)),
                Err(NoAnswer::Failed(why)) => {
                    return Ok(Answer::failed("unavailable", 0, format!("`{name}`: {why}")));
                }
            }
            // back off 100 ms, 200 ms, ... with jitter, never past the deadline
            let pause = Duration::from_millis((100u64 << attempt.min(4)) + fastrand::u64(0..50));
            attempt += 1;
            if Instant::now() + pause >= deadline {
                return Ok(out_of_time(sent_unanswered));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The tenant `source`'s `id` belongs to, answered by `deadline`.
    pub async fn tenant_of(
        &self,
        source: &str,
        id: &str,
        deadline: Instant,
    ) -> Result<Option<String>, token::StoreError> {
        match &self.directory {
            Some(d) => d.lookup(source, id, deadline).await,
            None => Ok(None),
        }
    }
}

/// The connection names a script's text passes to `request("...")` as a literal, with their
/// 1-based line and column: what `engine validate` checks against the declared ones.
pub fn requested_in(text: &str) -> Vec<(String, usize, usize)> {
    static CALL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"\brequest\s*\(\s*"([^"\\]*)""#).expect("valid")
    });
    CALL.captures_iter(text)
        .filter_map(|c| {
            let name = c.get(1)?;
            let before = &text[..name.start()];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            Some((name.as_str().to_string(), line, col))
        })
        .collect()
}

thread_local! {
    /// Set while a respond script runs on a blocking thread, where a call may wait.
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` (a respond script on a blocking thread) with connection calls allowed.
pub fn allow_waiting<T>(f: impl FnOnce() -> T) -> T {
    MAY_BLOCK.with(|b| b.set(true));
    let out = f();
    MAY_BLOCK.with(|b| b.set(false));
    out
}

/// Register `request(connection, call)` and `tenant_of(source, id)` on a respond script's engine.
pub fn register(engine: &mut Engine, connections: Option<Arc<Connections>>) {
    let c = connections.clone();
    engine.register_fn(
        "request",
        move |name: &str, req: rhai::Map| -> Result<Dynamic, Box<EvalAltResult>> {
            let (conns, handle) = ready(&c)?;
            let req = request_from(req).map_err(|e| script_error(e.to_string()))?;
            let answer = handle
                .block_on(conns.call(name, req, call_deadline()))
                .map_err(|e| script_error(e.to_string()))?;
            Ok(to_dynamic(answer))
        },
    );
    engine.register_fn("encode_segment", |value: &str| encode_segment(value));
    let c = connections;
    engine.register_fn(
        "tenant_of",
        move |source: &str, id: Dynamic| -> Result<Dynamic, Box<EvalAltResult>> {
            let Some(id) = id.into_immutable_string().ok().filter(|s| !s.is_empty()) else {
                return Ok(Dynamic::UNIT);
            };
            let (conns, handle) = ready(&c)?;
            match handle.block_on(conns.tenant_of(source, &id, call_deadline())) {
                Ok(Some(t)) => Ok(t.into()),
                Ok(None) => Ok(Dynamic::UNIT),
                Err(e) => {
                    tracing::warn!(
                        source,
                        error = &e as &dyn std::error::Error,
                        "tenant lookup failed"
                    );
                    Ok(Dynamic::UNIT)
                }
            }
        },
    );
}

/// When a call from the running script must have answered: the script's deadline less what the
/// answer needs after it (5 s outside a script's run).
fn call_deadline() -> Instant {
    crate::transform::sandbox::deadline()
        .map(|d| d.checked_sub(ANSWER_RESERVE).unwrap_or(d))
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(5))
}

/// The connections and a runtime to wait on, or why a call cannot be made here.
fn ready(
    c: &Option<Arc<Connections>>,
) -> Result<(&Arc<Connections>, tokio::runtime::Handle), Box<EvalAltResult>> {
    let conns = c
        .as_ref()
        .ok_or_else(|| script_error("this pipeline declares no `connections`".into()))?;
    if !MAY_BLOCK.with(Cell::get) {
        // the inline attempt stops here, before anything is sent, and runs again where it may wait
        return Err(Box::new(EvalAltResult::ErrorTerminated(
            "a connection call waits: run on a blocking thread".into(),
            Position::NONE,
        )));
    }
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| script_error("connection calls need the engine's runtime".into()))?;
    Ok((conns, handle))
}

fn script_error(message: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(message.into(), Position::NONE))
}

fn request_from(map: rhai::Map) -> Result<Call, CallError> {
    let text = |key: &str| -> Result<Option<String>, CallError> {
        match map.get(key) {
            None => Ok(None),
            Some(v) if v.is_unit() => Ok(None),
            Some(v) => v
                .clone()
                .into_string()
                .map(Some)
                .map_err(|_| CallError::NotAString(key.to_string())),
        }
    };
    let path = text("path")?.ok_or(CallError::NoPath)?;
    let mut query = Vec::new();
    if let Some(q) = map.get("query").filter(|q| !q.is_unit()) {
        let q = q.read_lock::<rhai::Map>().ok_or(CallError::QueryNotAMap)?;
        for (k, v) in q.iter() {
            query.push((k.to_string(), v.to_string()));
        }
    }
    let json = match map.get("json").filter(|j| !j.is_unit()) {
        Some(j) => Some(
            rhai::serde::from_dynamic::<Value>(j).map_err(|e| CallError::Json(e.to_string()))?,
        ),
        None => None,
    };
    Ok(Call {
        tenant: text("tenant")?,
        method: text("method")?.unwrap_or_else(|| "GET".into()),
        path,
        query,
        json,
        idempotent: map
            .get("idempotent")
            .and_then(|v| v.as_bool().ok())
            .unwrap_or(false),
    })
}

fn to_dynamic(a: Answer) -> Dynamic {
    let mut m = rhai::Map::new();
    m.insert("ok".into(), a.ok.into());
    m.insert("status".into(), (a.status as i64).into());
    m.insert(
        "body".into(),
        rhai::serde::to_dynamic(&a.body).unwrap_or(Dynamic::UNIT),
    );
    m.insert("error".into(), a.error.into());
    m.insert("message".into(), a.message.into());
    Dynamic::from_map(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_on_the_connection() {
        let base = url::Url::parse("https://www.googleapis.com/calendar/v3").unwrap();
        let ok = url_for(&base, "/freeBusy", &[]).unwrap();
        assert_eq!(
            ok.as_str(),
            "https://www.googleapis.com/calendar/v3/freeBusy"
        );
        let q = url_for(
            &base,
            "/calendars/primary/events",
            &[("maxResults".into(), "5".into())],
        )
        .unwrap();
        assert_eq!(q.query(), Some("maxResults=5"));
        for bad in [
            "/../../admin",
            "/%2e%2e/%2e%2e/admin",
            "//evil.example/x",
            "@evil.example/x",
            "/x?y=1",
            "/x#f",
            "/\\evil",
            "freeBusy",
            "/calendars/x/../../admin",
            "/./freeBusy",
            "/..%2f..%2fadmin",
            "/calendars/%2E%2E/events",
            "/calendars/a%2Fb/events",
            "/calendars/a%5cb/events",
        ] {
            assert!(url_for(&base, bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_connection_names_are_found_with_their_position() {
        let text =
            "let a = 1;\nlet r = request(\"google_calendar\", #{});\n  request( \"other\" , #{})";
        assert_eq!(
            requested_in(text),
            [
                ("google_calendar".to_string(), 2, 18),
                ("other".to_string(), 3, 13)
            ]
        );
        assert!(requested_in("my_request(\"x\")").is_empty());
    }

    #[test]
    fn answers_are_classified_and_json_is_parsed() {
        let a = answer(200, br#"{"kind":"calendar#freeBusy"}"#);
        assert!(a.ok && a.error.is_empty());
        assert_eq!(a.body["kind"], "calendar#freeBusy");
        assert_eq!(answer(409, b"{}").error, "refused");
        assert_eq!(answer(503, b"oops").body, Value::String("oops".into()));
        assert_eq!(answer(429, b"").error, "unavailable");
    }

    #[test]
    fn a_script_request_becomes_a_call() {
        let engine = Engine::new();
        let map: rhai::Map = engine
            .eval(r#"#{tenant: "org-1", method: "post", path: "/freeBusy", query: #{a: 1}, json: #{items: [#{id: "primary"}]}, idempotent: true}"#)
            .unwrap();
        let r = request_from(map).unwrap();
        assert_eq!(r.tenant.as_deref(), Some("org-1"));
        assert_eq!(r.query, vec![("a".to_string(), "1".to_string())]);
        assert_eq!(r.json.unwrap()["items"][0]["id"], "primary");
        assert!(r.idempotent);
        let no_path: rhai::Map = engine.eval("#{method: \"GET\"}").unwrap();
        assert!(request_from(no_path).is_err());
    }
}
