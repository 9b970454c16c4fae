//! The pipeline loader: a pipeline file of any bytes, beside the shipped env schema and
//! scripts, is loaded as `engine serve` and `engine validate` load it (YAML with positions, the
//! JSON Schema, the rules, the Rhai compile). It loads, or is refused with at least one
//! `file:line:col` diagnostic; never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// A pipelines directory holding the shipped env schema and scripts, and no pipeline yet.
static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let shipped = engine_fuzz::repo().join("pipelines");
    std::fs::copy(
        shipped.join("env.schema.yaml"),
        dir.path().join("env.schema.yaml"),
    )
    .expect("the env schema");
    std::fs::create_dir(dir.path().join("scripts")).expect("scripts/");
    for f in engine_fuzz::files(&shipped.join("scripts"), "rhai") {
        std::fs::copy(
            &f,
            dir.path()
                .join("scripts")
                .join(f.file_name().expect("a name")),
        )
        .expect("a script");
    }
    dir
});

fuzz_target!(|data: &[u8]| {
    let dir = DIR.path();
    std::fs::write(dir.join("fuzzed.yaml"), data).expect("write the pipeline");
    if let Err(diags) = engine::plan::load(dir, &engine::env::EnvSource::default()) {
        assert!(!diags.is_empty(), "refused without a diagnostic");
        for d in &diags {
            assert!(
                d.line >= 1 && d.column >= 1,
                "a diagnostic without a position: {d:?}"
            );
        }
    }
});
