//! `engine migrate` against real Postgres (an empty schema per test), and `engine secrets decrypt`.

mod common;

use std::path::Path;

use common::{PG, pg};

async fn empty_schema() -> (String, String) {
    let schema = format!(
        "m_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    (format!("{PG}?options=-csearch_path%3D{schema}"), schema)
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
            (3, "oauth_tokens".to_string())
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
        tables, 9,
        "five sink tables, tenant_credentials, oauth_tokens, oauth_states_used, refinery's history"
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
        [1, 2, 3]
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
    assert_eq!(total, 3, "each migration applied by exactly one runner");
}

#[test]
fn cli_migrate_status_and_decrypt() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = rt.block_on(empty_schema());
    let engine = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        c
    };
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 migrations applied"));
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
    let validate = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["validate", "--database-url", &url])
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // before migrating: every table is missing, each reported at its sink
    let (code, out) = validate(&common::shipped());
    assert_eq!(code, Some(1));
    assert!(out.contains("vapi.yaml:") && out.contains("table `call_logs` does not exist: run `engine migrate`, or write a migration that creates it (at /sinks/call_logs/postgres/table)"), "{out}");
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
