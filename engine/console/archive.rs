//! The console's Events pages over the event archive ([`crate::archive`]): a pipeline's events
//! searched by time, outcome and index fields; one event's story and redacted request; a
//! replay offered with its dry-run count first; the replay jobs with their progress.

use maud::{Markup, html};

use super::pages::{event_details, page};
use super::recent::shown;
use crate::archive::replay::{Job, Preview, Status};
use crate::archive::{Outcome, Stored};
use crate::config::pipeline::Redact;
use crate::transform::sandbox::format_time;

/// A search as the form sends it (kept as text, to be shown back).
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub pipeline: String,
    pub since: String,
    pub outcome: String,
    /// `field=value`
    pub field: String,
}

impl Search {
    /// The search as query-string pairs (links, hidden fields).
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("pipeline", self.pipeline.as_str()),
            ("since", self.since.as_str()),
            ("outcome", self.outcome.as_str()),
            ("where", self.field.as_str()),
        ]
    }
}

fn hidden(search: &Search) -> Markup {
    html! { @for (k, v) in search.pairs() { input type="hidden" name=(k) value=(v); } }
}

fn search_form(search: &Search, index: &[String]) -> Markup {
    html! {
        form.search method="get" action="/console/events" {
            input type="hidden" name="pipeline" value=(search.pipeline);
            label { "Since " input name="since" value=(search.since) placeholder="2h, 7d or 2026-12-04T10:00:00Z"; }
            label { "Outcome "
                select name="outcome" {
                    @for o in ["", "written", "dropped", "retrying", "dead", "failed"] {
                        option value=(o) selected[search.outcome == o] { @if o.is_empty() { "any" } @else { (o) } }
                    }
                }
            }
            label { "Field " input name="where" value=(search.field) placeholder=(index.first().map(|f| format!("{f}=...")).unwrap_or_else(|| "no index fields".into())); }
            button type="submit" { "Search" }
        }
        @if !index.is_empty() { p.meta { "Index fields: " (index.join(", ")) } }
    }
}

