//! The body readers behind request fields (tenant ids, dedupe and rate-limit keys, event ids)
//! and `map` steps: JSON pointers read by streaming through any bytes, form fields, headers,
//! and the event view a transform script sees (`EventInput::parsed_body`).
//!
//! Input: a first line of JSON pointers separated by spaces, headers (a `content-type` among
//! them picks the body reader), an empty line, the body.
//!
//! Checks: no input panics; and wherever `serde_json` reads the body as a document, the one-pass
//! pointer reader finds exactly what `Value::pointer` finds in it.
#![no_main]

use engine::config::verify::KeySource;
use engine::request_field::{JsonPointers, RequestFields};
use engine::verify::Inbound;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = engine_fuzz::split(data);
    let pointers: Vec<&str> = input.first.split(' ').collect();

    let compiled = JsonPointers::new(&pointers);
    let streamed = compiled.read(input.body);
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(input.body) {
        let whole = compiled.read_value(&doc);
        assert_eq!(
            streamed.as_ref(),
            Some(&whole),
            "the streaming reader and serde_json disagree"
        );
    }

    let req = Inbound {
        method: "POST",
        url: "https://example.com/hook?a=1",
        headers: &input.headers,
        body: input.body,
        now: 1_700_000_000,
    };
    let fields = RequestFields::new(&req, &[]);
    let mut sources = Vec::new();
    for p in &pointers {
        sources.push(KeySource::Json((*p).to_string()));
        sources.push(KeySource::Form((*p).to_string()));
        sources.push(KeySource::Header((*p).to_string()));
        sources.push(KeySource::Query((*p).to_string()));
    }
    for s in &sources {
        let _ = fields.get(s);
    }
    let _ = fields.join(&sources, ":");

    let content_type = input
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let event = engine::transform::EventInput {
        id: "e".into(),
        pipeline: "p".into(),
        received_at_ms: 1_764_086_400_000,
        method: "POST".into(),
        path: "/hook".into(),
        query: "a=1".into(),
        headers: vec![("content-type".into(), content_type.into())],
        params: vec![],
        tenant: None,
        trace: None,
        index: None,
        body: input.body.to_vec().into(),
    };
    let _ = event.parsed_body();
});
