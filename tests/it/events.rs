//! The event archive (docs/events.md) end to end: a bad pipeline edit undone by `engine events
//! replay` (Postgres + Redis, and on the embedded default), a second replay adding nothing, a
//! dry run writing nothing, a replay killed with SIGKILL resumed, retention dropping old days,
//! and erasure leaving no trace in the archive or the dead letters.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Dir, fresh_schema, pg, spawn_app};
use engine::archive::{Filter, Note, Outcome, Recorder, Step, Store};

const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn dir(data: &Path) -> Dir {
    Dir::shipped_with_data(data)
}

/// Vapi's end-of-call report (the shipped fixture's payload) for call number `i`.
fn report(i: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/payloads/vapi/end-of-call-report.json"),
    )
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["message"]["call"]["id"] = format!("00000000-0000-4000-8000-{i:012}").into();
    v["message"]["timestamp"] = (1_732_550_400_000u64 + i as u64).into();
    serde_json::to_vec(&v).unwrap()
}

fn call_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

async fn post_vapi(app: &common::TestApp, body: Vec<u8>) -> u16 {
    common::post_vapi(app, body).await
}

fn typo(d: &Dir) {
    d.edit("vapi.yaml", |s| {
        s.replace("in: [end-of-call-report]", "in: [end-of-call-reprot]")
    });
}

fn fix(d: &Dir) {
    d.edit("vapi.yaml", |s| {
        s.replace("end-of-call-reprot", "end-of-call-report")
    });
}

/// `engine events ...` against `d`, with only the variables in `env` (an env file).
fn events(d: &Dir, env: &[(&str, &str)], args: &str) -> (i32, String, String) {
    engine_cli(d, env, "events", args)
}

