//! The `engine` binary: validate's exit codes and formats, --env-file, schema drift, and serve's
//! boot refusal, start-up log and SIGTERM.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Dir, shipped};

fn engine() -> std::process::Command {
    common::engine_command()
}

fn run(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn validate_shipped_pipelines_exit_0() {
    let (code, out, _) = run(engine().arg("validate").arg(shipped()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 pipelines valid"), "{out}");
}

#[test]
fn validate_broken_exit_1_with_positions_in_every_format() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: bad\nroute:\n  methd: POST\n  path: /bad\n",
    );
    let (code, out, err) = run(engine().arg("validate").arg(dir.path()));
    assert_eq!(code, 1);
    assert!(
        out.contains("bad.yaml:3:3: unknown key `methd`; did you mean `method`?"),
        "{out}"
    );
    assert!(err.contains("2 problems found"), "{err}");

    let (code, out, _) = run(engine()
        .args(["validate", "--format", "json"])
        .arg(dir.path()));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let typo = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pointer"] == "/route/methd")
        .unwrap();
    assert_eq!(
        (typo["line"].as_u64(), typo["column"].as_u64()),
        (Some(3), Some(3))
    );

    let (code, out, _) = run(engine()
        .args(["validate", "--format", "github"])
        .arg(dir.path()));
    assert_eq!(code, 1);
    assert!(out.lines().all(|l| l.starts_with("::error file=")), "{out}");
    assert!(out.contains(",line=3,col=3::unknown key `methd`"), "{out}");
}

#[test]
fn validate_usage_errors_exit_2() {
    assert_eq!(run(engine().args(["validate", "/no/such/dir"])).0, 2);
    assert_eq!(run(engine().args(["validate", "--format", "xml"])).0, 2);
    assert_eq!(run(engine().arg("frobnicate")).0, 2);
    assert_eq!(
        run(engine()
            .args(["validate", "--env-file", "/no/such.env"])
            .arg(shipped()))
        .0,
        2
    );
}

#[test]
fn env_file_placeholders_fail_complete_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let complete = format!(
        "NODE_ENV=production\nDATABASE_URL=postgresql://postgres:pw@db.x.supabase.co:5432/postgres?sslmode=require\nREDIS_URL=redis://red-x:6379\nENCRYPTION_KEY={secret}\nCORS_ORIGIN=https://voxanne.ai\nBACKEND_URL=https://api.voxanne.ai\nVAPI_WEBHOOK_SECRET=prod-vapi-credential-secret\n"
    );
    let good = dir.path().join("good.env");
    std::fs::write(&good, &complete).unwrap();
    let (code, out, _) = run(engine()
        .arg("validate")
        .arg(shipped())
        .arg("--env-file")
        .arg(&good));
    assert_eq!(code, 0, "{out}");

    // the seed guide's env block as pasted, placeholders and all
    let bad = dir.path().join("bad.env");
    std::fs::write(
        &bad,
        "NODE_ENV=production\nPORT=3001\nSUPABASE_SERVICE_ROLE_KEY=<PASTE YOUR SUPABASE SERVICE ROLE KEY>\nENCRYPTION_KEY=deadbeefdeadbeefdeadbeefdeadbeef\nCORS_ORIGIN=*\nREDIS_URL=<WILL BE AUTO-POPULATED AFTER REDIS SETUP>\n",
    )
    .unwrap();
    let (code, out, _) = run(engine()
        .arg("validate")
        .arg(shipped())
        .arg("--env-file")
        .arg(&bad));
    assert_eq!(code, 1);
    let f = bad.display().to_string();
    for expected in [
        format!("{f}:3:1: SUPABASE_SERVICE_ROLE_KEY: is still a placeholder"),
        format!("{f}:4:1: ENCRYPTION_KEY: must be exactly 64 hex characters (got 32 characters)"),
        format!("{f}:5:1: CORS_ORIGIN: must list https:// origins in production"),
        format!("{f}:6:1: REDIS_URL: is still a placeholder"),
    ] {
        assert!(out.contains(&expected), "missing `{expected}` in\n{out}");
    }
    assert!(
        out.contains("DATABASE_URL: is required in production"),
        "{out}"
    );
    // values never appear
    assert!(
        !out.contains("deadbeef") && !out.contains("PASTE YOUR"),
        "{out}"
    );
}