/// One pipeline's archived events matching `search`, newest first.
/// `refused`: the instance's sample of refused requests, drawn below (never archived: they
/// were not accepted).
pub fn events(
    search: &Search,
    index: &[String],
    found: Result<(Vec<Stored>, u64), String>,
    refused: Markup,
    csrf: &str,
) -> Markup {
    let content = html! {
        (search_form(search, index))
        @match found {
            Err(e) => { p.error { (e) } }
            Ok((events, total)) => {
                p.meta { (total) " event" @if total != 1 { "s" } " match" @if total == 1 { "es" }
                    @if total as usize > events.len() { ", the newest " (events.len()) " shown" } }
                @if total > 0 {
                    form method="post" action="/console/events/replay-preview" {
                        input type="hidden" name="csrf" value=(csrf);
                        (hidden(search))
                        button type="submit" { "Replay these " (total) "…" }
                    }
                }
                @if !events.is_empty() {
                    table.letters {
                        thead { tr { th { "Received" } th { "Event" } th { "Outcome" } th.n { "Attempts" } th { "Fields" } th { "Last step" } } }
                        tbody {
                            @for e in &events {
                                @let when = format_time(e.received_at_ms);
                                @let last = e.story.last();
                                tr {
                                    td { time datetime=(when) { (when) } }
                                    td { a href=(format!("/console/events/show?pipeline={}&id={}", encode(&e.pipeline), encode(&e.event_id))) { code { (e.event_id) } } }
                                    td { span class=(format!("outcome {}", e.outcome.as_str())) { (e.outcome.as_str()) } }
                                    td.n { (e.attempts) }
                                    td { @for (k, v) in &e.fields { code { (k) "=" (v) } " " } }
                                    td.reason { @if let Some(s) = last { (step_text(s)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        (refused)
    };
    page(
        &format!("Events: {}", search.pipeline),
        "events",
        csrf,
        content,
    )
}

fn step_text(s: &crate::archive::Step) -> String {
    let what = match (&s.sink, s.rows, &s.reason) {
        (_, _, Some(r)) => r.clone(),
        (Some(sink), Some(rows), _) => format!("{rows} row(s) to {sink}"),
        _ => String::new(),
    };
    match &s.run {
        Some(run) => format!("{what} (replay {run})"),
        None => what,
    }
}

/// `s` as a query-string value (the console's links and redirects).
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One archived event: its story and its request (redacted).
pub fn event(
    stored: &Stored,
    request: Result<crate::transform::EventInput, String>,
    redact: &[Redact],
    csrf: &str,
) -> Markup {
    let content = html! {
        p.meta { "Pipeline " code { (stored.pipeline) } " · received " (format_time(stored.received_at_ms)) " · now " (stored.outcome.as_str())
            @if let Some(id) = stored.trace_id() { " · trace " code { (id) } } }
        @if !stored.fields.is_empty() {
            table.kv { @for (k, v) in &stored.fields { tr { th { (k) } td { (v) } } } }
        }
        h2 { "Story" }
        table.letters {
            thead { tr { th { "When" } th.n { "Attempt" } th { "Outcome" } th { "What" } } }
            tbody {
                @for s in &stored.story {
                    tr { td { (format_time(s.at_ms)) } td.n { (s.attempt) } td { (s.outcome.as_str()) } td.reason { (step_text(s)) } }
                }
            }
        }
        h2 { "Request" }
        @match request {
            Ok(e) => (event_details(&shown(&e, redact))),
            Err(e) => p.error { (e) },
        }
    };
    page(
        &format!("Event {}", stored.event_id),
        "events",
        csrf,
        content,
    )
}

/// The dry run of a replay, with the button that starts it.
pub fn preview(search: &Search, matched: u64, sample: &[Preview], csrf: &str) -> Markup {
    let content = html! {
        p { strong { (matched) } " event" @if matched != 1 { "s" } " of " code { (search.pipeline) } " match. Nothing has been written yet. What the first " (sample.len()) " would do through the pipeline as it is now:" }
        table.letters {
            thead { tr { th { "Event" } th { "Now" } th { "Would be" } th { "Why" } } }
            tbody {
                @for p in sample {
                    tr { td { code { (p.event_id) } } td { (p.was.as_str()) } td { (p.would.as_str()) }
                         td.reason { @if let Some(r) = &p.reason { (r) } @else if let (Some(s), Some(n)) = (&p.sink, p.rows) { (n) " row(s) to " (s) } } }
                }
            }
        }
        p.meta { "Events whose rows are what they last wrote are skipped (unchanged). The replay runs in this instance at 2,000 events a second at most, and can be cancelled from the jobs page." }
        @if matched > 0 {
            form method="post" action="/console/events/replay" {
                input type="hidden" name="csrf" value=(csrf);
                (hidden(search))
                button type="submit" data-confirm=(format!("Replay {matched} events through the pipeline as it is now?")) { "Replay " (matched) " events" }
            }
        }
    };
    page("Replay: dry run", "events", csrf, content)
}

/// The replay jobs, newest first, with cancel and resume.
pub fn jobs(jobs: &[Job], now_ms: i64, csrf: &str) -> Markup {
    let content = html! {
        @if jobs.is_empty() { p { "No replay has run." } }
        @else {
            table.letters {
                thead { tr { th { "Job" } th { "Pipeline" } th { "Status" } th.n { "Done" } th { "Written · dropped · unchanged · failed" } th { "Started" } th {} } }
                tbody {
                    @for j in jobs {
                        @let stale = matches!(j.status, Status::Running | Status::Cancelling)
                            && now_ms - j.heartbeat_at_ms > crate::archive::replay::STALE.as_millis() as i64;
                        tr {
                            td { code { (j.id) } }
                            td { (j.pipeline) }
                            td { (j.status.as_str()) @if stale { " (stopped: no heartbeat)" } @if let Some(e) = &j.error { br; small.error { (e) } } }
                            td.n { (j.done) "/" (j.matched) }
                            td { (j.counts.written) " · " (j.counts.dropped) " · " (j.counts.unchanged) " · " (j.counts.failed) }
                            td { (format_time(j.started_at_ms)) }
                            td {
                                @if j.status == Status::Running && !stale {
                                    form method="post" action="/console/events/cancel" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="job" value=(j.id);
                                        button type="submit" .danger { "Cancel" }
                                    }
                                }
                                @if stale {
                                    form method="post" action="/console/events/resume" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="job" value=(j.id);
                                        button type="submit" { "Resume" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Replay jobs", "events", csrf, content)
}

/// The outcome a search names (empty: any).
pub fn outcome(word: &str) -> Result<Option<Outcome>, crate::archive::search::SearchError> {
    match word {
        "" => Ok(None),
        w => Outcome::parse(w)
            .map(Some)
            .ok_or_else(|| crate::archive::search::SearchError::Outcome(w.to_string())),
    }
}