/// `engine <command> <args>` (args split at spaces) against `d` with only `env`.
fn engine_cli(d: &Dir, env: &[(&str, &str)], command: &str, args: &str) -> (i32, String, String) {
    let env_file = d.path().join("test.env");
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg(command)
        .args(args.split_whitespace())
        .arg("--pipelines")
        .arg(d.path())
        .arg("--env-file")
        .arg(&env_file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    common::sql_count(db, sql).await
}

async fn eventually(db: &tokio_postgres::Client, sql: &str, want: i64) {
    common::sql_eventually(db, sql, want).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_edit_is_undone_by_a_replay_and_a_second_replay_adds_nothing() {
    let (database, schema) = fresh_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    typo(&d);
    let env = [
        ("REDIS_URL", common::redis()),
        ("DATABASE_URL", database.as_str()),
        ("ENCRYPTION_KEY", K),
    ];
    let app = spawn_app(d.path(), &env).await;
    let db = pg(&schema).await;
    for i in 0..20 {
        assert_eq!(post_vapi(&app, report(i)).await, 200);
    }
    // every report answered 200 and dropped by the typo: the archive has them all, with why
    eventually(
        &db,
        "SELECT count(*) FROM engine_events WHERE pipeline = 'vapi' AND outcome = 'dropped'",
        20,
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 0);
    let reason: String = db
        .query_one("SELECT story->0->>'reason' FROM engine_events LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("no step"), "{reason}");
    // bodies sealed with ENCRYPTION_KEY, index fields in the clear
    let (sealed, body, field): (bool, Vec<u8>, String) = {
        let r = db
            .query_one(
                "SELECT sealed, body, fields->>'call_id' FROM engine_events ORDER BY received_at LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(sealed);
    assert!(!String::from_utf8_lossy(&body).contains("end-of-call"));
    assert!(field.starts_with("00000000-0000-4000-8000-"));
    app.stop().await;

    fix(&d);
    // a dry run counts and writes nothing
    let (code, out, err) = events(
        &d,
        &env,
        "replay --pipeline vapi --outcome dropped --dry-run --json",
    );
    assert_eq!(code, 0, "{out}{err}");
    let dry = json(&out);
    assert_eq!(dry["matched"], 20);
    assert_eq!(dry["sample"][0]["would"], "written", "{dry}");
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM engine_event_replays").await,
        0
    );

    let (code, out, err) = events(&d, &env, "replay --pipeline vapi --outcome dropped --json");
    assert_eq!(code, 0, "{out}{err}");
    let job = json(&out);
    assert_eq!(job["status"], "done");
    assert_eq!(job["counts"]["written"], 20, "{job}");
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 20);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT call_id) FROM call_logs").await,
        20
    );

    // the same replay over the whole pipeline: every event unchanged, nothing written
    let (code, out, err) = events(&d, &env, "replay --pipeline vapi --json");
    assert_eq!(code, 0, "{out}{err}");
    let again = json(&out);
    assert_eq!(again["counts"]["unchanged"], 20, "{again}");
    assert_eq!(again["counts"]["written"], 0, "{again}");
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 20);

    // found by its call id, with the whole story
    let (code, out, _) = events(
        &d,
        &env,
        &format!("list --pipeline vapi --where call_id={} --json", call_id(3)),
    );
    assert_eq!(code, 0);
    let found = json(&out);
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let story = found[0]["story"].as_array().unwrap();
    let outcomes: Vec<&str> = story
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["dropped", "written", "unchanged"], "{found}");
    assert!(story[1]["run"].as_str().unwrap().starts_with("rp-"));
    let id = found[0]["event_id"].as_str().unwrap();
    let (code, out, _) = events(&d, &env, &format!("show --pipeline vapi --id {id} --json"));
    assert_eq!(code, 0);
    let shown = json(&out);
    assert!(
        shown["request"]["body"]
            .as_str()
            .unwrap()
            .contains("end-of-call-report")
    );
    // an unknown field is refused with the fields there are
    let (code, _, err) = events(&d, &env, "list --pipeline vapi --where phone=1");
    assert_eq!(code, 1);
    assert!(err.contains("call_id, org_id, type"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_keeps_and_replays_events_too() {
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    typo(&d);
    let app = spawn_app(d.path(), &[]).await;
    for i in 0..5 {
        assert_eq!(post_vapi(&app, report(i)).await, 200);
    }
    let settings = engine::config::Settings {
        data_dir: data.path().to_str().unwrap().to_string(),
        ..Default::default()
    };
    let store = Store::new(None, &settings);
    let dropped = Filter {
        pipeline: Some("vapi".into()),
        outcome: Some(Outcome::Dropped),
        ..Filter::default()
    };
    let mut n = 0;
    for _ in 0..100 {
        n = store.count(&dropped).await.unwrap();
        if n == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 5);
    app.stop().await;

    // the shipped redact list: the caller's number and words are [redacted] when shown, whole
    // with --unredacted (the archive kept them)
    let (code, out, err) = events(&d, &[], "list --pipeline vapi --json --limit 1");
    assert_eq!(code, 0, "{out}{err}");
    let listed = json(&out);
    let id = listed[0]["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{listed}"));
    let (code, shown, err) = events(&d, &[], &format!("show --pipeline vapi --id {id} --json"));
    assert_eq!(code, 0, "{shown}{err}");
    assert!(shown.contains("[redacted]"), "{shown}");
    for personal in ["+14155550123", "book a cleaning"] {
        assert!(!shown.contains(personal), "{personal} in {shown}");
    }
    let (code, whole, err) = events(
        &d,
        &[],
        &format!("show --pipeline vapi --id {id} --json --unredacted"),
    );
    assert_eq!(code, 0, "{whole}{err}");
    assert!(
        whole.contains("+14155550123") && whole.contains("book a cleaning"),
        "{whole}"
    );
    fix(&d);
    let rows = || {
        std::fs::read_to_string(data.path().join("call_logs.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(rows(), 0);
    let (code, out, err) = events(&d, &[], "replay --pipeline vapi --json");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["counts"]["written"], 5);
    assert_eq!(rows(), 5);
    let (code, out, err) = events(&d, &[], "replay --pipeline vapi --json");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["counts"]["unchanged"], 5);
    assert_eq!(rows(), 5, "an append sink gets no second copy");
}

/// A JSON event of `pipeline` received a minute ago.
fn ev(id: &str, pipeline: &str, body: Vec<u8>) -> engine::transform::EventInput {
    let mut e = common::event_input(id, pipeline, "/api/webhooks/vapi", "application/json", body);
    e.received_at_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    e
}

/// `n` archived end-of-call reports of `vapi`, dropped (as the typo left them).
async fn archive_dropped(store: &std::sync::Arc<Store>, n: usize) {
    let index = [(
        "call_id".to_string(),
        engine::config::verify::KeySource::Json("/message/call/id".into()),
    )]
    .into();
    let recorder = Recorder::new(store.clone(), "vapi", &index, None);
    let now = chrono::Utc::now().timestamp_millis();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let notes: Vec<Note> = chunk
            .iter()
            .map(|&i| {
                let mut e = ev(&format!("ev-{i:06}"), "vapi", report(i));
                e.received_at_ms = now - 60_000 + i as i64;
                recorder.note(&e, None, Step::new(Outcome::Dropped, 1).reason("typo"))
            })
            .collect();
        store.write(&notes).await.unwrap();
    }
}

/// `engine events replay --pipeline vapi` at 500 events/s, killed with SIGKILL once it has done
/// `at` events; its job id (the job left `running`).
async fn replay_killed(d: &Dir, database: &str, db: &tokio_postgres::Client, at: i64) -> String {
    let env_file = d.path().join("test.env");
    std::fs::write(
        &env_file,
        format!("DATABASE_URL={database}\nENCRYPTION_KEY={K}\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args([
            "events",
            "replay",
            "--pipeline",
            "vapi",
            "--rate",
            "500",
            "--json",
        ])
        .arg("--pipelines")
        .arg(d.path())
        .arg("--env-file")
        .arg(&env_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        db,
        &format!("SELECT count(*) FROM engine_event_replays WHERE done >= {at}"),
        1,
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let row = db
        .query_one("SELECT id, done, status FROM engine_event_replays", &[])
        .await
        .unwrap();
    let (job, done, status): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
    assert!(done < 3000, "killed before the end ({done})");
    assert_eq!(status, "running");
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_whose_process_was_killed_is_taken_over_by_a_running_instance() {
    let (database, schema) = fresh_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let pool = engine::db::pool(&database, 2).unwrap();
    let store = std::sync::Arc::new(Store::new(Some(&pool), &Default::default()));
    archive_dropped(&store, 3000).await;
    let db = pg(&schema).await;
    let job = replay_killed(&d, &database, &db, 500).await;
    db.execute(
        "UPDATE engine_event_replays SET heartbeat_at = now() - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    // an instance starting takes it over and finishes it
    let app = spawn_app(
        d.path(),
        &[("DATABASE_URL", database.as_str()), ("ENCRYPTION_KEY", K)],
    )
    .await;
    eventually(
        &db,
        &format!("SELECT count(*) FROM engine_event_replays WHERE id = '{job}' AND status = 'done' AND done = 3000"),
        1,
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 3000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_mid_way_resumes_and_writes_each_event_once() {
    let (database, schema) = fresh_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let env = [("DATABASE_URL", database.as_str()), ("ENCRYPTION_KEY", K)];
    let pool = engine::db::pool(&database, 2).unwrap();
    let store = std::sync::Arc::new(Store::new(Some(&pool), &Default::default()));
    archive_dropped(&store, 3000).await;
    let db = pg(&schema).await;

    let job = replay_killed(&d, &database, &db, 1000).await;
    // a job whose process is alive cannot be taken over; once its heartbeat is stale it can
    let (code, _, err) = events(&d, &env, &format!("replay --pipeline vapi --resume {job}"));
    assert_eq!(code, 1);
    assert!(err.contains("being run"), "{err}");
    db.execute(
        "UPDATE engine_event_replays SET heartbeat_at = now() - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    let (code, out, err) = events(
        &d,
        &env,
        &format!("replay --pipeline vapi --resume {job} --rate 100000 --json"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let resumed = json(&out);
    assert_eq!(resumed["status"], "done");
    assert_eq!(resumed["done"], 3000);
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 3000);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM engine_events WHERE outcome = 'written'"
        )
        .await,
        3000
    );
}

#[tokio::test]
async fn retention_drops_days_no_pipeline_keeps() {
    let (database, schema) = fresh_schema().await;
    let pool = engine::db::pool(&database, 2).unwrap();
    let store = std::sync::Arc::new(Store::new(Some(&pool), &Default::default()));
    let keeps = [("vapi".to_string(), 7 * 86_400_000i64)].into();
    engine::archive::retention::tend(&store, &keeps)
        .await
        .unwrap();
    let engine::archive::Store::Postgres(pg_store) = &*store else {
        unreachable!()
    };
    let old_day = (chrono::Utc::now() - chrono::Duration::days(10)).date_naive();
    pg_store.ensure_days(old_day, old_day).await.unwrap();
    let recorder = Recorder::new(store.clone(), "vapi", &Default::default(), None);
    let mut old = ev("old", "vapi", b"{}".to_vec());
    old.received_at_ms = old_day
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    // a body that compresses well: Postgres would compress it were it allowed to
    let large = format!(
        r#"{{"transcript":"{}"}}"#,
        "yes, friday at ten works. ".repeat(320)
    );
    let mut new = ev("new", "vapi", large.clone().into_bytes());
    new.received_at_ms = chrono::Utc::now().timestamp_millis();
    // a sealed end-of-call report's size: more than the ~2 KiB at which Postgres would move it
    // out of its row by default, less than a page
    let report = format!(r#"{{"summary":"{}"}}"#, "x".repeat(3400));
    let mut mid = ev("mid", "vapi", report.into_bytes());
    mid.received_at_ms = new.received_at_ms;
    store
        .write(&[
            recorder.note(&old, None, Step::new(Outcome::Written, 1)),
            recorder.note(&new, None, Step::new(Outcome::Written, 1)),
            recorder.note(&mid, None, Step::new(Outcome::Written, 1)),
        ])
        .await
        .unwrap();
    let db = pg(&schema).await;
    let partition = format!("engine_events_p{}", old_day.format("%Y%m%d"));
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {partition}")).await,
        1
    );
    assert_eq!(
        engine::archive::retention::tend(&store, &keeps)
            .await
            .unwrap(),
        1
    );
    let gone: bool = db
        .query_one("SELECT to_regclass($1) IS NULL", &[&partition])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the expired day's partition is dropped");
    let left = store.list(&Filter::default(), 10).await.unwrap();
    let mut ids: Vec<&str> = left.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["mid", "new"]);
    // today's and the coming days' partitions exist
    let today = format!("engine_events_p{}", chrono::Utc::now().format("%Y%m%d"));
    let made: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&today])
        .await
        .unwrap()
        .get(0);
    assert!(made);
    // bodies are kept as they are, never compressed (V8: compressing cost more than the row)
    let (stored, compression): (i32, Option<String>) = db
        .query_one(
            "SELECT octet_length(body), pg_column_compression(body) FROM engine_events WHERE event_id = 'new'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(stored as usize, large.len());
    assert_eq!(compression, None, "a body is never compressed");
    // ... and one of a few KiB stays in its row (V9): only the body larger than a page went to
    // the TOAST table, in today's partition as in the default one
    for partition in [today.as_str(), "engine_events_default"] {
        let toast: String = db
            .query_one(
                "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = $1::text::regclass",
                &[&partition],
            )
            .await
            .unwrap()
            .get(0);
        let options: Option<Vec<String>> = db
            .query_one(
                "SELECT reloptions FROM pg_class WHERE oid = $1::text::regclass",
                &[&partition],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            options,
            Some(vec!["toast_tuple_target=8160".to_string()]),
            "{partition}"
        );
        let toasted = count(
            &db,
            &format!("SELECT count(DISTINCT chunk_id) FROM {toast}"),
        )
        .await;
        assert_eq!(toasted, i64::from(partition == today), "{partition}");
    }
}

#[tokio::test]
async fn one_event_twice_in_a_batch_is_one_row_with_both_steps() {
    let (database, _) = fresh_schema().await;
    let pool = engine::db::pool(&database, 2).unwrap();
    let store = std::sync::Arc::new(Store::new(Some(&pool), &Default::default()));
    let recorder = Recorder::new(store.clone(), "p", &Default::default(), None);
    let e = ev("e1", "p", b"{}".to_vec());
    // another event between the two steps: each event's steps stay in the order given
    let other = ev("e0", "p", b"{}".to_vec());
    store
        .write(&[
            recorder.note(&e, None, Step::new(Outcome::Retrying, 1).reason("busy")),
            recorder.note(
                &other,
                None,
                Step::new(Outcome::Dropped, 1).reason("not wanted"),
            ),
            recorder.note(&e, None, Step::new(Outcome::Written, 2)),
        ])
        .await
        .unwrap();
    let all = store.list(&Filter::default(), 10).await.unwrap();
    assert_eq!(all.len(), 2);
    let one = all.iter().find(|s| s.event_id == "e1").unwrap();
    assert_eq!(
        (one.outcome, one.attempts, one.story.len()),
        (Outcome::Written, 2, 2)
    );
    assert_eq!(
        one.story.iter().map(|s| s.outcome).collect::<Vec<_>>(),
        [Outcome::Retrying, Outcome::Written]
    );
    let shown = store.show("p", &e.id).await.unwrap().unwrap();
    assert_eq!(shown.event(None).unwrap(), e);
    let dropped = store.show("p", &other.id).await.unwrap().unwrap();
    assert_eq!(
        (dropped.outcome, dropped.story.len()),
        (Outcome::Dropped, 1)
    );
}

/// A pipeline whose every event is dead-lettered at once, archived by `email`.
const FAILING: &str = r#"
name: signup
route: {method: POST, path: /signup}
queue: {max_attempts: 1}
archive: {index: {email: {json: /email}}}
transform:
  - name: refuse
    inline: 'fail_permanent("cannot store " + event.body.email)'
    sink: out
sinks: {out: {stdout: {}}}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn erasure_leaves_no_trace_of_a_person_in_the_archive_or_the_dead_letters() {
    let (database, schema) = fresh_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    d.write("signup.yaml", FAILING);
    let env = [
        ("REDIS_URL", common::redis()),
        ("DATABASE_URL", database.as_str()),
        ("ENCRYPTION_KEY", K),
    ];
    let app = spawn_app(d.path(), &env).await;
    for (i, email) in ["ann@example.com", "ann@example.com", "bob@example.com"]
        .iter()
        .enumerate()
    {
        let status = app
            .client
            .post(app.url("/signup"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"email":"{email}","n":{i}}}"#))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let db = pg(&schema).await;
    eventually(
        &db,
        "SELECT count(*) FROM engine_events WHERE pipeline = 'signup' AND outcome = 'dead'",
        3,
    )
    .await;
    let (_, out, _) = events(&d, &env, "list --pipeline signup --json");
    assert_eq!(json(&out).as_array().unwrap().len(), 3);
    app.stop().await;
    let (_, before, _) = engine_cli(&d, &env, "dlq", "list --pipeline signup --json");
    assert_eq!(json(&before).as_array().unwrap().len(), 3, "{before}");

    let (code, out, err) = events(&d, &env, "erase --where email=ann@example.com --json");
    assert_eq!(code, 0, "{out}{err}");
    let erased = json(&out);
    assert_eq!(erased["archived"], 2, "{erased}");
    assert_eq!(erased["dead_letters"], 2, "{erased}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM engine_events WHERE body::text LIKE '%ann@%' OR fields::text LIKE '%ann@%'")
            .await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM engine_events").await, 1);
    // the dead letters left are bob's only
    let (code, out, _) = engine_cli(&d, &env, "dlq", "list --pipeline signup --json");
    assert_eq!(code, 0);
    assert!(!out.contains("ann@"), "{out}");
    assert_eq!(json(&out).as_array().unwrap().len(), 1);
    // the erasure is recorded, without the address
    let recorded: Vec<String> = db
        .query_one("SELECT conditions FROM engine_event_erasures", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].starts_with("email=sha256:"), "{recorded:?}");
    assert!(!recorded[0].contains("ann@"));
    // nor does the console find her
    let mut with_console = env.to_vec();
    with_console.push(("CONSOLE_TOKEN", crate::console::TOKEN));
    let app = spawn_app(d.path(), &with_console).await;
    let s = crate::console::sign_in(&app).await;
    let (_, page) = crate::console::get(
        &app,
        &s.cookie,
        "/console/events?pipeline=signup&where=email%3Dann%40example.com",
    )
    .await;
    assert!(page.contains("0 events match"), "{page}");
    let (_, page) = crate::console::get(&app, &s.cookie, "/console/events?pipeline=signup").await;
    assert!(
        page.contains("1 event matches") && !page.contains("ann@"),
        "{page}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_database_without_the_archive_table_is_caught_by_the_table_check() {
    let (database, schema) = fresh_schema().await;
    pg(&schema)
        .await
        .batch_execute("DROP TABLE engine_events CASCADE")
        .await
        .unwrap();
    let source = engine::env::EnvSource::from_pairs([
        ("DATABASE_URL", database.as_str()),
        ("ENCRYPTION_KEY", K),
    ]);
    let project = engine::config::load(&common::shipped(), &source).unwrap();
    let options = engine::table_check::CheckOptions {
        fixtures: &[],
        memo: engine::table_check::Memo::Off,
        migrations: None,
    };
    let found = engine::table_check::check_project(&project, &database, &options)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].message.contains("run `engine migrate`"),
        "{found:?}"
    );
    assert!(
        found[0].file.ends_with("vapi.yaml")
            || found[0].file.ends_with("twilio-sms.yaml")
            || found[0].file.ends_with("twilio-voice.yaml")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_works_through_pgbouncer_in_transaction_mode() {
    let bouncer = common::PgBouncer::start(2);
    let (name, _direct) = common::fresh_database().await;
    let url = bouncer.url(&name);
    let pool = engine::db::pool(&url, 4).unwrap();
    let store = std::sync::Arc::new(Store::new(Some(&pool), &Default::default()));
    let keeps = [("vapi".to_string(), 7 * 86_400_000i64)].into();
    engine::archive::retention::tend(&store, &keeps)
        .await
        .unwrap();
    archive_dropped(&store, 50).await;
    // every statement again and again, on whichever server connection the pooler hands out
    for _ in 0..5 {
        let f = Filter {
            pipeline: Some("vapi".into()),
            fields: [("call_id".to_string(), call_id(7))].into(),
            ..Filter::default()
        };
        assert_eq!(store.list(&f, 10).await.unwrap().len(), 1);
        assert_eq!(store.count(&Filter::default()).await.unwrap(), 50);
        assert_eq!(
            store
                .page(&Filter::default(), None, 100)
                .await
                .unwrap()
                .len(),
            50
        );
    }
    let job = engine::archive::replay::Job::new(Filter::default(), 50, 100, false);
    store.jobs().create(&job).await.unwrap();
    assert_eq!(
        store.jobs().progress(&job).await.unwrap(),
        engine::archive::replay::Status::Running
    );
    assert!(store.jobs().cancel(&job.id).await.unwrap());
    let erased = Filter {
        fields: [("call_id".to_string(), call_id(7))].into(),
        ..Filter::default()
    };
    assert_eq!(store.erase(&erased).await.unwrap(), 1);
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 49);
    drop(pool);
    common::drop_database(&name).await;
}

/// The request path reads the archive's index fields in the pass it makes over the body anyway
/// (the shipped Vapi route reads its dedupe and rate-limit keys there) and the queue carries
/// them with the event, so the worker does not read the body again for them; they are what the
/// worker's own reading gives, and the archived request does not keep a second copy.
#[tokio::test]
async fn the_index_fields_ride_the_request_paths_pass_into_the_queue() {
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let prefix = common::redis_key_prefix(d.path());
    let app = common::spawn_ingest_only(d.path(), &[("REDIS_URL", common::redis())]).await;
    assert_eq!(post_vapi(&app, report(7)).await, 200);
    let client = redis::Client::open(common::redis()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:{{q:vapi}}:stream"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(entries.ids.len(), 1);
    let meta: Vec<u8> = entries.ids[0].get("e").unwrap();
    let body: Vec<u8> = entries.ids[0].get("b").unwrap();
    let queued = engine::transform::EventInput::from_stored(&meta, Some(body)).unwrap();
    let carried = queued
        .index
        .clone()
        .expect("the index rides with the event");
    assert_eq!(carried["call_id"], call_id(7));
    assert_eq!(carried["type"], "end-of-call-report");
    assert_eq!(carried["org_id"], "4b3a2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d");
    // the worker's own reading of the same event finds the same
    let (project, _) = engine::plan::load(d.path(), &engine::env::EnvSource::default()).unwrap();
    let vapi = project
        .pipelines
        .iter()
        .find(|p| p.config.name == "vapi")
        .unwrap();
    let index = &vapi.config.archive.kept().unwrap().index;
    let store = std::sync::Arc::new(Store::new(None, &Default::default()));
    let recorder = Recorder::new(store, "vapi", index, None);
    let unread = engine::transform::EventInput {
        index: None,
        ..queued.clone()
    };
    assert_eq!(recorder.fields(&unread), carried);
    assert_eq!(recorder.fields(&queued), carried);
    // the archived request: the queue's own text of the event where the queue keeps one (the
    // worker's Redis deliveries), kept as it is; else the event written again without them
    let text = String::from_utf8(meta.clone()).unwrap();
    assert_eq!(recorder.request(&queued, Some(&text)).meta, text);
    let request = recorder.request(&queued, None);
    assert!(!request.meta.contains("\"index\""), "{}", request.meta);
    app.stop().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:{{q:vapi}}:stream"))
        .query_async(&mut c)
        .await
        .unwrap();
}
