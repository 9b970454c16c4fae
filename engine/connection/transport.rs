//! How a connection's requests leave the engine: over the network (`Network`: one reqwest client,
//! no redirects, answers capped at [`MAX_ANSWER`]), or to a fixture's stand-in answers
//! (`Standin`, for `engine replay`), which also records every request it was asked for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

/// Largest answer body read from a connection; a larger one is a failed call.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// A request on its way out.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub method: String,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    /// Content type and bytes.
    pub body: Option<(String, Vec<u8>)>,
    pub timeout: Duration,
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Received {
    pub status: u16,
    pub body: Bytes,
}

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// Nothing within the timeout.
    Timeout,
    /// Could not connect, or the answer broke off or was too large: the reason, without the URL.
    Failed(String),
}

pub type Sent<'a> = Pin<Box<dyn Future<Output = Result<Received, NoAnswer>> + Send + 'a>>;

/// Sends requests.
pub trait Transport: Send + Sync {
    fn send(&self, out: Outbound) -> Sent<'_>;
}

/// The network.
pub struct Network {
    client: reqwest::Client,
}

impl Network {
    pub fn new() -> Result<Network, super::ConnectionBuildError> {
        let client = reqwest::Client::builder()
            // A redirect could lead off the connection's host.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(super::ConnectionBuildError::Client)?;
        Ok(Network { client })
    }
}

impl Transport for Network {
    fn send(&self, out: Outbound) -> Sent<'_> {
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(out.method.as_bytes())
                .map_err(|_| NoAnswer::Failed(format!("`{}` is not an HTTP method", out.method)))?;
            let mut req = self.client.request(method, out.url).timeout(out.timeout);
            for (k, v) in &out.headers {
                req = req.header(k, v);
            }
            if let Some((content_type, bytes)) = out.body {
                req = req.header("content-type", content_type).body(bytes);
            }
            // the call (and a token refresh) continues the event's trace
            req = crate::ops::trace::inject(req);
            let failed = |e: reqwest::Error| {
                if e.is_timeout() {
                    NoAnswer::Timeout
                } else {
                    NoAnswer::Failed(e.without_url().to_string())
                }
            };
            let started = tokio::time::Instant::now();
            let mut res = req.send().await.map_err(failed)?;
            let status = res.status().as_u16();
            let mut body = Vec::new();
            // the whole call, body included, stays within the timeout
            let rest = out.timeout.saturating_sub(started.elapsed());
            let read = async {
                while let Some(chunk) = res.chunk().await.map_err(failed)? {
                    if body.len() + chunk.len() > MAX_ANSWER {
                        return Err(NoAnswer::Failed(format!(
                            "the answer is larger than {} KiB",
                            MAX_ANSWER / 1024
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(())
            };
            match tokio::time::timeout(rest, read).await {
                Ok(r) => r?,
                Err(_) => return Err(NoAnswer::Timeout),
            }
            Ok(Received {
                status,
                body: body.into(),
            })
        })
    }
}

/// A canned answer of a fixture.
#[derive(Debug, Clone)]
pub struct Canned {
    pub method: String,
    /// Matched without its query string.
    pub url: String,
    pub status: u16,
    pub body: Bytes,
    /// How long the service would take: at or over a call's timeout, the call times out (at
    /// once: replay does not wait); shorter, it answers at once.
    pub delay: Duration,
    /// How many requests this answer serves.
    pub times: u32,
}

/// Canned answers, used in order: a request takes the first unused answer with its method and
/// URL. One with none fails to connect.
#[derive(Default)]
pub struct Standin {
    answers: Mutex<Vec<Canned>>,
    asked: Mutex<Vec<String>>,
}

impl Standin {
    pub fn new(answers: Vec<Canned>) -> Standin {
        Standin {
            answers: Mutex::new(answers),
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Every request so far, as `METHOD url` (without the query), in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Transport for Standin {
    fn send(&self, out: Outbound) -> Sent<'_> {
        let mut url = out.url.clone();
        url.set_query(None);
        let url = url.to_string();
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {url}", out.method));
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let found = answers
            .iter_mut()
            .find(|a| a.times > 0 && a.method.eq_ignore_ascii_case(&out.method) && a.url == url);
        let result = match found {
            None => Err(NoAnswer::Failed(format!(
                "no stand-in answers {} {url}",
                out.method
            ))),
            Some(a) => {
                a.times -= 1;
                if a.delay >= out.timeout {
                    Err(NoAnswer::Timeout)
                } else {
                    Ok(Received {
                        status: a.status,
                        body: a.body.clone(),
                    })
                }
            }
        };
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(method: &str, url: &str, timeout: Duration) -> Outbound {
        Outbound {
            method: method.into(),
            url: url::Url::parse(url).unwrap(),
            headers: Vec::new(),
            body: None,
            timeout,
        }
    }

    #[tokio::test]
    async fn a_standin_answers_in_order_times_out_slow_answers_and_records_requests() {
        let canned = |status, delay, times| Canned {
            method: "POST".into(),
            url: "https://api.example/v1/x".into(),
            status,
            body: Bytes::from_static(b"{}"),
            delay: Duration::from_millis(delay),
            times,
        };
        let s = Standin::new(vec![canned(503, 0, 1), canned(200, 100, 2)]);
        let t = Duration::from_secs(1);
        let first = s.send(out("POST", "https://api.example/v1/x?a=1", t)).await;
        assert_eq!(first.unwrap().status, 503);
        assert_eq!(
            s.send(out("POST", "https://api.example/v1/x", t))
                .await
                .unwrap()
                .status,
            200
        );
        let slow = s
            .send(out(
                "POST",
                "https://api.example/v1/x",
                Duration::from_millis(50),
            ))
            .await;
        assert_eq!(slow.unwrap_err(), NoAnswer::Timeout);
        let none = s.send(out("GET", "https://api.example/v1/x", t)).await;
        assert!(matches!(none, Err(NoAnswer::Failed(m)) if m.contains("no stand-in answers GET")));
        assert_eq!(s.asked().len(), 4);
        assert_eq!(s.asked()[0], "POST https://api.example/v1/x");
    }
}
