//! The HTTP sink: one request per event, `{"event_id", "pipeline", "sink", "rows"}` as JSON,
//! `Idempotency-Key: <event id>` so the receiver can drop a redelivery (the queue delivers at
//! least once). 2xx is done; 5xx, 408, 429, timeouts and connection errors are retried; any other
//! 4xx dead-letters the event (the receiver refuses it as it is). Redirects are never followed:
//! a 3xx would carry the rows and the configured headers (an API key) to a host nobody
//! configured, so it dead-letters the event with the status and where it pointed.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::sink::{Http, HttpSinkMethod};
use crate::sink::{Batch, Sink, SinkError, SinkFuture};

pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
    headers: HeaderMap,
}

impl HttpSink {
    pub fn new(cfg: &Http) -> Result<HttpSink, super::SinkBuildError> {
        use super::SinkBuildError;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| SinkBuildError::BadHeaderName(k.clone()))?;
            // values may hold secrets: the error names the header, not the value
            let value =
                HeaderValue::from_str(v).map_err(|_| SinkBuildError::BadHeaderValue(k.clone()))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(SinkBuildError::Client)?;
        Ok(HttpSink {
            client,
            url: cfg.url.clone(),
            method: match cfg.method {
                HttpSinkMethod::Post => reqwest::Method::POST,
                HttpSinkMethod::Put => reqwest::Method::PUT,
            },
            headers,
        })
    }
}

impl Sink for HttpSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move {
            let body = serde_json::json!({
                "event_id": batch.event_id,
                "pipeline": batch.pipeline,
                "sink": batch.sink,
                "rows": batch.rows,
            });
            let request = self
                .client
                .request(self.method.clone(), &self.url)
                .headers(self.headers.clone())
                .header("idempotency-key", &batch.event_id)
                .json(&body);
            // the write continues the event's trace (its `sink.write` span)
            let res = crate::ops::trace::inject(request)
                .send()
                .await
                // the URL may carry a token: report the kind of failure only
                .map_err(|e| {
                    SinkError::retry(format!(
                        "request failed ({})",
                        if e.is_timeout() {
                            "timeout"
                        } else if e.is_connect() {
                            "connection"
                        } else {
                            "transport"
                        }
                    ))
                })?;
            let status = res.status();
            match status.as_u16() {
                200..=299 => Ok(()),
                408 | 429 | 500..=599 => {
                    Err(SinkError::retry(format!("the endpoint answered {status}")))
                }
                300..=399 => {
                    // the target's host only: its path or query may carry a token
                    let to = res
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|l| reqwest::Url::parse(l).ok())
                        .and_then(|u| u.host_str().map(str::to_string))
                        .map_or_else(|| "elsewhere".to_string(), |h| format!("to host {h}"));
                    Err(SinkError::permanent(format!(
                        "the endpoint answered {status}, a redirect {to}: redirects are not followed (the rows and headers would go where nobody configured); set the sink's url to the final address"
                    )))
                }
                _ => Err(SinkError::permanent(format!(
                    "the endpoint refused the event: {status}"
                ))),
            }
        })
    }
}
