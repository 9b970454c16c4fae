//! Hostile input to the parsers and loaders, as property tests (the coverage-guided fuzz targets
//! in `fuzz/` go further; docs/reliability.md):
//! the YAML reader, the pipelines directory loader, dotenv files, the fixture loader, request fields (form and
//! JSON bodies) and the Rhai event view. Each must answer every input with a value or an error —
//! never a panic, never unbounded work. `PROPTEST_CASES=100000 cargo test --release --test
//! hostile` runs them longer; failures are kept in `tests/hostile.proptest-regressions`.

use crate::common;

use proptest::prelude::*;

use common::Dir;

/// YAML-ish text: fragments the reader has to handle, in any order.
fn yamlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("name: x\n".to_string()),
            Just("route: {method: POST, path: /x}\n".to_string()),
            Just("a: &a [1, 2]\nb: *a\n".to_string()),
            Just("- [[[[[[".to_string()),
            Just("key: ${VAR\n".to_string()),
            Just("transform:\n  - inline: 'loop {}'\n    sink: s\n".to_string()),
            Just("\t\u{0}\u{feff}".to_string()),
            Just("? complex\n: key\n".to_string()),
            Just("---\n".to_string()),
            "[ -~\n]{0,40}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_yaml_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in yamlish()) {
        let _ = engine::yaml::parse_bytes(&bytes);
        let _ = engine::yaml::parse_bytes(text.as_bytes());
    }

    #[test]
    fn a_hostile_pipeline_file_is_reported_not_crashed_on(text in yamlish()) {
        let dir = Dir::shipped_copy();
        dir.write("hostile.yaml", &text);
        match engine::plan::load(dir.path(), &engine::env::EnvSource::default()) {
            Ok((p, _)) => prop_assert!(p.pipelines.len() >= 4),
            Err(diags) => prop_assert!(!diags.is_empty()),
        }
    }

    #[test]
    fn a_hostile_fixture_is_reported_not_crashed_on(text in yamlish()) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("case.yaml");
        std::fs::write(&f, &text).unwrap();
        if let Err(diags) = engine::fixture::load(&f) {
            prop_assert!(diags.iter().all(|d| d.line >= 1));
        }
    }

    #[test]
    fn a_hostile_env_file_is_read_or_refused(
        lines in proptest::collection::vec(
            prop_oneof![
                "[A-Z_]{1,12}=[ -~]{0,40}",
                "export [A-Z_]{1,8}=\"[ -~]{0,20}\"?",
                "[ -~]{0,40}",
                Just("ENCRYPTION_KEY='<PASTE YOUR KEY>'".to_string()),
            ],
            0..20,
        ),
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".env");
        for content in [lines.join("\n").into_bytes(), bytes] {
            std::fs::write(&f, &content).unwrap();
            if let Ok(source) = engine::env::EnvSource::from_file(&f) {
                let _ = engine::plan::load(&common::shipped(), &source);
            }
        }
    }

    #[test]
    fn request_fields_of_any_body(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        json_like in "[\\[\\]{}\":,a-z0-9 ]{0,300}",
        pointer in "(/[a-z0-9~]{0,6}){0,5}",
    ) {
        use engine::config::verify::KeySource;
        use salvo::http::{HeaderMap, HeaderValue};
        for ct in ["application/json", "application/x-www-form-urlencoded", "text/plain"] {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static(ct));
            for b in [body.as_slice(), json_like.as_bytes()] {
                let inbound = engine::verify::Inbound { method: "POST", url: "http://x/y", headers: &headers, body: b, now: 0 };
                let fields = engine::request_field::RequestFields::new(&inbound, &[]);
                let _ = fields.get(&KeySource::Json(pointer.clone()));
                let _ = fields.get(&KeySource::Form("a".into()));
                let _ = fields.join(&[KeySource::Json(pointer.clone()), KeySource::Header("content-type".into())], ":");
            }
        }
    }

    #[test]
    fn the_event_view_of_any_body(body in proptest::collection::vec(any::<u8>(), 0..600), nested in 0usize..3000) {
        let deep = format!("{}{}", "[".repeat(nested), "]".repeat(nested));
        for (ct, b) in [
            ("application/json", body.clone()),
            ("application/json", deep.clone().into_bytes()),
            ("application/x-www-form-urlencoded", body.clone()),
        ] {
            let event = common::event_input("e", "p", "/", ct, b);
            // a value or an error; deep nesting stops at the recursion limit
            let _ = event.parsed_body();
        }
    }
}

/// Header floods: thousands of headers, or one enormous one, are refused by the HTTP layer
/// before the engine sees them, and the server keeps serving.
#[tokio::test]
async fn header_floods_are_refused_and_the_server_keeps_serving() {
    let dir = Dir::shipped_copy();
    let app = common::spawn_app(dir.path(), &[]).await;
    let many: String = (0..5000).map(|i| format!("x-flood-{i}: {i}\r\n")).collect();
    let huge = format!("x-huge: {}\r\n", "a".repeat(1 << 20));
    for headers in [many, huge] {
        let request = format!(
            "POST /api/webhooks/vapi HTTP/1.1\r\nhost: x\r\n{headers}content-length: 2\r\n\r\n{{}}"
        );
        let answer = common::raw_request(
            app.addr,
            &[request.as_bytes()],
            std::time::Duration::from_secs(5),
        )
        .await;
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 431")
                || answer.starts_with("HTTP/1.1 400"),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    app.stop().await;
}
