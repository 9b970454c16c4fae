//! A pipelines directory in a temp dir (the shipped one, a copy, or files given), the engine
//! binary to run on it, and what loading it reports.

use std::path::{Path, PathBuf};

use engine::env::EnvSource;

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
        index: None,
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
