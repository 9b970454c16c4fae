//! The Rhai sandbox: an engine with limits and the helper functions scripts may call.
//!
//! Rhai has no file, network or environment access to begin with; `eval` is disabled and modules
//! are compiled out (`no_module`), so a script sees only `event` and these helpers. Limits on
//! operations, call depth, string/array/map sizes come from the pipeline's `script_limits`; the
//! wall-clock budget is a per-thread deadline checked from Rhai's progress callback (every script
//! runs on one blocking thread, so the deadline of the run in progress is the thread's), and the
//! memory bound (`max_memory`) compares what the thread holds now with what it held when the run
//! began ([`super::meter`], charged by the engine binary's allocator), on every operation.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Position};
use sha2::{Digest, Sha256};

use crate::config::transform::ScriptLimits;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// What the thread held when the run in progress began ([`super::meter::held`]).
    static HELD_AT_START: Cell<i64> = const { Cell::new(0) };
}

/// The token a run stopped for holding too much memory ends with (any other is the clock's).
const OVER_MEMORY: &str = "memory bound exceeded";

/// Marker key of the error a script raises with `fail_permanent` / `fail_retry`.
const FAILURE_KEY: &str = "__engine_failure";

/// How a failed run should be treated by the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Dead-letter: retrying cannot help (script error, limit exceeded, `fail_permanent`).
    Permanent,
    /// Retry later (`fail_retry`).
    Retry,
    /// Nothing to write, on purpose (`discard`): the event is acknowledged and logged with the
    /// reason, so an event the pipeline cannot turn into a meaningful row never becomes an
    /// empty one.
    Discard,
}

/// Build an engine with `limits` and the helpers.
///
/// Every pipeline has its own engines (a transform's, a respond script's), so what one costs is
/// paid per pipeline: `Engine::new` builds Rhai's standard package (some hundreds of functions,
/// ~200 KB) afresh each time. Here the package and the helpers are built once per process and
/// each engine only points at them ([`shared_modules`]); an engine is then ~1 KB of its own
/// (docs/benchmarks.md, "Many pipelines").
pub fn engine(limits: &ScriptLimits) -> Engine {
    let mut e = Engine::new_raw();
    for module in shared_modules() {
        e.register_global_module(module.clone());
    }
    // as `Engine::new` does: a script's repeated property names and strings share one copy
    e.set_max_strings_interned(rhai::default_limits::MAX_STRINGS_INTERNED);
    e.set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_expr_depths(64, 32);
    e.disable_symbol("eval");
    let max_memory = i64::try_from(limits.max_memory.bytes()).unwrap_or(i64::MAX);
    e.on_progress(move |ops| {
        // every operation: one thread-local read (an operation can allocate megabytes)
        if super::meter::held() - HELD_AT_START.with(Cell::get) > max_memory {
            return Some(Dynamic::from(OVER_MEMORY));
        }
        if ops % 512 != 0 {
            return None;
        }
        DEADLINE
            .with(Cell::get)
            .filter(|d| Instant::now() >= *d)
            .map(|_| Dynamic::from("wall-clock budget exceeded"))
    });
    e.on_print(|s| tracing::debug!(target: "engine::script", "{s}"));
    e.on_debug(|s, _, _| tracing::debug!(target: "engine::script", "{s}"));
    e
}

/// Rhai's standard package and the engine's helpers (`sha256`, `uuid_v5`, `parse_time`,
/// `format_time`, `to_json`, `parse_json`, `get`, `fail_permanent`, `discard`, `fail_retry`),
/// built on first use and shared, read-only, by every engine of the process. The helpers come
/// last, so a helper named like a standard function wins, as when they were registered on the
/// engine.
fn shared_modules() -> &'static [rhai::Shared<rhai::Module>; 2] {
    static MODULES: std::sync::OnceLock<[rhai::Shared<rhai::Module>; 2]> =
        std::sync::OnceLock::new();
    MODULES.get_or_init(|| {
        use rhai::packages::Package as _;
        let standard = rhai::packages::StandardPackage::new().as_shared_module();
        [standard, helpers().into()]
    })
}

