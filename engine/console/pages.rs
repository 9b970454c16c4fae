//! The console's pages, drawn on the server (maud escapes every value), plus the one script and
//! stylesheet they load from `/console/assets/`.
//!
//! Each page works without its script; the script redraws the traffic charts every few seconds
//! from `/console/api/traffic` and asks for confirmation before "all" actions.

use maud::{DOCTYPE, Markup, html};

use super::QueueRow;
use super::recent::{Sample, shown};
use super::traffic::{AnswerCounts, SHOWN, Series};
use crate::config::Project;
use crate::config::pipeline::Redact;
use crate::config::queue::QueueConfig;
use crate::config::sink::SinkConfig;
use crate::queue::DeadLetter;

/// The console's script (no build step: plain JavaScript).
pub const SCRIPT: &str = include_str!("assets/console.js");
/// The console's stylesheet.
pub const STYLE: &str = include_str!("assets/console.css");
/// The console's icon, linked from every page (so browsers do not ask the webhook routes for
/// `/favicon.ico`).
pub const FAVICON: &str = include_str!("assets/favicon.svg");

/// Every page's `<head>`; the script only on signed-in pages (the sign-in page has none to run).
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · engine console" }
            link rel="stylesheet" href="/console/assets/console.css";
            link rel="icon" type="image/svg+xml" href="/console/assets/favicon.svg";
            @if script { script src="/console/assets/console.js" defer {} }
        }
    }
}

