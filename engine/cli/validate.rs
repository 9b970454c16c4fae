//! `engine validate` (every problem of a pipelines directory, `--database-url` adds the sink
//! table check) and `engine schema` (the JSON schemas derived from the config types).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::env_source;
use crate::diagnostics::{self, Diagnostic, Format};

pub(super) fn validate(
    dir: &Path,
    env_file: Option<&Path>,
    format: Format,
    database: Option<(&str, crate::table_check::CheckOptions<'_>)>,
) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("engine: {}: not a directory", dir.display());
        return ExitCode::from(2);
    }
    let source = match env_source(env_file) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // load + build: every problem of the files and of their scripts and verifiers
    let mut result = crate::plan::load(dir, &source).map(|(project, _)| project);
    if let (Ok(project), Some((url, options))) = (&mut result, database) {
        match table_problems(project, url, &options) {
            Ok(d) if d.iter().all(Diagnostic::is_warning) => project.warnings.extend(d),
            Ok(d) => result = Err(d),
            Err(e) => {
                eprintln!("engine: table check: {}", crate::diagnostics::chain(&*e));
                return ExitCode::from(1);
            }
        }
    }
    let diags: &[Diagnostic] = match &result {
        Ok(p) => &p.warnings,
        Err(d) => d,
    };
    print!("{}", diagnostics::render(diags, format));
    let errors = diags.iter().filter(|d| !d.is_warning()).count();
    match (&result, format) {
        (Ok(p), Format::Text) => {
            println!(
                "{}: {} pipeline{} valid",
                dir.display(),
                p.pipelines.len(),
                if p.pipelines.len() == 1 { "" } else { "s" }
            );
        }
        (Err(_), Format::Text | Format::Github) => {
            eprintln!(
                "{errors} problem{} found",
                if errors == 1 { "" } else { "s" }
            );
        }
        _ => {}
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(super) fn schema(out: &Path, check: bool) -> ExitCode {
    let mut stale = Vec::new();
    let mut schemas = crate::config::generated_schemas();
    schemas.push(("fixture.schema.json", crate::fixture::SCHEMA.0.clone()));
    for (name, mut value) in schemas {
        // the published file names itself, as standard validators expect
        if let Value::Object(m) = &mut value {
            m.insert(
                "$id".into(),
                Value::String(format!("urn:engine:schemas:{name}")),
            );
        }
        let path = out.join(name);
        let mut text = serde_json::to_string_pretty(&value).expect("schemas serialize");
        text.push('\n');
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path);
            }
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("engine: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in stale {
            eprintln!(
                "{}: differs from the generated schema; run `engine schema`",
                p.display()
            );
        }
        ExitCode::from(1)
    }
}

/// [`crate::table_check::check_project`] on a runtime of its own (one-shot commands).
pub(super) fn table_problems(
    project: &crate::config::Project,
    url: &str,
    options: &crate::table_check::CheckOptions<'_>,
) -> Result<Vec<Diagnostic>, super::CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(crate::table_check::check_project(project, url, options))?)
}
