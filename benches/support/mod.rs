//! What the whole-engine benchmarks share: a fresh Postgres schema with the migrations applied,
//! and a copy of the shipped pipelines whose rate limits (the per-IP default, the Vapi pipeline's
//! per org) let one load generator through and whose Redis keys live under a private prefix.

use std::path::Path;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A benchmark's database and pipelines.
pub struct Bench {
    pub pg: tokio_postgres::Client,
    pub schema: String,
    /// DATABASE_URL for the engine: the schema first on the search path.
    pub database: String,
    pub dir: tempfile::TempDir,
    pub prefix: String,
}

/// A schema `<name>_<pid>` with the migrations, and the pipelines; `None` without Postgres.
pub async fn setup(name: &str) -> Option<Bench> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (pg, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let schema = format!("{name}_{}", std::process::id());
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema};"
    ))
    .await
    .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(root.join("migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        pg.batch_execute(&std::fs::read_to_string(f).unwrap())
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // LOAD_PIPELINES: another build's pipelines, for an A/B run with LOAD_ENGINE (a build whose
    // pipeline schema differs refuses today's files)
    let pipelines = std::env::var("LOAD_PIPELINES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("pipelines"));
    copy(&pipelines, dir.path());
    let prefix = format!("{name}{}", std::process::id());
    let settings = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    // one load generator is one client: the default 100/min per IP would measure 429s
    std::fs::write(
        dir.path().join("engine.yaml"),
        format!(
            "{}redis_key_prefix: '{prefix}'\n",
            settings.replace("  limit: 100/1m\n", "  limit: 100000000/1s\n")
        ),
    )
    .unwrap();
    // nor would the Vapi pipeline's own limit per org (every generated message is one org's)
    let vapi = std::fs::read_to_string(dir.path().join("vapi.yaml")).unwrap();
    let mut vapi = vapi.replace(
        "  limit: 20000/1m
",
        "  limit: 100000000/1s
",
    );
    // BENCH_ARCHIVE=off: the event archive off, to measure what it costs (docs/benchmarks.md)
    if std::env::var("BENCH_ARCHIVE").as_deref() == Ok("off") {
        let start = vapi
            .find("\narchive:")
            .expect("vapi.yaml has an archive section");
        let end = vapi[start + 1..]
            .find("\n\n")
            .map_or(vapi.len(), |e| start + 1 + e);
        vapi.replace_range(start..end, "\narchive: off");
    }
    std::fs::write(dir.path().join("vapi.yaml"), vapi).unwrap();
    Some(Bench {
        pg,
        database: format!("{PG}?options=-csearch_path%3D{schema}"),
        schema,
        dir,
        prefix,
    })
}

impl Bench {
    /// Drop the schema and the Redis keys under the prefix.
    pub async fn cleanup(&self) {
        let _ = self
            .pg
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await;
        remove_keys(&self.prefix).await;
    }
}

/// Delete the local Redis's keys starting with `prefix`.
pub async fn remove_keys(prefix: &str) {
    if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379")
        && let Ok(mut c) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        // a soak leaves millions of dedupe keys: many to a command
        for chunk in keys.chunks(10_000) {
            let _: Result<(), _> = redis::cmd("UNLINK").arg(chunk).query_async(&mut c).await;
        }
    }
}

/// Copy a directory tree.
pub fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy(&p, &t)
        } else {
            std::fs::copy(&p, t).unwrap();
        }
    }
}