/// The helpers a script may call, as one module.
fn helpers() -> rhai::Module {
    use rhai::FuncRegistration as F;
    let mut m = rhai::Module::new();
    F::new("sha256").set_into_module(&mut m, |s: &str| hex::encode(Sha256::digest(s.as_bytes())));
    F::new("uuid_v5").set_into_module(&mut m, uuid_v5);
    F::new("parse_time").set_into_module(&mut m, parse_time);
    F::new("format_time").set_into_module(&mut m, |ms: i64| format_time(ms));
    F::new("to_json").set_into_module(&mut m, to_json);
    F::new("parse_json").set_into_module(&mut m, parse_json);
    F::new("get").set_into_module(&mut m, get_path);
    F::new("fail_permanent")
        .set_into_module(&mut m, |msg: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            Err(failure("permanent", msg))
        });
    F::new("discard").set_into_module(&mut m, |msg: &str| -> Result<Dynamic, Box<EvalAltResult>> {
        Err(failure("discard", msg))
    });
    F::new("fail_retry")
        .set_into_module(&mut m, |msg: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            Err(failure("retry", msg))
        });
    m.build_index();
    m
}

/// Run `f` with a wall-clock budget on this thread.
pub fn with_deadline<T>(budget: Duration, f: impl FnOnce() -> T) -> T {
    DEADLINE.with(|d| d.set(Some(Instant::now() + budget)));
    HELD_AT_START.with(|h| h.set(super::meter::held()));
    let out = f();
    DEADLINE.with(|d| d.set(None));
    out
}

/// Whether a run was stopped for its memory (not its clock): the token Rhai's `ErrorTerminated`
/// carries.
pub fn over_memory(token: &Dynamic) -> bool {
    token.clone().into_string().is_ok_and(|t| t == OVER_MEMORY)
}

/// When the budget of the script running on this thread ends.
pub fn deadline() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

fn failure(kind: &str, msg: &str) -> Box<EvalAltResult> {
    let mut m = rhai::Map::new();
    m.insert(FAILURE_KEY.into(), Dynamic::from(kind.to_string()));
    m.insert("message".into(), Dynamic::from(msg.to_string()));
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from_map(m),
        Position::NONE,
    ))
}

/// Classify a script error and word it as `<label>:<line>:<col>: <message>`.
pub fn explain(err: &EvalAltResult, label: &str) -> (FailureKind, String) {
    let at = |p: Position| match (p.line(), p.position()) {
        (Some(l), Some(c)) => format!("{label}:{l}:{c}"),
        (Some(l), None) => format!("{label}:{l}"),
        _ => label.to_string(),
    };
    // An error raised inside a function call carries the call site; the innermost explains it.
    let mut inner = err;
    while let EvalAltResult::ErrorInFunctionCall(_, _, e, _) = inner {
        inner = e;
    }
    match inner {
        EvalAltResult::ErrorRuntime(value, pos) => {
            if let Some(map) = value.read_lock::<rhai::Map>()
                && let Some(kind) = map.get(FAILURE_KEY)
            {
                let msg = map
                    .get("message")
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let kind = match kind.to_string().as_str() {
                    "retry" => FailureKind::Retry,
                    "discard" => FailureKind::Discard,
                    _ => FailureKind::Permanent,
                };
                return (kind, format!("{}: {msg}", at(err.position())));
            }
            (
                FailureKind::Permanent,
                format!("{}: script threw: {value}", at(*pos)),
            )
        }
        EvalAltResult::ErrorTerminated(token, p) if over_memory(token) => (
            FailureKind::Permanent,
            format!(
                "{}: memory bound exceeded (script_limits.max_memory)",
                at(*p)
            ),
        ),
        EvalAltResult::ErrorTerminated(..) => (
            FailureKind::Permanent,
            format!(
                "{}: wall-clock budget exceeded (script_limits.timeout_ms)",
                at(err.position())
            ),
        ),
        EvalAltResult::ErrorTooManyOperations(p) => (
            FailureKind::Permanent,
            format!(
                "{}: too many operations (script_limits.max_operations)",
                at(*p)
            ),
        ),
        EvalAltResult::ErrorStackOverflow(p) => (
            FailureKind::Permanent,
            format!(
                "{}: calls nested too deeply (script_limits.max_call_depth)",
                at(*p)
            ),
        ),
        EvalAltResult::ErrorDataTooLarge(what, p) => (
            FailureKind::Permanent,
            format!("{}: {what} too large (script_limits)", at(*p)),
        ),
        other => (
            FailureKind::Permanent,
            format!("{}: {other}", at(err.position())),
        ),
    }
}

