//! JSON-schema checking that speaks the user's language.
//!
//! The engine's file formats are defined by Rust types; schemars turns them into JSON schemas
//! (`engine schema` writes them to `schemas/`), and the `jsonschema` crate checks YAML documents
//! against them. This module compiles validators (with the engine's custom formats), and turns
//! each validation error into a [`Finding`]: the JSON pointer to report at, whether to point at the
//! key or the value, and a message that names the rule but never repeats the offending value
//! (it may be a secret).
//!
//! A schema object may carry `x-message`: it replaces the generic message for errors raised by
//! that object's keywords. `{length}` in it is replaced by the character count of the offending
//! string (a count is safe to print; the string may not be).

use std::path::Path;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

pub mod formats;

use crate::diagnostics::Diagnostic;
use crate::yaml::{Document, escape_token};

/// Compile a schema, registering the engine's custom formats.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .with_format("supabase-service-role-key", formats::is_service_role_key)
        .with_format("random-token", formats::is_random_token)
        .build(schema)
        .map_err(|e| e.masked().to_string())
}

/// Make a generated schema one that standard validators accept in strict mode (ajv): schemars'
/// integer formats (`uint16`, `uint64`, ...) become the bounds they mean, its `ip` format the
/// standard `ipv4` / `ipv6`. The engine's own keyword, `x-message`, stays (validators are told
/// of it as a vocabulary keyword).
pub fn standardize(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            let format = m.get("format").and_then(Value::as_str).map(str::to_string);
            match format.as_deref() {
                Some(
                    f @ ("uint" | "uint8" | "uint16" | "uint32" | "uint64" | "int" | "int8"
                    | "int16" | "int32" | "int64" | "double" | "float"),
                ) => {
                    m.remove("format");
                    let max = match f {
                        "uint8" => Some(u8::MAX as u64),
                        "uint16" => Some(u16::MAX as u64),
                        "uint32" => Some(u32::MAX as u64),
                        _ => None,
                    };
                    if let Some(max) = max {
                        m.entry("maximum").or_insert(Value::from(max));
                    }
                    if f.starts_with("uint") {
                        m.entry("minimum").or_insert(Value::from(0));
                    }
                }
                Some("ip") => {
                    m.remove("format");
                    let nullable = m
                        .get("type")
                        .and_then(Value::as_array)
                        .is_some_and(|t| t.iter().any(|t| t == "null"));
                    m.remove("type");
                    let mut any = vec![
                        serde_json::json!({"type": "string", "format": "ipv4"}),
                        serde_json::json!({"type": "string", "format": "ipv6"}),
                    ];
                    if nullable {
                        any.push(serde_json::json!({"type": "null"}));
                    }
                    m.insert("anyOf".into(), Value::Array(any));
                }
                _ => {}
            }
            for v in m.values_mut() {
                standardize(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(standardize),
        _ => {}
    }
}

/// One explained validation error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Pointer of the value to report at.
    pub pointer: String,
    /// Report at the key naming `pointer` rather than at its value.
    pub at_key: bool,
    pub message: String,
    /// The message came from the schema's `x-message`.
    pub custom: bool,
}

