//! Verification agrees with the providers' official SDKs, case by case: every case of
//! `tests/conformance/<provider>.yaml` is a test of an SDK's own suite (cited in `from`), its
//! inputs and the SDK's verdict, run through the engine's verifier as a pipeline configures it.
//!
//! A case whose `sdk` verdict differs from `expect` is a deliberate difference and must say
//! `why`; docs/verify.md lists them, and its conformance table must carry the counts this run
//! finds (so the table cannot drift from the data).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::verify::{Context, Inbound, Verifier};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    provider: String,
    sdks: Vec<Sdk>,
    /// The pipeline's `verify` section (secrets literal: test secrets).
    verify: Value,
    #[serde(default)]
    defaults: Defaults,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sdk {
    repo: String,
    version: String,
    commit: String,
    read: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    url: Option<String>,
    method: Option<String>,
    form: Option<Vec<(String, String)>>,
    body: Option<String>,
    content_type: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    now: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// `<owner/repo> <file>::<test name>`.
    from: String,
    /// How a value here was obtained, when the SDK test computes it at run time.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    /// Replaces the file's `verify` (another secret, tolerance, header).
    verify: Option<Value>,
    url: Option<String>,
    method: Option<String>,
    /// Form parameters, URL-encoded as the body (`application/x-www-form-urlencoded`).
    form: Option<Vec<(String, String)>>,
    /// A raw body (instead of `form`).
    body: Option<String>,
    content_type: Option<String>,
    /// Replaces the file's default headers.
    headers: Option<BTreeMap<String, String>>,
    /// The verifier's clock, Unix seconds.
    now: Option<i64>,
    /// What the engine must decide.
    expect: Verdict,
    /// What the SDK decides, when it differs: a deliberate difference, explained in `why`.
    sdk: Option<Verdict>,
    why: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Accept,
    Reject,
    /// The configuration itself is refused (an empty or malformed secret).
    RefuseConfig,
}

fn files() -> Vec<(PathBuf, File)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let doc =
                engine::yaml::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
            let file: File = serde_json::from_value(doc.value)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, file)
        })
        .collect()
}

fn verdict(file: &File, case: &Case) -> Verdict {
    let cfg = case.verify.as_ref().unwrap_or(&file.verify);
    let cfg: engine::config::verify::Verify = serde_json::from_value(cfg.clone())
        .unwrap_or_else(|e| panic!("{}: verify: {e}", case.from));
    let Ok(verifier) = Verifier::build(&cfg) else {
        return Verdict::RefuseConfig;
    };
    let d = &file.defaults;
    let url = case.url.as_ref().or(d.url.as_ref()).expect("a url");
    let form_body = |pairs: &Vec<(String, String)>| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    // the case's own body or form first, then the file's
    let (body, form_type) = match (&case.body, &case.form, &d.body, &d.form) {
        (Some(b), ..) => (b.clone(), false),
        (None, Some(pairs), ..) => (form_body(pairs), true),
        (None, None, Some(b), _) => (b.clone(), false),
        (None, None, None, Some(pairs)) => (form_body(pairs), true),
        (None, None, None, None) => (String::new(), false),
    };
    let mut headers = salvo::http::HeaderMap::new();
    let content_type = case
        .content_type
        .clone()
        .or_else(|| d.content_type.clone())
        .or_else(|| form_type.then(|| "application/x-www-form-urlencoded".to_string()));
    if let Some(ct) = content_type {
        headers.insert("content-type", ct.parse().unwrap());
    }
    for (k, v) in case
        .headers
        .as_ref()
        .or(d.headers.as_ref())
        .into_iter()
        .flatten()
    {
        headers.append(
            salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let method = case.method.as_ref().or(d.method.as_ref());
    let inbound = Inbound {
        method: method.map_or("POST", String::as_str),
        url,
        headers: &headers,
        body: body.as_bytes(),
        now: case.now.or(d.now).unwrap_or(0),
    };
    let ctx = Context {
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        tenant_id: None,
        tenants: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match runtime.block_on(verifier.verify(&inbound, &ctx)) {
        Ok(()) => Verdict::Accept,
        Err(_) => Verdict::Reject,
    }
}

#[test]
fn every_ported_sdk_case_passes_and_the_docs_table_says_so() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/verify.md"))
            .unwrap();
    let mut failures = Vec::new();
    for (path, file) in files() {
        let repos: Vec<&str> = file.sdks.iter().map(|s| s.repo.as_str()).collect();
        for s in &file.sdks {
            assert!(
                s.commit.len() == 40 && !s.version.is_empty() && !s.read.is_empty(),
                "{}: {s:?}",
                path.display()
            );
        }
        let mut differences = 0;
        for case in &file.cases {
            let repo = case.from.split_whitespace().next().unwrap_or("");
            assert!(
                repos.contains(&repo) && case.from.contains("::"),
                "{}: `{}` must cite one of {repos:?} as `<repo> <file>::<test>`",
                path.display(),
                case.from
            );
            if let Some(sdk) = case.sdk {
                assert_ne!(
                    sdk, case.expect,
                    "{}: `sdk` only when it differs",
                    case.from
                );
                assert!(
                    case.why.as_ref().is_some_and(|w| w.len() > 20),
                    "{}: a deliberate difference says why",
                    case.from
                );
                differences += 1;
            }
            let got = verdict(&file, case);
            if got != case.expect {
                failures.push(format!(
                    "{}: {}: expected {:?}, the engine says {got:?}",
                    file.provider, case.from, case.expect
                ));
            }
        }
        let n = file.cases.len();
        let row = format!("| {} |", file.provider);
        let line = docs
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("docs/verify.md has no conformance row `{row} ...`"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(
            cells.contains(&n.to_string().as_str())
                && line.contains(&format!("| {n} | {n} |"))
                && line.contains(&format!("| {differences} |")),
            "docs/verify.md's row for {} must say {n} ported, {n} passing, {differences} deliberate differences: {line}",
            file.provider
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
