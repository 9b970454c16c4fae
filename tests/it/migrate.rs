//! `engine migrate` against real Postgres (an empty schema per test), and `engine secrets decrypt`.

use crate::common;

use std::path::Path;

use common::pg;

async fn empty_schema() -> (String, String) {
    common::empty_schema("m").await
}

fn migrations() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

#[tokio::test]
async fn apply_rerun_status() {
    let (url, schema) = empty_schema().await;
    let before = engine::migrate::status(&url, &migrations()).await.unwrap();
    assert!(before.iter().all(|m| m.applied_on.is_none()), "{before:?}");

    let report = engine::migrate::run(&url, &migrations()).await.unwrap();
    assert!(report.left_alone.is_empty(), "{report:?}");
    assert_eq!(
        report.applied,
        [
            (1, "tenant_credentials".to_string()),
            (2, "call_and_message_tables".to_string()),
            (3, "oauth_tokens".to_string()),
            (4, "connections".to_string()),
            (5, "table_checks".to_string()),
            (6, "oauth_account_email".to_string()),
            (7, "event_archive".to_string()),
            (8, "archive_body_uncompressed".to_string()),
            (9, "archive_rows_inline".to_string())
        ]
    );
    let tables: i64 = pg(&schema)
        .await
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 15,
        "five sink tables, tenant_credentials, oauth_tokens, oauth_states_used, tenant_aliases, engine_table_checks, the archive (engine_events, its default partition, replays, erasures), refinery's history"
    );

    assert!(
        engine::migrate::run(&url, &migrations())
            .await
            .unwrap()
            .applied
            .is_empty(),
        "re-running is a no-op"
    );
    let after = engine::migrate::status(&url, &migrations()).await.unwrap();
    assert_eq!(
        after.iter().map(|m| m.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
    assert!(after.iter().all(|m| m.applied_on.is_some()), "{after:?}");
}

#[tokio::test]
async fn concurrent_runners_apply_each_migration_once() {
    let (url, _) = empty_schema().await;
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        runs.spawn(async move { engine::migrate::run(&url, &migrations()).await });
    }
    let mut total = 0;
    while let Some(r) = runs.join_next().await {
        total += r.unwrap().expect("no runner fails").applied.len();
    }
    assert_eq!(total, 9, "each migration applied by exactly one runner");
}

#[test]
fn cli_migrate_status_and_decrypt() {
    use std::io::Write;
    use std::process::Stdio;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = rt.block_on(empty_schema());
    let out = engine()
        .args(["migrate", "--database-url", &url, "--migrations"])
        .arg(migrations())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("9 migrations applied"));
    let out = engine()
        .args([
            "migrate",
            "--status",
            "--database-url",
            &url,
            "--migrations",
        ])
        .arg(migrations())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("V1") && text.contains("V2") && !text.contains("pending"),
        "{text}"
    );

    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let sealed = engine::crypto::Keyring::new(key, &[])
        .unwrap()
        .encrypt(b"my card is 4242", "sms_messages.body");
    let mut child = engine()
        .env("ENCRYPTION_KEY", key)
        .args([
            "secrets",
            "decrypt",
            "--context",
            "sms_messages.body",
            "--pipelines",
        ])
        .arg(common::shipped())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sealed.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"my card is 4242");
}