#[test]
fn checked_in_schemas_match_the_code() {
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let (code, _, err) = run(engine().args(["schema", "--check", "--out"]).arg(&schemas));
    assert_eq!(
        code, 0,
        "run `cargo run -- schema` and commit the result: {err}"
    );
    // and --check really detects drift
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(run(engine().args(["schema", "--out"]).arg(tmp.path())).0, 0);
    std::fs::write(tmp.path().join("pipeline.schema.json"), "{}").unwrap();
    assert_eq!(
        run(engine()
            .args(["schema", "--check", "--out"])
            .arg(tmp.path()))
        .0,
        1
    );
}

#[test]
fn every_shipped_pipeline_starts_with_the_schema_modeline() {
    for entry in std::fs::read_dir(shipped()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let name = p.file_name().unwrap().to_str().unwrap();
        let expected = match name {
            "env.schema.yaml" => {
                "# yaml-language-server: $schema=https://json-schema.org/draft/2020-12/schema"
            }
            "engine.yaml" => "# yaml-language-server: $schema=../schemas/settings.schema.json",
            _ => "# yaml-language-server: $schema=../schemas/pipeline.schema.json",
        };
        assert_eq!(first, expected, "{name}");
    }
}

/// `engine validate` of the shipped pipelines with the dotenv file `env`.
fn validate_with(env: &std::path::Path) -> (i32, String, String) {
    run(engine()
        .arg("validate")
        .arg(shipped())
        .arg("--env-file")
        .arg(env))
}

/// The seed guide's environment with the mistakes a person makes moving it over: misspelt names
/// are errors while the real one is unset (their value would be silently ignored), variables
/// nothing reads are warnings, and production refuses a database without TLS, a project other
/// than SUPABASE_URL's, and the development CORS origin.
#[test]
fn seed_environment_mistakes_are_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let env = dir.path().join("seed.env");
    std::fs::write(
        &env,
        format!(
            "NODE_ENV=production\nSUPABASE_URL=https://lbjymlodxprzqgtyqtcq.supabase.co\nDATABASE_URL=postgresql://postgres.otherproject:hunter2@aws-0-us-west-1.pooler.supabase.com:6543/postgres?sslmode=require\nREDIS_URL=redis://red-x:6379\nREDIS_URI=redis://red-y:6379\nENCRYPTON_KEY={key}\nCORS_ORIGINS=https://voxanne.ai\nVAPI_WEBHOOK_SECRET=prod-vapi-credential-secret\nVAPI_PRIVATE_KEY=vapi-private-key-0123456789\nSUPABASE_ANON_KEY=anon-key-value-xyz\n"
        ),
    )
    .unwrap();
    let (code, out, err) = validate_with(&env);
    assert_eq!(code, 1, "{out}{err}");
    let f = env.display().to_string();
    for expected in [
        format!("{f}:6:1: ENCRYPTON_KEY is set but not declared: did you mean ENCRYPTION_KEY?"),
        format!("{f}:7:1: CORS_ORIGINS is set but not declared: did you mean CORS_ORIGIN?"),
        "ENCRYPTION_KEY: is required in production".to_string(),
    ] {
        assert!(out.contains(&expected), "missing `{expected}` in\n{out}");
    }
    assert!(err.contains("3 problems found"), "{err}");
    assert!(
        !out.contains("warning:"),
        "warnings wait until the errors are fixed: {out}"
    );

    // fixed names: now the production rules on the values speak
    let fixed = std::fs::read_to_string(&env)
        .unwrap()
        .replace("ENCRYPTON_KEY", "ENCRYPTION_KEY")
        .replace("CORS_ORIGINS=https://voxanne.ai\n", "")
        .replace("?sslmode=require", "");
    std::fs::write(&env, fixed).unwrap();
    let (code, out, _) = validate_with(&env);
    assert_eq!(code, 1, "{out}");
    for expected in [
        format!("{f}:3:1: DATABASE_URL: connects to a non-local database without TLS being required: add `?sslmode=require`"),
        "CORS_ORIGIN: is required in production: the allowed origins would be engine.yaml's development ones".to_string(),
    ] {
        assert!(out.contains(&expected), "missing `{expected}` in\n{out}");
    }
    let fixed = std::fs::read_to_string(&env)
        .unwrap()
        .replace("6543/postgres\n", "6543/postgres?sslmode=require\n")
        + "CORS_ORIGIN=https://voxanne.ai\n";
    std::fs::write(&env, &fixed).unwrap();
    let (code, out, _) = validate_with(&env);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{f}:3:1: DATABASE_URL: connects to a different Supabase project than SUPABASE_URL names")),
        "{out}"
    );
    // the same project: valid, with the warnings still shown
    std::fs::write(
        &env,
        fixed.replace("postgres.otherproject", "postgres.lbjymlodxprzqgtyqtcq"),
    )
    .unwrap();
    let (code, out, _) = validate_with(&env);
    assert_eq!(code, 0, "{out}");
    for expected in [
        format!("{f}:5:1: warning: REDIS_URI is set but not declared, and REDIS_URL is set too"),
        format!(
            "{f}:8:1: warning: VAPI_PRIVATE_KEY is set, but nothing in this deployment reads it"
        ),
        format!(
            "{f}:9:1: warning: SUPABASE_ANON_KEY is set, but nothing in this deployment reads it"
        ),
        "4 pipelines valid".to_string(),
    ] {
        assert!(out.contains(&expected), "missing `{expected}` in\n{out}");
    }
    for secret in ["hunter2", key, "vapi-private-key", "anon-key-value"] {
        assert!(!out.contains(secret), "a value leaked: {out}");
    }
}

