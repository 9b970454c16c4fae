//! `engine::plan::load` (load + build) on broken directories: every problem, each at its exact line:col.

use crate::common;

use common::Dir;
use engine::diagnostics::Diagnostic;
use engine::env::EnvSource;

fn problems(dir: &Dir, env: &[(&str, &str)]) -> Vec<Diagnostic> {
    engine::plan::load(dir.path(), &EnvSource::from_pairs(env.iter().copied()))
        .map(|(project, _)| project)
        .err()
        .unwrap_or_default()
}

/// `file-name:line:col: message` with the temp dir stripped.
fn lines(dir: &Dir, diags: &[Diagnostic]) -> Vec<String> {
    let prefix = format!("{}/", dir.path().display());
    diags
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect()
}

#[test]
fn shipped_directory_is_valid() {
    let dir = Dir::shipped_copy();
    assert!(problems(&dir, &[]).is_empty());
}

#[test]
fn typo_in_key() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: bad\nroute:\n  methd: POST\n  path: /bad\n",
    );
    assert_eq!(
        lines(&dir, &problems(&dir, &[])),
        [
            "bad.yaml:2:1: missing required key `method` (at /route)",
            "bad.yaml:3:3: unknown key `methd`; did you mean `method`? (at /route/methd)",
        ]
    );
}

#[test]
fn unknown_top_level_key_lists_nothing_secret() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: bad\nroute: {method: POST, path: /bad}\nverifyy: {secret: hunter2}\n",
    );
    let l = lines(&dir, &problems(&dir, &[]));
    assert_eq!(l.len(), 1);
    assert!(
        l[0].starts_with("bad.yaml:3:1: unknown key `verifyy`"),
        "{l:?}"
    );
    assert!(!l[0].contains("hunter2"));
}

#[test]
fn wrong_types_and_values() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: Bad Name\nroute:\n  method: FETCH\n  path: no-slash\nbody_limit: 1 GB\nrespond:\n  status: '200'\n",
    );
    assert_eq!(
        lines(&dir, &problems(&dir, &[])),
        [
            "bad.yaml:1:7: must start with a lower-case letter and use only a-z, 0-9, `-` and `_` (at most 63 characters) (at /name)",
            "bad.yaml:3:11: must be one of: GET, POST, PUT, PATCH, DELETE (at /route/method)",
            "bad.yaml:4:9: must be a URL path starting with `/`, e.g. `/api/webhooks/vapi` (at /route/path)",
            "bad.yaml:5:13: must be a size such as `512KiB`, `1MiB` or a number of bytes (at /body_limit)",
            "bad.yaml:7:11: expected an integer, found a string (at /respond/status)",
        ]
    );
}

#[test]
fn duplicate_route_and_name() {
    let dir = Dir::shipped_copy();
    dir.write(
        "a.yaml",
        "name: vapi\nroute:\n  method: POST\n  path: /api/webhooks/vapi\n",
    );
    let l = lines(&dir, &problems(&dir, &[]));
    // files are read in name order: a.yaml comes before vapi.yaml, so vapi.yaml is the duplicate
    assert_eq!(
        l,
        [
            "vapi.yaml:5:7: pipeline name `vapi` is already used by a.yaml:1:7; names must be unique (at /name)",
            "vapi.yaml:10:9: route POST /api/webhooks/vapi is already taken by a.yaml:4:9 (at /route/path)",
        ]
    );
}

#[test]
fn overlapping_and_reserved_routes() {
    let dir = Dir::shipped_copy();
    dir.write(
        "p1.yaml",
        "name: p1\nroute: {method: POST, path: '/t/{a}'}\n",
    );
    dir.write(
        "p2.yaml",
        "name: p2\nroute: {method: GET, path: '/t/{b}'}\n",
    );
    dir.write("p3.yaml", "name: p3\nroute: {method: GET, path: /health}\n");
    let l = lines(&dir, &problems(&dir, &[]));
    assert_eq!(
        l,
        [
            "p3.yaml:2:28: path `/health` is reserved for the engine; choose another path (at /route/path)",
            "p2.yaml:2:28: path `/t/{b}` overlaps `/t/{a}`: a request could match both by p1.yaml:2:29 (at /route/path)",
        ]
    );
}

