//! Helpers shared by the integration tests: a pipelines directory in a temp dir, the real server
//! on port 0, and a raw HTTP/1.1 client for requests a normal client will not send.
#![allow(dead_code)]

pub mod process;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::env::EnvSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The compiled transform program of pipeline `name` in the pipelines directory `dir`.
pub fn program_in(dir: &Path, name: &str) -> engine::transform::Program {
    let project = engine::config::load(dir, &EnvSource::default()).unwrap();
    let p = project
        .pipelines
        .iter()
        .find(|p| p.config.name == name)
        .unwrap();
    engine::transform::Program::compile(&p.config, &p.file, &project.dir).unwrap()
}

/// An event as the queue holds it after a POST of `body` to `path`.
/// The `redis_key_prefix` a test wrote into `dir`'s engine.yaml.
pub fn redis_key_prefix(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("engine.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("redis_key_prefix: '"))
        .expect("engine.yaml sets redis_key_prefix")
        .trim_end_matches('\'')
        .to_string()
}

pub fn event_input(
    id: &str,
    pipeline: &str,
    path: &str,
    content_type: &str,
    body: impl Into<bytes::Bytes>,
) -> engine::transform::EventInput {
    engine::transform::EventInput {
        id: id.into(),
        pipeline: pipeline.into(),
        received_at_ms: 1_764_086_400_000,
        method: "POST".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("content-type".into(), content_type.into())],
        params: vec![],
        tenant: None,
        trace: None,
        body: body.into(),
    }
}

/// The `engine` binary as a command with only what a test sets in its environment (and PATH):
/// the developer's or CI's own variables must not leak in.
pub fn engine_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

/// A copy of the shipped pipelines whose Redis keys are under `<prefix><pid>` and whose ingest
/// limit is out of the way: for tests with engine processes of their own.
pub fn shipped_under_prefix(prefix: &str) -> Dir {
    let dir = Dir::shipped_copy();
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    dir.write(
        "engine.yaml",
        &format!(
            "{}redis_key_prefix: '{prefix}{}'\n",
            base.replace("  limit: 100/1m\n", "  limit: 100000/1s\n"),
            std::process::id()
        ),
    );
    dir
}

/// The repository's shipped pipelines directory.
pub fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

/// Copy the directory `from` into `to` (created), subdirectories included.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &target);
        } else {
            std::fs::copy(&p, target).unwrap();
        }
    }
}

/// A pipelines directory in a temp dir, seeded with a copy of the shipped one.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn shipped_copy() -> Dir {
        Dir::copy_of(&shipped())
    }

    /// The shipped pipelines with Redis keys under a private prefix and files (rows of
    /// postgres sinks without a database, the local archive) under `data`.
    pub fn shipped_with_data(data: &Path) -> Dir {
        let dir = Dir::shipped_copy();
        let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
        let prefix = format!(
            "e2e:{}:{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        dir.write(
            "engine.yaml",
            &format!(
                "{base}\nredis_key_prefix: '{prefix}'\ndata_dir: '{}'\n",
                data.display()
            ),
        );
        dir
    }

    /// A temp dir holding a copy of `from`, subdirectories included.
    pub fn copy_of(from: &Path) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(from, tmp.path());
        Dir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Rewrite file `name` with `change` applied to its text.
    pub fn edit(&self, name: &str, change: impl FnOnce(String) -> String) -> PathBuf {
        let text = std::fs::read_to_string(self.tmp.path().join(name)).unwrap();
        self.write(name, &change(text))
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.tmp.path().join(name)).unwrap();
    }
}

/// Validation problems of the shipped pipelines plus `files`, loaded with exactly `env`, as
/// `file:line:col: message` with the temp dir stripped.
pub fn problems(files: &[(&str, &str)], env: &[(&str, &str)]) -> Vec<String> {
    let dir = Dir::shipped_copy();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let prefix = format!("{}/", dir.path().display());
    engine::plan::load(dir.path(), &EnvSource::from_pairs(env.iter().copied()))
        .map(|(project, _)| project)
        .err()
        .unwrap_or_default()
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect()
}

