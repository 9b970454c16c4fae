//! `cargo bench --bench load -- --tool-calls [--quick]`: what a Vapi tool call costs inside the
//! engine, Google's time excluded.
//!
//! ```text
//! generator (this process) --check_availability tool-calls, open loop--> engine serve (release)
//!   -> respond script -> tenant_of (Postgres, cached) -> the org's token (Postgres, cached)
//!   -> POST /calendar/v3/freeBusy --> Google stand-in (this process, answers at once and
//!      times itself) -> free slots -> {"results": [...]}
//! ```
//!
//! Latency is counted from each request's scheduled time to its answer (a stall is not hidden);
//! the stand-in's own time per request (request read -> answer written) is reported next to it,
//! and what remains is the engine's. A `status-update` at the same rate (answered inline, no
//! call) is the baseline the tool call adds to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::traffic::{failure, open_loop, signed};
use super::{Run, Server, engine, percentile};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const ASSISTANT: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

pub async fn run(setup: &super::support::Bench, quick: bool) {
    let google = Google::start().await;
    seed(setup).await;
    let api = format!("http://127.0.0.1:{}", google.port);
    let mut cmd = engine(&["serve", "--no-worker"], setup, setup.dir.path());
    cmd.env("GOOGLE_API_URL", &api)
        .env("GOOGLE_TOKEN_URL", format!("{api}/token"))
        .env("GOOGLE_CLIENT_ID", "1234-bench.apps.googleusercontent.com")
        .env("GOOGLE_CLIENT_SECRET", "bench-client-secret");
    let server = Server::spawn(cmd);
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
    let secs = if quick { 4.0 } else { 20.0 };
    // warm the caches (tenant, token) and the connection pools
    offer(&url, Kind::Tool, 20.0, 1.0).await;
    google.times.lock().unwrap().clear();

    println!("\n## Tool calls through the engine (Google stand-in answering at once)");
    println!(
        "rate/s | message | achieved/s | p50 ms | p95 ms | p99 ms | errors | stand-in p99 ms | engine p99 ms"
    );
    for rate in [20.0, 100.0, 300.0] {
        for kind in [Kind::Status, Kind::Tool] {
            google.times.lock().unwrap().clear();
            let r = offer(&url, kind, rate, secs).await;
            let mut own = std::mem::take(&mut *google.times.lock().unwrap());
            own.sort();
            let stand_in = if own.is_empty() {
                0.0
            } else {
                percentile(&own, 0.99)
            };
            println!(
                "{rate:>6.0} | {:<13} | {:>10.1} | {:>6.2} | {:>6.2} | {:>6.2} | {:>6} | {:>15.3} | {:>13.2}",
                kind.name(),
                r.achieved,
                r.p50,
                r.p95,
                r.p99,
                r.errors,
                stand_in,
                r.p99 - stand_in,
            );
        }
    }
    println!(
        "engine peak RSS: {:.1} MiB",
        server.peak_rss() as f64 / 1048576.0
    );
    server.stop();
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `check_availability`: answered from the calendar.
    Tool,
    /// `status-update`: answered inline, no call.
    Status,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tool => "tool-call",
            Kind::Status => "status-update",
        }
    }
}

fn body(kind: Kind, n: usize) -> Vec<u8> {
    let call = json!({"id": format!("bench-call-{n}"), "orgId": "8f7e6d5c-4b3a-4291-8f7e-6d5c4b3a2910", "type": "inboundPhoneCall", "assistantId": ASSISTANT});
    let message = match kind {
        Kind::Tool => {
            let tool_call = json!({"id": format!("call_{n}"), "type": "function", "function": {"name": "check_availability", "arguments": {"start": "2025-12-02T09:00:00Z", "end": "2025-12-02T12:00:00Z"}}});
            json!({"type": "tool-calls", "timestamp": 1764583200000u64 + n as u64, "toolCallList": [tool_call], "toolWithToolCallList": [{"type": "function", "function": {"name": "check_availability"}, "toolCall": tool_call}], "call": call, "customer": {"number": "+14155550123"}})
        }
        Kind::Status => {
            json!({"type": "status-update", "status": "in-progress", "timestamp": 1764583200000u64 + n as u64, "call": call})
        }
    };
    serde_json::to_vec(&json!({ "message": message })).unwrap()
}

/// Open loop at `rate` for `secs`; a tool call counts only when it carries a real answer.
async fn offer(url: &str, kind: Kind, rate: f64, secs: f64) -> Run {
    static N: AtomicUsize = AtomicUsize::new(0);
    let url: Arc<str> = url.into();
    open_loop(rate, secs, 128, move |client, _due| {
        let url = url.clone();
        async move {
            let res = signed(&client, &url, body(kind, N.fetch_add(1, Ordering::Relaxed)))
                .send()
                .await;
            let answer = match res {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .map_err(|e| format!("an answer that is not JSON ({e})"))?,
                failed => return Err(failure(&failed)),
            };
            let good = match kind {
                Kind::Tool => answer["results"][0]["result"]
                    .as_str()
                    .is_some_and(|t| t.contains("free")),
                Kind::Status => answer["received"] == true,
            };
            good.then_some(())
                .ok_or_else(|| format!("a {} answer without what it should carry", kind.name()))
        }
    })
    .await
}

/// The calling org's assistant linked, its Google token stored (valid for a day).
async fn seed(setup: &super::support::Bench) {
    let ring = engine::crypto::Keyring::new(KEY, &[]).unwrap();
    let (access, refresh) = (
        ring.encrypt(b"ya29.bench", "oauth_tokens.access_token"),
        ring.encrypt(b"1//bench", "oauth_tokens.refresh_token"),
    );
    setup
        .pg
        .batch_execute(&format!(
            "INSERT INTO {s}.tenant_aliases (source, external_id, tenant) VALUES ('vapi_assistant', '{ASSISTANT}', 'org_bench');
             INSERT INTO {s}.oauth_tokens (tenant, provider, access_token, refresh_token, expires_at, event_id)
               VALUES ('org_bench', 'google-calendar', '{access}', '{refresh}', now() + interval '1 day', 'seed');",
            s = setup.schema
        ))
        .await
        .unwrap();
}

/// Google's freeBusy, answering at once with no busy time, timing itself.
struct Google {
    port: u16,
    times: Arc<Mutex<Vec<Duration>>>,
}

impl Google {
    async fn start() -> Google {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let google = Google {
            port: listener.local_addr().unwrap().port(),
            times: Arc::default(),
        };
        let times = google.times.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, times.clone()));
            }
        });
        google
    }
}

async fn serve(mut s: tokio::net::TcpStream, times: Arc<Mutex<Vec<Duration>>>) {
    let mut buf = Vec::new();
    let answer = json!({"kind": "calendar#freeBusy", "timeMin": "2025-12-02T09:00:00.000Z", "timeMax": "2025-12-02T12:00:00.000Z", "calendars": {"primary": {"busy": []}}}).to_string();
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\n\r\n{answer}",
        answer.len()
    );
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let read_at = Instant::now();
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        times.lock().unwrap().push(read_at.elapsed());
    }
}
