//! The environment a deployment reads, declared as a JSON Schema.
//!
//! `env.schema.yaml` in the pipelines directory lists every variable (type, pattern or format,
//! default, description, `x-secret`), and the security checklist as rules (`if NODE_ENV is
//! production then ...`). At boot and in `engine validate` the environment — the process's, or a
//! dotenv file given with `--env-file` — is read into an [`EnvSource`], narrowed to the declared
//! variables, typed (env values are strings; a variable declared `integer` becomes a number),
//! defaulted, and validated. The result is an [`Env`]: the only place the rest of the engine reads
//! variables from. Undeclared variables are invisible to the engine.
//!
//! Errors name the variable and the rule, never the value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value};

use crate::diagnostics::Diagnostic;
use crate::yaml::{self, Document, Pos};

/// File name of the env schema inside the pipelines directory.
pub const ENV_SCHEMA_FILE: &str = "env.schema.yaml";

/// Where variable values come from.
#[derive(Debug, Clone, Default)]
pub struct EnvSource {
    /// The dotenv file, when validating one.
    file: Option<PathBuf>,
    vars: BTreeMap<String, String>,
    lines: HashMap<String, usize>,
}

/// Why an env file could not be read (its values are never repeated).
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("{file}: cannot read env file")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a dotenv file: a line is not KEY=value")]
    NotKeyValue(String),
    /// dotenvy's own error is not kept: it quotes part of the line, which may be a secret.
    #[error("{0}: not a dotenv file")]
    NotDotenv(String),
}

impl EnvSource {
    /// The process environment (variables whose name or value is not UTF-8 are skipped).
    pub fn process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        EnvSource {
            file: None,
            vars,
            lines: HashMap::new(),
        }
    }

    /// A dotenv file (`KEY=value` lines), used instead of the process environment.
    ///
    /// Parsed with dotenvy (quotes, escapes, `export`). A line dotenvy refuses — typically an
    /// unquoted value with spaces, as in a pasted `KEY=<PASTE YOUR KEY>` — is read as
    /// `KEY=rest of line`, so validation can say what is wrong with the value instead of failing
    /// on the syntax.
    pub fn from_file(path: &Path) -> Result<Self, EnvFileError> {
        let file = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
            file: file(),
            source,
        })?;
        let mut vars = BTreeMap::new();
        let physical: Vec<&str> = text.lines().collect();
        let mut cursor = 0; // physical lines before this one are accounted for
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((k, v)) => {
                    vars.insert(k, v);
                }
                // dotenvy goes on after a refused line; its error holds part of that line.
                Err(dotenvy::Error::LineParse(fragment, _)) => {
                    let fragment = fragment.trim();
                    let found = physical[cursor..]
                        .iter()
                        .position(|l| l.contains(fragment))
                        .map(|i| cursor + i);
                    let parsed = found.and_then(|i| plain_line(physical[i]));
                    let (Some(i), Some((k, v))) = (found, parsed) else {
                        return Err(EnvFileError::NotKeyValue(file()));
                    };
                    cursor = i + 1;
                    vars.insert(k, v);
                }
                Err(_) => return Err(EnvFileError::NotDotenv(file())),
            }
        }
        let mut lines = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if let Some((name, _)) = line.split_once('=') {
                // the last assignment wins, as it does for the value
                lines.insert(name.trim().to_string(), i + 1);
            }
        }
        Ok(EnvSource {
            file: Some(path.to_path_buf()),
            vars,
            lines,
        })
    }

    /// An explicit set of variables (tests, replay).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        EnvSource {
            file: None,
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            lines: HashMap::new(),
        }
    }

    /// Set or replace one variable.
    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_string(), value.to_string());
    }

    /// The names of the variables set (non-empty), declared or not.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.as_str())
    }

    /// The line of a dotenv file that sets `name`, when reading one.
    pub fn line_of(&self, name: &str) -> Option<usize> {
        self.file.as_ref().and(self.lines.get(name).copied())
    }

    /// A variable's raw value; an empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// `[export ]KEY=value` with the value taken as the rest of the line (outer quotes removed).
fn plain_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    if !is_env_name(k) {
        return None;
    }
    let v = v.trim();
    let v = ['"', '\'']
        .iter()
        .find_map(|q| v.strip_prefix(*q).and_then(|x| x.strip_suffix(*q)))
        .unwrap_or(v);
    Some((k.to_string(), v.to_string()))
}

/// One declared variable.
#[derive(Debug, Clone)]
struct VarSpec {
    secret: bool,
    types: Vec<String>,
    default: Option<Value>,
    /// `x-dev-default`: used when unset outside production only.
    dev_default: Option<Value>,
}

/// A loaded and compiled env schema.
pub struct EnvSchema {
    file: PathBuf,
    doc: Document,
    validator: Validator,
    vars: BTreeMap<String, VarSpec>,
}

