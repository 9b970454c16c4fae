//! The shared Redis (127.0.0.1:6379) and Postgres (127.0.0.1:5432, database `test`) the suite
//! talks to, and a fresh schema or database per test on the latter.
//!
//! Nothing is started for tests that need neither (`validate::`, `architecture::`): the first
//! helper that needs them ([`connect`], [`redis`], `spawn_app`, `engine_command`) checks they
//! listen, once per run, and starts what does not from this machine's binaries (`redis-server`;
//! Postgres under /usr/lib/postgresql, as the `postgres` user, in a temp dir), left running for
//! the next run. When that cannot be done, the tests that need them fail with one message
//! saying what to start; the others run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// The shared test database (trust auth on this machine and in CI).
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The directory of Postgres's server binaries (`pg_ctl`, `initdb`), Debian's layout.
pub(crate) fn postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .find(|p| p.join("pg_ctl").exists())
}

pub(crate) fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// The shared Redis's URL, once it listens ([`services`]).
pub fn redis() -> &'static str {
    services();
    "redis://127.0.0.1:6379"
}

/// The shared Postgres's `test` database, once it listens ([`services`]).
pub fn pg_url() -> &'static str {
    services();
    PG
}

/// Make sure what the suite talks to listens: Redis on 127.0.0.1:6379 and Postgres on
/// 127.0.0.1:5432 with a `test` database. Checked once per run, by the first helper that needs
/// them: a service that is not listening is started from this machine's binaries
/// (`redis-server`; Postgres under /usr/lib/postgresql, as the `postgres` user, into a temp dir)
/// and left running for the next run. When that cannot be done, every test that needs them
/// fails with one message saying what to start, instead of on a refused connection; tests that
/// need neither are not touched.
pub fn services() {
    static UP: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if let Err(missing) = UP.get_or_init(start_services) {
        panic!("{missing}");
    }
}

fn start_services() -> Result<(), String> {
    let mut missing = Vec::new();
    if !listening(6379) && !start_redis() {
        missing.push("Redis on 127.0.0.1:6379 (`redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`)");
    }
    if !listening(5432) && !start_postgres() {
        missing.push("Postgres on 127.0.0.1:5432 with trust auth and a `test` database (`pg_ctlcluster <version> main start`, then `createdb -U postgres test`)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this test needs, and could not start:\n  - {}\n(README.md, \"What the tests need\"; `tests/run` installs and starts them)",
        missing.join("\n  - ")
    ))
}

fn start_redis() -> bool {
    let started = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
        ])
        .status()
        .is_ok_and(|s| s.success());
    started
        && (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            listening(6379)
        })
}

fn start_postgres() -> bool {
    postgres_bin().is_some()
        && std::panic::catch_unwind(|| {
            let pg = PrivatePostgres::start_on(5432);
            pg.as_postgres(
                "psql",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    "5432",
                    "-U",
                    "postgres",
                    "-c",
                    "CREATE DATABASE test",
                ],
            );
            // left running for the rest of the run and the next: its data dir stays
            std::mem::forget(pg);
        })
        .is_ok()
}

/// A connection to `url` (no TLS), its connection task spawned.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    if url.contains("@127.0.0.1:5432/") {
        services();
    }
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("postgres at {url}: {e} (is Postgres running on 127.0.0.1:5432?)")
        });
    tokio::spawn(conn);
    client
}

/// The shipped migrations' SQL, run in order on `client`.
pub(crate) async fn apply_migrations(client: &tokio_postgres::Client) {
    let mut files: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    for f in files {
        client
            .batch_execute(&std::fs::read_to_string(f).unwrap())
            .await
            .unwrap();
    }
}

/// A fresh schema with the migrations applied; returns a DATABASE_URL whose connections use it.
pub async fn fresh_schema() -> (String, String) {
    let schema = format!("t_{}", uuid_like());
    let client = connect(PG).await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};"
        ))
        .await
        .unwrap();
    apply_migrations(&client).await;
    (format!("{PG}?options=-csearch_path%3D{schema}"), schema)
}

/// A new schema with nothing in it (no migrations applied, unlike [`fresh_schema`]): its URL
/// (search_path set to it) and name. `prefix` says which test made it.
pub async fn empty_schema(prefix: &str) -> (String, String) {
    let schema = format!("{prefix}_{}", uuid_like());
    connect(PG)
        .await
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    (format!("{PG}?options=-csearch_path%3D{schema}"), schema)
}

/// A client on the shared database, scoped to `schema`.
pub async fn pg(schema: &str) -> tokio_postgres::Client {
    let client = connect(PG).await;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .unwrap();
    client
}

pub(crate) fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        t % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh database on the shared Postgres with the migrations applied (for clients that cannot
/// set a `search_path` option, such as connections through PgBouncer); returns its name and a
/// direct URL.
pub async fn fresh_database() -> (String, String) {
    let name = format!("d_{}", uuid_like());
    connect(PG)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let direct = format!("postgres://postgres@127.0.0.1:5432/{name}");
    apply_migrations(&connect(&direct).await).await;
    (name, direct)
}

/// Drop a database [`fresh_database`] made (a whole database per test would pile up on the shared
/// server), closing whatever is still connected to it.
pub async fn drop_database(name: &str) {
    connect(PG)
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}

/// The count a `SELECT count(*) ...` answers.
pub async fn sql_count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// Wait (up to 15 s) until `sql`'s count is `want`.
pub async fn sql_eventually(db: &tokio_postgres::Client, sql: &str, want: i64) {
    for _ in 0..150 {
        if sql_count(db, sql).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "`{sql}` never reached {want} (now {})",
        sql_count(db, sql).await
    );
}
