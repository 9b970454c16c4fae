//! Synchronous responses: what the caller gets back, before the event goes to the queue.
//!
//! Some providers want an answer in the HTTP response: Twilio voice wants TwiML, Vapi's
//! `assistant-request` wants an assistant (within 7.5 s), Vapi `tool-calls` want `results`. A
//! pipeline's `respond` is one of:
//!
//! - static: `status`, `content_type`, `headers`, `body`;
//! - templated: `template` with `{{ expression }}` holes, each a Rhai expression over `event`,
//!   its value escaped for the answer's content type (XML/HTML: `& < > " '` as entities; JSON:
//!   as the inside of a JSON string), so a caller's field cannot add elements to TwiML or
//!   break out of a JSON string; `{{{ expression }}}` inserts the value as it is;
//! - computed: a Rhai `script` (or `inline`) returning a string (the body), a map (sent as JSON),
//!   or `#{status, content_type, headers, body}`.
//!
//! Templates and scripts run under `script_limits.respond_timeout_ms`: first where the request
//! is, on the async thread, with a budget of [`INLINE_BUDGET`] (most respond scripts take tens of
//! microseconds, and a hand-off to a blocking thread costs more than that); a run that needs
//! longer, or a body over [`INLINE_BODY_MAX`], runs again on a blocking thread with the full
//! timeout, so a slow script never stalls other requests for long. Respond scripts have no side
//! effects before their first connection `request`, and `request` never runs inline (it stops the
//! inline attempt before anything is sent), so a second run is safe. A `request` waits on the
//! blocking thread, within what is left of the timeout (`crate::connection`). Any failure
//! answers the `fallback` (default: 500 with a
//! generic JSON error) and is logged with the script position; the caller never sees internals.
//!
//! Headers that frame the answer or belong to the connection (`content-length`,
//! `transfer-encoding`, `connection`, ...), `set-cookie` and `location` are never set by a
//! pipeline: refused in `respond.headers` by `engine validate`, and a script returning one
//! fails (the fallback is sent). A script choosing the framing could desynchronise a kept-alive
//! connection; a cookie or redirect from a webhook answer would act on the engine's own origin.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rhai::{AST, Dynamic, Engine, Scope};

use crate::config::Pipeline;
use crate::config::pipeline::{Fallback, Respond};
use crate::request_field::RequestFields;
use crate::transform::{EventInput, ScriptError, ScriptSource, compile, sandbox};

/// How long a respond script may run on the async thread before it is stopped and run again on
/// a blocking thread.
pub const INLINE_BUDGET: Duration = Duration::from_micros(250);

/// Bodies larger than this are not parsed on the async thread at all.
pub const INLINE_BODY_MAX: usize = 64 * 1024;

/// Why an inline attempt gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inline {
    /// Too big or too slow to run here: run [`Responder::compute`] on a blocking thread.
    Elsewhere,
    /// The script failed (the reason, for the log): send the fallback.
    Failed(String),
}

/// A response ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

enum Kind {
    Static,
    Template(Vec<Piece>),
    Script(std::sync::Arc<AST>, String),
}

enum Piece {
    Text(String),
    /// A hole: its compiled expression, its label for errors, and how its value is written.
    Expr(std::sync::Arc<AST>, String, Escape),
}

/// How a template hole's value is written into the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `{{{ }}}`, or a content type with no escaping rule (text/plain): as it is.
    Raw,
    /// XML and HTML: `& < > " '` as character references.
    Markup,
    /// JSON: as the inside of a JSON string (quotes, backslashes and control characters escaped).
    JsonString,
}

impl Escape {
    /// The escaping a `{{ }}` hole gets in an answer of `content_type`.
    pub fn for_content_type(content_type: &str) -> Escape {
        let ct = content_type.to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence.ends_with("xml") || essence.ends_with("html") {
            Escape::Markup
        } else if essence.ends_with("json") {
            Escape::JsonString
        } else {
            Escape::Raw
        }
    }

