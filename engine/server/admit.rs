//! Admission of new connections: how many may be open at once, in all and per client address.
//!
//! ```text
//! accept -> Admission::decide: over `connections.max` in all, or over `connections.per_ip`
//!           from this peer (an IPv6 peer by its /64; trusted proxies not capped) -> closed at
//!           once, nothing read; else admitted with the server's timeouts
//!        -> Open (the connection's observer) counts it until the connection is dropped
//! ```
//!
//! Timeouts bound how long one connection may take; these caps bound how many a client may
//! hold, so one sender dripping bytes over thousands of sockets cannot take every file
//! descriptor. The counts live only as long as their connections (at most `max` peers are
//! held), so the map is bounded by the cap itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use salvo::conn::ConnCtrl;
use salvo::fuse::{ArcConnObserver, ConnObserver, FuseAction, FuseConfig, FuseInfo, FusePolicy};
use salvo::prelude::async_trait;

use crate::client_ip::TrustedProxies;
use crate::config::settings::ConnectionsConfig;

/// The listener's admission policy.
pub struct Admission {
    caps: ConnectionsConfig,
    proxies: TrustedProxies,
    timeouts: FuseConfig,
    open: Arc<Mutex<PeerCounts>>,
}

#[derive(Default)]
struct PeerCounts {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(
        caps: ConnectionsConfig,
        proxies: TrustedProxies,
        timeouts: FuseConfig,
    ) -> Admission {
        Admission {
            caps,
            proxies,
            timeouts,
            open: Arc::default(),
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        lock(&self.open).total
    }

    /// The peer's counting key (`client_ip::client_prefix`), or `None` for a trusted proxy (not
    /// capped per address).
    fn peer(&self, info: &FuseInfo) -> Option<IpAddr> {
        let ip = info.remote_addr.clone().into_std()?.ip().to_canonical();
        (!self.proxies.trusts(ip)).then(|| crate::client_ip::client_prefix(ip))
    }

    /// Count a connection in, or say which cap it is over.
    fn admit(&self, peer: Option<IpAddr>) -> Result<(), &'static str> {
        let mut c = lock(&self.open);
        if c.total >= self.caps.max {
            return Err("total");
        }
        if let Some(ip) = peer {
            let n = c.by_peer.entry(ip).or_insert(0);
            if *n >= self.caps.per_ip {
                return Err("per_ip");
            }
            *n += 1;
        }
        c.total += 1;
        Ok(())
    }
}

fn lock(m: &Mutex<PeerCounts>) -> std::sync::MutexGuard<'_, PeerCounts> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl FusePolicy for Admission {
    async fn decide(&self, info: &FuseInfo) -> FuseAction {
        match self.admit(self.peer(info)) {
            Ok(()) => FuseAction::Accept(self.timeouts),
            Err(cap) => {
                metrics::counter!("engine_connections_refused_total", "cap" => cap).increment(1);
                tracing::debug!(cap, "connection refused: too many open");
                FuseAction::Reject
            }
        }
    }

    /// Called right after `decide` admitted the connection: the observer lives as long as the
    /// connection's stream and gives its place back when dropped.
    fn observe(&self, info: &FuseInfo, _: &ConnCtrl) -> Option<ArcConnObserver> {
        Some(Arc::new(Open {
            peer: self.peer(info),
            open: self.open.clone(),
        }))
    }
}

/// One admitted connection's place.
struct Open {
    peer: Option<IpAddr>,
    open: Arc<Mutex<PeerCounts>>,
}

impl ConnObserver for Open {}

impl Drop for Open {
    fn drop(&mut self) {
        let mut c = lock(&self.open);
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.peer
            && let Some(n) = c.by_peer.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.by_peer.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ip: &str) -> FuseInfo {
        let remote: std::net::SocketAddr = format!("{ip}:4000").parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:3001".parse().unwrap();
        FuseInfo {
            trans_proto: salvo::fuse::TransProto::Tcp,
            remote_addr: remote.into(),
            local_addr: local.into(),
        }
    }

    fn admission(max: usize, per_ip: usize) -> Admission {
        Admission::new(
            ConnectionsConfig { max, per_ip },
            TrustedProxies::parse(&["10.0.0.0/8".into()]),
            FuseConfig::default(),
        )
    }

    /// A connection from `ip` as the listener admits it: its place, or `None` when refused.
    async fn enter(a: &Admission, ip: &str) -> Option<ArcConnObserver> {
        match a.decide(&info(ip)).await {
            FuseAction::Accept(_) => a.observe(&info(ip), &ConnCtrl::new()),
            FuseAction::Reject => None,
        }
    }

    #[tokio::test]
    async fn per_peer_and_total_caps_with_places_given_back() {
        let a = admission(5, 2);
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                enter(&a, "203.0.113.1")
                    .await
                    .expect("under the per-peer cap"),
            );
        }
        assert!(enter(&a, "203.0.113.1").await.is_none());
        // one /64 is one peer
        held.push(enter(&a, "[2001:db8::1]").await.expect("a new peer"));
        held.push(
            enter(&a, "[2001:db8::2]")
                .await
                .expect("same /64, second place"),
        );
        assert!(enter(&a, "[2001:db8::3]").await.is_none());
        // a trusted proxy is not capped per address, only in all
        held.push(enter(&a, "10.1.2.3").await.expect("a proxy"));
        assert_eq!(a.open(), 5);
        assert!(enter(&a, "10.1.2.3").await.is_none());
        // closing connections gives their places back
        held.clear();
        assert_eq!(a.open(), 0);
        assert!(lock(&a.open).by_peer.is_empty());
        assert!(enter(&a, "203.0.113.1").await.is_some());
    }
}
