//! A whole request through the service, in process, as `engine replay` runs a fixture: route,
//! maintenance, CORS, size limit, rate limit, verify, respond, enqueue, then the worker's
//! transform and sinks (capturing sinks, no network or database) on the shipped pipelines.
//!
//! Input: `<METHOD> <path> [sign]`, headers, an empty line, the body. `sign` has the pipeline's
//! own verifier sign the request (with the fixtures' test secrets), so bodies reach the
//! transforms; without it they meet verification.
//!
//! Checks: no input panics, and no input gets a 500 (every failure is a named answer).
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use engine::fixture::{Body, Fixture, OneOrMany, SentRequest, Sign};
use engine::route::HttpMethod;
use libfuzzer_sys::fuzz_target;

struct Setup {
    project: engine::config::Project,
    env: BTreeMap<String, String>,
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let repo = engine_fuzz::repo();
    // every variable the shipped fixtures set (test secrets), so each pipeline can verify
    let mut env = BTreeMap::new();
    for dir in engine_fuzz::subdirs(&repo.join("fixtures")) {
        for f in engine_fuzz::files(&dir, "yaml") {
            if let Ok(loaded) = engine::fixture::load(&f) {
                env.extend(loaded.fixture.env);
            }
        }
    }
    let source = engine::env::EnvSource::from_pairs(env.clone());
    let project = engine::config::load(&repo.join("pipelines"), &source)
        .unwrap_or_else(|d| panic!("the shipped pipelines: {d:?}"));
    Setup {
        project,
        env,
        dir: tempfile::tempdir().expect("a temp dir"),
        runtime: engine_fuzz::runtime(),
    }
});

fn method(word: &str) -> HttpMethod {
    match word {
        "GET" => HttpMethod::Get,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Post,
    }
}

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let input = engine_fuzz::split(data);
    let mut words = input.first.split(' ');
    let method = method(words.next().unwrap_or(""));
    let path = match words.next() {
        Some(p) if p.starts_with('/') => p.to_string(),
        _ => "/api/webhooks/vapi".to_string(),
    };
    let sign = words.next() == Some("sign");
    let mut headers: BTreeMap<String, OneOrMany> = BTreeMap::new();
    for (name, value) in &input.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_string(), OneOrMany::One(v.to_string()));
        }
    }
    let case = setup.dir.path().join("case.yaml");
    std::fs::write(setup.dir.path().join("body"), input.body).expect("write the body");
    let fixture = Fixture {
        description: None,
        env: setup.env.clone(),
        clock: None,
        request: SentRequest {
            method,
            path,
            query: BTreeMap::new(),
            headers,
            body: Some(Body::File("body".into())),
            sign: Sign::Flag(sign),
            client_ip: None,
        },
        repeat: 1,
        connections: Default::default(),
        expect: Default::default(),
    };
    let Ok(plan) = engine::plan::build(&setup.project) else {
        panic!("the shipped pipelines compile");
    };
    let run = engine::replay::case::run(&setup.project, plan, &fixture, &case);
    if let Ok(actual) = setup.runtime.block_on(run) {
        assert_ne!(actual.status, 500, "a 500: {actual:?}");
    }
});
