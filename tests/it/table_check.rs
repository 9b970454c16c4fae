//! The table check as a deployment meets it: only `pipelines/` and `migrations/` shipped (no
//! `fixtures/`), against real Postgres (an empty schema per test), through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{copy_tree, pg};

/// A deployment directory: `pipelines/` and `migrations/` of this repository, nothing else.
struct Deployment {
    tmp: tempfile::TempDir,
    url: String,
    schema: String,
}

impl Deployment {
    fn new(rt: &tokio::runtime::Runtime) -> Deployment {
        let tmp = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["pipelines", "migrations"] {
            copy_tree(&root.join(dir), &tmp.path().join(dir));
        }
        assert!(!tmp.path().join("fixtures").exists());
        let (url, schema) = rt.block_on(crate::common::empty_schema("tc"));
        Deployment { url, tmp, schema }
    }

    fn pipelines(&self) -> PathBuf {
        self.tmp.path().join("pipelines")
    }

    fn engine(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
        c.current_dir(self.tmp.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        c
    }

    /// `engine migrate [extra]` run from the deployment directory: exit code, stdout, stderr.
    fn migrate(&self, extra: &[&str]) -> (Option<i32>, String, String) {
        let out = self
            .engine()
            .args([
                "migrate",
                "--database-url",
                &self.url,
                "--pipelines",
                "pipelines",
            ])
            .args(["--migrations", "migrations"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A production `engine serve`: `Ok(log)` once it says it listens (then stopped), `Err(log)`
    /// when it exits first.
    fn boot(&self) -> Result<String, String> {
        let mut child = self
            .engine()
            .args(["serve", "--pipelines", "pipelines"])
            .env("NODE_ENV", "production")
            .env("PORT", "0")
            .env("REDIS_URL", crate::common::redis())
            .env("DATABASE_URL", &self.url)
            .env("CORS_ORIGIN", "https://voxanne.ai")
            .env("VAPI_WEBHOOK_SECRET", "prod-vapi-credential-secret")
            .env(
                "ENCRYPTION_KEY",
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut log = String::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains("Server listening") {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Ok(log);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    return Err(log);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the production boot neither listened nor refused within 30 s:\n{log}");
            }
        }
    }

    fn sql(&self, rt: &tokio::runtime::Runtime, sql: &str) {
        rt.block_on(async { pg(&self.schema).await.batch_execute(sql).await.unwrap() });
    }

    fn remembered(&self, rt: &tokio::runtime::Runtime) -> i64 {
        rt.block_on(async {
            pg(&self.schema)
                .await
                .query_one("SELECT count(*) FROM engine_table_checks", &[])
                .await
                .unwrap()
                .get(0)
        })
    }
}

/// The report: a fresh database, a deployment without fixtures. Before, `received_at`
/// and ten others were "never written" and the deploy was refused.
#[test]
fn a_deployment_without_fixtures_migrates_checks_and_boots() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Deployment::new(&rt);
    let (code, out, err) = d.migrate(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("9 migrations applied"), "{out}");
    assert!(
        out.contains(
            "tables: every postgres sink's table takes what its pipeline is known to write"
        ),
        "{out}"
    );
    assert!(!err.contains("NOT NULL"), "{err}");
    let (code, out, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 migrations pending"), "{out}");
    // migrate remembered its pass; the boot finds it
    assert_eq!(d.remembered(&rt), 1);
    let log = d.boot().expect("a production boot");
    assert!(log.contains("table check"), "{log}");
    assert!(!log.contains("\"ERROR\""), "{log}");
}

/// The drifted tables of today still refuse without fixtures: a missing column the script's
/// map names, a NOT NULL column nothing writes; and a table altered after a remembered pass is
/// checked again at boot.
#[test]
fn drifted_tables_refuse_without_fixtures_even_after_a_remembered_pass() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Deployment::new(&rt);
    assert_eq!(d.migrate(&[]).0, Some(0));
    assert!(d.boot().is_ok());

    // a column added by hand that the SMS script never writes
    d.sql(
        &rt,
        "ALTER TABLE sms_messages ADD COLUMN channel text NOT NULL",
    );
    let err = d.boot().expect_err("a drifted table refuses the boot");
    assert!(
        err.contains("table `sms_messages`, column `channel`: NOT NULL without a default, and the pipeline never writes it"),
        "{err}"
    );
    assert!(err.contains("refusing to start"), "{err}");
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("pipelines/twilio-sms.yaml:") && err.contains("column `channel`"),
        "{err}"
    );

    // a column the script's returned map names, dropped
    d.sql(
        &rt,
        "ALTER TABLE sms_messages DROP COLUMN channel; ALTER TABLE call_status DROP COLUMN ended_reason",
    );
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("table `call_status`, column `ended_reason`: expected a column (the pipeline writes it), found none"),
        "{err}"
    );
    assert!(!err.contains("sms_messages"), "{err}");
    let err = d.boot().expect_err("refused");
    assert!(err.contains("column `ended_reason`"), "{err}");

    // the table put right: its catalog is what passed before, and the boot takes traffic
    d.sql(&rt, "ALTER TABLE call_status ADD COLUMN ended_reason text");
    assert!(d.boot().is_ok());
}

/// What the check cannot tell is a warning that says what would tell, never a refusal; a
/// `columns:` list makes it tell.
#[test]
fn a_script_that_builds_its_rows_at_run_time_is_a_warning_until_its_fields_are_listed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Deployment::new(&rt);
    assert_eq!(d.migrate(&[]).0, Some(0));
    let pipeline = |columns: &str| {
        format!(
            "name: built\nroute: {{method: POST, path: /built}}\ntransform:\n  - name: status\n    inline: |\n      let row = #{{ call_id: event.body.call_id }};\n      row.status = event.body.status;\n      row\n    sink: s\nsinks:\n  s:\n    postgres:\n      table: call_status\n{columns}"
        )
    };
    std::fs::write(d.pipelines().join("built.yaml"), pipeline("")).unwrap();
    let (code, out, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("pipelines/built.yaml:") && err.contains("warning") && err.contains("table `call_status`: cannot tell whether the pipeline fills NOT NULL columns `call_id`, `occurred_at`, `status`: the rows of step `status`"),
        "{err}"
    );
    assert!(
        err.contains("add a fixture whose event reaches this sink, or list the fields the rows carry in the sink's `columns:`"),
        "{err}"
    );
    assert!(d.boot().is_ok(), "a warning does not refuse the boot");

