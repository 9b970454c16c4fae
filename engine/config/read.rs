//! Reading the directory's files: which files are pipelines, each parsed with the position of
//! every value, checked against its JSON schema and the env schema's declared variables, then
//! deserialized into the typed configuration (a failure there is reported at the value's
//! position).

use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::*;
use crate::diagnostics::Diagnostic;
use crate::env::EnvSchema;
use crate::yaml::{self, Document, Pos};

/// A parsed file that passed its schema and reference checks.
pub(super) struct Checked {
    pub(super) file: PathBuf,
    pub(super) doc: Document,
}

/// `*.yaml` / `*.yml` files directly in `dir`, sorted, hidden files skipped.
pub(super) fn list_yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::new(
            dir,
            Pos::START,
            "",
            format!("cannot read the pipelines directory: {e}"),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

pub(super) fn is_named(path: &Path, name: &str) -> bool {
    path.file_name().and_then(|n| n.to_str()) == Some(name)
}

/// Parse a file and check it against a schema and the env schema's declared variables.
/// Diagnostics go to `diags`; `None` when the file cannot be used further.
pub(super) fn check_file(
    file: &Path,
    schema: &(Value, Validator),
    env_schema: Option<&EnvSchema>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Checked> {
    let doc = parse_checked(file, schema, diags)?;
    let refs = env_refs::check(&doc, file, env_schema);
    let clean = refs.is_empty();
    diags.extend(refs);
    clean.then(|| Checked {
        file: file.to_path_buf(),
        doc,
    })
}

/// Read and parse a YAML file and check it against a schema; diagnostics go to `diags`.
pub(super) fn parse_checked(
    file: &Path,
    schema: &(Value, Validator),
    diags: &mut Vec<Diagnostic>,
) -> Option<Document> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::new(
                file,
                Pos::START,
                "",
                format!("cannot read: {e}"),
            ));
            return None;
        }
    };
    let doc = match yaml::parse_bytes(&bytes) {
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::new(file, e.pos(), "", e.to_string()));
            return None;
        }
    };
    let found = crate::schema::check(&schema.1, &schema.0, &doc, file);
    let clean = found.is_empty();
    diags.extend(found);
    clean.then_some(doc)
}

/// A YAML file of another kind than a pipeline (a replay fixture): parsed with positions,
/// checked against `schema` and deserialized, or every problem found.
pub fn read_typed<T: DeserializeOwned>(
    file: &Path,
    schema: &(Value, Validator),
) -> Result<(Document, T), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let doc = parse_checked(file, schema, &mut diags).ok_or(diags)?;
    let checked = Checked {
        file: file.to_path_buf(),
        doc,
    };
    let value = typed::<T>(checked.doc.value.clone(), &checked).map_err(|d| vec![d])?;
    Ok((checked.doc, value))
}

/// Deserialize a schema-valid document. A failure here means the schema let through something
/// the types refuse; report it at the value's position without repeating the value.
pub(super) fn typed<T: DeserializeOwned>(value: Value, checked: &Checked) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer: String = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(format!("/{}", yaml::escape_token(key))),
                serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                _ => None,
            })
            .collect();
        Diagnostic::new(
            &checked.file,
            checked.doc.value_pos(&pointer),
            &pointer,
            "this value cannot be used here (after `${VAR}` substitution); check its type in the reference",
        )
    })
}