/// Check `doc` against `validator` and locate every error in `file`.
pub fn check(
    validator: &Validator,
    schema: &Value,
    doc: &Document,
    file: &Path,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for err in validator.iter_errors(&doc.value) {
        for f in explain(&err, schema) {
            let pos = if f.at_key {
                doc.key_pos(&f.pointer)
            } else {
                doc.value_pos(&f.pointer)
            };
            let d = Diagnostic::new(file, pos, &f.pointer, f.message);
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out.sort_by_key(|d| (d.line, d.column));
    out
}

/// Explain one validation error (composite `oneOf`/`anyOf` errors may explain as several).
pub fn explain(err: &ValidationError<'_>, schema: &Value) -> Vec<Finding> {
    let pointer = err.instance_path().as_str().to_string();
    let parent = parent_schema(schema, err.schema_path().as_str());
    // `x-message` words the rule (pattern, format, ...); a plain type mismatch keeps the generic
    // "expected X, found Y", which is clearer.
    let custom = parent
        .filter(|_| !matches!(err.kind(), ValidationErrorKind::Type { .. }))
        .and_then(|p| p.get("x-message"))
        .and_then(Value::as_str)
        .map(|m| {
            let length = err.instance().as_str().map_or(0, |s| s.chars().count());
            m.replace("{length}", &length.to_string())
        });
    let is_custom = custom.is_some();
    let one = |message: String, at_key: bool| {
        vec![Finding {
            pointer: pointer.clone(),
            at_key,
            message,
            custom: is_custom,
        }]
    };
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            let allowed: Vec<&str> = parent
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object)
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            unexpected
                .iter()
                .map(|key| Finding {
                    pointer: format!("{pointer}/{}", escape_token(key)),
                    at_key: true,
                    message: unknown_key_message(key, &allowed),
                    custom: false,
                })
                .collect()
        }
        // a key that is not a valid name: at the key, saying which names are
        ValidationErrorKind::PropertyNames { error } => {
            let key = error.instance().as_str().unwrap_or_default().to_string();
            let rule = match error.kind() {
                ValidationErrorKind::Pattern { pattern } => format!(
                    "start with a lower-case letter and use only a-z, 0-9 and `_` (pattern `{pattern}`)"
                ),
                _ => error.masked().to_string(),
            };
            vec![Finding {
                pointer: format!("{pointer}/{}", escape_token(&key)),
                at_key: true,
                message: custom
                    .unwrap_or_else(|| format!("`{key}` is not a valid name here: names {rule}")),
                custom: is_custom,
            }]
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            one(
                custom.unwrap_or_else(|| format!("missing required key `{name}`")),
                true,
            )
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            if let Some(branch) = best_branch(context, &pointer) {
                let found: Vec<Finding> = branch.iter().flat_map(|e| explain(e, schema)).collect();
                if !found.is_empty() {
                    return found;
                }
            }
            let what = parent
                .and_then(|p| p.get("description"))
                .and_then(Value::as_str)
                .map(|d| format!(": {}", first_sentence(d)))
                .unwrap_or_default();
            one(
                custom.unwrap_or_else(|| format!("does not match any allowed form{what}")),
                false,
            )
        }
        _ => one(
            custom.unwrap_or_else(|| generic_message(err)),
            matches!(err.kind(), ValidationErrorKind::Type { .. })
                && err.instance().is_null()
                && !pointer.is_empty(),
        ),
    }
}

/// Of the branches of a failed `oneOf`/`anyOf`, the one the user most likely meant: the one whose
/// errors reach deepest into the value, preferring a branch whose type matched. `None` when every
/// branch failed right at the value's own type.
fn best_branch<'a>(
    context: &'a [Vec<ValidationError<'static>>],
    pointer: &str,
) -> Option<&'a Vec<ValidationError<'static>>> {
    let depth = |p: &str| p.matches('/').count();
    let here = depth(pointer);
    let score = |branch: &Vec<ValidationError<'static>>| {
        let deepest = branch
            .iter()
            .map(|e| depth(e.instance_path().as_str()))
            .max()
            .unwrap_or(here);
        let type_mismatch = branch.iter().any(|e| {
            matches!(e.kind(), ValidationErrorKind::Type { .. })
                && depth(e.instance_path().as_str()) == here
        });
        (deepest, !type_mismatch)
    };
    let best = context.iter().max_by_key(|b| score(b))?;
    let (deepest, type_ok) = score(best);
    (deepest > here || type_ok).then_some(best)
}

fn generic_message(err: &ValidationError<'_>) -> String {
    use ValidationErrorKind as K;
    match err.kind() {
        K::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_name(&t.to_string()).to_string(),
                TypeKind::Multiple(set) => {
                    let names: Vec<&str> = set
                        .iter()
                        .map(|t| type_name(&t.to_string()))
                        .filter(|n| *n != "null")
                        .collect();
                    names.join(" or ")
                }
            };
            format!(
                "expected {expected}, found {}",
                value_kind(err.instance().as_ref())
            )
        }
        K::Enum { options } => format!("must be one of: {}", list_values(options)),
        K::Constant { expected_value } => format!("must be {}", compact(expected_value)),
        K::Pattern { pattern } => format!("does not match the pattern `{pattern}`"),
        K::Format { format } => format!("is not a valid {format}"),
        K::Minimum { limit } => format!("must be at least {limit}"),
        K::Maximum { limit } => format!("must be at most {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        K::MinLength { limit } => format!("must be at least {limit} characters long"),
        K::MaxLength { limit } => format!("must be at most {limit} characters long"),
        K::MinItems { limit } => format!("must list at least {limit} items"),
        K::MaxItems { limit } => format!("must list at most {limit} items"),
        K::MinProperties { limit } => format!("must have at least {limit} keys"),
        K::MaxProperties { limit } => format!("must have at most {limit} keys"),
        K::UniqueItems => "items must be unique".to_string(),
        K::Not { .. } | K::FalseSchema => "is not allowed here".to_string(),
        K::OneOfMultipleValid { .. } => "matches more than one allowed form".to_string(),
        K::Custom { message, .. } => message.clone(),
        _ => err.masked().to_string(),
    }
}

