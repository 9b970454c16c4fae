//! Alerts to Slack: dead-lettered events, lost queues and sink outages, aggregated so an outage
//! sends a few messages, not thousands.
//!
//! ```text
//! worker / dispatch ──dead_lettered() / queue_lost() / sink_failed() / sink_ok()──► channel
//!   (bounded; a full channel drops and counts, never blocks a request or a worker)
//! alerter task: collects for `flush_every`, then one Slack message with one line per
//!   pipeline / queue / sink:  "vapi: 37 events dead-lettered (last reason: ...)"
//!                             "sink call_logs failing for 2m 10s"   "sink call_logs recovered"
//!   at most `max_per_hour` messages; what is over is counted and said in the next message
//! ```
//!
//! Installed once per process by `engine serve` / `engine worker` when SLACK_WEBHOOK_URL is set;
//! without it the hooks cost one atomic load. The webhook URL is a secret: it is never logged
//! (reqwest errors are stripped of it).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// How the alerter behaves.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// The Slack incoming-webhook URL.
    pub url: String,
    /// Collect this long before sending.
    pub flush_every: Duration,
    /// A sink failing this long without a success is an outage.
    pub sink_outage: Duration,
    /// Messages per hour at most.
    pub max_per_hour: u32,
    /// Named in every message: environment and host.
    pub source: String,
}

impl AlertsConfig {
    /// The production defaults: a message at most every 60 s, 20 an hour.
    pub fn new(url: String, sink_outage: Duration, source: String) -> AlertsConfig {
        AlertsConfig {
            url,
            flush_every: Duration::from_secs(60),
            sink_outage,
            max_per_hour: 20,
            source,
        }
    }
}

#[derive(Debug)]
enum Signal {
    DeadLettered { queue: String, reason: String },
    QueueLost { queue: String },
    SinkFailed { sink: String, at: Instant },
    SinkOk { sink: String },
    Note(String),
}

static SENDER: OnceLock<mpsc::Sender<Signal>> = OnceLock::new();

/// Sinks the alerter counts as failing. A success matters only to a failing sink, so while this
/// is 0 (nearly always) `sink_ok` — called for every written event — is one atomic load.
static FAILING: AtomicUsize = AtomicUsize::new(0);

/// The alerter runs already in this process (it is installed once).
#[derive(Debug, thiserror::Error)]
#[error("alerts are already installed in this process")]
pub struct AlreadyInstalled;

/// Start the alerter task (once per process). `Err` when one is already running.
pub fn install(config: AlertsConfig) -> Result<(), AlreadyInstalled> {
    let (tx, rx) = mpsc::channel(10_000);
    SENDER.set(tx).map_err(|_| AlreadyInstalled)?;
    tokio::spawn(run(config, rx));
    Ok(())
}

fn signal(s: Signal) {
    if let Some(tx) = SENDER.get()
        && tx.try_send(s).is_err()
    {
        metrics::counter!("engine_alerts_dropped_total").increment(1);
    }
}

/// An event was dead-lettered.
pub fn dead_lettered(queue: &str, reason: &str) {
    if SENDER.get().is_some() {
        signal(Signal::DeadLettered {
            queue: queue.to_string(),
            reason: reason.to_string(),
        });
    }
}

/// A queue's consumer group was gone: events queued before are lost.
pub fn queue_lost(queue: &str) {
    signal(Signal::QueueLost {
        queue: queue.to_string(),
    });
}

/// A sink write failed.
pub fn sink_failed(sink: &str) {
    if SENDER.get().is_some() {
        signal(Signal::SinkFailed {
            sink: sink.to_string(),
            at: Instant::now(),
        });
    }
}

/// A sink write succeeded.
pub fn sink_ok(sink: &str) {
    if FAILING.load(Ordering::Relaxed) > 0 {
        signal(Signal::SinkOk {
            sink: sink.to_string(),
        });
    }
}

/// Anything else worth a human's attention (a Redis that can lose events, at boot).
pub fn note(text: &str) {
    signal(Signal::Note(text.to_string()));
}

/// What the alerter remembers between flushes.
#[derive(Default)]
struct Unflushed {
    dead: BTreeMap<String, (u64, String)>,
    lost: BTreeMap<String, u64>,
    notes: Vec<String>,
    /// Sink -> (failing since, already alerted).
    failing: BTreeMap<String, (Instant, bool)>,
    recovered: Vec<(String, Duration)>,
    /// Messages sent in the current hour, and when it began.
    sent: u32,
    hour: Option<Instant>,
    suppressed: u64,
}

impl Unflushed {
    fn absorb(&mut self, s: Signal) {
        match s {
            Signal::DeadLettered { queue, reason } => {
                let e = self.dead.entry(queue).or_default();
                e.0 += 1;
                e.1 = reason;
            }
            Signal::QueueLost { queue } => *self.lost.entry(queue).or_default() += 1,
            Signal::SinkFailed { sink, at } => {
                self.failing.entry(sink).or_insert((at, false));
            }
            Signal::SinkOk { sink } => {
                if let Some((since, alerted)) = self.failing.remove(&sink)
                    && alerted
                {
                    self.recovered.push((sink, since.elapsed()));
                }
            }
            Signal::Note(text) => {
                if self.notes.len() < 20 {
                    self.notes.push(shorten(&text));
                }
            }
        }
    }