    // listed: now it is known that `occurred_at` is never written
    std::fs::write(
        d.pipelines().join("built.yaml"),
        pipeline("      columns: [call_id, status]\n"),
    )
    .unwrap();
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("table `call_status`, column `occurred_at`: NOT NULL without a default, and the pipeline never writes it"),
        "{err}"
    );
    assert!(!err.contains("column `status`: NOT NULL"), "{err}");
}

/// Fixtures, where a deployment has them beside the pipelines, are still read: values of the
/// wrong type are found only through them.
#[test]
fn fixtures_beside_the_pipelines_add_what_only_values_show() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Deployment::new(&rt);
    assert_eq!(d.migrate(&[]).0, Some(0));
    d.sql(
        &rt,
        "ALTER TABLE call_logs ALTER COLUMN duration_seconds TYPE integer USING duration_seconds::integer",
    );
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(0), "without fixtures no value says so: {err}");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        &d.tmp.path().join("fixtures"),
    );
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("table `call_logs`, column `duration_seconds`: expected a column that takes a number (fixture:vapi/"),
        "{err}"
    );

    // put right, a production boot runs the fixtures for the check: their requests (a revoked
    // grant, a Calendar 503, ...) leave no line in its log, which holds only its own
    d.sql(
        &rt,
        "ALTER TABLE call_logs ALTER COLUMN duration_seconds TYPE numeric(10,3)",
    );
    let log = d.boot().expect("a production boot");
    assert!(log.contains("table check"), "{log}");
    for fixture_line in [
        "connection call failed",
        "org_clinic",
        "oauth: connection",
        "rate limited",
    ] {
        assert!(
            !log.contains(fixture_line),
            "{fixture_line} in the boot log:\n{log}"
        );
    }
}