#[test]
fn undeclared_env_reference() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: bad\nroute: {method: POST, path: /bad}\nrespond:\n  body: 'hello ${NOT_DECLARED}'\n",
    );
    assert_eq!(
        lines(&dir, &problems(&dir, &[])),
        [
            "bad.yaml:4:16: `${NOT_DECLARED}` refers to an environment variable that is not declared; add `NOT_DECLARED` to env.schema.yaml (at /respond/body)"
        ]
    );
}

#[test]
fn declared_env_reference_is_interpolated() {
    let dir = Dir::shipped_copy();
    dir.write(
        "ok.yaml",
        "name: ok\nroute: {method: POST, path: /ok}\nrespond:\n  body: 'backend ${BACKEND_URL}'\n",
    );
    let (p, _) = engine::plan::load(
        dir.path(),
        &EnvSource::from_pairs([("BACKEND_URL", "https://api.example.com")]),
    )
    .unwrap();
    let ok = p.pipelines.iter().find(|p| p.config.name == "ok").unwrap();
    assert_eq!(
        ok.config.respond.body.as_deref(),
        Some("backend https://api.example.com")
    );
}

#[test]
fn yaml_syntax_error() {
    let dir = Dir::shipped_copy();
    dir.write(
        "bad.yaml",
        "name: bad\nroute: {method: POST, path: /bad\nrespond: {}\n",
    );
    let l = lines(&dir, &problems(&dir, &[]));
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].starts_with("bad.yaml:3:8: "), "{l:?}");
}

#[test]
fn every_problem_at_once_across_files() {
    let dir = Dir::shipped_copy();
    dir.write("a.yaml", "name: a\nroute: {method: POST}\n");
    dir.write("b.yaml", "name: [b]\nroute: {method: POST, path: /b}\n");
    dir.write("c.yaml", "name: c\nroute: [\n");
    dir.write(
        "engine.yaml",
        "port: seventy\ntrusted_proxies: [10.0.0.0/8, not-an-ip]\n",
    );
    let l = lines(&dir, &problems(&dir, &[("ENCRYPTION_KEY", "abcd")]));
    assert_eq!(l.len(), 5, "{l:#?}");
    assert!(l.iter().any(|x| x.starts_with("env.schema.yaml:")
        && x.contains("ENCRYPTION_KEY: must be exactly 64 hex characters (got 4 characters)")));
    assert!(
        l.iter()
            .any(|x| x == "engine.yaml:1:7: expected an integer, found a string (at /port)")
    );
    assert!(
        l.iter()
            .any(|x| x == "a.yaml:2:1: missing required key `path` (at /route)")
    );
    assert!(
        l.iter()
            .any(|x| x == "b.yaml:1:7: expected a string, found a list (at /name)")
    );
    assert!(l.iter().any(|x| x.starts_with("c.yaml:3:1: ")), "{l:#?}");
}

#[test]
fn settings_semantic_rules() {
    let dir = Dir::shipped_copy();
    dir.write(
        "engine.yaml",
        "cors:\n  allow_origins: ['https://voxanne.ai/', '*']\ntrusted_proxies: [10.0.0.0/8, 192.168.1.1, nope]\n",
    );
    let l = lines(
        &dir,
        &problems(
            &dir,
            &[
                ("NODE_ENV", "production"),
                ("REDIS_URL", "redis://r:6379"),
                ("DATABASE_URL", "postgres://db/x?sslmode=require"),
                ("VAPI_WEBHOOK_SECRET", "prod-vapi-credential-secret"),
                (
                    "ENCRYPTION_KEY",
                    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                ),
            ],
        ),
    );
    assert_eq!(
        l,
        [
            "engine.yaml:2:19: an origin has no path or trailing `/` (browsers send `https://app.example.com`) (at /cors/allow_origins/0)",
            "engine.yaml:2:42: `*` allows every origin; in production (NODE_ENV=production) list the allowed origins (at /cors/allow_origins/1)",
            "engine.yaml:3:44: must be an IP address or CIDR range, e.g. `10.0.0.0/8` (at /trusted_proxies/2)",
        ]
    );
}