    /// `value` written into the answer.
    pub fn write(self, value: &str, out: &mut String) {
        match self {
            Escape::Raw => out.push_str(value),
            Escape::Markup => {
                for c in value.chars() {
                    match c {
                        '&' => out.push_str("&amp;"),
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        '"' => out.push_str("&quot;"),
                        '\'' => out.push_str("&#39;"),
                        c => out.push(c),
                    }
                }
            }
            Escape::JsonString => {
                let quoted = serde_json::Value::String(value.to_string()).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
    }
}

/// Response headers no pipeline sets: the server frames the answer and owns the connection; a
/// cookie or a redirect would act on the engine's own origin (the console's); the content
/// security headers keep answers sandboxed.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authenticate",
    "host",
    "set-cookie",
    "location",
    "content-security-policy",
    "x-content-type-options",
];

/// Why a response header may not be set, or `None` when it may.
pub fn header_refusal(name: &str) -> Option<String> {
    FORBIDDEN_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
        .then(|| format!("the header `{name}` cannot be set by a pipeline (the server frames answers and owns the connection; cookies, redirects and the content security headers stay the engine's): remove it"))
}

/// A pipeline's compiled `respond`.
pub struct Responder {
    respond: Respond,
    kind: Kind,
    engine: Arc<Engine>,
    /// The sandbox's limits, for an engine with connections ([`Responder::with_connections`]).
    limits: crate::config::transform::ScriptLimits,
    vars: Dynamic,
    timeout: Duration,
}

impl Responder {
    /// Compile `p.respond` (the build step, `crate::plan`); its scripts reach no connection
    /// until [`Responder::with_connections`].
    pub fn compile(
        p: &Pipeline,
        pipeline_file: &Path,
        root: &Path,
    ) -> Result<Responder, Vec<ScriptError>> {
        let r = &p.respond;
        let mut engine = sandbox::engine(&p.script_limits);
        crate::connection::register(&mut engine, None);
        let engine = Arc::new(engine);
        let set = [
            r.body.is_some(),
            r.template.is_some(),
            r.script.is_some(),
            r.inline.is_some(),
        ];
        let computed = set[1..].iter().filter(|x| **x).count();
        // with `when`, `body` is the answer to the requests the script is not for
        let exclusive = if r.when.is_some() {
            computed
        } else {
            computed + usize::from(set[0])
        };
        if exclusive > 1 {
            return Err(vec![ScriptError {
                script: None,
                pointer: "/respond".into(),
                at: None,
                message: "use one of `body`, `template`, `script` or `inline`".into(),
            }]);
        }
        if r.when.is_some() && computed == 0 {
            return Err(vec![ScriptError {
                script: None,
                pointer: "/respond/when".into(),
                at: None,
                message: "`when` chooses the requests a `template`, `script` or `inline` answers, and this respond has none: add one, or remove `when`".into(),
            }]);
        }
        let refused: Vec<ScriptError> = r
            .headers
            .keys()
            .filter_map(|name| {
                header_refusal(name).map(|message| ScriptError {
                    script: None,
                    pointer: format!("/respond/headers/{}", crate::yaml::escape_token(name)),
                    at: None,
                    message,
                })
            })
            .collect();
        if !refused.is_empty() {
            return Err(refused);
        }
        let kind = if let Some(t) = &r.template {
            let escape = Escape::for_content_type(&r.content_type);
            Kind::Template(template(&engine, t, escape, pipeline_file, root)?)
        } else if let Some((source, pointer)) = script_source(r) {
            let (ast, label) = compile(&engine, pipeline_file, root, source, pointer, false)
                .map_err(|e| vec![e])?;
            Kind::Script(ast, label)
        } else {
            Kind::Static
        };
        Ok(Responder {
            respond: r.clone(),
            kind,
            engine,
            limits: p.script_limits,
            vars: rhai::serde::to_dynamic(&p.vars)
                .unwrap_or_else(|_| Dynamic::from_map(rhai::Map::new())),
            timeout: Duration::from_millis(p.script_limits.respond_timeout_ms),
        })
    }

    /// The same compiled response, its scripts calling `connections` (`request`, `tenant_of`):
    /// a new sandbox engine with them registered; the compiled scripts are kept.
    pub fn with_connections(
        mut self,
        connections: Option<Arc<crate::connection::Connections>>,
    ) -> Responder {
        let mut engine = sandbox::engine(&self.limits);
        crate::connection::register(&mut engine, connections);
        self.engine = Arc::new(engine);
        self
    }

    /// Whether answering needs the event (a template or script).
    pub fn is_computed(&self) -> bool {
        !matches!(self.kind, Kind::Static)
    }

    /// Whether the template or script answers this request: computed, and `when` (if any)
    /// matches its field. Otherwise [`Responder::static_reply`] answers it.
    pub fn computes_for(&self, fields: &RequestFields<'_>) -> bool {
        self.is_computed()
            && self
                .respond
                .when
                .as_ref()
                .is_none_or(|w| fields.get(&w.field).is_some_and(|v| w.values.contains(&v)))
    }

