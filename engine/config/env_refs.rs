//! `${VAR}` references in pipeline and settings files.
//!
//! Any string value may mention environment variables as `${NAME}` (`$${` writes a literal `${`).
//! Validation checks every reference names a variable declared in the env schema and reports the
//! reference's own line and column. After validation, references are replaced with the variable's
//! value (empty when an optional variable is unset).
//!
//! Rhai code (`inline` scripts, `when` expressions, `template`s) is left alone: Rhai's own
//! backtick strings use `${...}` too. Scripts read configuration through `event.vars`.

use std::path::Path;

use serde_json::Value;

use crate::diagnostics::Diagnostic;
use crate::env::{Env, EnvSchema};
use crate::yaml::{Document, escape_token};

/// One piece of a string with references.
#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Text(&'a str),
    Var { name: &'a str, offset: usize },
    Malformed { offset: usize },
}

/// Split a string into literal text and `${NAME}` references. Offsets are in characters.
fn pieces(s: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut consumed = 0usize; // bytes of `s` before `rest`
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            // `$${` escapes a literal `${`
            out.push(Segment::Text(&rest[..i]));
            out.push(Segment::Text("${"));
            rest = escaped;
            consumed += i + 3;
            continue;
        }
        if let Some(body) = after.strip_prefix('{') {
            out.push(Segment::Text(&rest[..i]));
            let offset = s[..consumed + i].chars().count();
            match body.find('}') {
                Some(end) if is_name(&body[..end]) => {
                    out.push(Segment::Var {
                        name: &body[..end],
                        offset,
                    });
                    rest = &body[end + 1..];
                    consumed += i + 2 + end + 1;
                }
                _ => {
                    out.push(Segment::Malformed { offset });
                    out.push(Segment::Text("${"));
                    rest = body;
                    consumed += i + 2;
                }
            }
            continue;
        }
        out.push(Segment::Text(&rest[..=i]));
        rest = after;
        consumed += i + 1;
    }
    out.push(Segment::Text(rest));
    out
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Keys whose string values are Rhai code.
const SCRIPT_KEYS: &[&str] = &["inline", "when", "template"];

fn walk<'a>(v: &'a Value, pointer: &mut String, f: &mut impl FnMut(&str, &'a str)) {
    match v {
        Value::String(s) => f(pointer, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                walk(item, pointer, f);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                if SCRIPT_KEYS.contains(&k.as_str()) {
                    continue;
                }
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_token(k));
                walk(item, pointer, f);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Report malformed references and references to undeclared variables.
pub fn check(doc: &Document, file: &Path, schema: Option<&EnvSchema>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    walk(&doc.value, &mut String::new(), &mut |pointer, s| {
        if !s.contains("${") {
            return;
        }
        for piece in pieces(s) {
            match piece {
                Segment::Var { name, offset } => {
                    if schema.is_some_and(|sc| !sc.declares(name)) {
                        out.push(Diagnostic::new(
                            file,
                            doc.char_pos(pointer, offset),
                            pointer,
                            format!(
                                "`${{{name}}}` refers to an environment variable that is not declared; add `{name}` to {}",
                                crate::env::ENV_SCHEMA_FILE
                            ),
                        ));
                    }
                }
                Segment::Malformed { offset } => out.push(Diagnostic::new(
                    file,
                    doc.char_pos(pointer, offset),
                    pointer,
                    "malformed environment reference: write `${NAME}` (letters, digits, `_`), or `$${` for a literal `${`",
                )),
                Segment::Text(_) => {}
            }
        }
    });
    out
}

/// The variables a file's values refer to (`${NAME}`), Rhai code left out as in [`check`].
pub fn referenced(v: &Value) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    walk(v, &mut String::new(), &mut |_, s| {
        for piece in pieces(s) {
            if let Segment::Var { name, .. } = piece {
                out.insert(name.to_string());
            }
        }
    });
    out
}

/// Replace every `${NAME}` with the variable's value.
pub fn interpolate(v: &mut Value, env: &Env) {
    match v {
        Value::String(s) if s.contains('$') => {
            let mut out = String::with_capacity(s.len());
            for piece in pieces(s) {
                match piece {
                    Segment::Text(t) => out.push_str(t),
                    Segment::Var { name, .. } => {
                        out.push_str(&env.get_string(name).unwrap_or_default());
                    }
                    Segment::Malformed { .. } => {}
                }
            }
            *s = out;
        }
        Value::Array(items) => items.iter_mut().for_each(|i| interpolate(i, env)),
        Value::Object(map) => map
            .iter_mut()
            .filter(|(k, _)| !SCRIPT_KEYS.contains(&k.as_str()))
            .for_each(|(_, i)| interpolate(i, env)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(
            pieces("a ${B_1} $$ $${x} ${}"),
            vec![
                Segment::Text("a "),
                Segment::Var {
                    name: "B_1",
                    offset: 2
                },
                Segment::Text(" $"),
                Segment::Text("$"),
                Segment::Text(" "),
                Segment::Text("${"),
                Segment::Text("x} "),
                Segment::Malformed { offset: 18 },
                Segment::Text("${"),
                Segment::Text("}"),
            ]
        );
    }

    #[test]
    fn undeclared_reference_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let schema_path = dir.path().join("env.schema.yaml");
        std::fs::write(&schema_path, "properties:\n  KNOWN: {type: string}\n").unwrap();
        let schema = EnvSchema::load(&schema_path).unwrap();
        let doc = crate::yaml::parse_str("a:\n  b: \"x ${KNOWN} ${NOPE}\"\n").unwrap();
        let d = check(&doc, Path::new("p.yaml"), Some(&schema));
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].column), (2, 18));
        assert!(d[0].message.contains("`${NOPE}`"));
    }

    #[test]
    fn interpolates() {
        let dir = tempfile::tempdir().unwrap();
        let schema_path = dir.path().join("env.schema.yaml");
        std::fs::write(
            &schema_path,
            "properties:\n  A: {type: string}\n  N: {type: integer}\n",
        )
        .unwrap();
        let env = EnvSchema::load(&schema_path)
            .unwrap()
            .validate(&crate::env::EnvSource::from_pairs([("A", "x"), ("N", "7")]))
            .unwrap();
        let mut v = serde_json::json!({"s": "${A}-${N}-$${A}", "l": ["${UNSET}"]});
        interpolate(&mut v, &env);
        assert_eq!(v, serde_json::json!({"s": "x-7-${A}", "l": [""]}));
    }
}
