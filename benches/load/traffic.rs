//! The load generator: a closed loop (`saturate`: a fixed number of connections sending back to
//! back) and an open loop (`open_loop`, and `offer` of end-of-call reports through it: request i
//! due at start + i / rate, its latency counted from then, whatever the server's pace), each
//! giving latency percentiles; the open loop also says what its errors were.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Bodies, CLIENTS, SECRET};

/// Latency percentiles of one run.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Run {
    pub(super) offered: f64,
    pub(super) achieved: f64,
    pub(super) p50: f64,
    pub(super) p95: f64,
    pub(super) p99: f64,
    pub(super) errors: usize,
    /// Requests answered (2xx or not) during the run.
    pub(super) count: usize,
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn summarize(offered: f64, mut lat: Vec<Duration>, took: Duration, errors: usize) -> Run {
    lat.sort();
    Run {
        offered,
        achieved: lat.len() as f64 / took.as_secs_f64(),
        p50: percentile(&lat, 0.50),
        p95: percentile(&lat, 0.95),
        p99: percentile(&lat, 0.99),
        errors,
        count: lat.len() + errors,
    }
}

pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A POST of a JSON body to `url` as the bench's Vapi pipeline expects it: its bearer secret.
pub(super) fn signed(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("authorization", format!("Bearer {SECRET}"))
        .header("content-type", "application/json")
        .body(body)
}

/// One request to `url`: the Vapi body when `bodies` is given, else an empty POST.
pub(super) async fn send(client: &reqwest::Client, url: &str, bodies: Option<&Bodies>) -> bool {
    let req = match bodies {
        Some(b) => signed(client, url, b.next().0),
        None => client.post(url),
    };
    matches!(req.send().await, Ok(r) if r.status().is_success())
}

/// The latencies and error counts of the generator's tasks, together.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
) -> (Vec<Duration>, usize) {
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all, errors)
}

/// Closed loop: `CLIENTS` connections sending back to back for `secs`.
pub(super) async fn saturate(url: &str, bodies: Option<Arc<Bodies>>, secs: f64) -> Run {
    let client = client();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, bodies) = (client.clone(), url.to_string(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            while Instant::now() < until {
                let t = Instant::now();
                if send(&client, &url, bodies.as_deref()).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (all, errors) = gather(tasks).await;
    let took = started.elapsed();
    let r = summarize(0.0, all, took, errors);
    Run {
        offered: r.achieved,
        ..r
    }
}

/// The open loop's connections at most (`LOAD_CONNECTIONS`, 200 unless set): under the engine's
/// `connections.per_ip` (256 by default), because the generator is one peer address.
fn open_loop_connections() -> usize {
    std::env::var("LOAD_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

/// What a failed request met: its status, or what the client saw instead.
pub(super) fn failure(res: &reqwest::Result<reqwest::Response>) -> String {
    match res {
        Ok(r) => format!("answered {}", r.status().as_u16()),
        Err(e) if e.is_timeout() => "timed out (10 s)".into(),
        Err(e) if e.is_connect() => "not connected".into(),
        Err(e) => {
            // the innermost cause says what happened to the connection (reset, closed)
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("failed: {cause}")
        }
    }
}

/// Open loop: request i is due at start + i / rate, for `secs`, sent by `request` (given a client
/// and its due time) on at most `connections` connections at once. A request counts when
/// `request` says `Ok`, its latency from when it was due (a stall is not hidden); otherwise it is
/// an error of the kind `request` names, and the phase prints how many of each it met.
pub(super) async fn open_loop<F, Fut>(rate: f64, secs: f64, connections: usize, request: F) -> Run
where
    F: Fn(reqwest::Client, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let client = client();
    let total = (rate * secs) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let failures = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, next, failures, request) = (
            client.clone(),
            next.clone(),
            failures.clone(),
            request.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                match request(client.clone(), due).await {
                    Ok(()) => lat.push(due.elapsed()),
                    Err(kind) => {
                        errors += 1;
                        *failures.lock().unwrap().entry(kind).or_default() += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (all, errors) = gather(tasks).await;
    let took = started.elapsed();
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    if !failures.is_empty() {
        let said: Vec<String> = failures.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  (errors at {rate:.0} req/s: {})", said.join(", "));
    }
    summarize(rate, all, took, errors)
}

/// The open loop of signed Vapi end-of-call reports (`bodies`) to `url`: the run, and each
/// request's call id with when it was due.
pub(super) async fn offer(
    url: &str,
    bodies: Arc<Bodies>,
    rate: f64,
    secs: f64,
) -> (Run, Vec<(String, Instant)>) {
    let sent = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        (rate * secs) as usize,
    )));
    let url: Arc<str> = url.into();
    let noted = sent.clone();
    let run = open_loop(rate, secs, open_loop_connections(), move |client, due| {
        let (url, bodies, sent) = (url.clone(), bodies.clone(), noted.clone());
        async move {
            let (body, id) = bodies.next();
            sent.lock().unwrap().push((id, due));
            match signed(&client, &url, body).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                failed => Err(failure(&failed)),
            }
        }
    })
    .await;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    (run, sent)
}
