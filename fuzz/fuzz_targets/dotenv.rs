//! The env loader: a `.env` file of any bytes is read (dotenv syntax: quotes, escapes,
//! `export`, comments) and checked against the shipped env schema, as `engine serve --env-file`
//! does. It is read and validated, or refused with a message; never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

struct Setup {
    schema: engine::env::EnvSchema,
    dir: tempfile::TempDir,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| Setup {
    schema: engine::env::EnvSchema::load(&engine_fuzz::repo().join("pipelines/env.schema.yaml"))
        .expect("the shipped env schema"),
    dir: tempfile::tempdir().expect("a temp dir"),
});

fuzz_target!(|data: &[u8]| {
    let file = SETUP.dir.path().join(".env");
    std::fs::write(&file, data).expect("write the env file");
    if let Ok(source) = engine::env::EnvSource::from_file(&file) {
        let _ = SETUP.schema.validate(&source);
    }
});
