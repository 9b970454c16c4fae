//! How `engine replay` prints its results: `text` for people (one line per case, the
//! differences of failing ones, a closing `N passed, N failed`), `json` for tools, `junit` for CI
//! systems that show test reports.

use super::Report;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Junit,
}

/// The report in `format`.
pub fn render(report: &Report, format: ReportFormat) -> String {
    match format {
        ReportFormat::Text => text(report),
        ReportFormat::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        ReportFormat::Junit => junit(report),
    }
}

fn text(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.cases {
        let mark = match (c.passed, c.updated) {
            (true, true) => "updated",
            (true, false) => "ok",
            (false, _) => "FAIL",
        };
        out.push_str(&format!(
            "{mark:<7} {} ({:.1} ms)\n",
            c.name,
            c.duration.as_secs_f64() * 1000.0
        ));
        if !c.passed {
            out.push_str(&format!("        {}\n", c.file));
            if let Some(d) = &c.description {
                out.push_str(&format!("        {d}\n"));
            }
            for p in &c.problems {
                for (i, line) in p.lines().enumerate() {
                    let lead = if i == 0 { "      - " } else { "        " };
                    out.push_str(&format!("{lead}{line}\n"));
                }
            }
        }
    }
    let updated = report.cases.iter().filter(|c| c.updated).count();
    out.push_str(&format!(
        "{} passed, {} failed{} ({:.0} ms)\n",
        report.passed,
        report.failed,
        if updated > 0 {
            format!(", {updated} updated")
        } else {
            String::new()
        },
        report.duration.as_secs_f64() * 1000.0
    ));
    out
}

fn junit(report: &Report) -> String {
    use quick_junit::{NonSuccessKind, Report as Junit, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new("engine replay");
    for c in &report.cases {
        let status = if c.passed {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(c.problems.first().cloned().unwrap_or_default());
            s.set_description(c.problems.join("\n"));
            s
        };
        let mut case = TestCase::new(c.name.clone(), status);
        case.set_classname(c.file.clone());
        case.set_time(c.duration);
        suite.add_test_case(case);
    }
    suite.set_time(report.duration);
    let mut out = Junit::new("engine replay");
    out.set_time(report.duration);
    out.add_test_suite(suite);
    out.to_string().unwrap_or_default()
}