impl std::fmt::Debug for EnvSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSchema")
            .field("file", &self.file)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EnvSchema {
    /// Read and compile `file`.
    pub fn load(file: &Path) -> Result<EnvSchema, Vec<Diagnostic>> {
        let bytes = std::fs::read(file).map_err(|e| {
            vec![Diagnostic::new(
                file,
                Pos::START,
                "",
                format!("cannot read the env schema: {e}; every pipelines directory declares its environment in {ENV_SCHEMA_FILE}"),
            )]
        })?;
        let doc = yaml::parse_bytes(&bytes)
            .map_err(|e| vec![Diagnostic::new(file, e.pos(), "", e.to_string())])?;
        Self::from_document(file, doc)
    }

    fn from_document(file: &Path, doc: Document) -> Result<EnvSchema, Vec<Diagnostic>> {
        let Some(props) = doc.value.get("properties").and_then(Value::as_object) else {
            return Err(vec![Diagnostic::new(
                file,
                doc.value_pos(""),
                "",
                "the env schema must be a JSON Schema object with `properties`, one per variable",
            )]);
        };
        let mut vars = BTreeMap::new();
        let mut diags = Vec::new();
        for (name, spec) in props {
            let pointer = format!("/properties/{}", yaml::escape_token(name));
            if !is_env_name(name) {
                diags.push(Diagnostic::new(
                    file,
                    doc.key_pos(&pointer),
                    &pointer,
                    format!("`{name}` is not a valid variable name; use letters, digits and `_`"),
                ));
            }
            let types = match spec.get("type") {
                Some(Value::String(t)) => vec![t.clone()],
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                _ => Vec::new(),
            };
            vars.insert(
                name.clone(),
                VarSpec {
                    secret: spec.get("x-secret").and_then(Value::as_bool) == Some(true),
                    types,
                    default: spec.get("default").cloned(),
                    dev_default: spec.get("x-dev-default").cloned(),
                },
            );
        }
        let validator = match crate::schema::compile(&doc.value) {
            Ok(v) => v,
            Err(e) => {
                diags.push(Diagnostic::new(
                    file,
                    Pos::START,
                    "",
                    format!("not a valid JSON Schema: {e}"),
                ));
                return Err(diags);
            }
        };
        if !diags.is_empty() {
            return Err(diags);
        }
        Ok(EnvSchema {
            file: file.to_path_buf(),
            doc,
            validator,
            vars,
        })
    }

    /// Whether `name` is declared.
    pub fn declares(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// Whether `name` is declared with `x-secret: true`.
    pub fn is_secret(&self, name: &str) -> bool {
        self.vars.get(name).is_some_and(|s| s.secret)
    }

    /// The declared variable names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// Type, default and validate the declared variables of `source`.
    pub fn validate(&self, source: &EnvSource) -> Result<Env, Vec<Diagnostic>> {
        let production = source.get("NODE_ENV") == Some("production");
        let mut values = Map::new();
        for (name, spec) in &self.vars {
            match source.get(name) {
                Some(raw) => {
                    values.insert(name.clone(), coerce(raw, &spec.types));
                }
                None => {
                    // A development default never stands in for a production value.
                    let fallback = spec
                        .default
                        .as_ref()
                        .or(spec.dev_default.as_ref().filter(|_| !production));
                    if let Some(d) = fallback {
                        values.insert(name.clone(), d.clone());
                    }
                }
            }
        }
        let instance = Value::Object(values);
        let mut diags: Vec<Diagnostic> = Vec::new();
        for err in self.validator.iter_errors(&instance) {
            for finding in crate::schema::explain(&err, &self.doc.value) {
                let var = match err.kind() {
                    ValidationErrorKind::Required { property } => {
                        property.as_str().unwrap_or_default().to_string()
                    }
                    _ => first_token(&finding.pointer),
                };
                let message = match err.kind() {
                    ValidationErrorKind::Required { .. } if !finding.custom => {
                        "is required".to_string()
                    }
                    ValidationErrorKind::Format { format }
                        if format == "supabase-service-role-key" =>
                    {
                        err.instance()
                            .as_str()
                            .and_then(crate::schema::formats::service_role_key_problem)
                            .unwrap_or(finding.message)
                    }
                    _ => finding.message,
                };
                let d = self.locate(source, &var, format!("{var}: {message}"));
                if !diags.contains(&d) {
                    diags.push(d);
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let Value::Object(values) = instance else {
            unreachable!("built as an object above")
        };
        let secrets = self
            .vars
            .iter()
            .filter(|(_, s)| s.secret)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Env { values, secrets })
    }

    /// Point at the variable's line in a dotenv file, else at its declaration in the schema.
    pub fn locate(&self, source: &EnvSource, var: &str, message: String) -> Diagnostic {
        if let (Some(file), Some(line)) = (&source.file, source.lines.get(var)) {
            return Diagnostic::new(
                file,
                Pos {
                    line: *line,
                    col: 1,
                },
                "",
                message,
            );
        }
        let pointer = format!("/properties/{}", yaml::escape_token(var));
        Diagnostic::new(&self.file, self.doc.key_pos(&pointer), &pointer, message)
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn first_token(pointer: &str) -> String {
    pointer
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .replace("~1", "/")
        .replace("~0", "~")
}

/// Env values are strings; give them the declared JSON type when they parse as it, so the schema
/// checks `PORT` as an integer. A value that does not parse stays a string and fails the `type`
/// rule with a clear message.
fn coerce(raw: &str, types: &[String]) -> Value {
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("integer")
        && let Ok(i) = raw.trim().parse::<i64>()
    {
        return Value::from(i);
    }
    if has("number")
        && let Ok(f) = raw.trim().parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    if has("boolean") {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(raw.to_string())
}

/// The validated environment: declared variables only, typed and defaulted.
#[derive(Clone, Default)]
pub struct Env {
    values: Map<String, Value>,
    secrets: BTreeSet<String>,
}

impl std::fmt::Debug for Env {
    // Never print values: some are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("variables", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Env {
    /// A variable's typed value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// A variable's value as text (numbers and booleans rendered).
    pub fn get_string(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// `NODE_ENV`, `development` when unset.
    pub fn environment(&self) -> String {
        self.get_string("NODE_ENV")
            .unwrap_or_else(|| "development".to_string())
    }

    pub fn is_production(&self) -> bool {
        self.environment() == "production"
    }

    /// Whether the schema marks `name` as a secret (`x-secret: true`).
    pub fn is_secret(&self, name: &str) -> bool {
        self.secrets.contains(name)
    }

    /// The values of the set secret variables, and the passwords inside URL-valued ones (to
    /// scrub them from error reports, which may quote either).
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for value in self.secrets.iter().filter_map(|name| self.get_string(name)) {
            if let Some(pw) = url::Url::parse(&value)
                .ok()
                .and_then(|u| u.password().map(str::to_string))
            {
                out.push(pw);
            }
            out.push(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> EnvSchema {
        let doc = yaml::parse_str(text).unwrap();
        EnvSchema::from_document(Path::new("env.schema.yaml"), doc).unwrap()
    }

    #[test]
    fn coerces_declared_types_and_applies_defaults() {
        let s = schema(
            "properties:\n  PORT: {type: integer, default: 3001}\n  ON: {type: boolean}\n  NAME: {type: string}\n",
        );
        let env = s
            .validate(&EnvSource::from_pairs([
                ("ON", "TRUE"),
                ("NAME", "42"),
                ("OTHER", "x"),
            ]))
            .unwrap();
        assert_eq!(env.get("PORT"), Some(&Value::from(3001)));
        assert_eq!(env.get("ON"), Some(&Value::Bool(true)));
        assert_eq!(env.get("NAME"), Some(&Value::from("42")));
        assert_eq!(env.get("OTHER"), None, "undeclared variables are invisible");
    }

    #[test]
    fn dev_default_only_outside_production() {
        let s = schema(
            "properties:\n  S: {type: string, x-dev-default: dev-secret}\n  NODE_ENV: {type: string}\n",
        );
        let dev = s
            .validate(&EnvSource::from_pairs([("NODE_ENV", "development")]))
            .unwrap();
        assert_eq!(dev.get_string("S").as_deref(), Some("dev-secret"));
        let prod = s
            .validate(&EnvSource::from_pairs([("NODE_ENV", "production")]))
            .unwrap();
        assert_eq!(prod.get("S"), None);
        let set = s.validate(&EnvSource::from_pairs([("S", "real")])).unwrap();
        assert_eq!(set.get_string("S").as_deref(), Some("real"));
    }

    #[test]
    fn wrong_type_names_variable_not_value() {
        let s = schema("properties:\n  PORT: {type: integer}\n");
        let err = s
            .validate(&EnvSource::from_pairs([("PORT", "eighty")]))
            .unwrap_err();
        assert_eq!(err[0].message, "PORT: expected an integer, found a string");
        assert_eq!((err[0].line, err[0].column), (2, 3));
    }

    #[test]
    fn dotenv_errors_point_at_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prod.env");
        std::fs::write(&path, "# comment\nA=1\nPORT=abc\n").unwrap();
        let s = schema("properties:\n  PORT: {type: integer}\n");
        let err = s
            .validate(&EnvSource::from_file(&path).unwrap())
            .unwrap_err();
        assert_eq!(err[0].line, 3);
        assert_eq!(err[0].file, path.display().to_string());
    }

    #[test]
    fn env_file_tolerates_unquoted_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.env");
        std::fs::write(
            &path,
            "# CORE\nNODE_ENV=production\nKEY=<PASTE YOUR KEY>\nexport Q=\"quoted value\"\nB=after\n",
        )
        .unwrap();
        let src = EnvSource::from_file(&path).unwrap();
        assert_eq!(src.get("NODE_ENV"), Some("production"));
        assert_eq!(src.get("KEY"), Some("<PASTE YOUR KEY>"));
        assert_eq!(src.get("Q"), Some("quoted value"));
        assert_eq!(src.get("B"), Some("after"));
        assert_eq!(src.lines.get("B"), Some(&5));
    }

    #[test]
    fn empty_value_is_unset() {
        let s = schema("properties:\n  R: {type: string}\nrequired: [R]\n");
        let err = s.validate(&EnvSource::from_pairs([("R", "")])).unwrap_err();
        assert_eq!(err[0].message, "R: is required");
    }
}
