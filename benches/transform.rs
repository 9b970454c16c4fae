//! Per-event cost of the shipped transforms (`cargo bench --bench transform`): building the
//! `event` map from the raw body, evaluating the `when`s and the script, and converting the row.

use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use engine::env::EnvSource;
use engine::transform::{EventInput, Output, Program};

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = engine::config::load(&root.join("pipelines"), &EnvSource::default()).unwrap();
    let program = |name: &str| {
        let p = project
            .pipelines
            .iter()
            .find(|p| p.config.name == name)
            .unwrap();
        Program::compile(&p.config, &p.file, &project.dir).unwrap()
    };
    let input = |pipeline: &str, ct: &str, file: &str| EventInput {
        id: "evt_bench".into(),
        pipeline: pipeline.into(),
        received_at_ms: 1_764_086_400_000,
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), ct.into())],
        params: vec![],
        tenant: None,
        trace: None,
        index: None,
        body: Bytes::from(std::fs::read(root.join("fixtures/payloads").join(file)).unwrap()),
    };

    let vapi = program("vapi");
    let cases = [
        (
            "vapi_end_of_call_report",
            input("vapi", "application/json", "vapi/end-of-call-report.json"),
        ),
        (
            "vapi_status_update",
            input("vapi", "application/json", "vapi/status-update.json"),
        ),
        (
            "vapi_speech_update_dropped",
            input("vapi", "application/json", "vapi/speech-update.json"),
        ),
    ];
    let mut group = c.benchmark_group("transform_per_event");
    for (name, event) in &cases {
        group.bench_function(*name, |b| b.iter(|| vapi.run(black_box(event)).unwrap()));
    }
    let sms = program("twilio-sms");
    let mms = input(
        "twilio-sms",
        "application/x-www-form-urlencoded",
        "twilio/sms-mms-two-media.form",
    );
    assert!(matches!(sms.run(&mms).unwrap(), Output::Rows { .. }));
    group.bench_function("twilio_mms_two_media", |b| {
        b.iter(|| sms.run(black_box(&mms)).unwrap())
    });
    group.finish();

    // The respond script runs on the request path, before the answer: the event built from the
    // raw body, the script, the reply.
    let vapi_config = &project
        .pipelines
        .iter()
        .find(|p| p.config.name == "vapi")
        .unwrap();
    let responder =
        engine::respond::Responder::compile(&vapi_config.config, &vapi_config.file, &project.dir)
            .unwrap();
    let mut group = c.benchmark_group("respond_per_request");
    for (name, event) in &cases {
        assert!(responder.compute_inline(event).is_ok());
        group.bench_function(*name, |b| {
            b.iter(|| responder.compute_inline(black_box(event)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