/// The engine serving on 127.0.0.1, port chosen by the OS.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    running: Option<engine::server::Running>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The live pipeline set, for reloads.
    pub fn live(&self) -> std::sync::Arc<engine::server::Live> {
        self.running.as_ref().unwrap().live()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Load `dir` with exactly the variables `env` and serve it.
pub async fn spawn_app(dir: &Path, env: &[(&str, &str)]) -> TestApp {
    spawn_app_with(dir, env, engine::server::AppContext::default()).await
}

/// [`spawn_app`] with other surroundings (a recording directory, ...).
pub async fn spawn_app_with(
    dir: &Path,
    env: &[(&str, &str)],
    around: engine::server::AppContext,
) -> TestApp {
    spawn(dir, env, true, around).await
}

/// [`spawn_app`] without queue workers: what is enqueued stays in the queue to be looked at.
pub async fn spawn_ingest_only(dir: &Path, env: &[(&str, &str)]) -> TestApp {
    spawn(dir, env, false, engine::server::AppContext::default()).await
}

async fn spawn(
    dir: &Path,
    env: &[(&str, &str)],
    workers: bool,
    around: engine::server::AppContext,
) -> TestApp {
    let source = EnvSource::from_pairs(env.iter().copied());
    let (project, plan) = engine::plan::load(dir, &source).unwrap_or_else(|d| {
        panic!(
            "test pipelines invalid:\n{}",
            engine::diagnostics::render(&d, engine::diagnostics::Format::Text)
        )
    });
    let running = engine::server::start_with(
        project,
        plan,
        "127.0.0.1:0".parse().unwrap(),
        workers,
        around,
    )
    .await
    .unwrap();
    let addr = running.addr;
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        running: Some(running),
    }
}

/// Send raw bytes and read until the server closes the connection or `timeout` passes.
pub async fn raw_request(addr: std::net::SocketAddr, parts: &[&[u8]], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for part in parts {
        if stream.write_all(part).await.is_err() {
            break; // the server may close early (413); what it answered is still readable
        }
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Headers that make a request verify under pipeline `name` of `dir`, loaded with `env`.
pub fn sign(
    dir: &Path,
    env: &[(&str, &str)],
    name: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    let project =
        engine::config::load(dir, &EnvSource::from_pairs(env.iter().copied())).expect("valid");
    let p = project
        .pipelines
        .iter()
        .find(|p| p.config.name == name)
        .expect("pipeline");
    let verifier =
        engine::verify::Verifier::build(p.config.verify.as_ref().expect("verify")).unwrap();
    let mut map = salvo::http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    verifier.sign(&engine::verify::Inbound {
        method: "POST",
        url,
        headers: &map,
        body,
        now: chrono::Utc::now().timestamp(),
    })
}

/// The shared test database (trust auth on this machine and in CI).
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The directory of Postgres's server binaries (`pg_ctl`, `initdb`), Debian's layout.
fn postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .find(|p| p.join("pg_ctl").exists())
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// What the suite talks to: Redis on 127.0.0.1:6379 and Postgres on 127.0.0.1:5432 with a
/// `test` database. Run once, before the tests (`ctor`): a service that is not listening is
/// started from this machine's binaries (`redis-server`; Postgres under /usr/lib/postgresql, as
/// the `postgres` user, into a temp dir) and left running for the next run; when that cannot be
/// done, the run stops at once with one message saying what to start, instead of every test
/// failing on a refused connection.
#[ctor::ctor]
fn services() {
    let mut missing = Vec::new();
    if !listening(6379) {
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
        let up = started
            && (0..50).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                listening(6379)
            });
        if !up {
            missing.push("Redis on 127.0.0.1:6379 (`redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`)");
        }
    }
    if !listening(5432) {
        let up = postgres_bin().is_some()
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
            .is_ok();
        if !up {
            missing.push("Postgres on 127.0.0.1:5432 with trust auth and a `test` database (`pg_ctlcluster <version> main start`, then `createdb -U postgres test`)");
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "\nthe integration tests need, and could not start:\n  - {}\n(README.md, \"What the tests need\")\n",
            missing.join("\n  - ")
        );
        std::process::exit(1);
    }
}

/// A connection to `url` (no TLS), its connection task spawned.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("postgres at {url}: {e} (is Postgres running on 127.0.0.1:5432?)")
        });
    tokio::spawn(conn);
    client
}

