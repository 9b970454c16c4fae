//! Rhai transforms and synchronous responses: the shipped scripts on realistic payloads, the
//! sandbox's limits, and script errors found by validation.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Dir, shipped, spawn_app};
use engine::transform::{EventInput, FailureKind, Output, Program};
use serde_json::{Value, json};

fn payload(rel: &str) -> Bytes {
    Bytes::from(
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/payloads")
                .join(rel),
        )
        .unwrap(),
    )
}

fn input(pipeline: &str, content_type: &str, body: Bytes) -> EventInput {
    common::event_input("evt_test_1", pipeline, "/", content_type, body)
}

fn program(name: &str) -> Program {
    common::program_in(&shipped(), name)
}

fn vapi(file: &str) -> Result<Output, engine::transform::Failure> {
    program("vapi").run(&input(
        "vapi",
        "application/json",
        payload(&format!("vapi/{file}")),
    ))
}

fn one_row(o: Output, sink: &str) -> Value {
    match o {
        Output::Rows { sink: s, rows, .. } => {
            assert_eq!(s, sink);
            assert_eq!(rows.len(), 1);
            rows.into_iter().next().unwrap()
        }
        other => panic!("expected rows for {sink}, got {other:?}"),
    }
}

#[test]
fn vapi_end_of_call_report() {
    let row = one_row(vapi("end-of-call-report.json").unwrap(), "call_logs");
    assert_eq!(
        row,
        json!({
            "call_id": "9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
            "org_id": "4b3a2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d",
            "assistant_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
            "customer_number": "+14155550123",
            "ended_reason": "customer-ended-call",
            "started_at": "2026-11-25T16:00:00.000Z",
            "ended_at": "2026-11-25T16:03:21.500Z",
            "duration_seconds": 201.5,
            "cost": 0.1372,
            "transcript": "AI: Thanks for calling Voxanne Dental, how can I help?\nUser: I'd like to book a cleaning next Tuesday.\nAI: Tuesday at 10am is free. Shall I book it?\nUser: Yes please.",
            "summary": "Caller booked a cleaning for Tuesday at 10am.",
            "success_evaluation": "true",
            "structured_data": {"appointment_booked": true, "service": "cleaning"},
            "recording_url": "https://storage.vapi.ai/9f1c2e4a-mono.wav",
            "event_id": "evt_test_1",
            "received_at": "2025-11-25T16:00:00.000Z"
        })
    );
}

#[test]
fn vapi_end_of_call_report_older_shape_and_missing_fields() {
    let row = one_row(vapi("end-of-call-report-legacy.json").unwrap(), "call_logs");
    assert_eq!(row["transcript"], "AI: Hello.\nUser: Wrong number, sorry.");
    assert_eq!(row["summary"], "Wrong number.");
    assert_eq!(row["assistant_id"], "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d");
    assert_eq!(
        row["duration_seconds"], 90.0,
        "computed from startedAt/endedAt"
    );

    let row = one_row(
        vapi("end-of-call-report-minimal.json").unwrap(),
        "call_logs",
    );
    assert_eq!(row["call_id"], "1a2b3c4d-0000-4000-8000-000000000001");
    assert_eq!(row["ended_reason"], "silence-timed-out");
    for absent in [
        "org_id",
        "started_at",
        "duration_seconds",
        "cost",
        "transcript",
        "summary",
        "recording_url",
    ] {
        assert_eq!(row[absent], Value::Null, "{absent}");
    }
}

#[test]
fn vapi_status_updates_and_transcripts() {
    let row = one_row(vapi("status-update.json").unwrap(), "call_status");
    assert_eq!(row["status"], "in-progress");
    assert_eq!(row["occurred_at"], "2024-11-25T16:00:00.900Z");
    let row = one_row(vapi("status-update-ended.json").unwrap(), "call_status");
    assert_eq!(
        (row["status"].as_str(), row["ended_reason"].as_str()),
        (Some("ended"), Some("customer-ended-call"))
    );

    let row = one_row(vapi("transcript-final.json").unwrap(), "transcripts");
    assert_eq!(row["role"], "user");
    assert_eq!(row["text"], "I'd like to book a cleaning next Tuesday.");
    assert!(matches!(
        vapi("transcript-partial.json").unwrap(),
        Output::Dropped { .. }
    ));
}