#[test]
fn validate_against_a_live_database() {
    use std::process::Command;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = rt.block_on(empty_schema());
    let validate_with = |dir: &Path, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["validate", "--database-url", &url])
            .args(extra)
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let validate = |dir: &Path| validate_with(dir, &[]);
    // before migrating, judged as the migrations beside the pipelines will leave the tables:
    // valid, each table credited to the pending file that creates it
    let (code, out) = validate(&common::shipped());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("vapi.yaml:") && out.contains("warning: fixed by pending migration V2__call_and_message_tables.sql (`engine migrate` applies it): table `call_logs` does not exist (at /sinks/call_logs/postgres/table)"), "{out}");
    // the tables as they are (no migrations): every table is missing, each reported at its sink
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = validate_with(
        &common::shipped(),
        &["--migrations", &empty.path().display().to_string()],
    );
    assert_eq!(code, Some(1));
    assert!(out.contains("vapi.yaml:") && out.contains("table `call_logs` does not exist; run `engine migrate`, or write a migration that creates it (at /sinks/call_logs/postgres/table)"), "{out}");
    // a migrations directory that is not one: a usage error, never a check judged without it
    let (code, _) = validate_with(
        &common::shipped(),
        &["--migrations", "/nonexistent-migrations"],
    );
    assert_eq!(code, Some(2));
    // nothing was kept of the pending migrations tried
    let (code, _) = validate_with(
        &common::shipped(),
        &["--migrations", &empty.path().display().to_string()],
    );
    assert_eq!(code, Some(1));
    rt.block_on(engine::migrate::run(&url, &migrations()))
        .unwrap();
    let (code, out) = validate(&common::shipped());
    assert_eq!(code, Some(0), "{out}");

    // a key without a unique index, a missing column, an encrypted non-text column
    let dir = common::Dir::shipped_copy();
    dir.write(
        "x.yaml",
        "name: x\nroute: {method: POST, path: /x}\ntransform:\n  - inline: '#{}'\n    sink: s\nsinks:\n  s:\n    postgres:\n      table: call_status\n      key: [call_id]\n      update: [colour]\n      encrypt: [occurred_at]\n",
    );
    let (code, out) = validate(dir.path());
    assert_eq!(code, Some(1));
    assert!(
        out.contains("table `call_status`, column `colour`: expected a column (the pipeline writes it), found none"),
        "{out}"
    );
    assert!(
        out.contains(
            "expected a unique index on (call_id) for the sink's conflict key, found none"
        ),
        "{out}"
    );
    assert!(out.contains("table `call_status`, column `occurred_at`: expected text (field `occurred_at` is stored encrypted), found type timestamp with time zone"), "{out}");
}