fn uuid_v5(namespace: &str, name: &str) -> Result<String, Box<EvalAltResult>> {
    let ns = match namespace {
        "dns" => uuid::Uuid::NAMESPACE_DNS,
        "url" => uuid::Uuid::NAMESPACE_URL,
        "oid" => uuid::Uuid::NAMESPACE_OID,
        "x500" => uuid::Uuid::NAMESPACE_X500,
        other => uuid::Uuid::parse_str(other).map_err(|_| {
            format!("uuid_v5: namespace must be dns, url, oid, x500 or a UUID, not {other:?}")
        })?,
    };
    Ok(uuid::Uuid::new_v5(&ns, name.as_bytes()).to_string())
}

/// Epoch milliseconds from RFC 3339 text, or from a number of seconds or milliseconds.
fn parse_time(value: Dynamic) -> Result<i64, Box<EvalAltResult>> {
    if let Ok(i) = value.as_int() {
        return Ok(int_ms(i));
    }
    if let Ok(f) = value.as_float() {
        return Ok(float_ms(f));
    }
    let text = value
        .into_immutable_string()
        .map_err(|t| format!("parse_time: expected text or a number, got {t}"))?;
    text_ms(&text).ok_or_else(|| format!("parse_time: {text:?} is not an RFC 3339 time").into())
}

/// A whole number of epoch seconds or milliseconds as milliseconds (below 10^11 it is seconds:
/// milliseconds that small are 1973).
pub(crate) fn int_ms(i: i64) -> i64 {
    if i.abs() < 100_000_000_000 {
        i * 1000
    } else {
        i
    }
}

/// [`int_ms`] of a fractional number.
pub(crate) fn float_ms(f: f64) -> i64 {
    if f.abs() < 1e11 {
        (f * 1000.0) as i64
    } else {
        f as i64
    }
}

/// Epoch milliseconds of RFC 3339 text.
pub(crate) fn text_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn to_json(value: Dynamic) -> Result<String, Box<EvalAltResult>> {
    let v: serde_json::Value = rhai::serde::from_dynamic(&value)?;
    Ok(v.to_string())
}

fn parse_json(text: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("parse_json: {e}"))?;
    rhai::serde::to_dynamic(v)
}

/// `get(value, "message.call.id", default)` or a JSON pointer `"/message/call/id"`: nested access
/// through maps and arrays that yields `default` where anything is missing.
///
/// The value is taken by reference (Rhai passes a `&mut` first argument without copying it): a
/// script calls `get` many times on the same message map, and copying it each time cost more than
/// the rest of the transform.
fn get_path(value: &mut Dynamic, path: ImmutableString, default: Dynamic) -> Dynamic {
    // Called many times per event by the shipped scripts: the path is walked segment by segment
    // without collecting the segments, and only the value found is cloned.
    let found = match path.strip_prefix('/') {
        Some(pointer) => lookup(
            value,
            pointer.split('/').map(|s| match s.contains('~') {
                true => std::borrow::Cow::Owned(s.replace("~1", "/").replace("~0", "~")),
                false => std::borrow::Cow::Borrowed(s),
            }),
        ),
        None => lookup(
            value,
            path.split('.')
                .filter(|s| !s.is_empty())
                .map(std::borrow::Cow::Borrowed),
        ),
    };
    found.unwrap_or(default)
}

