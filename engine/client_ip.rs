//! Who is calling: the client IP and the public URL a request was addressed to.
//!
//! Behind Render's load balancer the socket peer is the proxy, and the client is in
//! `X-Forwarded-For`. That header is believed only when the peer is a configured trusted proxy,
//! and then read from the right, skipping trusted hops: the first untrusted address is the client.
//! Everything left of it was written by the client and could be forged, so a client cannot pick
//! its own rate-limit key or pass an IP allow-list by sending the header itself.

use std::net::IpAddr;

use ipnet::IpNet;
use salvo::http::HeaderMap;

/// The `trusted_proxies` setting, parsed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Entries that do not parse are skipped (validation reports them).
    pub fn parse(list: &[String]) -> TrustedProxies {
        TrustedProxies(
            list.iter()
                .filter_map(|s| {
                    s.parse::<IpNet>()
                        .ok()
                        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
                })
                .collect(),
        )
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    /// The public base URL (`scheme://host`) of a request: from `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` when the peer is trusted, else from `Host` over plain HTTP.
    pub fn public_base(&self, peer: IpAddr, headers: &HeaderMap) -> String {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or("").trim())
        };
        let host = get("host").unwrap_or("localhost");
        if self.trusts(peer.to_canonical()) {
            let proto = get("x-forwarded-proto")
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            let host = get("x-forwarded-host")
                .filter(|h| !h.is_empty())
                .unwrap_or(host);
            return format!("{proto}://{host}");
        }
        format!("http://{host}")
    }
}

/// The address one client is counted by: an IPv4 address as it is (IPv4 mapped into IPv6
/// included), an IPv6 address by its /64, one customer's allocation, so a client rotating
/// addresses inside its own prefix stays one client (rate-limit keys, connection caps).
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port or IPv6 brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    hop.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_ignores_the_header() {
        let p = TrustedProxies::parse(&["10.0.0.0/8".into()]);
        let ip = p.client_ip("203.0.113.9".parse().unwrap(), &headers(&["1.2.3.4"]));
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_rightmost_untrusted_wins() {
        let p = TrustedProxies::parse(&["10.0.0.0/8".into()]);
        // the client forged "6.6.6.6"; Render's proxy appended the real client 198.51.100.7
        let ip = p.client_ip(
            "10.1.1.1".parse().unwrap(),
            &headers(&["6.6.6.6, 198.51.100.7", "10.2.2.2"]),
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        // garbage stops the walk at the last good hop
        let ip = p.client_ip("10.1.1.1".parse().unwrap(), &headers(&["junk, 10.3.3.3"]));
        assert_eq!(ip, "10.3.3.3".parse::<IpAddr>().unwrap());
        // v4-mapped peers and ports
        let ip = p.client_ip(
            "::ffff:10.1.1.1".parse().unwrap(),
            &headers(&["198.51.100.7:5555"]),
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn public_base() {
        let p = TrustedProxies::parse(&["127.0.0.1".into()]);
        let mut h = HeaderMap::new();
        h.insert("host", "internal:3001".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "api.example.com".parse().unwrap());
        assert_eq!(
            p.public_base("127.0.0.1".parse().unwrap(), &h),
            "https://api.example.com"
        );
        assert_eq!(
            p.public_base("192.0.2.1".parse().unwrap(), &h),
            "http://internal:3001"
        );
    }
}