/// In production every line the engine writes is JSON, the boot refusal included.
#[test]
fn production_boot_refusal_is_json_lines() {
    let (code, out, err) = run(engine()
        .arg("serve")
        .arg("--pipelines")
        .arg(shipped())
        .env("NODE_ENV", "production")
        .env("REDIS_URL", common::redis())
        .env("CORS_ORIGINS", "https://voxanne.ai"));
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 4, "{err}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"] == "ERROR" || l["level"] == "WARN"),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("CORS_ORIGINS is set but not declared: did you mean CORS_ORIGIN?")
            && l["file"]
                .as_str()
                .unwrap_or_default()
                .ends_with("env.schema.yaml")
            && l["line"].as_u64().is_some()),
        "{err}"
    );
    let last = lines.last().unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("refusing to start:"),
        "{err}"
    );
    assert!(last["problems"].as_u64().unwrap() >= 3, "{err}");
}

#[test]
fn serve_refuses_to_boot_with_the_full_list() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: bad\nroute: {method: POST, path: /api/webhooks/vapi}\n",
    );
    dir.write("worse.yaml", "nme: worse\n");
    let started = Instant::now();
    let (code, out, err) = run(engine()
        .arg("serve")
        .arg("--pipelines")
        .arg(dir.path())
        .env("ENCRYPTION_KEY", "short"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("ENCRYPTION_KEY: must be exactly 64 hex characters (got 5 characters)"),
        "{err}"
    );
    assert!(
        err.contains("route POST /api/webhooks/vapi is already taken"),
        "{err}"
    );
    assert!(
        err.contains("unknown key `nme`; did you mean `name`?"),
        "{err}"
    );
    assert!(err.contains("refusing to start: 5 problems"), "{err}");
    assert!(!err.contains("Server listening"), "{err}");
}