    /// The static answer.
    pub fn static_reply(&self) -> Reply {
        let r = &self.respond;
        Reply {
            status: r.status,
            content_type: r.content_type.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: r.body_text().to_string(),
        }
    }

    /// The fallback answer.
    pub fn fallback(&self) -> Reply {
        let f = self.respond.fallback.clone().unwrap_or(Fallback {
            status: 500,
            content_type: "application/json".into(),
            body: r#"{"error":"respond_failed","message":"The response could not be computed."}"#
                .into(),
        });
        Reply {
            status: f.status,
            content_type: f.content_type,
            headers: Vec::new(),
            body: f.body,
        }
    }

    /// Compute the answer for `input`. Blocking (call on a blocking thread). `Err` carries the
    /// reason, for the log; the caller sends [`Responder::fallback`].
    pub fn compute(&self, input: &EventInput) -> Result<Reply, String> {
        crate::connection::allow_waiting(|| self.compute_within(input, self.timeout))
            .map_err(|(_, reason)| reason)
    }

    /// Compute the answer on the calling (async) thread within [`INLINE_BUDGET`], when the body is
    /// small enough; [`Inline::Elsewhere`] when it must run on a blocking thread instead.
    pub fn compute_inline(&self, input: &EventInput) -> Result<Reply, Inline> {
        if input.body.len() > INLINE_BODY_MAX || self.timeout <= INLINE_BUDGET {
            return Err(Inline::Elsewhere);
        }
        self.compute_within(input, INLINE_BUDGET)
            .map_err(|(over_budget, reason)| match over_budget {
                true => Inline::Elsewhere,
                false => Inline::Failed(reason),
            })
    }

    /// The answer within `budget`; `Err((over budget, reason))`.
    fn compute_within(
        &self,
        input: &EventInput,
        budget: Duration,
    ) -> Result<Reply, (bool, String)> {
        let body = input
            .parsed_body()
            .map_err(|e| (false, crate::diagnostics::chain(&e)))?;
        let event = input.to_dynamic(body, &self.vars);
        let over_budget = |e: &rhai::EvalAltResult| matches!(e.unwrap_inner(), rhai::EvalAltResult::ErrorTerminated(token, _) if !sandbox::over_memory(token));
        sandbox::with_deadline(budget, || {
            let mut scope = Scope::new();
            scope.push_constant_dynamic("event", event);
            match &self.kind {
                Kind::Static => Ok(self.static_reply()),
                Kind::Template(pieces) => {
                    let mut out = String::new();
                    for p in pieces {
                        match p {
                            Piece::Text(t) => out.push_str(t),
                            Piece::Expr(ast, label, escape) => {
                                let v = self
                                    .engine
                                    .eval_ast_with_scope::<Dynamic>(&mut scope, ast)
                                    .map_err(|e| {
                                        (over_budget(&e), sandbox::explain(&e, label).1)
                                    })?;
                                if !v.is_unit() {
                                    escape.write(&v.to_string(), &mut out);
                                }
                            }
                        }
                    }
                    Ok(Reply {
                        body: out,
                        ..self.static_reply()
                    })
                }
                Kind::Script(ast, label) => {
                    let v = self
                        .engine
                        .eval_ast_with_scope::<Dynamic>(&mut scope, ast)
                        .map_err(|e| (over_budget(&e), sandbox::explain(&e, label).1))?;
                    self.reply_from(v, label).map_err(|e| (false, e))
                }
            }
        })
    }

    fn reply_from(&self, v: Dynamic, label: &str) -> Result<Reply, String> {
        let base = self.static_reply();
        if v.is_string() {
            return Ok(Reply {
                body: v.to_string(),
                ..base
            });
        }
        let json: serde_json::Value = rhai::serde::from_dynamic(&v)
            .map_err(|e| format!("{label}: the result cannot be sent: {e}"))?;
        const FIELDS: [&str; 4] = ["status", "content_type", "headers", "body"];
        let descriptor = json
            .as_object()
            .filter(|m| m.contains_key("body") && m.keys().all(|k| FIELDS.contains(&k.as_str())));
        let Some(d) = descriptor else {
            return Ok(Reply {
                content_type: "application/json".into(),
                body: json.to_string(),
                ..base
            });
        };
        let status = match d.get("status") {
            None => base.status,
            Some(s) => s
                .as_u64()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| format!("{label}: `status` must be a number from 200 to 599"))?
                as u16,
        };
        let (content_type, body) = match &d["body"] {
            serde_json::Value::String(s) => (base.content_type.clone(), s.clone()),
            other => ("application/json".to_string(), other.to_string()),
        };
        let content_type = d
            .get("content_type")
            .and_then(serde_json::Value::as_str)
            .map_or(content_type, str::to_string);
        let mut headers = base.headers;
        if let Some(h) = d.get("headers").and_then(serde_json::Value::as_object) {
            for (k, v) in h {
                if let Some(why) = header_refusal(k) {
                    return Err(format!("{label}: {why}"));
                }
                headers.push((
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                ));
            }
        }
        Ok(Reply {
            status,
            content_type,
            headers,
            body,
        })
    }
}

