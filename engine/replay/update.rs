//! `engine replay --update`: write a case's `expect` section back from what it produced,
//! leaving the rest of the file (comments, the request, its layout) as it was, so the change
//! reads well in a diff.

use std::path::Path;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlEmitter};

use super::fixture::Expect;

/// The order keys are written in: the answer first, then the event, then its rows.
const ORDER: &[&str] = &["status", "outcome", "reason", "headers", "body", "sinks"];

/// Replace the top-level `expect:` block of `file` (or append one) with `expect`.
pub fn write_expect(file: &Path, expect: &Expect) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let block = render(expect)?;
    let out = replace_block(&text, "expect", &block);
    // write beside, then rename: an interrupted update never leaves half a fixture
    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(&tmp, out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))
}

/// `expect:` and its value as block YAML.
pub fn render(expect: &Expect) -> Result<String, String> {
    let value = serde_json::to_value(expect).map_err(|e| e.to_string())?;
    let mut top = yaml_rust2::yaml::Hash::new();
    top.insert(Yaml::String("expect".into()), ordered(&value, ORDER, &[]));
    Ok(emit(&Yaml::Hash(top)))
}

/// A JSON object as YAML with the keys in `order` first, in that order, then the rest; the
/// objects under `nested` keys ordered the same way by their own lists.
pub fn ordered(v: &Value, order: &[&str], nested: &[(&str, &[&str])]) -> Yaml {
    let Value::Object(map) = v else {
        return to_yaml(v);
    };
    let mut hash = yaml_rust2::yaml::Hash::new();
    let rest = map.keys().filter(|k| !order.contains(&k.as_str()));
    for key in order.iter().copied().chain(rest.map(String::as_str)) {
        if let Some(value) = map.get(key) {
            let y = match nested.iter().find(|(k, _)| *k == key) {
                Some((_, inner)) => ordered(value, inner, &[]),
                None => to_yaml(value),
            };
            hash.insert(Yaml::String(key.into()), y);
        }
    }
    Yaml::Hash(hash)
}

/// Block YAML for a value, without the `---` document marker.
pub fn emit(y: &Yaml) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // writing into a String cannot fail
    let _ = emitter.dump(y);
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    format!("{}\n", body.trim_end())
}

/// A JSON value as YAML (integers stay integers).
pub fn to_yaml(v: &Value) -> Yaml {
    match v {
        // written `null` rather than the emitter's `~`: the word readers know
        Value::Null => Yaml::Real("null".into()),
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}

/// `text` with the top-level block `key:` (its line and the indented or blank lines after it)
/// replaced by `block`; appended when there is none.
fn replace_block(text: &str, key: &str, block: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let head = format!("{key}:");
    let Some(start) = lines.iter().position(|l| {
        l.starts_with(&head)
            && !l[head.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    }) else {
        let mut out = text.trim_end().to_string();
        out.push_str("\n\n");
        out.push_str(block);
        return out;
    };
    let mut end = start + 1;
    while end < lines.len() && (lines[end].is_empty() || lines[end].starts_with([' ', '\t'])) {
        end += 1;
    }
    // blank lines before the next key stay with it
    let mut keep_blank = end;
    while keep_blank > start + 1 && lines[keep_blank - 1].is_empty() {
        keep_blank -= 1;
    }
    let mut out = String::new();
    for l in &lines[..start] {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(block);
    for l in &lines[keep_blank..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::fixture::Outcome;

    #[test]
    fn replaces_only_the_expect_block() {
        let text = "# a comment\nrequest:\n  path: /x\nexpect:\n  status: 500\n  # old\n\n# trailing\nrepeat: 2\n";
        let e = Expect {
            status: Some(200),
            outcome: Some(Outcome::Responded),
            ..Expect::default()
        };
        let out = replace_block(text, "expect", &render(&e).unwrap());
        assert_eq!(
            out,
            "# a comment\nrequest:\n  path: /x\nexpect:\n  status: 200\n  outcome: responded\n\n# trailing\nrepeat: 2\n"
        );
    }

    #[test]
    fn appends_when_there_is_no_expect_and_ignores_lookalike_keys() {
        let text = "expected_by: me\nrequest:\n  path: /x\n";
        let e = Expect {
            status: Some(204),
            ..Expect::default()
        };
        let out = replace_block(text, "expect", &render(&e).unwrap());
        assert_eq!(
            out,
            "expected_by: me\nrequest:\n  path: /x\n\nexpect:\n  status: 204\n"
        );
    }

    #[test]
    fn rendered_yaml_reads_back_as_the_same_expectation() {
        let e = Expect {
            status: Some(200),
            body: Some(crate::replay::fixture::BodyMatch::Json {
                json: serde_json::json!({"a": [1, 2.5, "x: y"], "b": null, "c": "line1\nline2"}),
                mode: crate::replay::fixture::Match::Exact,
            }),
            reason: Some("^a \\(b\\)$".into()),
            ..Expect::default()
        };
        let text = render(&e).unwrap();
        let doc = crate::yaml::parse_bytes(text.as_bytes()).unwrap();
        let back: Expect = serde_json::from_value(doc.value["expect"].clone()).unwrap();
        assert_eq!(back, e);
    }
}
