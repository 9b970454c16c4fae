//! Servers a test owns, on spare ports in temp directories, so it can kill, fill, slow or
//! restart them: a redis-server (plain, TLS, a cluster with or without replicas), a Postgres
//! cluster, a PgBouncer in transaction mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

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
pub(crate) fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// `chown -R postgres`: the postgres binaries and PgBouncer run as that user and write there.
pub(crate) fn give_to_postgres(dir: &Path) {
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

    pub(crate) fn as_postgres(&self, tool: &str, args: &[&str]) {
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
