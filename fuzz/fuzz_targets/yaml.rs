//! The YAML reader with positions (pipelines, the env schema, fixtures, engine.yaml): any bytes
//! give a document or an error with a line and column, never a panic or unbounded work (alias
//! bombs, deep nesting, duplicate keys).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = engine::yaml::parse_bytes(data) {
        // an error always points into the input
        let _ = format!("{e:?}");
    }
});
