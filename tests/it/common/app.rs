//! The real server on port 0 (`spawn_app`), requests to it (signed, or raw bytes a normal client
//! will not send), and what it exposes (`/metrics`, the console's CSRF token).

use std::path::Path;
use std::time::Duration;

use engine::env::EnvSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::services;

/// The engine serving on 127.0.0.1, port chosen by the OS.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    running: Option<engine::server::Running>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The live pipeline set, for reloads.
    pub fn live(&self) -> std::sync::Arc<engine::server::Live> {
        self.running.as_ref().unwrap().live()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Load `dir` with exactly the variables `env` and serve it.
pub async fn spawn_app(dir: &Path, env: &[(&str, &str)]) -> TestApp {
    spawn_app_with(dir, env, engine::server::AppContext::default()).await
}

/// [`spawn_app`] with other surroundings (a recording directory, ...).
pub async fn spawn_app_with(
    dir: &Path,
    env: &[(&str, &str)],
    around: engine::server::AppContext,
) -> TestApp {
    spawn(dir, env, true, around).await
}

/// [`spawn_app`] without queue workers: what is enqueued stays in the queue to be looked at.
pub async fn spawn_ingest_only(dir: &Path, env: &[(&str, &str)]) -> TestApp {
    spawn(dir, env, false, engine::server::AppContext::default()).await
}

async fn spawn(
    dir: &Path,
    env: &[(&str, &str)],
    workers: bool,
    around: engine::server::AppContext,
) -> TestApp {
    // an app on the shared Redis or Postgres needs them up ([`services`]); one on a private
    // server or on neither does not
    if env
        .iter()
        .any(|(_, v)| v.contains("127.0.0.1:6379") || v.contains("127.0.0.1:5432"))
    {
        services();
    }
    let source = EnvSource::from_pairs(env.iter().copied());
    let (project, plan) = engine::plan::load(dir, &source).unwrap_or_else(|d| {
        panic!(
            "test pipelines invalid:\n{}",
            engine::diagnostics::render(&d, engine::diagnostics::Format::Text)
        )
    });
    let running = engine::server::start_with(
        project,
        plan,
        "127.0.0.1:0".parse().unwrap(),
        workers,
        around,
    )
    .await
    .unwrap();
    let addr = running.addr;
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        running: Some(running),
    }
}

/// Send raw bytes and read until the server closes the connection or `timeout` passes.
pub async fn raw_request(addr: std::net::SocketAddr, parts: &[&[u8]], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for part in parts {
        if stream.write_all(part).await.is_err() {
            break; // the server may close early (413); what it answered is still readable
        }
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Headers that make a request verify under pipeline `name` of `dir`, loaded with `env`.
pub fn sign(
    dir: &Path,
    env: &[(&str, &str)],
    name: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    let project =
        engine::config::load(dir, &EnvSource::from_pairs(env.iter().copied())).expect("valid");
    let p = project
        .pipelines
        .iter()
        .find(|p| p.config.name == name)
        .expect("pipeline");
    let verifier =
        engine::verify::Verifier::build(p.config.verify.as_ref().expect("verify")).unwrap();
    let mut map = salvo::http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    verifier.sign(&engine::verify::Inbound {
        method: "POST",
        url,
        headers: &map,
        body,
        now: chrono::Utc::now().timestamp(),
    })
}

/// A free TCP port on 127.0.0.1.
/// The `/metrics` text of an engine process listening on `port` (open in development).
pub async fn metrics_of(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The CSRF token a console page's forms carry.
pub fn csrf_in(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"))
        .to_string()
}

/// POST `body` to the shipped Vapi route with the development bearer secret; the status.
pub async fn post_vapi(app: &TestApp, body: Vec<u8>) -> u16 {
    app.client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