    /// The lines of the next message (empty: nothing to say), clearing what they report.
    fn lines(&mut self, outage: Duration) -> Vec<String> {
        let mut out = Vec::new();
        for (queue, (n, reason)) in std::mem::take(&mut self.dead) {
            let s = if n == 1 { "" } else { "s" };
            out.push(format!(
                "{queue}: {n} event{s} dead-lettered (last reason: {}). `engine dlq list --pipeline {queue}`",
                shorten(&reason)
            ));
        }
        for (queue, _) in std::mem::take(&mut self.lost) {
            out.push(format!(
                "queue {queue}: the consumer group was gone (Redis restarted without persistence?); events queued before are LOST"
            ));
        }
        for (sink, (since, alerted)) in self.failing.iter_mut() {
            if !*alerted && since.elapsed() >= outage {
                *alerted = true;
                out.push(format!(
                    "sink {sink}: failing for {} without a success; events are retried and kept",
                    human(since.elapsed())
                ));
            }
        }
        for (sink, after) in std::mem::take(&mut self.recovered) {
            out.push(format!("sink {sink}: recovered after {}", human(after)));
        }
        out.append(&mut self.notes);
        out
    }

    /// Whether a message may go now (the hourly cap).
    fn may_send(&mut self, max_per_hour: u32) -> bool {
        let now = Instant::now();
        if self
            .hour
            .is_none_or(|h| now.duration_since(h) >= Duration::from_secs(3600))
        {
            self.hour = Some(now);
            self.sent = 0;
        }
        if self.sent >= max_per_hour {
            return false;
        }
        self.sent += 1;
        true
    }
}

async fn run(config: AlertsConfig, mut rx: mpsc::Receiver<Signal>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.without_url(), "alerts disabled: cannot build the HTTP client");
            return;
        }
    };
    let mut state = Unflushed::default();
    let mut tick = tokio::time::interval(config.flush_every);
    tick.tick().await;
    loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => {
                    state.absorb(s);
                    FAILING.store(state.failing.len(), Ordering::Relaxed);
                }
                None => break,
            },
            _ = tick.tick() => {
                let lines = state.lines(config.sink_outage);
                if lines.is_empty() {
                    continue;
                }
                if !state.may_send(config.max_per_hour) {
                    state.suppressed += lines.len() as u64;
                    metrics::counter!("engine_alerts_dropped_total").increment(lines.len() as u64);
                    continue;
                }
                let mut text = format!("*engine* ({})\n", config.source);
                for l in &lines {
                    text.push_str(&format!("• {l}\n"));
                }
                if state.suppressed > 0 {
                    text.push_str(&format!("• ({} alert lines were held back by the hourly cap)\n", state.suppressed));
                    state.suppressed = 0;
                }
                post(&client, &config.url, &text).await;
            }
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, text: &str) {
    let sent = client
        .post(url)
        .json(&serde_json::json!({ "text": text }))
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            metrics::counter!("engine_alerts_sent_total").increment(1);
        }
        Ok(r) => tracing::warn!(status = r.status().as_u16(), "Slack refused the alert"),
        Err(e) => tracing::warn!(error = %e.without_url(), "could not post the alert to Slack"),
    }
}

/// A text from elsewhere (a dead letter's reason) as Slack shows it literally: at most 200
/// characters, control characters as spaces, and `& < >` escaped as Slack's formatting asks —
/// so `<!channel>` mentions nobody and `<https://x|click>` is no link.
fn shorten(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(200) + 8);
    for c in s.chars().take(200) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    if s.chars().nth(200).is_some() {
        out.push_str("...");
    }
    out
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_reach_slack_as_literal_text() {
        let mut s = Unflushed::default();
        s.absorb(Signal::DeadLettered {
            queue: "vapi".into(),
            reason: "<!channel> see <https://evil.example|the fix> & more\nfake line".into(),
        });
        let lines = s.lines(Duration::from_secs(60));
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert!(
            line.contains(
                "&lt;!channel&gt; see &lt;https://evil.example|the fix&gt; &amp; more fake line"
            ),
            "{line}"
        );
        assert!(
            !line.contains("<!channel>") && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn a_burst_becomes_one_line_per_queue() {
        let mut st = Unflushed::default();
        for i in 0..500 {
            st.absorb(Signal::DeadLettered {
                queue: "vapi".into(),
                reason: format!("script failed #{i}"),
            });
        }
        st.absorb(Signal::DeadLettered {
            queue: "twilio-sms".into(),
            reason: "x".into(),
        });
        let lines = st.lines(Duration::from_secs(60));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1]
                .starts_with("vapi: 500 events dead-lettered (last reason: script failed #499)")
        );
        assert!(lines[0].starts_with("twilio-sms: 1 event dead-lettered"));
        assert!(
            st.lines(Duration::from_secs(60)).is_empty(),
            "reported once"
        );
    }

    #[test]
    fn a_sink_outage_is_reported_once_after_the_threshold_then_its_recovery() {
        let mut st = Unflushed::default();
        let long_ago = Instant::now() - Duration::from_secs(300);
        st.absorb(Signal::SinkFailed {
            sink: "call_logs".into(),
            at: long_ago,
        });
        st.absorb(Signal::SinkFailed {
            sink: "call_logs".into(),
            at: Instant::now(),
        });
        st.absorb(Signal::SinkFailed {
            sink: "transcripts".into(),
            at: Instant::now(),
        });
        let lines = st.lines(Duration::from_secs(120));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("sink call_logs: failing for 5m 0s"),
            "{lines:?}"
        );
        assert!(st.lines(Duration::from_secs(120)).is_empty());
        st.absorb(Signal::SinkOk {
            sink: "call_logs".into(),
        });
        st.absorb(Signal::SinkOk {
            sink: "transcripts".into(),
        });
        let lines = st.lines(Duration::from_secs(120));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("sink call_logs: recovered after 5m"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_hourly_cap_holds() {
        let mut st = Unflushed::default();
        assert!((0..3).all(|_| st.may_send(3)));
        assert!(!st.may_send(3));
    }
}