/// The frame of every signed-in page: navigation, sign-out form, the page's content.
pub(super) fn page(title: &str, current: &str, csrf: &str, content: Markup) -> Markup {
    let nav = [
        ("pipelines", "Pipelines", "/console/pipelines"),
        ("traffic", "Traffic", "/console/traffic"),
        ("queues", "Queues", "/console/queues"),
        ("dead-letters", "Dead letters", "/console/dead-letters"),
        ("events", "Events", "/console/events"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header {
                    span.brand { "engine" }
                    nav {
                        @for (id, label, href) in nav {
                            a href=(href) class=[(id == current).then_some("current")] { (label) }
                        }
                    }
                    form.logout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" name="scope" value="this" { "Sign out" }
                        button type="submit" name="scope" value="everywhere"
                            title="End every console session, on every instance" { "Sign out everywhere" }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// The sign-in page, with a message after a failed attempt.
/// The sign-in page: `message` an error (refused token, too many attempts), `note` news (signed
/// out).
pub fn login(message: Option<&str>, note: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", false))
            body.login {
                main {
                    h1 { "engine console" }
                    @if let Some(m) = message { p.error role="alert" { (m) } }
                    @if let Some(n) = note { p.notice role="status" { (n) } }
                    form method="post" action="/console/login" {
                        label for="token" { "Console token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "The token is the deployment's CONSOLE_TOKEN." }
                }
            }
        }
    }
}

/// What went wrong with a console request, as a page (a refused form, a queue that did not
/// answer): the browser never shows raw JSON.
pub fn problem(status: salvo::http::StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body.login {
                main {
                    h1 { (title) }
                    p.error role="alert" { (message) }
                    p { a href="/console/pipelines" { "Back to the console" } }
                }
            }
        }
    }
}

pub fn not_found(csrf: &str) -> Markup {
    page(
        "Not found",
        "",
        csrf,
        html! { p { "Nothing here. " a href="/console/pipelines" { "Back to the pipelines" } } },
    )
}

/// Every pipeline: route, verification, limit, queue (`queues`: each pipeline's queue name and
/// settings, by position), sinks; when this set was loaded.
pub fn pipelines(
    project: &Project,
    queues: &[Option<(&str, &QueueConfig)>],
    built_at_ms: i64,
    csrf: &str,
) -> Markup {
    let loaded = crate::transform::sandbox::format_time(built_at_ms);
    let default_limit = project.settings.rate_limit.as_ref().filter(|r| r.enabled);
    page(
        "Pipelines",
        "pipelines",
        csrf,
        html! {
            p.meta { "Loaded " time datetime=(loaded) { (loaded) } " · environment " (project.env.environment()) }
            table {
                thead { tr { th { "Pipeline" } th { "Route" } th { "Verification" } th { "Rate limit" } th { "Queue" } th { "Transform → sinks" } } }
                tbody {
                    @for (p, queue) in project.pipelines.iter().zip(queues) {
                        @let c = &p.config;
                        tr {
                            td {
                                strong { (c.name) }
                                @if let Some(d) = &c.description { br; small { (d) } }
                            }
                            td { code { (c.route.method) " " (c.route.path) } }
                            td { (verification(c.verify.as_ref(), c.oauth.is_some())) }
                            td {
                                @match c.rate_limit.as_ref().or(default_limit) {
                                    Some(r) if r.enabled => {
                                        (r.limit)
                                        @if let Some(b) = r.burst { " (burst " (b) ")" }
                                        " per " (keys(&r.key))
                                        @if r.counts_verified() { " " small { "(verified requests)" } }
                                        @if c.rate_limit.is_none() { " " small { "(default)" } }
                                    }
                                    _ => { "—" }
                                }
                            }
                            td {
                                @match queue {
                                    Some((queue_name, config)) => {
                                        code { (queue_name) }
                                        br;
                                        small {
                                            "ack " (serde_plain(&config.ack))
                                            " · " (config.max_attempts) @if config.max_attempts == 1 { " attempt" } @else { " attempts" }
                                            " · " (config.concurrency) " workers"
                                            @if let Some(d) = &config.dedupe { " · dedupe " (d.window) }
                                        }
                                    }
                                    None => { "—" small { " (answered only)" } }
                                }
                            }
                            td {
                                @if c.transform.is_empty() { "—" }
                                @else {
                                    (c.transform.len()) " step" @if c.transform.len() != 1 { "s" }
                                    @for (name, sink) in &c.sinks { br; code { (name) } " " small { (sink_summary(sink)) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The verification kinds a pipeline declares (names only: their settings hold secrets).
fn verification(verify: Option<&crate::config::verify::Verify>, oauth: bool) -> String {
    if oauth {
        return "OAuth callback (state + PKCE)".into();
    }
    let Some(v) = verify else {
        return "none".into();
    };
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => {
            let kinds: Vec<String> = m.keys().map(|k| k.replace('_', " ")).collect();
            if kinds.is_empty() {
                "none".into()
            } else {
                kinds.join(" + ")
            }
        }
        _ => "configured".into(),
    }
}

fn keys(parts: &[crate::config::rate_limit::KeyPart]) -> String {
    parts
        .iter()
        .map(|p| match serde_json::to_value(p) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" "),
            _ => "key".into(),
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A unit enum's serialized name.
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// What a sink writes to, without anything secret (an HTTP sink shows its host only).
fn sink_summary(sink: &SinkConfig) -> String {
    match sink {
        SinkConfig::Postgres(p) => format!("postgres {}", p.table),
        SinkConfig::Http(h) => {
            let host = url::Url::parse(&h.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| "(from the environment)".into());
            format!("http {host}")
        }
        SinkConfig::File(f) => format!("file {}", f.path),
        SinkConfig::Stdout(_) => "stdout".into(),
    }
}

/// Live traffic: per pipeline, the last minute's figures and two charts (requests by class,
/// latency), redrawn by the script.
pub fn traffic(series: &[Series], csrf: &str) -> Markup {
    page(
        "Traffic",
        "traffic",
        csrf,
        html! {
            p.meta { "This instance, the last " (SHOWN) " seconds; figures are for the last minute. Updated every 3 s." }
            div #traffic.cards data-source="/console/api/traffic" {
                @for s in series { (traffic_card(s)) }
            }
        },
    )
}

fn traffic_card(s: &Series) -> Markup {
    let m = &s.minute;
    let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("≤ {v} ms"));
    html! {
        section.card data-pipeline=(s.pipeline) {
            h2 { (s.pipeline) }
            dl.figures {
                div { dt { "req/s" } dd data-k="rate" { (format!("{:.1}", s.requests_per_sec)) } }
                div { dt { "2xx" } dd data-k="ok" { (m.ok) } }
                div { dt { "4xx" } dd data-k="client_errors" { (m.client_errors) } }
                div { dt { "5xx" } dd data-k="server_errors" { (m.server_errors) } }
                div { dt { "verification failed" } dd data-k="verify_failures" { (m.verify_failures) } }
                div { dt { "429" } dd data-k="limited" { (m.limited) } }
                div { dt { "p50" } dd data-k="p50_ms" { (ms(m.p50_ms)) } }
                div { dt { "p99" } dd data-k="p99_ms" { (ms(m.p99_ms)) } }
            }
            (chart("requests", &s.seconds, &[("ok", "2xx"), ("client_errors", "4xx"), ("server_errors", "5xx")]))
            (chart("latency", &s.seconds, &[("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")]))
        }
    }
}

/// Chart size (SVG user units); the script draws with the same numbers.
const W: f64 = 360.0;
const H: f64 = 80.0;

/// One small line chart of `keys` over the seconds.
fn chart(name: &str, seconds: &[AnswerCounts], keys: &[(&str, &str)]) -> Markup {
    let values: Vec<Vec<f64>> = keys
        .iter()
        .map(|(k, _)| seconds.iter().map(|c| value(c, k)).collect())
        .collect();
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1.0);
    html! {
        figure.chart data-chart=(name) {
            svg viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(name) {
                // a series that is zero throughout is not drawn: a flat line along the bottom
                // (a red 5xx one on an idle card) reads as something happening
                @for (i, v) in values.iter().enumerate() {
                    @let idle = if v.iter().all(|x| *x == 0.0) { " idle" } else { "" };
                    polyline class=(format!("s{i}{idle}")) data-key=(keys[i].0) points=(points(v, max)) {}
                }
            }
            div.axis aria-hidden="true" {
                span { "−" (SHOWN) " s" } span { "−" (SHOWN / 2) " s" } span { "now" }
            }
            figcaption {
                @for (i, (_, label)) in keys.iter().enumerate() { span class=(format!("s{i}")) { (label) } }
                span.max { "max " (format!("{max:.1}")) }
            }
        }
    }
}

fn value(c: &AnswerCounts, key: &str) -> f64 {
    match key {
        "ok" => c.ok as f64,
        "client_errors" => c.client_errors as f64,
        "server_errors" => c.server_errors as f64,
        "p50_ms" => c.p50_ms.unwrap_or(0.0),
        "p99_ms" => c.p99_ms.unwrap_or(0.0),
        _ => 0.0,
    }
}

fn points(values: &[f64], max: f64) -> String {
    let n = values.len().max(2) - 1;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = W * i as f64 / n as f64;
            let y = H - (v / max) * (H - 4.0) - 2.0;
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every queue's counts.
pub fn queues(rows: &[QueueRow], csrf: &str) -> Markup {
    page(
        "Queues",
        "queues",
        csrf,
        html! {
            @if rows.is_empty() { p { "No pipeline is queued (none has transform steps)." } }
            @else {
                table {
                    thead { tr { th { "Pipeline" } th { "Queue" } th.n { "Depth" } th.n { "Pending" } th.n { "Delayed" } th.n { "Dead" } th.n { "Oldest" } th.n { "Workers" } th.n { "Instances reading" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { (r.pipeline) }
                                td { code { (r.queue) } " " small { (r.backend) } }
                                @match &r.stats {
                                    Ok(s) => {
                                        td.n { (s.depth) }
                                        td.n { (s.pending) }
                                        td.n { (s.delayed) }
                                        td.n { a href=(format!("/console/dead-letters?pipeline={}", r.pipeline)) { (s.dead) } }
                                        td.n { (age(s.oldest_age_ms)) }
                                    }
                                    Err(e) => { td colspan="5" .error { "unavailable: " (e) } }
                                }
                                td.n { (r.per_instance) " " small { "per instance" } }
                                td.n {
                                    @match r.instances { Some(n) => { (n) }, None => { "1 " small { "(this process)" } } }
                                }
                            }
                        }
                    }
                }
                p.hint { "Depth: events in the stream, waiting or being worked on. Pending: delivered to a worker, not yet acknowledged. Workers: the pipeline's queue.concurrency, the workers each engine process runs for it. Instances reading: engine processes whose workers are reading this queue now, idle or busy (each says so every 10 s while it runs, and is no longer counted 30 s after it stops); 0 means no process is running workers for it: every instance runs with --no-worker, or none is up." }
            }
        },
    )
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) if ms < 7_200_000 => format!("{} min", ms / 60_000),
        Some(ms) => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// The queued pipelines with their dead-letter counts.
pub fn dead_letter_index(rows: &[QueueRow], csrf: &str) -> Markup {
    page(
        "Dead letters",
        "dead-letters",
        csrf,
        html! {
            @if rows.is_empty() { p { "No pipeline is queued." } }
            ul.index {
                @for r in rows {
                    li {
                        a href=(format!("/console/dead-letters?pipeline={}", r.pipeline)) { (r.pipeline) }
                        " — "
                        @match &r.stats { Ok(s) => { (s.dead) " dead" }, Err(e) => { span.error { (e) } } }
                    }
                }
            }
        },
    )
}

/// One pipeline's dead letters, as the page draws them.
pub struct DeadLetters<'a> {
    pub pipeline: &'a str,
    pub letters: Vec<DeadLetter>,
    pub total: Option<u64>,
    pub shown_as: EventView<'a>,
    /// What the last action did (`replayed-3`, `purged-1`, `none`).
    pub done: Option<&'a str>,
}

/// One pipeline's dead letters with replay and purge of one, a selection or all.
pub fn dead_letters(name: &str, view: Result<DeadLetters<'_>, String>, csrf: &str) -> Markup {
    let title = format!("Dead letters: {name}");
    let content = match view {
        Err(e) => html! { p.error { "The queue did not answer: " (e) } },
        Ok(v) => html! {
            @if let Some(done) = v.done { p.notice role="status" { (done_message(done)) } }
            p.meta {
                @match v.total { Some(1) => { "1 dead letter" }, Some(t) => { (t) " dead letters" }, None => { "" } }
                @if v.total.is_some_and(|t| t as usize > v.letters.len()) { ", the newest " (v.letters.len()) " shown" }
            }
            @if v.letters.is_empty() { p { "None." } }
            @else {
                form #selected method="post" action="/console/dead-letters/replay" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="pipeline" value=(v.pipeline);
                    div.actions {
                        button type="submit" { "Replay selected" }
                        button type="submit" formaction="/console/dead-letters/purge" .danger data-confirm="Delete the selected dead letters for good?" { "Purge selected" }
                    }
                    table.letters {
                        thead { tr { th { input type="checkbox" .all aria-label="Select all"; } th { "Dead since" } th { "Type" } th { "Event" } th { "Reason" } th.n { "Attempts" } } }
                        tbody {
                            @for l in &v.letters {
                                @let when = crate::transform::sandbox::format_time(l.at_ms);
                                tr {
                                    td { input type="checkbox" name="id" value=(l.id) aria-label=(format!("Select {}", l.event_id)); }
                                    td { time datetime=(when) { (when) } }
                                    td { code { @match &l.event { Some(e) => { (v.shown_as.kind(e)) }, None => { "—" } } } }
                                    td {
                                        code { (l.event_id) }
                                        @if let Some(e) = &l.event { (event_details(&shown(e, v.shown_as.redact))) }
                                    }
                                    td.reason { (l.reason) }
                                    td.n { (l.attempts) }
                                }
                            }
                        }
                    }
                }
            }
            @if !v.letters.is_empty() { div.actions.all {
                @for (action, label, confirm) in [("replay", "Replay all", "Put every dead letter of this pipeline back on its queue?"), ("purge", "Purge all", "Delete every dead letter of this pipeline for good?")] {
                    form method="post" action=(format!("/console/dead-letters/{action}")) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="pipeline" value=(v.pipeline);
                        input type="hidden" name="all" value="1";
                        button type="submit" class=[(action == "purge").then_some("danger")] data-confirm=(confirm) { (label) }
                    }
                }
            } }
        },
    };
    page(&title, "dead-letters", csrf, content)
}

fn done_message(done: &str) -> String {
    match done.split_once('-') {
        Some(("replayed", n)) => {
            format!("{n} replayed: back on the queue with a fresh attempt count.")
        }
        Some(("purged", n)) => format!("{n} purged."),
        _ => "Nothing selected.".into(),
    }
}

/// An event's headers, query and body, folded.
pub(super) fn event_details(e: &super::recent::Shown) -> Markup {
    html! {
        details {
            summary { (e.method) " " (e.path) " · received " (e.received_at) }
            @if !e.query.is_empty() {
                h3 { "Query" }
                table.kv { @for (k, v) in &e.query { tr { th { (k) } td { (v) } } } }
            }
            h3 { "Headers" }
            table.kv { @for (k, v) in &e.headers { tr { th { (k) } td { (v) } } } }
            h3 { "Body" @if e.truncated { " " small { "(cut)" } } }
            pre { (e.body) }
        }
    }
}

/// The pipelines, linking to their recent events.
pub fn event_index(names: &[&str], csrf: &str) -> Markup {
    page(
        "Recent events",
        "events",
        csrf,
        html! {
            p.meta { "A sample of the requests this instance answered: at most one every " (super::recent::SPACING_MS) " ms per pipeline, the last " (super::recent::KEPT) " kept, shown with each pipeline's redact applied." }
            ul.index { @for n in names { li { a href=(format!("/console/events?pipeline={n}")) { (n) } } } }
        },
    )
}

/// One pipeline's sampled events, newest first.
/// A pipeline the archive does not keep: this instance's sample of its recent requests, and of
/// those refused.
pub fn events(
    name: &str,
    samples: &[Sample],
    refused: &[Sample],
    shown_as: EventView<'_>,
    csrf: &str,
) -> Markup {
    page(
        &format!("Recent events: {name}"),
        "events",
        csrf,
        html! {
            @if samples.is_empty() { p { "No request sampled yet on this instance." } }
            @else { (sample_table(samples, shown_as)) }
            (refused_requests(refused, shown_as))
        },
    )
}

/// This instance's sample of refused requests (verification failed), with status and reason.
pub fn refused_requests(samples: &[Sample], shown_as: EventView<'_>) -> Markup {
    html! {
        h2 { "Refused requests" }
        p.meta { "Requests whose verification failed, sampled on this instance (at most one every "
            (super::recent::SPACING_MS) " ms, the last " (super::recent::KEPT) "): a forged or misconfigured sender shows here. The reason codes: docs/verify.md." }
        @if samples.is_empty() { p { "None refused lately." } }
        @else { (sample_table(samples, shown_as)) }
    }
}

/// How a pipeline's events are shown: its `redact`, and the field its Type column reads.
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    pub redact: &'a [Redact],
    pub kind: Option<&'a crate::config::verify::KeySource>,
}

impl EventView<'_> {
    /// The Type column's value of `event` ("—" when the pipeline branches on no field, or the
    /// event lacks it).
    fn kind(&self, event: &crate::transform::EventInput) -> String {
        self.kind
            .and_then(|f| super::recent::kind(event, f))
            .unwrap_or_else(|| "—".into())
    }
}

fn sample_table(samples: &[Sample], shown_as: EventView<'_>) -> Markup {
    html! {
        table.letters {
            thead { tr { th { "Answered" } th.n { "Status" } th { "Type" } th { "Reason" } th { "Event" } } }
            tbody {
                @for s in samples {
                    @let when = crate::transform::sandbox::format_time(s.at_ms);
                    tr {
                        td { time datetime=(when) { (when) } }
                        td.n { (s.status) }
                        td { code { (shown_as.kind(&s.event)) } }
                        td.reason { (s.refused.unwrap_or("")) }
                        td { code { (s.event.id) } (event_details(&shown(&s.event, shown_as.redact))) }
                    }
                }
            }
        }
    }
}