/// The shipped migrations' SQL, run in order on `client`.
async fn apply_migrations(client: &tokio_postgres::Client) {
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

fn uuid_like() -> String {
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

/// A free TCP port on 127.0.0.1.
/// The `/metrics` text of an engine process listening on `port` (open in development).
pub async fn metrics_of(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of the test's own, on a spare port, in a temp directory.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    aof: bool,
    /// Extra `redis-server` arguments (cluster mode).
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(aof: bool) -> PrivateRedis {
        PrivateRedis::start_with(aof, free_port(), Vec::new())
    }

    pub fn start_with(aof: bool, port: u16, extra: Vec<String>) -> PrivateRedis {
        let mut r = PrivateRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            aof,
            extra,
            child: None,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                if self.aof { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the node is blackholed. Its kernel still accepts connections and takes bytes,
    /// nothing answers, nothing is reset: what a node behind a cut link looks like.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the node answers again, everything it was sent meanwhile included.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = std::process::Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill {sig}");
        }
    }

    /// Start again on the same port and directory (an AOF instance recovers its data).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of the test's own: three masters (AOF on) on spare ports, joined with
/// `redis-cli --cluster create`, without replicas ([`PrivateCluster::start`]) or with one per
/// master ([`PrivateCluster::with_replicas`]: a master that dies is replaced by its replica after
/// the 2 s node timeout). `cluster-require-full-coverage no`: while one master is down, the slots
/// of the others keep serving.
pub struct PrivateCluster {
    /// The masters first (slots 0-5460, 5461-10922, 10923-16383, in order), then the replicas.
    pub nodes: Vec<PrivateRedis>,
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        PrivateCluster::of(0)
    }

    /// Three masters, each with a replica.
    pub fn with_replicas() -> PrivateCluster {
        PrivateCluster::of(1)
    }

    fn of(replicas: usize) -> PrivateCluster {
        let nodes: Vec<PrivateRedis> = (0..3 * (1 + replicas))
            .map(|_| {
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                ];
                PrivateRedis::start_with(
                    true,
                    free_cluster_port(),
                    extra.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        let mut create = std::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = PrivateCluster { nodes };
        cluster.wait_ok();
        if replicas > 0 {
            cluster.wait_replicas_in_sync();
        }
        cluster
    }

    /// Until every replica's link to its master is up (its first sync done).
    fn wait_replicas_in_sync(&self) {
        for _ in 0..400 {
            let synced = self.nodes[3..].iter().all(|n| {
                std::process::Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "info", "replication"])
                    .output()
                    .is_ok_and(|o| {
                        String::from_utf8_lossy(&o.stdout).contains("master_link_status:up")
                    })
            });
            if synced {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the private cluster's replicas never synced");
    }

    /// Until every node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for _ in 0..200 {
            let ok = self.nodes.iter().all(|n| {
                std::process::Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the private cluster never reached cluster_state:ok");
    }

    /// `REDIS_URL` for it: every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The node serving `key`'s slot (`redis-cli --cluster create` gives three masters the
    /// slots 0-5460, 5461-10922 and 10923-16383, in order).
    pub fn owner_of(&mut self, key: &str) -> &mut PrivateRedis {
        let slot = engine::redis_conn::slot(key);
        let i = match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        &mut self.nodes[i]
    }
}

/// A redis-server speaking only TLS (a [`PrivateRedis`] with its plain port closed), its
/// certificate (for `localhost` and `127.0.0.1`) issued by a CA made for the test with `openssl`.
pub struct PrivateTlsRedis {
    redis: PrivateRedis,
    /// The CA and the server's key and certificate.
    certs: tempfile::TempDir,
}

impl PrivateTlsRedis {
    pub fn start() -> PrivateTlsRedis {
        let certs = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(certs.path())
                .output()
                .expect("openssl on PATH");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=engine test CA",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            certs.path().join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = free_port();
        let file = |name: &str| certs.path().join(name).display().to_string();
        let tls = [
            "--port".to_string(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let redis = PrivateRedis::start_with(false, port, tls.to_vec());
        PrivateTlsRedis { redis, certs }
    }

    /// `rediss://` to it.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.redis.port)
    }

    /// The CA that issued its certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> String {
        self.certs.path().join("ca.crt").display().to_string()
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// `chown -R postgres`: the postgres binaries and PgBouncer run as that user and write there.
fn give_to_postgres(dir: &Path) {
    let status = std::process::Command::new("chown")
        .args(["-R", "postgres"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A Postgres server of the test's own: initdb in a temp directory, on a spare port, run as the
/// `postgres` user (its binaries refuse to run as root).
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        PrivatePostgres::start_on(free_port())
    }

    /// A private Postgres listening on `port`.
    pub fn start_on(port: u16) -> PrivatePostgres {
        let bin = postgres_bin().expect("postgres installed under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        give_to_postgres(dir.path());
        let pg = PrivatePostgres { port, dir, bin };
        pg.as_postgres(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-D",
                &pg.data(),
            ],
        );
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) {
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start (again), waiting until it accepts connections.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// Stop now (`immediate`: no checkpoint, like a crash).
    pub fn down(&self) {
        self.as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// A request a [`Stub`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as they came (a binary body: OTLP's protobuf).
    pub raw: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local HTTP/1.1 server on 127.0.0.1 standing in for a provider or a webhook receiver (Slack,
/// Sentry, a token endpoint): keeps every request, answers with the reply set (200 "ok" unless
/// told otherwise), after an optional delay. Keep-alive aware.
#[derive(Clone)]
pub struct Stub {
    pub port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    reply: std::sync::Arc<std::sync::Mutex<(u16, String, Duration)>>,
    answer: Option<Answerer>,
}

/// Answers a request: status, JSON body, delay.
pub type Answerer = std::sync::Arc<dyn Fn(&Received) -> (u16, String, Duration) + Send + Sync>;

impl Stub {
    pub async fn start() -> Stub {
        Stub::serving(None).await
    }

    /// A stub whose answers `answer` computes from each request (a service with state).
    pub async fn answering(answer: Answerer) -> Stub {
        Stub::serving(Some(answer)).await
    }

    async fn serving(answer: Option<Answerer>) -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stub = Stub {
            port: listener.local_addr().unwrap().port(),
            got: Default::default(),
            reply: std::sync::Arc::new(std::sync::Mutex::new((200, "ok".into(), Duration::ZERO))),
            answer,
        };
        let keep = stub.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(keep.clone().serve(s));
            }
        });
        stub
    }

    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.lines();
            let first = lines.next().unwrap_or("");
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                })
                .collect();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let raw = buf[head_end..head_end + len].to_vec();
            let body = String::from_utf8_lossy(&raw).to_string();
            buf.drain(..head_end + len);
            let received = Received {
                method,
                path,
                headers,
                body,
                raw,
            };
            let (status, text, delay) = match &self.answer {
                Some(answer) => answer(&received),
                None => self.reply.lock().unwrap().clone(),
            };
            self.got.lock().unwrap().push(received);
            tokio::time::sleep(delay).await;
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Answer every following request with `status` and `body`, after `delay`.
    pub fn reply(&self, status: u16, body: &str, delay: Duration) {
        *self.reply.lock().unwrap() = (status, body.to_string(), delay);
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests so far once there are `n`, or when `within` has passed.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let until = std::time::Instant::now() + within;
        while self.got().len() < n && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.got()
    }
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

/// A PgBouncer of the test's own in `pool_mode = transaction` in front of the shared Postgres, as
/// Supabase's pooler on port 6543: every transaction may run on another server connection, so
/// named prepared statements and session settings do not survive. Run as the `postgres` user
/// (PgBouncer refuses root). Installed from Debian's `pgbouncer` package (`.ci/run` does).
pub struct PgBouncer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PgBouncer {
    /// `server_pool` server connections per database, however many clients connect.
    pub fn start(server_pool: u32) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "pgbouncer is not installed: `apt-get install -y pgbouncer` (.ci/run installs it)",
            );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\ndefault_pool_size = {server_pool}\nmin_pool_size = {server_pool}\nmax_client_conn = 500\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n"
            ),
        )
        .unwrap();
        give_to_postgres(dir.path());
        let mut child = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", bin])
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("runuser");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PgBouncer {
                    port,
                    dir,
                    child: Some(child),
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "pgbouncer did not start: {}",
            std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default()
        );
    }

    /// A DATABASE_URL for `database` through this pooler.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// PgBouncer's own log (errors such as `prepared statement "s0" does not exist` show here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // runuser forwards the signal to pgbouncer
            let _ = c.kill();
            let _ = c.wait();
        }
        // in case the signal did not reach it: its pid file names it
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Poll `check` every 100 ms until it gives a value or `within` has passed.
pub async fn eventually_async<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CSRF token a console page's forms carry.
pub fn csrf_in(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"))
        .to_string()
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

/// POST `body` to the shipped Vapi route with the development bearer secret; the status.
pub async fn post_vapi(app: &TestApp, body: Vec<u8>) -> u16 {
    app.client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