/// Split `text` at `{{ ... }}` and compile each hole.
/// A respond script from its file or inline text, with the pointer errors are located at.
fn script_source(r: &Respond) -> Option<(ScriptSource<'_>, &'static str)> {
    if let Some(f) = &r.script {
        Some((ScriptSource::File(f), "/respond/script"))
    } else {
        r.inline
            .as_deref()
            .map(|t| (ScriptSource::Inline(t), "/respond/inline"))
    }
}

/// `{{ expr }}` holes are written with `escape`; `{{{ expr }}}` as they are.
fn template(
    engine: &Engine,
    text: &str,
    escape: Escape,
    file: &Path,
    root: &Path,
) -> Result<Vec<Piece>, Vec<ScriptError>> {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        pieces.push(Piece::Text(rest[..open].to_string()));
        let raw = rest[open..].starts_with("{{{");
        let (opener, closer) = if raw { ("{{{", "}}}") } else { ("{{", "}}") };
        let Some(close) = rest[open + opener.len()..]
            .find(closer)
            .map(|c| c + opener.len())
        else {
            errors.push(ScriptError {
                script: None,
                pointer: "/respond/template".into(),
                at: None,
                message: format!("a `{opener}` in the template is not closed by `{closer}`"),
            });
            break;
        };
        let expr = &rest[open + opener.len()..open + close];
        let hole_escape = if raw { Escape::Raw } else { escape };
        match compile(
            engine,
            file,
            root,
            ScriptSource::Inline(expr.trim()),
            "/respond/template",
            true,
        ) {
            Ok((ast, label)) => pieces.push(Piece::Expr(ast, label, hole_escape)),
            Err(e) => errors.push(e),
        }
        rest = &rest[open + close + closer.len()..];
    }
    pieces.push(Piece::Text(rest.to_string()));
    if errors.is_empty() {
        Ok(pieces)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responder(respond: serde_json::Value) -> Responder {
        let p: Pipeline = serde_json::from_value(serde_json::json!({
            "name": "p",
            "route": {"method": "POST", "path": "/p"},
            "script_limits": {"max_operations": 1_000_000_000_000u64, "respond_timeout_ms": 2000},
            "respond": respond,
        }))
        .unwrap();
        Responder::compile(&p, Path::new("p.yaml"), Path::new(".")).unwrap()
    }

    fn input(body: &str) -> EventInput {
        crate::transform::event::sample("application/json", body)
    }

    /// Without a `fallback`, a failed answer is the engine's catalogue's `respond_failed`
    /// (docs/operations.md's answers), status and body, though this module writes it itself.
    #[test]
    fn the_default_fallback_is_the_catalogues_respond_failed() {
        let r = responder(serde_json::json!({"inline": "throw \"no\""}));
        let reply = r.fallback();
        let catalogue = crate::server::answer::ErrorAnswer::RespondFailed;
        assert_eq!(reply.status, catalogue.status().as_u16());
        assert_eq!(reply.content_type, "application/json");
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body, catalogue.body());
    }

    #[test]
    fn a_quick_script_answers_inline() {
        let r = responder(serde_json::json!({"inline": "#{ok: event.body.n + 1}"}));
        let reply = r.compute_inline(&input(r#"{"n":41}"#)).unwrap();
        assert_eq!(reply.body, r#"{"ok":42}"#);
        assert_eq!(reply, r.compute(&input(r#"{"n":41}"#)).unwrap());
    }

    #[test]
    fn a_slow_script_goes_to_a_blocking_thread_and_finishes_there() {
        // about a million operations: well over the inline budget, well under the timeout
        let r = responder(serde_json::json!({
            "inline": "let n = 0; for i in 0..200000 { n += i; } `${n}`"
        }));
        assert_eq!(r.compute_inline(&input("{}")), Err(Inline::Elsewhere));
        assert_eq!(r.compute(&input("{}")).unwrap().body, "19999900000");
    }

    #[test]
    fn a_failing_script_fails_inline_with_its_reason() {
        let r = responder(serde_json::json!({"inline": "throw \"no\""}));
        match r.compute_inline(&input("{}")) {
            Err(Inline::Failed(reason)) => assert!(reason.contains("no"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let bad_body = r.compute_inline(&input("{nope"));
        assert!(matches!(bad_body, Err(Inline::Failed(r)) if r.contains("not valid JSON")));
    }

    fn form_input(body: &str) -> EventInput {
        crate::transform::event::sample("application/x-www-form-urlencoded", body)
    }

    #[test]
    fn template_holes_are_escaped_for_the_content_type() {
        // the TwiML injection: a caller's From closing <Say> and dialling a number
        let r = responder(serde_json::json!({
            "content_type": "text/xml",
            "template": "<Response><Say>Hello {{ event.body.From }}</Say></Response>",
        }));
        let hostile = "From=%3C%2FSay%3E%3CDial%3E%2B19005550100%3C%2FDial%3E%3CSay%3E";
        let reply = r.compute(&form_input(hostile)).unwrap();
        assert_eq!(
            reply.body,
            "<Response><Say>Hello &lt;/Say&gt;&lt;Dial&gt;+19005550100&lt;/Dial&gt;&lt;Say&gt;</Say></Response>"
        );
        assert!(!reply.body.contains("<Dial>"));
        // JSON: the value stays inside its string
        let r = responder(serde_json::json!({
            "content_type": "application/json",
            "template": "{\"name\": \"{{ event.body.name }}\"}",
        }));
        let reply = r
            .compute(&input(r#"{"name":"x\", \"admin\": true, \"y\": \"\n"}"#))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(parsed.as_object().unwrap().len(), 1);
        assert_eq!(parsed["name"], "x\", \"admin\": true, \"y\": \"\n");
        // {{{ }}} opts out: the value as it is
        let r = responder(serde_json::json!({
            "content_type": "text/xml",
            "template": "<Response>{{{ event.body.twiml }}}</Response>",
        }));
        let reply = r.compute(&input(r#"{"twiml":"<Hangup/>"}"#)).unwrap();
        assert_eq!(reply.body, "<Response><Hangup/></Response>");
    }

    #[test]
    fn escaping_follows_the_content_types_essence() {
        use Escape::*;
        for (ct, want) in [
            ("text/xml", Markup),
            ("application/xml; charset=utf-8", Markup),
            ("text/html", Markup),
            ("application/atom+xml", Markup),
            ("application/json", JsonString),
            ("application/vnd.api+json", JsonString),
            ("text/plain", Raw),
        ] {
            assert_eq!(Escape::for_content_type(ct), want, "{ct}");
        }
    }

    #[test]
    fn framing_headers_are_refused_in_config_and_from_scripts() {
        let p: Pipeline = serde_json::from_value(serde_json::json!({
            "name": "p",
            "route": {"method": "POST", "path": "/p"},
            "respond": {"headers": {"Content-Length": "0", "x-ok": "1"}},
        }))
        .unwrap();
        let errors = match Responder::compile(&p, Path::new("p.yaml"), Path::new(".")) {
            Err(e) => e,
            Ok(_) => panic!("a content-length header compiled"),
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pointer, "/respond/headers/Content-Length");
        for name in [
            "content-length",
            "Transfer-Encoding",
            "set-cookie",
            "location",
            "connection",
        ] {
            let r = responder(serde_json::json!({
                "inline": format!("#{{ body: \"x\", headers: #{{ \"{name}\": \"0\" }} }}"),
            }));
            let why = r.compute(&input("{}")).unwrap_err();
            assert!(why.contains(name), "{name}: {why}");
        }
        let r = responder(serde_json::json!({
            "inline": "#{ body: \"x\", headers: #{ \"x-trace\": \"1\" } }",
        }));
        assert_eq!(
            r.compute(&input("{}")).unwrap().headers,
            vec![("x-trace".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn a_large_body_is_not_parsed_inline() {
        let r = responder(serde_json::json!({"inline": "`ok`"}));
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(INLINE_BODY_MAX));
        assert_eq!(r.compute_inline(&input(&big)), Err(Inline::Elsewhere));
        assert_eq!(r.compute(&input(&big)).unwrap().body, "ok");
    }
}
