//! What the engine saw of a request once its body is read: the client, the public URL the
//! provider signed, the time; and the views of it that verification and the queue take.

use std::net::IpAddr;

use bytes::Bytes;
use salvo::prelude::*;

use super::App;
use crate::transform::EventInput;
use crate::verify::Inbound;

/// What the engine saw of a request once its body is read: who sent it, to which public URL.
pub struct Incoming<'r> {
    pub req: &'r Request,
    pub body: Bytes,
    pub client_ip: IpAddr,
    /// The URL the provider signed: the public one, not the one this process sees.
    pub url: String,
    pub now_ms: i64,
}

impl<'r> Incoming<'r> {
    pub fn new(app: &App, req: &'r Request, body: Bytes) -> Incoming<'r> {
        let peer = req
            .remote_addr()
            .ip()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        Incoming {
            req,
            client_ip: app.proxies.client_ip(peer, req.headers()),
            url: app.public_url(peer, req.headers(), path_and_query),
            body,
            now_ms: app.clock.now_ms(),
        }
    }

    pub fn inbound(&self) -> Inbound<'_> {
        Inbound {
            method: self.req.method().as_str(),
            url: &self.url,
            headers: self.req.headers(),
            body: &self.body,
            now: self.now_ms.div_euclid(1000),
        }
    }

    pub fn event_input(
        &self,
        id: String,
        pipeline: &str,
        params: Vec<(String, String)>,
        tenant: Option<String>,
    ) -> EventInput {
        EventInput {
            id,
            pipeline: pipeline.to_string(),
            received_at_ms: self.now_ms,
            method: self.req.method().as_str().to_string(),
            path: self.req.uri().path().to_string(),
            query: self.req.uri().query().unwrap_or("").to_string(),
            headers: self
                .req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            params,
            tenant,
            trace: None,
            index: None,
            body: self.body.clone(),
        }
    }
}