/// Walk by reference; only the value found is cloned.
fn lookup<'a>(
    v: &Dynamic,
    mut segments: impl Iterator<Item = std::borrow::Cow<'a, str>>,
) -> Option<Dynamic> {
    let Some(first) = segments.next() else {
        return (!v.is_unit()).then(|| v.clone());
    };
    if let Some(map) = v.read_lock::<rhai::Map>() {
        return lookup(map.get(first.as_ref())?, segments);
    }
    if let Some(arr) = v.read_lock::<rhai::Array>() {
        return lookup(arr.get(first.parse::<usize>().ok()?)?, segments);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        engine(&ScriptLimits::default()).eval::<Dynamic>(script)
    }

    #[test]
    fn helpers() {
        assert_eq!(
            eval(r#"sha256("abc")"#).unwrap().to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // the example in Python's uuid documentation: uuid5(NAMESPACE_DNS, "python.org")
        assert_eq!(
            eval(r#"uuid_v5("dns", "python.org")"#).unwrap().to_string(),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
        assert_eq!(
            eval(r#"parse_time("2024-01-02T03:04:05.678Z")"#)
                .unwrap()
                .as_int()
                .unwrap(),
            1_704_164_645_678
        );
        assert_eq!(
            eval("parse_time(1704164645)").unwrap().as_int().unwrap(),
            1_704_164_645_000
        );
        assert_eq!(
            eval("format_time(1704164645678)").unwrap().to_string(),
            "2024-01-02T03:04:05.678Z"
        );
        assert_eq!(
            eval(r#"to_json(#{a: [1, "x"]})"#).unwrap().to_string(),
            r#"{"a":[1,"x"]}"#
        );
        assert_eq!(
            eval(r#"parse_json("{\"a\":{\"b\":2}}").a.b"#)
                .unwrap()
                .as_int()
                .unwrap(),
            2
        );
        assert_eq!(
            eval(r#"get(#{a: #{b: [10, 20]}}, "a.b.1", 0)"#)
                .unwrap()
                .as_int()
                .unwrap(),
            20
        );
        assert_eq!(
            eval(r#"get(#{a: #{b: [10, 20]}}, "/a/b/5", -1)"#)
                .unwrap()
                .as_int()
                .unwrap(),
            -1
        );
        assert_eq!(
            eval(r#"let m = #{}; m?.a?.b ?? "none""#)
                .unwrap()
                .to_string(),
            "none"
        );
    }

    #[test]
    fn failures_are_classified() {
        let e = eval(r#"fail_retry("sink said wait")"#).unwrap_err();
        assert_eq!(
            explain(&e, "s.rhai"),
            (FailureKind::Retry, "s.rhai:1:1: sink said wait".into())
        );
        let e = eval("let x = 1;\nfail_permanent(`bad ${x}`)").unwrap_err();
        assert_eq!(
            explain(&e, "s.rhai"),
            (FailureKind::Permanent, "s.rhai:2:1: bad 1".into())
        );
        let e = eval("let x = 1;\n  x.nope()").unwrap_err();
        let (kind, msg) = explain(&e, "s.rhai");
        assert_eq!(kind, FailureKind::Permanent);
        assert!(msg.starts_with("s.rhai:2:"), "{msg}");
        assert!(eval(r#"eval("1")"#).is_err(), "eval is disabled");
    }

    #[test]
    fn limits() {
        let e = eval("loop {}").unwrap_err();
        assert!(explain(&e, "s").1.contains("too many operations"), "{e}");
        let e = eval("let s = \"x\"; loop { s += s; }").unwrap_err();
        assert!(explain(&e, "s").1.contains("too large"), "{e}");
        let e = eval("fn f(n) { f(n + 1) } f(0)").unwrap_err();
        assert!(explain(&e, "s").1.contains("nested too deeply"), "{e}");
        let unbounded_ops = ScriptLimits {
            max_operations: u64::MAX,
            ..Default::default()
        };
        let started = Instant::now();
        let e = with_deadline(Duration::from_millis(50), || {
            engine(&unbounded_ops).eval::<Dynamic>("loop {}")
        })
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            explain(&e, "s").1.contains("wall-clock budget exceeded"),
            "{e}"
        );
    }
}