#[test]
fn vapi_types_without_a_route_are_dropped() {
    for f in [
        "speech-update.json",
        "unknown-type.json",
        "assistant-request.json",
        "tool-calls.json",
    ] {
        assert_eq!(
            vapi(f).unwrap(),
            Output::Dropped {
                reason: "no step with a sink matched".into()
            },
            "{f}"
        );
    }
}

#[test]
fn vapi_report_without_call_id_is_a_permanent_failure() {
    let body = Bytes::from(r#"{"message":{"type":"end-of-call-report"}}"#);
    let err = program("vapi")
        .run(&input("vapi", "application/json", body))
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(
        err.reason
            .ends_with("vapi.yaml (/transform/0/map): required field `call_id` has no value (looked at /message/call/id)"),
        "{}",
        err.reason
    );
    let err = program("vapi")
        .run(&input("vapi", "application/json", Bytes::from("{oops")))
        .unwrap_err();
    assert!(err.reason.contains("not valid JSON"), "{}", err.reason);
}

#[test]
fn twilio_voice_and_sms() {
    let form = "application/x-www-form-urlencoded";
    let row = one_row(
        program("twilio-voice")
            .run(&input(
                "twilio-voice",
                form,
                payload("twilio/voice-incoming.form"),
            ))
            .unwrap(),
        "twilio_call_events",
    );
    assert_eq!(row["call_sid"], "CA5f0c4a1b2c3d4e5f60718293a4b5c6d7");
    assert_eq!(row["status"], "ringing");
    assert_eq!(row["duration_seconds"], Value::Null);
    let row = one_row(
        program("twilio-voice")
            .run(&input(
                "twilio-voice",
                form,
                payload("twilio/voice-status-completed.form"),
            ))
            .unwrap(),
        "twilio_call_events",
    );
    assert_eq!(
        (row["status"].as_str(), row["duration_seconds"].as_i64()),
        (Some("completed"), Some(187))
    );

    let row = one_row(
        program("twilio-sms")
            .run(&input(
                "twilio-sms",
                form,
                payload("twilio/sms-inbound.form"),
            ))
            .unwrap(),
        "sms_messages",
    );
    assert_eq!(row["body"], "Can I move my appointment to Wednesday?");
    assert_eq!(
        (row["num_media"].as_i64(), row["media_urls"].clone()),
        (Some(0), json!([]))
    );
    let row = one_row(
        program("twilio-sms")
            .run(&input(
                "twilio-sms",
                form,
                payload("twilio/sms-mms-two-media.form"),
            ))
            .unwrap(),
        "sms_messages",
    );
    assert_eq!(row["num_media"], 2);
    assert_eq!(
        row["media_content_types"],
        json!(["image/jpeg", "image/png"])
    );
    assert!(
        row["media_urls"][1]
            .as_str()
            .unwrap()
            .ends_with("/Media/ME2")
    );

    // repeated parameters reach the script as arrays
    let p = program("twilio-sms").run(&input(
        "twilio-sms",
        form,
        Bytes::from("MessageSid=SM1&NumMedia=11"),
    ));
    assert!(p.unwrap_err().reason.contains("NumMedia must be 0 to 10"));
}

async fn post_vapi(app: &common::TestApp, file: &str) -> (u16, Value) {
    let res = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(payload(&format!("vapi/{file}")))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn vapi_synchronous_answers() {
    let assistant = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
    let app = spawn_app(&shipped(), &[("VAPI_ASSISTANT_ID", assistant)]).await;
    assert_eq!(
        post_vapi(&app, "assistant-request.json").await,
        (200, json!({"assistantId": assistant}))
    );
    assert_eq!(
        post_vapi(&app, "tool-calls.json").await,
        (
            200,
            // no database, so no organisation is linked to the assistant (tests/connections.rs
            // has the calendar answers); a tool the pipeline does not know is said to be unknown
            json!({"results": [
                {"toolCallId": "call_Vx81", "result": "This line is not linked to a calendar, so times cannot be checked or booked. Take the caller's name and number; the team will call back to arrange a time."},
                {"toolCallId": "call_Vx82", "result": "This assistant has no tool called \"send_sms_confirmation\"."}
            ]})
        )
    );
    assert_eq!(
        post_vapi(&app, "status-update.json").await,
        (200, json!({"received": true}))
    );
    app.stop().await;

    // no assistant configured: Vapi's documented error answer
    let app = spawn_app(&shipped(), &[]).await;
    assert_eq!(
        post_vapi(&app, "assistant-request.json").await,
        (
            200,
            json!({"error": "No assistant is configured for this number."})
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn event_tenant_comes_from_the_verifiers_tenant_key() {
    let dir = Dir::shipped_copy();
    dir.write(
        "tenant.yaml",
        "name: tenant\nroute: {method: POST, path: /tenant}\nverify:\n  twilio:\n    secret: ${TWILIO_AUTH_TOKEN}\n    tenant: {key: {form: AccountSid}, credential: twilio_auth_token}\nrespond:\n  content_type: text/plain\n  template: 'tenant={{ event.tenant }}'\n",
    );
    let app = spawn_app(dir.path(), &[]).await;
    let url = app.url("/tenant");
    let body = "AccountSid=AC_acme&CallSid=CA1";
    let form = ("content-type", "application/x-www-form-urlencoded");
    let mut req = app.client.post(&url).header(form.0, form.1).body(body);
    for (k, v) in common::sign(dir.path(), &[], "tenant", &url, &[form], body.as_bytes()) {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "tenant=AC_acme");
    app.stop().await;
}

#[tokio::test]
async fn templates_and_script_descriptors() {
    let dir = Dir::shipped_copy();
    dir.write("t.yaml", "name: t\nroute: {method: POST, path: /t}\nrespond:\n  content_type: text/xml\n  template: '<Response><Say>Hello {{ event.body.From }}, {{ event.params.x ?? \"\" }}call {{ event.body.CallSid }}</Say></Response>'\n");
    dir.write("d.yaml", "name: d\nroute: {method: POST, path: /d}\nrespond:\n  inline: '#{status: 202, content_type: \"text/plain\", headers: #{\"x-kind\": event.body.kind}, body: `got ${event.body.kind}`}'\n");
    let app = spawn_app(dir.path(), &[]).await;
    let res = app
        .client
        .post(app.url("/t"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("From=%2B14155550123&CallSid=CA1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/xml");
    assert_eq!(
        res.text().await.unwrap(),
        "<Response><Say>Hello +14155550123, call CA1</Say></Response>"
    );
    let res = app
        .client
        .post(app.url("/d"))
        .header("content-type", "application/json")
        .body(r#"{"kind":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-kind"], "ping");
    assert_eq!(res.text().await.unwrap(), "got ping");
    app.stop().await;
}

/// `respond.when`: the script answers only the listed message types; every other request gets
/// the static answer (here a script that always fails would otherwise answer the fallback).
#[tokio::test]
async fn respond_when_runs_the_script_only_for_the_listed_values() {
    let dir = Dir::shipped_copy();
    dir.write(
        "w.yaml",
        "name: w\nroute: {method: POST, path: /w}\nrespond:\n  when: {field: {json: /message/type}, in: [assistant-request, tool-calls]}\n  inline: 'if event.body.message.type == \"tool-calls\" { throw \"boom\" } #{ran: event.body.message.type}'\n  body: '{\"received\":true}'\n  fallback: {status: 503, body: failed}\n",
    );
    let app = spawn_app(dir.path(), &[]).await;
    let post = |body: &'static str| {
        app.client
            .post(app.url("/w"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = post(r#"{"message":{"type":"assistant-request"}}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"{"ran":"assistant-request"}"#);
    // listed, and the script fails: it did run
    let res = post(r#"{"message":{"type":"tool-calls"}}"#).await.unwrap();
    assert_eq!(res.status(), 503);
    // not listed, no type, not JSON: the static answer, the script never run
    for body in [
        r#"{"message":{"type":"status-update"}}"#,
        r#"{"message":{}}"#,
        "not json",
    ] {
        let res = post(body).await.unwrap();
        assert_eq!(res.status(), 200, "{body}");
        assert_eq!(res.text().await.unwrap(), r#"{"received":true}"#, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn runaway_scripts_end_within_budget_and_the_server_keeps_serving() {
    let dir = Dir::shipped_copy();
    // unbounded operations, so only the wall clock stops the loop
    dir.write(
        "spin.yaml",
        "name: spin\nroute: {method: POST, path: /spin}\nscript_limits: {max_operations: 1000000000000, respond_timeout_ms: 800}\nrespond:\n  inline: 'loop { }'\n  fallback: {status: 503, body: busy}\n",
    );
    dir.write("big.yaml", "name: big\nroute: {method: POST, path: /big}\nrespond:\n  inline: 'let s = \"x\"; loop { s += s; }'\n");
    dir.write("deep.yaml", "name: deep\nroute: {method: POST, path: /deep}\nrespond:\n  inline: 'fn f(n) { f(n + 1) } f(0)'\n");
    let app = spawn_app(dir.path(), &[]).await;

    let spinning = {
        let (client, url) = (app.client.clone(), app.url("/spin"));
        tokio::spawn(async move {
            let started = Instant::now();
            let res = client.post(url).send().await.unwrap();
            (
                res.status().as_u16(),
                res.text().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    // while it spins, other requests are answered promptly
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            app.client
                .get(app.url("/health"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "health took {:?}",
            started.elapsed()
        );
    }
    let (status, body, took) = spinning.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "busy"),
        "the configured fallback"
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );

    for path in ["/big", "/deep"] {
        let res = app.client.post(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 500, "{path}: default fallback");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "respond_failed", "message": "The response could not be computed."})
        );
    }
    app.stop().await;
}

#[test]
fn transform_limits_fail_permanently() {
    let dir = Dir::shipped_copy();
    dir.write("loop.yaml", "name: loop\nroute: {method: POST, path: /loop}\nscript_limits: {max_operations: 1000000000000, timeout_ms: 100}\ntransform:\n  - inline: 'loop { }'\n    sink: nowhere\nsinks: {nowhere: {stdout: {}}}\n");
    let prog = common::program_in(dir.path(), "loop");
    let started = Instant::now();
    let err = prog
        .run(&input("loop", "text/plain", Bytes::from("x")))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(
        err.reason.contains("wall-clock budget exceeded"),
        "{}",
        err.reason
    );
}

#[test]
fn chained_steps_and_fail_retry() {
    let dir = Dir::shipped_copy();
    dir.write(
        "chain.yaml",
        "name: chain\nroute: {method: POST, path: /c}\nvars: {unit: cents}\ntransform:\n  - name: normalise\n    inline: '#{ amount: event.body.amount * 100, unit: event.vars.unit }'\n  - when: event.body.amount > 1000\n    inline: '[#{ amount: event.body.amount }, #{ amount: 0 }]'\n    sink: big\n  - when: event.body.amount < 0\n    inline: 'fail_retry(\"ledger busy\")'\n    sink: small\n  - inline: '#{ amount: event.body.amount, unit: event.body.unit }'\n    sink: small\nsinks: {big: {stdout: {}}, small: {stdout: {}}}\n",
    );
    let prog = common::program_in(dir.path(), "chain");
    let run = |body: &str| {
        prog.run(&input(
            "chain",
            "application/json",
            Bytes::from(body.to_string()),
        ))
    };
    assert_eq!(
        run(r#"{"amount": 5}"#).unwrap(),
        Output::Rows {
            sink: "small".into(),
            step: "step 4".into(),
            rows: vec![json!({"amount": 500, "unit": "cents"})]
        }
    );
    assert!(
        matches!(run(r#"{"amount": 50}"#).unwrap(), Output::Rows { ref sink, ref rows, .. } if sink == "big" && rows.len() == 2)
    );
    let err = run(r#"{"amount": -1}"#).unwrap_err();
    assert_eq!(err.kind, FailureKind::Retry);
    assert!(err.reason.ends_with("ledger busy"), "{}", err.reason);
}

mod validation {
    use super::*;

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        common::problems(files, &[])
    }

    #[test]
    fn script_file_syntax_error_at_its_own_line_and_column() {
        let p = problems(&[
            ("scripts/bad.rhai", "let a = 1;\nlet b = ;\n"),
            (
                "x.yaml",
                "name: x\nroute: {method: POST, path: /x}\ntransform:\n  - script: scripts/bad.rhai\n    sink: s\nsinks: {s: {stdout: {}}}\n",
            ),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("scripts/bad.rhai:2:9: "), "{p:?}");
    }

    #[test]
    fn inline_and_when_errors_at_the_pipeline_value() {
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\ntransform:\n  - when: 'event.body.type =='\n    inline: '#{ a: 1'\n    sink: s\nsinks: {s: {stdout: {}}}\n",
        )]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("x.yaml:4:11: ") && p[0].contains("(at /transform/0/when)"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("x.yaml:5:13: ") && p[1].contains("of the script"),
            "{p:?}"
        );
    }

    #[test]
    fn script_paths_stay_inside_the_directory() {
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\ntransform:\n  - script: ../../etc/passwd\n    sink: s\n  - script: /etc/passwd\n    sink: s\n  - script: scripts/missing.rhai\n    sink: s\nsinks: {s: {stdout: {}}}\n",
        )]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("`../../etc/passwd` is outside the pipelines directory")
                || p[0].contains("does not exist"),
            "{p:?}"
        );
        assert!(
            p[1].contains("must be a path relative to the pipeline file"),
            "{p:?}"
        );
        assert!(
            p[2].contains("`scripts/missing.rhai` does not exist"),
            "{p:?}"
        );
    }

    #[test]
    fn steps_name_declared_sinks() {
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\ntransform:\n  - inline: '#{}'\n    sink: rows\nsinks:\n  other: {stdout: {}}\n",
        )]);
        assert_eq!(
            p,
            [
                "x.yaml:5:11: no sink named `rows`; this pipeline's sinks: other (at /transform/0/sink)"
            ]
        );
    }

    #[test]
    fn respond_forms_are_exclusive_and_templates_compile() {
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\nrespond: {body: hi, inline: '1'}\n",
        )]);
        assert!(
            p[0].contains("use one of `body`, `template`, `script` or `inline`"),
            "{p:?}"
        );
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\nrespond: {template: 'a {{ 1 + }} b'}\n",
        )]);
        assert!(
            p[0].starts_with("x.yaml:3:21: ") && p[0].contains("/respond/template"),
            "{p:?}"
        );
        // `when` needs something to run; with one, `body` answers the other requests
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\nrespond:\n  body: hi\n  when: {field: {json: /type}, in: [a]}\n",
        )]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("x.yaml:5:") && p[0].contains("`when` chooses the requests"),
            "{p:?}"
        );
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\nrespond:\n  body: hi\n  inline: '1'\n  when: {field: {json: /type}, in: [a]}\n",
        )]);
        assert!(p.is_empty(), "{p:?}");
        // Rhai's own `${...}` in inline code is not an environment reference
        let p = problems(&[(
            "x.yaml",
            "name: x\nroute: {method: POST, path: /x}\nrespond: {inline: 'let n = 1; `n=${n}`'}\n",
        )]);
        assert!(p.is_empty(), "{p:?}");
    }
}

