//! Validation findings and how they are printed.
//!
//! Every check in the engine (YAML syntax, JSON-schema, env rules, semantic rules) produces
//! [`Diagnostic`]s instead of failing fast, so `engine validate` and `engine serve` can report every
//! problem at once. A diagnostic never carries a configuration or environment *value*: messages are
//! built from rule names and positions so secrets cannot leak into CI logs.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::yaml::Pos;

/// One problem, located in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// File the problem is in, as the user named it (relative paths stay relative).
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// JSON pointer of the offending value inside the file ("" for the whole file).
    pub pointer: String,
    pub message: String,
    /// `error` (the default: the engine refuses to start) or `warning` (reported, not fatal).
    #[serde(skip_serializing_if = "Severity::is_error")]
    pub severity: Severity,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Error,
    /// Worth fixing, but the deployment works as it is (e.g. a variable nothing reads).
    Warning,
}

impl Severity {
    fn is_error(&self) -> bool {
        *self == Severity::Error
    }
}

impl Diagnostic {
    pub fn new(
        file: impl AsRef<Path>,
        pos: Pos,
        pointer: &str,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.as_ref().display().to_string(),
            line: pos.line,
            column: pos.col,
            pointer: pointer.to_string(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// The same finding as a warning.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.is_warning() { "warning: " } else { "" };
        write!(
            f,
            "{}:{}:{}: {level}{}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.pointer.is_empty() {
            write!(f, " (at {})", self.pointer)?;
        }
        Ok(())
    }
}

/// Output formats of `engine validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `file:line:col: message (at /pointer)`, one per line.
    Text,
    /// A JSON array of `{file, line, column, pointer, message}`.
    Json,
    /// GitHub Actions workflow commands (`::error file=..,line=..,col=..::message`).
    Github,
}

/// Render a list of diagnostics in the chosen format.
pub fn render(diags: &[Diagnostic], format: Format) -> String {
    match format {
        Format::Text => {
            let mut out = String::new();
            for d in diags {
                out.push_str(&d.to_string());
                out.push('\n');
            }
            out
        }
        Format::Json => {
            let mut s = serde_json::to_string_pretty(diags).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            s
        }
        Format::Github => {
            let mut out = String::new();
            for d in diags {
                let msg = if d.pointer.is_empty() {
                    d.message.clone()
                } else {
                    format!("{} (at {})", d.message, d.pointer)
                };
                out.push_str(&format!(
                    "::{} file={},line={},col={}::{}\n",
                    if d.is_warning() { "warning" } else { "error" },
                    github_escape_property(&d.file),
                    d.line,
                    d.column,
                    github_escape_data(&msg)
                ));
            }
            out
        }
    }
}

// GitHub's workflow-command escaping (actions/toolkit `command.ts`).
fn github_escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn github_escape_property(s: &str) -> String {
    github_escape_data(s)
        .replace(':', "%3A")
        .replace(',', "%2C")
}

/// An error and its causes, one after another (`the connection pool: database unavailable:
/// connection refused`): what an operator reads in a log line or a refusal to start. Each
/// level's text is its own (no level repeats its cause), so nothing is said twice.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Diagnostic> {
        vec![Diagnostic::new(
            "pipelines/vapi.yaml",
            Pos { line: 3, col: 5 },
            "/route/method",
            "must be one of: GET, POST",
        )]
    }

    #[test]
    fn text_format() {
        assert_eq!(
            render(&sample(), Format::Text),
            "pipelines/vapi.yaml:3:5: must be one of: GET, POST (at /route/method)\n"
        );
    }

    #[test]
    fn github_format_escapes() {
        let mut d = sample();
        d[0].message = "50%, then\nmore".into();
        assert_eq!(
            render(&d, Format::Github),
            "::error file=pipelines/vapi.yaml,line=3,col=5::50%25, then%0Amore (at /route/method)\n"
        );
    }

    #[test]
    fn json_format() {
        let v: serde_json::Value = serde_json::from_str(&render(&sample(), Format::Json)).unwrap();
        assert_eq!(v[0]["line"], 3);
        assert_eq!(v[0]["pointer"], "/route/method");
    }
}
