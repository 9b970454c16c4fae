//! `engine replay` end to end: the shipped fixtures pass; a failing case is reported with every
//! difference; `--update` rewrites only `expect`; fixture errors are `file:line:col`; signature
//! timestamps follow the frozen clock; and `engine serve --record` writes fixtures that carry no
//! credential, replay, and pass.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Dir, shipped};
use engine::replay::{ReplayOptions, Report, run};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

async fn replay(fixtures: &Path, pipelines: &Path, update: bool) -> Report {
    run(&ReplayOptions {
        fixtures: vec![fixtures.to_path_buf()],
        pipelines: pipelines.to_path_buf(),
        filter: None,
        update,
    })
    .await
    .unwrap()
}

/// `engine replay <fixtures> --pipelines <shipped> <args>`: exit code and output.
fn replay_cli(fixtures: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_clear()
        .arg("replay")
        .arg(fixtures)
        .arg("--pipelines")
        .arg(shipped())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &*String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn every_shipped_fixture_passes() {
    let report = replay(&fixtures(), &shipped(), false).await;
    let failed: Vec<String> = report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.problems.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(report.passed >= 20, "{} cases", report.passed);
    let outcomes = std::fs::read_dir(fixtures().join("vapi")).unwrap().count();
    assert!(outcomes >= 15);
}

#[test]
fn a_failing_case_prints_every_difference_and_exits_1() {
    let tmp = Dir::copy_of(&fixtures());
    let case = tmp.path().join("vapi/status-update.yaml");
    let text = std::fs::read_to_string(&case).unwrap();
    let broken = text
        .replace("status: 200", "status: 202")
        .replace("status: in-progress", "status: ringing");
    std::fs::write(&case, broken).unwrap();
    let dir = tmp.path();
    let (code, out) = replay_cli(dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL    vapi/status-update"), "{out}");
    assert!(out.contains("- status: expected 202, got 200"), "{out}");
    assert!(out.contains("- sink call_status: row 0:"), "{out}");
    assert!(
        out.contains("\"ringing\"") && out.contains("\"in-progress\""),
        "{out}"
    );
    assert!(
        out.contains("a status-update becomes one call_status row"),
        "{out}"
    );
    // every case but the broken one passes, however many the shipped fixtures hold
    let cases = engine::replay::discover(&[dir.to_path_buf()])
        .unwrap()
        .len();
    let last = out.lines().rfind(|l| l.contains("passed")).unwrap();
    assert!(
        last.starts_with(&format!("{} passed, 1 failed", cases - 1)),
        "{last}"
    );

    // --filter narrows the run; json and junit carry the same verdicts
    let (code, out) = replay_cli(dir, &["--filter", "vapi/status", "--format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["passed"], 1, "{out}");
    assert_eq!(v["failed"], 1);
    let (_, xml) = replay_cli(dir, &["--format", "junit"]);
    assert!(
        xml.contains(&format!(
            r#"<testsuite name="engine replay" tests="{cases}""#
        )),
        "{xml}"
    );
    assert!(xml.contains("failures=\"1\""), "{xml}");
    assert!(xml.contains("status: expected 202, got 200"), "{xml}");

    let (code, out) = replay_cli(dir, &["--filter", "nothing-is-called-this"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no fixtures matched"), "{out}");
}

#[tokio::test]
async fn update_rewrites_only_expect_and_then_passes() {
    let tmp = Dir::copy_of(&fixtures());
    let case = tmp.path().join("vapi/status-update.yaml");
    let text = std::fs::read_to_string(&case).unwrap();
    let head = &text[..text.find("expect:").unwrap()];
    std::fs::write(
        &case,
        format!("{head}expect:\n  status: 500\n  outcome: dropped\n"),
    )
    .unwrap();
    let report = replay(tmp.path(), &shipped(), false).await;
    assert_eq!(report.failed, 1);

    let report = replay(tmp.path(), &shipped(), true).await;
    assert_eq!(report.failed, 0);
    let updated: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| c.updated)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(updated, ["vapi/status-update"]);
    let after = std::fs::read_to_string(&case).unwrap();
    assert!(
        after.starts_with(head),
        "the request part changed:\n{after}"
    );
    assert!(after.contains("# yaml-language-server"), "comments kept");
    assert!(
        after.contains("  status: 200\n  outcome: written\n"),
        "{after}"
    );
    assert!(after.contains("call_status:"), "{after}");
    assert_eq!(replay(tmp.path(), &shipped(), false).await.failed, 0);
}

#[tokio::test]
async fn fixture_mistakes_are_reported_at_their_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vapi");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("typo.yaml"),
        "request:\n  path: /api/webhooks/vapi\n  sing: true\nexpect:\n  status: 99\n  reason: '(unclosed'\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("missing-file.yaml"),
        "clock: 2025-06-01T12:00:00Z\nrequest:\n  path: /api/webhooks/vapi\n  body:\n    file: nowhere.json\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-clock.yaml"),
        "clock: yesterday\nrequest: {path: /api/webhooks/vapi}\n",
    )
    .unwrap();
    let report = replay(tmp.path(), &shipped(), false).await;
    assert_eq!(report.failed, 3);
    let all: Vec<String> = report
        .cases
        .iter()
        .flat_map(|c| c.problems.clone())
        .collect();
    let text = all.join("\n");
    assert!(
        text.contains("typo.yaml:3:3: unknown key `sing`; did you mean `sign`?"),
        "{text}"
    );
    assert!(
        text.contains("typo.yaml:5:11: must be at least 100"),
        "{text}"
    );
    assert!(
        text.contains("typo.yaml:6:11: is not a valid regex"),
        "{text}"
    );
    assert!(
        text.contains("missing-file.yaml:5:11: no file `nowhere.json` next to this fixture"),
        "{text}"
    );
    assert!(
        text.contains("bad-clock.yaml:1:8: is not a valid date-time"),
        "{text}"
    );
}

#[tokio::test]
async fn timestamps_are_checked_against_the_frozen_clock() {
    let dir = Dir::shipped_copy();
    let schema = std::fs::read_to_string(dir.path().join("env.schema.yaml")).unwrap();
    dir.write(
        "env.schema.yaml",
        &schema.replacen(
            "\nproperties:\n",
            "\nproperties:\n  STRIPE_WEBHOOK_SECRET:\n    type: string\n    x-secret: true\n",
            1,
        ),
    );
    dir.write(
        "stripe.yaml",
        "name: stripe\nroute: {method: POST, path: /stripe}\nverify:\n  stripe:\n    secret: ${STRIPE_WEBHOOK_SECRET}\n",
    );
    let cases = tempfile::tempdir().unwrap();
    let case = |at: &str| {
        format!(
            "env: {{STRIPE_WEBHOOK_SECRET: whsec_test}}\nclock: 2025-06-01T12:00:00Z\nrequest:\n  path: /stripe\n  body: {{json: {{id: evt_1, type: invoice.paid}}}}\n  sign: {at}\n"
        )
    };
    std::fs::write(
        cases.path().join("fresh.yaml"),
        case("true") + "expect: {status: 200, outcome: responded}\n",
    )
    .unwrap();
    std::fs::write(
        cases.path().join("four-minutes-old.yaml"),
        case("{at: 2025-06-01T11:56:00Z}") + "expect: {status: 200}\n",
    )
    .unwrap();
    std::fs::write(
        cases.path().join("stale.yaml"),
        case("{at: 2025-06-01T11:54:00Z}") + "expect: {status: 401, outcome: rejected}\n",
    )
    .unwrap();
    let report = replay(cases.path(), dir.path(), false).await;
    for c in &report.cases {
        assert!(c.passed, "{}: {:?}", c.name, c.problems);
    }
    assert_eq!(report.passed, 3);
}

#[tokio::test]
async fn recorded_traffic_replays_without_its_secrets() {
    let token = "fedcba9876543210fedcba9876543210";
    // the shipped twilio-sms.yaml redacts From and Body (and the caller's place, media URLs)
    let dir = Dir::shipped_copy();
    let rec = tempfile::tempdir().unwrap();
    let env = [
        ("TWILIO_AUTH_TOKEN", token),
        ("BACKEND_URL", "https://api.voxanne.ai"),
    ];
    let app = common::spawn_app_with(
        dir.path(),
        &env,
        engine::server::AppContext {
            record: Some(rec.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await;
    let body = std::fs::read(fixtures().join("payloads/twilio/sms-inbound.form")).unwrap();
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let url = "https://api.voxanne.ai/api/twilio/sms";
    let signed = common::sign(dir.path(), &env, "twilio-sms", url, &[ct], &body);
    let mut req = app
        .client
        .post(app.url("/api/twilio/sms"))
        .header(ct.0, ct.1)
        .body(body.clone());
    for (k, v) in &signed {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    // an unsigned request is refused and not recorded
    let res = app
        .client
        .post(app.url("/api/twilio/sms"))
        .header(ct.0, ct.1)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let pipeline_dir = rec.path().join("twilio-sms");
    let mut files = Vec::new();
    for _ in 0..100 {
        // only finished recordings: each is written as `.yaml.tmp`, then renamed
        files = std::fs::read_dir(&pipeline_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                    .collect()
            })
            .unwrap_or_default();
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let signature = &signed[0].1;
    for secret in [
        token,
        signature.as_str(),
        "x-twilio-signature",
        "+14155550123",
        "Wednesday",
    ] {
        assert!(
            !text.to_lowercase().contains(&secret.to_lowercase()),
            "{secret} in\n{text}"
        );
    }
    assert!(text.contains("sign: true"), "{text}");
    assert!(text.contains("From: \"[redacted]\""), "{text}");
    assert!(text.contains("MessageSid: SM"), "{text}");

    // with a test token and the public URL it was signed for, the recording replays
    assert!(
        !text.contains("\nenv:"),
        "a recording carries no environment:\n{text}"
    );
    let text = format!(
        "env:\n  TWILIO_AUTH_TOKEN: 0123456789abcdef0123456789abcdef\n  BACKEND_URL: https://api.voxanne.ai\n{text}"
    );
    std::fs::write(&files[0], text).unwrap();
    let report = replay(rec.path(), dir.path(), true).await;
    assert_eq!(report.failed, 0, "{:?}", report.cases[0].problems);
    let after = std::fs::read_to_string(&files[0]).unwrap();
    assert!(after.contains("outcome: written"), "{after}");
    assert!(after.contains("from_number: \"[redacted]\""), "{after}");
    assert_eq!(replay(rec.path(), dir.path(), false).await.failed, 0);
}

/// The README's count of shipped fixture cases is the number of case files (issue 44: the docs
/// said 45 and 33 while there were 46).
#[test]
fn the_readme_counts_the_shipped_cases() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    fn cases(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.ends_with("payloads"))
            .map(|p| match p.is_dir() {
                true => cases(&p),
                false => usize::from(p.extension().is_some_and(|e| e == "yaml")),
            })
            .sum()
    }
    let n = cases(&root.join("fixtures"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("{n} shipped cases")),
        "README.md should say `{n} shipped cases`"
    );
}