/// A pipeline of `map` steps (and a script after them) in a copy of the shipped directory.
fn mapped(steps: &str) -> Program {
    let dir = Dir::shipped_copy();
    dir.write(
        "mapped.yaml",
        &format!("name: mapped\nroute: {{method: POST, path: /mapped}}\ntransform:\n{steps}sinks:\n  s:\n    file: {{path: data/x.jsonl}}\n  t:\n    file: {{path: data/y.jsonl}}\n"),
    );
    common::program_in(dir.path(), "mapped")
}

#[test]
fn a_map_step_copies_fields_with_fallbacks_conversions_and_event_fields() {
    let p = mapped(
        "  - when: {field: {json: /kind}, in: [report, '7']}\n    map:\n      id: {json: [/a/id, /b/id], required: true}\n      at: {json: /at, as: time}\n      secs: {json: /secs, seconds_between: [[/start, /call/start], /end]}\n      obj: {json: /obj}\n      none: {json: /missing}\n      fixed: {default: 3}\n      fallback: {json: /nothing, default: x}\n      event_id: {event: id}\n      received_at: {event: received_at}\n      tenant: {event: tenant}\n    sink: s\n  - inline: '#{ other: event.body.kind }'\n    sink: t\n",
    );
    let run = |body: &str| {
        p.run(&input(
            "mapped",
            "application/json",
            Bytes::from(body.to_string()),
        ))
    };
    let row = one_row(
        run(r#"{"kind":"report","b":{"id":"B"},"a":{"id":null},"at":1732550400,"call":{"start":"2026-11-25T15:00:00Z"},"end":"2026-11-25T15:01:30.5+00:00","obj":{"k":[1,2]}}"#).unwrap(),
        "s",
    );
    assert_eq!(
        row,
        json!({
            "id": "B",
            "at": "2024-11-25T16:00:00.000Z",
            "secs": 90.5,
            "obj": {"k": [1, 2]},
            "none": null,
            "fixed": 3,
            "fallback": "x",
            "event_id": "evt_test_1",
            "received_at": "2025-11-25T16:00:00.000Z",
            "tenant": null,
        })
    );
    // a number in the `when` field compares as it is written; the given value wins over the
    // computed one
    let row = one_row(
        run(r#"{"kind":7,"a":{"id":"A"},"secs":1,"start":0,"end":5}"#).unwrap(),
        "s",
    );
    assert_eq!((&row["id"], &row["secs"]), (&json!("A"), &json!(1)));
    // the `when` field does not match: the next step (a script) sees the event
    let o = run(r#"{"kind":"other"}"#).unwrap();
    assert_eq!(one_row(o, "t"), json!({"other": "other"}));
    // a required field without a value, a time that is none, a body that is not JSON
    let e = run(r#"{"kind":"report","a":{}}"#).unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert!(
        e.reason
            .ends_with("required field `id` has no value (looked at /a/id, /b/id)"),
        "{}",
        e.reason
    );
    // a time that is none: null (`on_invalid` decides; its default is null)
    let row = one_row(
        run(r#"{"kind":"report","a":{"id":1},"at":"yesterday"}"#).unwrap(),
        "s",
    );
    assert_eq!(row["at"], Value::Null);
    let p2 = mapped("  - map:\n      t: {event: tenant, required: true}\n    sink: s\n");
    let e = p2
        .run(&input("mapped", "application/json", Bytes::from("{}")))
        .unwrap_err();
    assert!(
        e.reason
            .ends_with("required field `t` has no value (looked at event.tenant)"),
        "{}",
        e.reason
    );
    let e = run("{nope").unwrap_err();
    assert!(e.reason.contains("not valid JSON"), "{}", e.reason);
}

#[test]
fn map_steps_read_forms_reshaped_bodies_and_non_json_when_fields() {
    // a script step without a sink reshapes the body; the map step after it reads the new one
    let p = mapped(
        "  - inline: '#{ inner: event.body.outer }'\n  - when: {field: {header: x-kind}, in: [yes]}\n    map:\n      v: {json: /inner/v}\n    sink: s\n",
    );
    let mut e = input(
        "mapped",
        "application/json",
        Bytes::from(r#"{"outer":{"v":[1,"two"]}}"#),
    );
    e.headers.push(("x-kind".into(), "yes".into()));
    assert_eq!(one_row(p.run(&e).unwrap(), "s"), json!({"v": [1, "two"]}));
    e.headers.pop();
    assert!(matches!(p.run(&e).unwrap(), Output::Dropped { .. }));
    // a form body: its fields under their names, repeated ones as an array
    let p = mapped(
        "  - when: {field: {form: Kind}, in: [sms]}\n    map:\n      from: {json: /From}\n      media: {json: /MediaUrl}\n    sink: s\n",
    );
    let form = "application/x-www-form-urlencoded";
    let row = one_row(
        p.run(&input(
            "mapped",
            form,
            Bytes::from("Kind=sms&From=%2B1&MediaUrl=a&MediaUrl=b"),
        ))
        .unwrap(),
        "s",
    );
    assert_eq!(row, json!({"from": "+1", "media": ["a", "b"]}));
    // the same form read by pointer for the `when` as for the row (one conversion for both)
    let p = mapped(
        "  - when: {field: {json: /Kind}, in: [sms]}\n    map:\n      from: {json: /From}\n    sink: s\n",
    );
    let body = Bytes::from("Kind=sms&From=%2B1");
    let row = one_row(p.run(&input("mapped", form, body)).unwrap(), "s");
    assert_eq!(row, json!({"from": "+1"}));
}

#[test]
fn map_on_invalid_fail_dead_letters_naming_the_field_not_the_value() {
    let p = mapped(
        "  - map:\n      flag: {json: /flag, as: boolean, on_invalid: fail}\n      count: {json: /count, as: integer, required: true}\n    sink: s\n",
    );
    let run = |body: &str| {
        p.run(&input(
            "mapped",
            "application/json",
            Bytes::from(body.to_string()),
        ))
    };
    let e = run(r#"{"flag":"maybe","count":1}"#).unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert!(
        e.reason.ends_with(
            "field `flag`: a string is not a boolean (`as: boolean`) and `on_invalid: fail`"
        ),
        "{}",
        e.reason
    );
    // required and invalid (null by default): the event fails, saying why
    let e = run(r#"{"flag":true,"count":"lots"}"#).unwrap_err();
    assert!(
        e.reason
            .ends_with("required field `count`: a string is not a whole number (`as: integer`)"),
        "{}",
        e.reason
    );
    assert_eq!(
        one_row(run(r#"{"flag":"T","count":"12"}"#).unwrap(), "s"),
        json!({"flag": true, "count": 12})
    );
}

#[test]
fn map_conversion_mistakes_are_found_by_validate() {
    let dir = Dir::shipped_copy();
    dir.write(
        "mapped.yaml",
        "name: mapped\nroute: {method: POST, path: /mapped}\ntransform:\n  - map:\n      a: {json: /a, on_invalid: fail}\n      b: {json: /b, as: boolean, on_invalid: default}\n      c: {json: /c, as: integer, default: many}\n    sink: s\nsinks:\n  s:\n    file: {path: data/x.jsonl}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stdout).to_string()
        + String::from_utf8_lossy(&out.stderr).as_ref();
    assert_eq!(out.status.code(), Some(1), "{err}");
    for expected in [
        "mapped.yaml:5:",
        "`on_invalid` says what a value that does not convert becomes: give the field an `as:`",
        "`on_invalid: default` writes the field's `default`: give the field one",
        "the default is a string, which does not convert to a whole number (`as: integer`)",
    ] {
        assert!(err.contains(expected), "{expected} in:\n{err}");
    }
}

/// One run cannot hold more than `script_limits.max_memory` at once, however it spreads its
/// memory within the per-value limits: sixty nested calls each holding a 1 MB string (60 MB, the
/// security review's case) stop at the bound. Through the engine binary (`engine replay`),
/// whose allocator charges each thread's allocations.
#[test]
fn a_run_is_bounded_in_memory() {
    let dir = Dir::shipped_copy();
    let hog = "fn hold(n) { let s = \"x\"; for i in 0..20 { s += s; } if n == 0 { return s.len(); } hold(n - 1) + s.len() } #{ held: hold(60) }";
    let pipeline = |name: &str, limit: &str| {
        format!(
            "name: {name}\nroute: {{method: POST, path: /{name}}}\nscript_limits: {{max_memory: {limit}, max_operations: 100000000, timeout_ms: 20000}}\ntransform:\n  - inline: '{hog}'\n    sink: s\nsinks:\n  s:\n    file: {{path: data/{name}.jsonl}}\n"
        )
    };
    dir.write("hog.yaml", &pipeline("hog", "32MiB"));
    dir.write("roomy.yaml", &pipeline("roomy", "1024MiB"));
    let fixtures = tempfile::tempdir().unwrap();
    let case = |name: &str, expect: &str| {
        format!("request:\n  path: /{name}\n  body: {{json: {{}}}}\nexpect:\n{expect}")
    };
    std::fs::write(
        fixtures.path().join("hog.yaml"),
        case(
            "hog",
            "  outcome: dead_lettered\n  reason: 'memory bound exceeded \\(script_limits.max_memory\\)'\n",
        ),
    )
    .unwrap();
    // the same script with room: not the other limits that stopped it
    std::fs::write(
        fixtures.path().join("roomy.yaml"),
        case("roomy", "  outcome: written\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["replay"])
        .arg(fixtures.path())
        .arg("--pipelines")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string()
        + String::from_utf8_lossy(&out.stderr).as_ref();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("2 passed"), "{text}");
}