#[test]
fn serve_logs_listening_and_stops_on_sigterm() {
    // a production boot checks the sinks' tables first: a migrated schema passes
    let (database_url, _) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::fresh_schema());
    let mut child = engine()
        .args(["serve", "--pipelines"])
        .arg(shipped())
        .env("PORT", "0") // the OS picks a free port; the log says which
        .env("NODE_ENV", "production")
        .env("REDIS_URL", common::redis())
        .env("DATABASE_URL", &database_url)
        .env("CORS_ORIGIN", "https://voxanne.ai")
        .env("VAPI_WEBHOOK_SECRET", "prod-vapi-credential-secret")
        .env(
            "ENCRYPTION_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .env("CONSOLE_TOKEN", CONSOLE_TOKEN)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut port = None;
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        // production logs are JSON lines
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Server listening on port"))
        {
            port = v["port"].as_u64();
            break;
        }
    }
    let port = port.unwrap_or_else(|| panic!("no listening line in {seen:#?}"));
    assert!(
        seen.iter()
            .any(|l| l.contains("\"pipeline\":\"vapi\"") && l.contains("/api/webhooks/vapi")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains("redis://127.0.0.1")),
        "URLs are not logged: {seen:#?}"
    );

    let body = reqwest::blocking_get(&format!("http://127.0.0.1:{port}/health"));
    assert!(body.contains("\"environment\":\"production\""), "{body}");
    // rejected webhooks: the log says why, never with the credential
    let unsigned =
        reqwest::blocking_post(&format!("http://127.0.0.1:{port}/api/webhooks/vapi"), &[]);
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    let forged = reqwest::blocking_post(
        &format!("http://127.0.0.1:{port}/api/webhooks/vapi"),
        &["authorization: Bearer forged-token-value-123"],
    );
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");

    // an operator signs in to the console and purges a dead letter (one that does not exist:
    // the shared Redis's real ones stay)
    let base = format!("http://127.0.0.1:{port}");
    let form = "content-type: application/x-www-form-urlencoded";
    let login = reqwest::blocking(
        "POST",
        &format!("{base}/console/login"),
        &[form],
        &format!("token={CONSOLE_TOKEN}"),
    );
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let page = reqwest::blocking(
        "GET",
        &format!("{base}/console/pipelines"),
        &[&format!("cookie: {cookie}")],
        "",
    );
    let csrf = common::csrf_in(&page);
    let purge = reqwest::blocking(
        "POST",
        &format!("{base}/console/dead-letters/purge"),
        &[
            form,
            &format!("cookie: {cookie}"),
            "x-request-id: console-purge-7",
        ],
        &format!("csrf={csrf}&pipeline=vapi&id=1-1"),
    );
    assert!(purge.starts_with("HTTP/1.1 303"), "{purge}");
    // a form without this session's CSRF token, then signing out: both logged with client_ip
    let refused = reqwest::blocking(
        "POST",
        &format!("{base}/console/logout"),
        &[form, &format!("cookie: {cookie}")],
        "csrf=not-this-sessions",
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let logout = reqwest::blocking(
        "POST",
        &format!("{base}/console/logout"),
        &[form, &format!("cookie: {cookie}")],
        &format!("csrf={csrf}"),
    );
    assert!(logout.starts_with("HTTP/1.1 303"), "{logout}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "exit after SIGTERM: {s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:#?}");
    let rejected: Vec<&String> = rest
        .iter()
        .filter(|l| l.contains("verification failed"))
        .collect();
    assert_eq!(rejected.len(), 2, "{rest:#?}");
    assert!(
        rejected[0].contains("\"reason\":\"missing_credentials\"")
            && rejected[0].contains("\"pipeline\":\"vapi\""),
        "{rejected:?}"
    );
    assert!(
        rejected[1].contains("\"reason\":\"bad_signature\""),
        "{rejected:?}"
    );
    // every line of a request's life carries its request id, at the top level of the line
    assert!(
        rejected.iter().all(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["request_id"].is_string()
                && line["pipeline"] == "vapi"
                && line.get("span").is_none()
        }),
        "{rejected:?}"
    );
    assert!(
        seen.iter()
            .chain(rest.iter())
            .any(|l| l.contains("queues initialised")),
        "{seen:#?}"
    );
    assert!(
        rest.iter().all(
            |l| !l.contains("forged-token-value") && !l.contains("prod-vapi-credential-secret")
        ),
        "{rest:#?}"
    );
    // console actions: logged with the request id at the top level; the token never
    let purge: serde_json::Value = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["action"] == "purge")
        .unwrap_or_else(|| panic!("no purge line: {rest:#?}"));
    assert_eq!(purge["request_id"], "console-purge-7", "{purge}");
    assert_eq!(purge["pipeline"], "vapi", "{purge}");
    assert_eq!(purge["count"], 0, "{purge}");
    assert!(
        rest.iter().any(|l| l.contains(r#""action":"login""#)),
        "{rest:#?}"
    );
    for (what, needle) in [
        ("sign-out", r#""action":"logout""#),
        ("CSRF refusal", "without this session's CSRF token"),
    ] {
        let line = rest
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {what} line: {rest:#?}"));
        assert!(
            line.contains(r#""client_ip":"127.0.0.1""#),
            "{what}: {line}"
        );
    }
    assert!(
        seen.iter()
            .chain(rest.iter())
            .all(|l| !l.contains(CONSOLE_TOKEN)),
        "the console token is never logged"
    );
}

/// A production-strength console token (64 hex characters).
const CONSOLE_TOKEN: &str = "9b1e4f0c2a7d38e5b6c10f9a4d2e7b3c5a8f1e0d9c6b2a7e4f3d1c0b9a8e7f6d";

/// `engine serve` on `dir` in development with PORT=0; the child and its port.
fn serve_dev(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, u16) {
    let mut child = engine()
        .args(["serve", "--pipelines"])
        .arg(dir)
        .args(extra)
        .env("PORT", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("Server listening on port ").nth(1) {
            port = rest.split_whitespace().next().and_then(|p| p.parse().ok());
            break;
        }
    }
    // keep draining the log so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, port.expect("a listening line"))
}

/// Poll `path` until it answers `status` (first line), within 10 s.
fn eventually_status(port: u16, path: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = reqwest::blocking_post(&format!("http://127.0.0.1:{port}{path}"), &[]);
        if got.starts_with(&format!("HTTP/1.1 {status}")) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} still answers {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const EXTRA: &str = "name: extra\nroute: {method: POST, path: /hooks/extra}\nrespond: {status: 202, content_type: text/plain, body: accepted}\n";

#[test]
fn sighup_reloads_the_pipelines() {
    let dir = Dir::shipped_copy();
    let (mut child, port) = serve_dev(dir.path(), &[]);
    eventually_status(port, "/hooks/extra", "404");
    dir.write("extra.yaml", EXTRA);
    let kill = |sig: &str| {
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
    };
    assert!(kill("-HUP").success());
    eventually_status(port, "/hooks/extra", "202");
    // a broken file: the previous set stays
    dir.write("extra.yaml", "name: extra\nroute: {method: POST}\n");
    assert!(kill("-HUP").success());
    std::thread::sleep(Duration::from_millis(500));
    eventually_status(port, "/hooks/extra", "202");
    assert!(kill("-TERM").success());
    let _ = child.wait();
}

#[test]
fn watch_reloads_on_a_change() {
    let dir = Dir::shipped_copy();
    let (mut child, port) = serve_dev(dir.path(), &["--watch"]);
    eventually_status(port, "/hooks/extra", "404");
    dir.write("extra.yaml", EXTRA);
    eventually_status(port, "/hooks/extra", "202");
    dir.remove("extra.yaml");
    eventually_status(port, "/hooks/extra", "404");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

mod reqwest {
    /// A tiny blocking request over a raw socket (the async client needs a runtime): extra
    /// header lines and a body; the whole answer as text.
    pub fn blocking(method: &str, url: &str, headers: &[&str], body: &str) -> String {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(host).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        write!(
            s,
            "{method} /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A POST with extra header lines and an empty body.
    pub fn blocking_post(url: &str, headers: &[&str]) -> String {
        blocking("POST", url, headers, "")
    }

    /// A GET.
    pub fn blocking_get(url: &str) -> String {
        blocking("GET", url, &[], "")
    }
}

#[tokio::test]
async fn tenants_link_list_and_unlink_vapi_ids() {
    let (db, schema) = common::fresh_schema().await;
    let tenants = |args: &[&str]| {
        let mut c = engine();
        c.arg("tenants")
            .args(args)
            .args(["--pipelines", common::shipped().to_str().unwrap()])
            .env("DATABASE_URL", &db)
            .env(
                "ENCRYPTION_KEY",
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            );
        run(&mut c)
    };
    let (code, out, err) = tenants(&[
        "link",
        "--source",
        "vapi_assistant",
        "--id",
        "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "--tenant",
        "org_clinic",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "vapi_assistant a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d -> org_clinic\n"
    );
    // linking again moves the id to another tenant
    for org in ["org_a", "org_b"] {
        let link = [
            "link",
            "--source",
            "vapi_phone_number",
            "--id",
            "pn-1",
            "--tenant",
            org,
        ];
        assert_eq!(tenants(&link).0, 0);
    }
    let (_, out, _) = tenants(&["list"]);
    assert_eq!(
        out,
        "vapi_phone_number\tpn-1\torg_b\nvapi_assistant\ta1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d\torg_clinic\n"
    );
    let (_, out, _) = tenants(&["list", "--tenant", "org_clinic"]);
    assert_eq!(out.lines().count(), 1);
    let (code, out, _) = tenants(&["unlink", "--source", "vapi_phone_number", "--id", "pn-1"]);
    assert_eq!((code, out.as_str()), (0, "unlinked\n"));
    let (_, out, _) = tenants(&["unlink", "--source", "vapi_phone_number", "--id", "pn-1"]);
    assert_eq!(out, "no such link\n");
    let pg = common::pg(&schema).await;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM tenant_aliases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// `--host` (and `HOST`) choose the interface without editing engine.yaml: bound to 127.0.0.2,
/// the engine answers there and not on 127.0.0.1; a value that is not an IP address is refused
/// by name.
#[test]
fn host_chooses_the_interface() {
    use std::net::{SocketAddr, TcpStream};
    let dir = Dir::shipped_copy();
    let (mut child, port) = serve_dev(dir.path(), &["--host", "127.0.0.2"]);
    let connects = |ip: [u8; 4]| {
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2)).is_ok()
    };
    let there = connects([127, 0, 0, 2]);
    let elsewhere = connects([127, 0, 0, 1]);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(there, "listening on 127.0.0.2");
    assert!(!elsewhere, "not on 127.0.0.1");
    let (code, _, err) = run(engine()
        .args(["serve", "--pipelines"])
        .arg(dir.path())
        .env("PORT", "0")
        .env("HOST", "localhost-ish"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot listen on host `localhost-ish`"),
        "{err}"
    );
}