/// A Supabase project moving from the Node backend already has a `call_logs` of another shape.
/// `CREATE TABLE IF NOT EXISTS` keeps it; `engine migrate` says so, names every column that does
/// not fit what the Vapi pipeline writes, and exits 1; a production boot against it refuses to
/// start (JSON lines) instead of dead-lettering every end-of-call report.
#[test]
fn an_old_backend_table_is_left_alone_reported_and_refuses_a_production_boot() {
    use std::process::Stdio;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, schema) = rt.block_on(empty_schema());
    rt.block_on(async {
        pg(&schema)
            .await
            .batch_execute(
                "CREATE TABLE call_logs (
                    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                    vapi_call_id text NOT NULL,
                    org_id uuid,
                    status text NOT NULL DEFAULT 'ended',
                    duration_seconds integer,
                    transcript text,
                    created_at timestamptz DEFAULT now())",
            )
            .await
            .unwrap()
    });
    let migrate = |extra: &[&str]| {
        let out = engine()
            .args(["migrate", "--database-url", &url, "--migrations"])
            .arg(migrations())
            .arg("--pipelines")
            .arg(common::shipped())
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = migrate(&[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("9 migrations applied"), "{out}");
    assert!(
        out.contains("left alone: table `call_logs` existed before V2 call_and_message_tables, whose CREATE TABLE IF NOT EXISTS keeps an existing table exactly as it is"),
        "{out}"
    );
    assert!(!out.contains("left alone: table `transcripts`"), "{out}");
    for expected in [
        "table `call_logs`, column `call_id`: expected a column (the pipeline writes it), found none; add it with a migration (`ALTER TABLE call_logs ADD COLUMN call_id uuid;`)",
        "table `call_logs`, column `assistant_id`: expected a column (the pipeline writes it), found none",
        "table `call_logs`, column `event_id`: expected a column (the pipeline writes it), found none; add it with a migration (`ALTER TABLE call_logs ADD COLUMN event_id text NOT NULL;`)",
        "table `call_logs`, column `duration_seconds`: expected a column that takes a number (fixture:vapi/end-of-call-report",
        "found type integer: invalid input syntax for type integer",
        "table `call_logs`, column `vapi_call_id`: NOT NULL without a default, and the pipeline never writes it",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in\n{err}");
    }
    assert!(
        err.lines().filter(|l| l.contains("table `call_logs`")).all(
            |l| l.contains("vapi.yaml:") && l.ends_with("(at /sinks/call_logs/postgres/table)")
        ),
        "{err}"
    );
    assert!(!err.contains("201.5"), "values are not printed: {err}");
    assert!(
        !err.contains("table `transcripts`") && !err.contains("table `call_status`"),
        "the tables migrate created fit: {err}"
    );

    // --check applies nothing and says the same
    let (code, out, err) = migrate(&["--check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("0 migrations pending"), "{out}");
    assert!(err.contains("column `call_id`"), "{err}");

    // a production boot refuses, in JSON lines, before it listens
    let mut child = engine()
        .args(["serve", "--pipelines"])
        .arg(common::shipped())
        .env("NODE_ENV", "production")
        .env("PORT", "0")
        .env("REDIS_URL", common::redis())
        .env("DATABASE_URL", &url)
        .env("CORS_ORIGIN", "https://voxanne.ai")
        .env("VAPI_WEBHOOK_SECRET", "prod-vapi-credential-secret")
        .env(
            "ENCRYPTION_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the production boot did not refuse within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("table `call_logs`, column `call_id`")),
        "{err}"
    );
    assert!(
        lines.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("refusing to start"),
        "{err}"
    );
    assert!(!err.contains("Server listening"), "{err}");

    // the fix: the old table moved aside, the engine's own created (what docs/deploy-render.md
    // says to do); now the check passes
    rt.block_on(async {
        let c = pg(&schema).await;
        c.batch_execute("ALTER TABLE call_logs RENAME TO call_logs_node")
            .await
            .unwrap();
        c.batch_execute(
            &std::fs::read_to_string(migrations().join("V2__call_and_message_tables.sql")).unwrap(),
        )
        .await
        .unwrap();
    });
    let (code, out, err) = migrate(&["--check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(
            "tables: every postgres sink's table takes what its pipeline is known to write"
        ),
        "{out}"
    );
}

/// `engine migrate --check` never passes without having checked (issue 44): pipelines that do
/// not load (here: DATABASE_URL set, ENCRYPTION_KEY not, as docs/deploy-render.md step 2 runs
/// it) exit non-zero naming the cause; `--check` without a pipelines directory exits 2.
#[test]
fn migrate_check_fails_when_it_could_not_check() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = rt.block_on(empty_schema());
    let out = engine()
        .env("DATABASE_URL", &url)
        .args(["migrate", "--check", "--database-url", &url, "--migrations"])
        .arg(migrations())
        .arg("--pipelines")
        .arg(common::shipped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("set ENCRYPTION_KEY"), "the real cause: {err}");
    assert!(err.contains("table check not run"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("skipped"));
    let nowhere = tempfile::tempdir().unwrap();
    let out = engine()
        .args(["migrate", "--check", "--database-url", &url, "--migrations"])
        .arg(migrations())
        .arg("--pipelines")
        .arg(nowhere.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a database that does not answer: neither command passes by not checking
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/test?connect_timeout=2",
        common::free_port()
    );
    let shipped = common::shipped().display().to_string();
    for args in [
        vec!["validate", "--database-url", &closed, &shipped],
        vec![
            "migrate",
            "--check",
            "--database-url",
            &closed,
            "--pipelines",
            &shipped,
        ],
    ] {
        let out = engine()
            .env("VAPI_WEBHOOK_SECRET", "a-secret-of-sixteen-or-more")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("database"), "{args:?}: {err}");
    }
}

/// The `engine` binary with only the variables a test sets.
fn engine() -> std::process::Command {
    common::engine_command()
}