/// The authoring loop of issue 44: a new boolean field mapped into `call_logs`. Before its
/// migration exists the check asks for a typed column; once the migration is written (not yet
/// applied) the check judges the tables as `engine migrate` will leave them and credits the
/// file; a migration of the wrong type, or one that fails, is named at its line; nothing the
/// check tried is kept.
#[test]
fn pending_migrations_are_judged_before_they_are_applied() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = Deployment::new(&rt);
    assert_eq!(d.migrate(&[]).0, Some(0));
    let vapi = d.pipelines().join("vapi.yaml");
    let yaml = std::fs::read_to_string(&vapi).unwrap().replace(
        "      structured_data: {json: /message/analysis/structuredData}\n",
        "      structured_data: {json: /message/analysis/structuredData}\n      appointment_booked: {json: /message/analysis/structuredData/appointmentBooked, as: boolean}\n",
    );
    assert!(yaml.contains("appointment_booked"));
    std::fs::write(&vapi, yaml).unwrap();

    // no migration yet: the column is missing, and the suggested one is boolean (from `as:`)
    let (code, out, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("ALTER TABLE call_logs ADD COLUMN appointment_booked boolean;"),
        "{err}"
    );

    // the migration written, not applied: judged after it, credited to it, exit 0
    let migration = d
        .tmp
        .path()
        .join("migrations/V10__call_logs_appointment_booked.sql");
    std::fs::write(
        &migration,
        "ALTER TABLE call_logs ADD COLUMN appointment_booked boolean;\n",
    )
    .unwrap();
    let (code, out, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("pending V10 call_logs_appointment_booked"),
        "{out}"
    );
    assert!(
        err.contains("warning: fixed by pending migration V10__call_logs_appointment_booked.sql (`engine migrate` applies it): table `call_logs`, column `appointment_booked`: expected a column (the pipeline writes it), found none"),
        "{err}"
    );
    // validate judges the same way
    let out = d
        .engine()
        .args(["validate", "pipelines", "--database-url", &d.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // nothing was kept: the column is not there, V10 is not in the history
    let kept: (i64, i64) = rt.block_on(async {
        let c = crate::common::pg(&d.schema).await;
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND column_name = 'appointment_booked'), \
                 (SELECT count(*) FROM refinery_schema_history WHERE version = 10)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    });
    assert_eq!(kept, (0, 0));

    // of the wrong type: the column arrives, and does not take a boolean
    std::fs::write(
        &migration,
        "ALTER TABLE call_logs ADD COLUMN appointment_booked integer;\n",
    )
    .unwrap();
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("table `call_logs`, column `appointment_booked`: expected a column that takes boolean (the map writes field `appointment_booked` `as: boolean`), found type integer"),
        "{err}"
    );

    // one that fails: named at the line and column Postgres points at
    std::fs::write(
        &migration,
        "-- a typo in the type\nALTER TABLE call_logs ADD COLUMN appointment_booked boolen;\n",
    )
    .unwrap();
    let (code, _, err) = d.migrate(&["--check"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("V10__call_logs_appointment_booked.sql:2:")
            && err.contains("this pending migration fails: type \"boolen\" does not exist"),
        "{err}"
    );

    // applied for real: the check passes as it is, nothing pending
    std::fs::write(
        &migration,
        "ALTER TABLE call_logs ADD COLUMN appointment_booked boolean;\n",
    )
    .unwrap();
    let (code, out, err) = d.migrate(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("applied V10 call_logs_appointment_booked"),
        "{out}"
    );
    assert!(!err.contains("fixed by pending"), "{err}");
}
