//! A local HTTP/1.1 server standing in for a provider or a receiver (Slack, Sentry, a token
//! endpoint, an OTLP collector): keeps every request and answers as told.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request a [`Stub`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as they came (a binary body: OTLP's protobuf).
    pub raw: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local HTTP/1.1 server on 127.0.0.1 standing in for a provider or a webhook receiver (Slack,
/// Sentry, a token endpoint): keeps every request, answers with the reply set (200 "ok" unless
/// told otherwise), after an optional delay. Keep-alive aware.
#[derive(Clone)]
pub struct Stub {
    pub port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    reply: std::sync::Arc<std::sync::Mutex<(u16, String, Duration)>>,
    answer: Option<Answerer>,
}

/// Answers a request: status, JSON body, delay.
pub type Answerer = std::sync::Arc<dyn Fn(&Received) -> (u16, String, Duration) + Send + Sync>;

impl Stub {
    pub async fn start() -> Stub {
        Stub::serving(None).await
    }

    /// A stub whose answers `answer` computes from each request (a service with state).
    pub async fn answering(answer: Answerer) -> Stub {
        Stub::serving(Some(answer)).await
    }

    async fn serving(answer: Option<Answerer>) -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stub = Stub {
            port: listener.local_addr().unwrap().port(),
            got: Default::default(),
            reply: std::sync::Arc::new(std::sync::Mutex::new((200, "ok".into(), Duration::ZERO))),
            answer,
        };
        let keep = stub.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(keep.clone().serve(s));
            }
        });
        stub
    }

    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
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
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.lines();
            let first = lines.next().unwrap_or("");
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                })
                .collect();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let raw = buf[head_end..head_end + len].to_vec();
            let body = String::from_utf8_lossy(&raw).to_string();
            buf.drain(..head_end + len);
            let received = Received {
                method,
                path,
                headers,
                body,
                raw,
            };
            let (status, text, delay) = match &self.answer {
                Some(answer) => answer(&received),
                None => self.reply.lock().unwrap().clone(),
            };
            self.got.lock().unwrap().push(received);
            tokio::time::sleep(delay).await;
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Answer every following request with `status` and `body`, after `delay`.
    pub fn reply(&self, status: u16, body: &str, delay: Duration) {
        *self.reply.lock().unwrap() = (status, body.to_string(), delay);
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests so far once there are `n`, or when `within` has passed.
    #[allow(dead_code)] // tests/reporting.rs's, which shares this module
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let until = std::time::Instant::now() + within;
        while self.got().len() < n && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.got()
    }
}
