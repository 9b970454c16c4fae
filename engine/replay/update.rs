//! `engine replay --update`: write a case's `expect` section back from what it produced,
//! leaving the rest of the file (comments, the request, its layout) as it was, so the change
//! reads well in a diff.

use std::path::Path;

use yaml_rust2::Yaml;

use crate::yaml::{emit, ordered};

use crate::fixture::Expect;

/// The order keys are written in: the answer first, then the event, then its rows.
const ORDER: &[&str] = &["status", "outcome", "reason", "headers", "body", "sinks"];

/// Replace the top-level `expect:` block of `file` (or append one) with `expect`.
pub fn write_expect(file: &Path, expect: &Expect) -> Result<(), super::ReplayError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| super::ReplayError::Io { path, source }
    };
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    let block = render(expect)?;
    let out = replace_block(&text, "expect", &block);
    // write beside, then rename: an interrupted update never leaves half a fixture
    let tmp = file.with_extension("yaml.tmp");
    std::fs::write(&tmp, out).map_err(io(&tmp))?;
    std::fs::rename(&tmp, file).map_err(io(file))
}

/// `expect:` and its value as block YAML.
pub fn render(expect: &Expect) -> Result<String, super::ReplayError> {
    let value = serde_json::to_value(expect).map_err(super::ReplayError::Render)?;
    let mut top = yaml_rust2::yaml::Hash::new();
    top.insert(Yaml::String("expect".into()), ordered(&value, ORDER, &[]));
    Ok(emit(&Yaml::Hash(top)))
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
    use crate::fixture::FixtureOutcome;

    #[test]
    fn replaces_only_the_expect_block() {
        let text = "# a comment\nrequest:\n  path: /x\nexpect:\n  status: 500\n  # old\n\n# trailing\nrepeat: 2\n";
        let e = Expect {
            status: Some(200),
            outcome: Some(FixtureOutcome::Responded),
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
            body: Some(crate::fixture::BodyMatch::Json {
                json: serde_json::json!({"a": [1, 2.5, "x: y"], "b": null, "c": "line1\nline2"}),
                mode: crate::fixture::Match::Exact,
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