#[test]
fn hostile_files_are_errors_not_crashes() {
    let dir = Dir::shipped_copy();
    let mut bomb = String::from(
        "name: bomb\nroute: {method: POST, path: /bomb}\na: &a [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for (n, prev) in [
        ("b", "a"),
        ("c", "b"),
        ("d", "c"),
        ("e", "d"),
        ("f", "e"),
        ("g", "f"),
    ] {
        bomb.push_str(&format!("{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    dir.write("bomb.yaml", &bomb);
    dir.write(
        "deep.yaml",
        &format!("x: {}{}\n", "[".repeat(5000), "]".repeat(5000)),
    );
    std::fs::write(dir.path().join("junk.yaml"), b"\x00\x01\xff\xfe binary").unwrap();
    dir.write("empty.yaml", "");
    std::fs::write(dir.path().join("huge.yaml"), vec![b'#'; 2 * 1024 * 1024]).unwrap();
    let l = lines(&dir, &problems(&dir, &[]));
    let find = |f: &str| {
        l.iter()
            .find(|x| x.starts_with(f))
            .cloned()
            .unwrap_or_else(|| panic!("{f} in {l:#?}"))
    };
    assert!(find("bomb.yaml").contains("alias"), "{l:#?}");
    assert!(
        find("deep.yaml").contains("nesting deeper than 64"),
        "{l:#?}"
    );
    assert!(find("junk.yaml").contains("not valid UTF-8"), "{l:#?}");
    assert!(
        find("empty.yaml").contains("expected a mapping, found nothing"),
        "{l:#?}"
    );
    assert!(find("huge.yaml").contains("larger than 1024 KiB"), "{l:#?}");
}

#[test]
fn missing_env_schema_and_empty_directory() {
    let dir = Dir::shipped_copy();
    dir.remove("env.schema.yaml");
    let l = lines(&dir, &problems(&dir, &[]));
    assert!(
        l[0].starts_with("env.schema.yaml:1:1: cannot read the env schema"),
        "{l:?}"
    );

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("env.schema.yaml"), "properties: {}\n").unwrap();
    let d = engine::plan::load(empty.path(), &EnvSource::default()).unwrap_err();
    assert!(d[0].message.starts_with("no pipeline files here"), "{d:?}");
}

mod env_rules {
    //! The seed's security checklist, one rule each, against the shipped env schema.
    use super::*;

    const KEY64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn env_problems(env: &[(&str, &str)]) -> Vec<String> {
        let dir = Dir::shipped_copy();
        problems(&dir, env).into_iter().map(|d| d.message).collect()
    }

    fn jwt(claims: &str) -> String {
        use base64::Engine as _;
        format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
        )
    }

    /// A complete production environment that passes every rule.
    fn production() -> Vec<(&'static str, String)> {
        vec![
            ("NODE_ENV", "production".into()),
            ("PORT", "3001".into()),
            (
                "SUPABASE_URL",
                "https://lbjymlodxprzqgtyqtcq.supabase.co".into(),
            ),
            (
                "SUPABASE_SERVICE_ROLE_KEY",
                jwt(r#"{"iss":"supabase","role":"service_role"}"#),
            ),
            (
                "DATABASE_URL",
                "postgresql://postgres:pw@db.lbjymlodxprzqgtyqtcq.supabase.co:5432/postgres?sslmode=require"
                    .into(),
            ),
            ("REDIS_URL", "redis://red-abc:6379".into()),
            ("ENCRYPTION_KEY", KEY64.into()),
            ("BACKEND_URL", "https://api.voxanne.ai".into()),
            ("FRONTEND_URL", "https://voxanne.ai".into()),
            ("CORS_ORIGIN", "https://voxanne.ai".into()),
            (
                "GOOGLE_REDIRECT_URI",
                "https://api.voxanne.ai/api/auth/google/callback".into(),
            ),
            ("VAPI_WEBHOOK_SECRET", "prod-vapi-credential-secret".into()),
        ]
    }

    fn with(changes: &[(&'static str, Option<&str>)]) -> Vec<String> {
        let mut env = production();
        for (k, v) in changes {
            env.retain(|(n, _)| n != k);
            if let Some(v) = v {
                env.push((k, v.to_string()));
            }
        }
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env_problems(&pairs)
    }

    #[test]
    fn complete_production_env_passes() {
        assert_eq!(with(&[]), Vec::<String>::new());
    }

    #[test]
    fn encryption_key_is_64_hex() {
        assert_eq!(
            with(&[("ENCRYPTION_KEY", Some(&KEY64[..32]))]),
            [
                "ENCRYPTION_KEY: must be exactly 64 hex characters (got 32 characters); generate one with `openssl rand -hex 32`"
            ]
        );
        let not_hex = format!("{}zz", &KEY64[..62]);
        assert_eq!(with(&[("ENCRYPTION_KEY", Some(&not_hex))]).len(), 1);
        let long = format!("{KEY64}{KEY64}");
        assert!(with(&[("ENCRYPTION_KEY", Some(&long))])[0].contains("got 128 characters"));
    }

    #[test]
    fn a_console_token_in_production_is_long_and_random() {
        for weak in ["console-token-16", "passwordpasswordpasswordpassword"] {
            let p = with(&[("CONSOLE_TOKEN", Some(weak))]);
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with(
                    "CONSOLE_TOKEN: must be at least 32 random characters in production"
                ),
                "{p:?}"
            );
            assert!(!p[0].contains(weak), "the value is never shown: {p:?}");
        }
        let strong = "9b1e4f0c2a7d38e5b6c10f9a4d2e7b3c5a8f1e0d9c6b2a7e4f3d1c0b9a8e7f6d";
        assert_eq!(
            with(&[("CONSOLE_TOKEN", Some(strong))]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn service_role_key_not_anon() {
        let anon = jwt(r#"{"iss":"supabase","role":"anon"}"#);
        let p = with(&[("SUPABASE_SERVICE_ROLE_KEY", Some(&anon))]);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("SUPABASE_SERVICE_ROLE_KEY: is the anon key"),
            "{p:?}"
        );
        assert!(!p[0].contains(&anon));
        let p = with(&[("SUPABASE_SERVICE_ROLE_KEY", Some("sb_publishable_abcdef"))]);
        assert!(
            p[0].starts_with("SUPABASE_SERVICE_ROLE_KEY: is a publishable key"),
            "{p:?}"
        );
        assert_eq!(
            with(&[("SUPABASE_SERVICE_ROLE_KEY", Some("sb_secret_abcdef123456"))]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn placeholders_refused() {
        let p = with(&[
            ("VAPI_PRIVATE_KEY", Some("<PASTE YOUR VAPI PRIVATE KEY>")),
            (
                "REDIS_URL",
                Some("<WILL BE AUTO-POPULATED AFTER REDIS SETUP>"),
            ),
        ]);
        assert!(p.contains(&"VAPI_PRIVATE_KEY: is still a placeholder (`<...>`): set the real value, or remove the variable".to_string()), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("REDIS_URL: is still a placeholder")),
            "{p:?}"
        );
        assert!(
            p.iter().all(|m| !m.contains("PASTE")),
            "values never appear: {p:?}"
        );
    }

    #[test]
    fn production_requires_redis_and_database() {
        assert_eq!(
            with(&[("REDIS_URL", None), ("DATABASE_URL", None)]),
            [
                "REDIS_URL: is required in production (NODE_ENV=production)",
                "DATABASE_URL: is required in production (NODE_ENV=production)",
            ]
        );
        // not in development
        assert_eq!(
            with(&[
                ("NODE_ENV", Some("development")),
                ("REDIS_URL", None),
                ("DATABASE_URL", None)
            ]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn production_cors_not_star() {
        assert_eq!(
            with(&[("CORS_ORIGIN", Some("*"))]),
            ["CORS_ORIGIN: must list https:// origins in production: not `*`, no http://"]
        );
        assert_eq!(
            with(&[
                ("NODE_ENV", Some("development")),
                ("CORS_ORIGIN", Some("*"))
            ]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn production_urls_are_https() {
        let p = with(&[
            ("BACKEND_URL", Some("http://api.voxanne.ai")),
            ("SUPABASE_URL", Some("http://x.supabase.co")),
            (
                "GOOGLE_REDIRECT_URI",
                Some("http://api.voxanne.ai/api/auth/google/callback"),
            ),
        ]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p.iter()
                .all(|m| m.ends_with("must be an https:// URL in production")),
            "{p:?}"
        );
    }

    #[test]
    fn typed_values() {
        assert_eq!(
            with(&[("PORT", Some("80a"))]),
            ["PORT: expected an integer, found a string"]
        );
        assert_eq!(
            with(&[("PORT", Some("70000"))]),
            ["PORT: must be at most 65535"]
        );
        assert_eq!(
            with(&[("NODE_ENV", Some("prod"))]),
            ["NODE_ENV: must be one of: development, test, production"]
        );
        assert_eq!(
            with(&[("MAINTENANCE_MODE", Some("yes"))]),
            ["MAINTENANCE_MODE: expected true or false, found a string"]
        );
    }
}

#[test]
fn connections_are_checked_where_they_are_written() {
    let dir = Dir::shipped_copy();
    dir.write(
        "tools.yaml",
        r#"name: tools
route: {method: POST, path: /tools}
respond:
  inline: 'request("calendar", #{path: "/a"}); request("elsewhere", #{path: "/b"})'
connections:
  calendar:
    base_url: www.googleapis.com/calendar/v3
    auth: {oauth: google-calender}
  crm:
    base_url: https://crm.example.com/api?key=1
    auth: {bearer: sk_live_literal}
"#,
    );
    dir.write(
        "named.yaml",
        "name: named\nroute: {method: POST, path: /named}\nrespond: {inline: '1'}\nconnections:\n  ok_name: {base_url: 'https://a.example.com'}\n  Bad-Name: {base_url: 'https://b.example.com'}\n",
    );
    dir.write(
        "quiet.yaml",
        "name: quiet\nroute: {method: POST, path: /quiet}\nconnections:\n  api: {base_url: 'https://api.example.com'}\n",
    );
    let l = lines(&dir, &problems(&dir, &[]));
    let text = l.join("\n");
    for expected in [
        "tools.yaml:7:15: must be an absolute http(s) URL",
        "tools.yaml:8:19: `google-calender` is not a pipeline with an `oauth` section (those are: google-calendar)",
        "tools.yaml:10:15: must have no `?query` or `#fragment`",
        "tools.yaml:11:20: a secret must be a `${VAR}` reference",
        "named.yaml:6:3: `Bad-Name` is not a valid name here: names start with a lower-case letter",
        "tools.yaml:4:11: `elsewhere` is not a connection of this pipeline (declared: calendar, crm) (line 1, column 46 of the script)",
        "quiet.yaml:4:3: only a respond `script` or `inline` can call connections",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("sk_live_literal"), "{text}");
}

#[test]
fn a_connection_must_be_https_in_production() {
    let dir = Dir::shipped_copy();
    let env = [
        ("NODE_ENV", "production"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        (
            "DATABASE_URL",
            "postgres://u@db.example.com/app?sslmode=require",
        ),
        (
            "ENCRYPTION_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),
        ("VAPI_WEBHOOK_SECRET", "s"),
        ("GOOGLE_API_URL", "http://127.0.0.1:9999"),
    ];
    let text = lines(&dir, &problems(&dir, &env)).join("\n");
    assert!(
        text.contains("GOOGLE_API_URL") && text.contains("https"),
        "{text}"
    );
}

/// Where ajv and ajv-formats are: `ENGINE_AJV_NODE_MODULES`, else `~/.cache/engine-ajv` (where
/// .ci/run puts them), else installed here with npm into the target directory, so `cargo test`
/// on a new machine (an empty HOME) installs what this test needs.
fn ajv_modules() -> String {
    if let Ok(m) = std::env::var("ENGINE_AJV_NODE_MODULES") {
        return m;
    }
    let home = format!(
        "{}/.cache/engine-ajv/node_modules",
        std::env::var("HOME").unwrap_or_default()
    );
    if std::path::Path::new(&home).join("ajv-formats").exists() {
        return home;
    }
    let prefix = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("engine-ajv");
    let modules = prefix.join("node_modules");
    if !modules.join("ajv-formats").exists() {
        let status = std::process::Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .args(["ajv@8", "ajv-formats@3"])
            .status()
            .expect("npm, to install ajv for this test (apt-get install -y nodejs npm)");
        assert!(status.success(), "npm install ajv@8 ajv-formats@3 failed");
    }
    modules.display().to_string()
}

/// The published schemas compile in ajv's strict mode (draft 2020-12 with ajv-formats), the
/// validator editors and CI pipelines outside the engine use: standard formats, a `$id`, and
/// only `x-message` beyond the standard keywords.
#[test]
fn published_schemas_are_strict_clean_for_standard_validators() {
    let modules = ajv_modules();
    let root = common::shipped().join("..");
    let out = std::process::Command::new("node")
        .arg(root.join("tests/schemas/ajv-strict.cjs"))
        .args(
            ["pipeline", "settings", "fixture"]
                .map(|n| root.join(format!("schemas/{n}.schema.json"))),
        )
        .env("NODE_PATH", &modules)
        .output()
        .expect("node (apt-get install -y nodejs)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn map_steps_are_checked_where_they_are_written() {
    let dir = Dir::shipped_copy();
    dir.write(
        "mapped.yaml",
        "name: mapped\nroute: {method: POST, path: /mapped}\ntransform:\n  - when: {field: {json: message/type}, in: [a]}\n    map:\n      a: {json: [/ok, no/slash]}\n      b: {as: time}\n      c: {json: /x, seconds_between: [/s, e]}\n    sink: s\n  - map:\n      a: {json: /a}\n  - inline: '#{}'\n    map:\n      a: {json: /a}\n    sink: s\nsinks:\n  s:\n    file: {path: data/x.jsonl}\n",
    );
    let l = lines(&dir, &problems(&dir, &[]));
    let at = |prefix: &str| l.iter().any(|d| d.starts_with(prefix));
    assert!(
        at("mapped.yaml:4:26: `message/type` is not a JSON pointer"),
        "{l:#?}"
    );
    assert!(
        at("mapped.yaml:6:23: `no/slash` is not a JSON pointer"),
        "{l:#?}"
    );
    assert!(
        at("mapped.yaml:7:10: name where the value comes from"),
        "{l:#?}"
    );
    assert!(at("mapped.yaml:8:43: `e` is not a JSON pointer"), "{l:#?}");
    assert!(
        at("mapped.yaml:11:7: a `map` step makes a row: name the sink"),
        "{l:#?}"
    );
    assert!(
        at("mapped.yaml:12:5: give the step one of `script`"),
        "{l:#?}"
    );
    assert_eq!(l.len(), 6, "{l:#?}");
}

#[test]
fn a_replication_wait_must_fit_the_request_and_have_a_queued_answer() {
    let dir = Dir::shipped_copy();
    dir.edit("vapi.yaml", |s| {
        s.replacen(
            "queue:\n",
            "queue:\n  ack: processed\n  durability: replicated\n  replication: {replicas: 2, timeout: 2s}\n",
            1,
        )
    });
    let l = lines(&dir, &problems(&dir, &[]));
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(
        l.iter()
            .any(|p| p.contains("/queue/replication/timeout") && p.contains("at most `1500ms`")),
        "{l:?}"
    );
    assert!(
        l.iter()
            .any(|p| p.contains("/queue/durability") && p.contains("ack: processed")),
        "{l:?}"
    );
}
