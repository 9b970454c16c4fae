//! Column types in the table check: whether a column takes what a `map` field converts to
//! (`as:`), and the type a missing column's suggested migration gives it (from `as:`, else the
//! fixtures' values, else text).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Column, Problem};
use crate::config::sink::PostgresConfig;
use crate::config::transform::Convert;

/// A column type for values like these, for the migration a problem suggests.
fn suggested_type<'a>(values: impl Iterator<Item = &'a Value>) -> String {
    let mut kinds = BTreeSet::new();
    for v in values {
        kinds.insert(match v {
            Value::Null => continue,
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "bigint",
            Value::Number(_) => "numeric",
            Value::String(s) if uuid::Uuid::parse_str(s).is_ok() => "uuid",
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => "timestamptz",
            Value::String(_) => "text",
            Value::Array(_) | Value::Object(_) => "jsonb",
        });
    }
    match kinds.len() {
        0 => "text".into(),
        1 => kinds.into_iter().next().unwrap_or("text").into(),
        _ if kinds.iter().all(|k| *k == "bigint" || *k == "numeric") => "numeric".into(),
        _ => "text".into(),
    }
}

/// What tells a missing column's type: the map's `as:`, else the fixtures' values.
pub(super) struct Types<'a> {
    pub(super) converts: &'a BTreeMap<String, Convert>,
    pub(super) values: &'a BTreeMap<String, Vec<(String, Value)>>,
}

/// A column the pipeline writes and the table lacks, with the migration that adds it, typed as
/// `as:` converts to, else as the fixtures' values are, else text.
pub(super) fn missing_column(t: &str, cfg: &PostgresConfig, c: &str, types: &Types<'_>) -> Problem {
    let expected = match (c, types.converts.get(c), types.values.get(c)) {
        ("event_id" | "row_index", ..) => default_type(c),
        (_, Some(to), _) => to.column_type().to_string(),
        (_, None, Some(samples)) => suggested_type(samples.iter().map(|(_, v)| v)),
        (_, None, None) => default_type(c),
    };
    let hint = match cfg.columns.renamed_from(c) {
        Some(field) => format!("the sink maps field `{field}` to it"),
        None => "the pipeline writes it".to_string(),
    };
    Problem::error(format!(
        "table `{t}`, column `{c}`: expected a column ({hint}), found none; add it with a migration (`ALTER TABLE {t} ADD COLUMN {c} {expected};`), or map the field to an existing column with the sink's `columns:`"
    ))
}

/// A map field converted (`as:`) into a column whose type does not take what it converts to.
pub(super) fn conversions_refused(
    t: &str,
    cfg: &PostgresConfig,
    converts: &BTreeMap<String, Convert>,
    found: &BTreeMap<String, Column>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (c, to) in converts {
        let Some(col) = found.get(c) else { continue };
        if !takes(&col.data_type, *to) {
            let field = cfg.columns.renamed_from(c).unwrap_or(c);
            problems.push(Problem::error(format!(
                "table `{t}`, column `{c}`: expected a column that takes {} (the map writes field `{field}` `as: {}`), found type {}; change the column's type with a migration (`ALTER TABLE {t} ALTER COLUMN {c} TYPE {} USING {c}::{};`), or the field's `as:`",
                to.column_type(),
                to.word(),
                col.data_type,
                to.column_type(),
                to.column_type(),
            )));
        }
    }
    problems
}

/// Whether a column of `data_type` (information_schema's word) takes every value a map field
/// converted `as: to` can hold. Text columns take anything; a JSON column takes any JSON value.
fn takes(data_type: &str, to: Convert) -> bool {
    let text = matches!(data_type, "text" | "character varying" | "character");
    let json = matches!(data_type, "json" | "jsonb");
    let exact_number = matches!(data_type, "numeric" | "real" | "double precision");
    let whole = matches!(data_type, "smallint" | "integer" | "bigint");
    let time = matches!(
        data_type,
        "timestamp with time zone" | "timestamp without time zone" | "date"
    );
    text || match to {
        Convert::Boolean => json || data_type == "boolean",
        Convert::Integer => json || whole || exact_number,
        Convert::Number => json || exact_number,
        Convert::Json => json,
        Convert::Time => time,
        // text goes where a type's input parses text: uuid, enums, inet... but not a number,
        // boolean, time or JSON column, which refuse most text
        Convert::Text => !(whole || exact_number || time || json || data_type == "boolean"),
    }
}

/// The type of a column the pipeline names but no fixture filled.
fn default_type(column: &str) -> String {
    match column {
        "row_index" => "integer NOT NULL".into(),
        "event_id" => "text NOT NULL".into(),
        _ => "text".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions_fit_the_columns_that_take_them() {
        assert!(takes("boolean", Convert::Boolean));
        assert!(takes("text", Convert::Boolean));
        assert!(!takes("integer", Convert::Boolean));
        assert!(takes("bigint", Convert::Integer) && takes("numeric", Convert::Integer));
        assert!(!takes("integer", Convert::Number));
        assert!(takes("timestamp with time zone", Convert::Time));
        assert!(takes("date", Convert::Time) && !takes("date", Convert::Text));
        assert!(!takes("boolean", Convert::Text));
        assert!(takes("uuid", Convert::Text) && takes("USER-DEFINED", Convert::Text));
        assert!(takes("jsonb", Convert::Json) && !takes("uuid", Convert::Json));
    }

    #[test]
    fn suggested_types_follow_the_values() {
        let t = |vs: &[Value]| suggested_type(vs.iter());
        assert_eq!(t(&[json!("9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b")]), "uuid");
        assert_eq!(t(&[json!("2024-11-25T16:00:04.100Z")]), "timestamptz");
        assert_eq!(t(&[json!(1), json!(2.5)]), "numeric");
        assert_eq!(t(&[json!(3), Value::Null]), "bigint");
        assert_eq!(t(&[json!({"a": 1})]), "jsonb");
        assert_eq!(t(&[json!("x"), json!(1)]), "text");
        assert_eq!(t(&[]), "text");
    }
}