fn unknown_key_message(key: &str, allowed: &[&str]) -> String {
    let mut msg = format!("unknown key `{key}`");
    let suggestion = allowed
        .iter()
        .map(|a| (strsim::jaro_winkler(key, a), *a))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, best)) = suggestion {
        msg.push_str(&format!("; did you mean `{best}`?"));
    } else if !allowed.is_empty() {
        msg.push_str(&format!("; allowed keys: {}", allowed.join(", ")));
    }
    msg
}

/// The schema object holding the keyword at `keyword_location`: a JSON pointer into `schema`
/// that may pass through local `$ref`s (`/properties/route/$ref/additionalProperties`).
fn parent_schema<'a>(schema: &'a Value, keyword_location: &str) -> Option<&'a Value> {
    let idx = keyword_location.rfind('/')?;
    let mut cur = schema;
    for token in keyword_location[..idx].split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        cur = if token == "$ref" {
            let target = cur.get("$ref")?.as_str()?.strip_prefix('#')?;
            schema.pointer(target)?
        } else {
            match cur {
                Value::Object(m) => m.get(&token)?,
                Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
                _ => return None,
            }
        };
    }
    Some(cur)
}

fn type_name(t: &str) -> &'static str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "null",
        _ => "a value",
    }
}

/// The kind of a value, never the value itself.
pub fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn list_values(options: &Value) -> String {
    match options {
        Value::Array(items) => items.iter().map(compact).collect::<Vec<_>>().join(", "),
        other => compact(other),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn first_sentence(s: &str) -> &str {
    let line = s.lines().next().unwrap_or(s);
    match line.find(". ") {
        Some(i) => &line[..=i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn findings(schema: Value, instance: Value) -> Vec<Finding> {
        let v = compile(&schema).unwrap();
        v.iter_errors(&instance)
            .flat_map(|e| explain(&e, &schema))
            .collect()
    }

    #[test]
    fn unknown_key_suggests() {
        let f = findings(
            json!({"type": "object", "properties": {"route": {}, "name": {}}, "additionalProperties": false}),
            json!({"rout": 1}),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pointer, "/rout");
        assert!(f[0].at_key);
        assert_eq!(f[0].message, "unknown key `rout`; did you mean `route`?");
    }

    #[test]
    fn messages_do_not_repeat_values() {
        let f = findings(
            json!({"type": "object", "properties": {"k": {"type": "integer"}}}),
            json!({"k": "s3cr3t-value"}),
        );
        assert_eq!(f[0].message, "expected an integer, found a string");
        assert!(!f[0].message.contains("s3cr3t"));
    }

    #[test]
    fn x_message_with_length() {
        let f = findings(
            json!({"properties": {"K": {"pattern": "^[0-9a-f]{64}$", "x-message": "must be exactly 64 hex characters (got {length} characters)"}}}),
            json!({"K": "abcd"}),
        );
        assert_eq!(
            f[0].message,
            "must be exactly 64 hex characters (got 4 characters)"
        );
    }

    #[test]
    fn follows_refs_for_suggestions() {
        let f = findings(
            json!({
                "type": "object",
                "properties": {"route": {"$ref": "#/$defs/Route"}},
                "$defs": {"Route": {"type": "object", "properties": {"method": {}, "path": {}}, "additionalProperties": false}}
            }),
            json!({"route": {"methd": "POST"}}),
        );
        assert_eq!(f[0].pointer, "/route/methd");
        assert_eq!(f[0].message, "unknown key `methd`; did you mean `method`?");
    }

    #[test]
    fn one_of_picks_the_meant_branch() {
        let schema = json!({
            "type": "object",
            "properties": {"size": {
                "description": "A size. Integer bytes or a string.",
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "string", "pattern": "^[0-9]+ ?(B|KiB|MiB)$", "x-message": "must be a size such as `512KiB` or `1MiB`"}
                ]
            }}
        });
        let f = findings(schema.clone(), json!({"size": "1 GB"}));
        assert_eq!(f[0].message, "must be a size such as `512KiB` or `1MiB`");
        let f = findings(schema, json!({"size": true}));
        assert_eq!(f[0].message, "does not match any allowed form: A size.");
    }
}
