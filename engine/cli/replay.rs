//! `engine replay`: fixtures through the real pipelines in process, reported as text, JSON or JUnit.

use std::process::ExitCode;

use super::runtime;

/// The single-threaded runtime of the one-shot commands.
pub(super) fn replay(
    opts: crate::replay::ReplayOptions,
    format: crate::replay::report::ReportFormat,
) -> ExitCode {
    if !opts.pipelines.is_dir() {
        eprintln!("engine: {}: not a directory", opts.pipelines.display());
        return ExitCode::from(2);
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match rt.block_on(crate::replay::run(&opts)) {
        Err(e) => {
            eprintln!("engine: {}", crate::diagnostics::chain(&e));
            ExitCode::from(2)
        }
        Ok(report) => {
            print!("{}", crate::replay::report::render(&report, format));
            if report.cases.is_empty() {
                eprintln!("engine: no fixtures matched");
                return ExitCode::from(1);
            }
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
