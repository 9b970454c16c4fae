//! An `engine serve` / `engine worker` process of a test's own: started with only the
//! environment the test gives (plus PATH, ENCRYPTION_KEY and `RUST_LOG=info`), its stderr kept
//! (printed when the test fails), killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Dir;

/// The ENCRYPTION_KEY the processes get (the archive seals bodies with it).
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub struct EngineProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl EngineProcess {
    /// `engine <args> --pipelines <dir>` with `env`; returns once it logs that it serves (or
    /// that its workers run).
    pub fn start(dir: &Dir, args: &[&str], env: &[(String, String)]) -> EngineProcess {
        let mut child = super::engine_command()
            .env("ENCRYPTION_KEY", KEY)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .arg("--pipelines")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                if !sent && (line.contains("Server listening") || line.contains("workers running"))
                {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("engine did not start:\n{}", log.lock().unwrap().join("\n"));
        }
        EngineProcess { child, log }
    }

    /// The lines it logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("engine log:\n{}", self.log.lock().unwrap().join("\n"));
        }
    }
}
