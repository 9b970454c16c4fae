//! Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>`. No timestamp: replays are
//! stopped by the queue's dedupe on `X-Shopify-Webhook-Id`.
//!
//! As Shopify's API library (`shopify.webhooks.validate`, @shopify/shopify-api): an "events"
//! webhook signs with `shopify-hmac-sha256` and its `shopify-*` headers, a classic one with the
//! `X-Shopify-*` ones; the body must not be empty; the HMAC header is compared with the expected
//! base64 text (constant time); and every header the library requires must be present and not
//! empty, or the delivery is refused.

use super::mac;
use super::{Inbound, Reject, Scheme, header};
use crate::config::verify::{Algorithm, Encoding};

pub struct Shopify;

/// The HMAC header, then the other headers the library requires, of each kind of webhook.
const WEBHOOKS: [&str; 5] = [
    "x-shopify-hmac-sha256",
    "x-shopify-topic",
    "x-shopify-shop-domain",
    "x-shopify-api-version",
    "x-shopify-webhook-id",
];
const EVENTS: [&str; 6] = [
    "shopify-hmac-sha256",
    "shopify-topic",
    "shopify-shop-domain",
    "shopify-api-version",
    "shopify-webhook-id",
    "shopify-event-id",
];

/// The headers of the kind of webhook `req` is: events when it carries their HMAC header.
fn kind(req: &Inbound<'_>) -> &'static [&'static str] {
    match header(req.headers, EVENTS[0]) {
        Some(v) if !v.is_empty() => &EVENTS,
        _ => &WEBHOOKS,
    }
}

fn present<'a>(req: &'a Inbound<'_>, name: &str) -> Option<&'a str> {
    header(req.headers, name).filter(|v| !v.is_empty())
}

impl Scheme for Shopify {
    fn check(&self, req: &Inbound<'_>, key: &[u8]) -> Result<(), Reject> {
        let names = kind(req);
        let value = present(req, names[0]).ok_or(Reject::MissingCredentials)?;
        if names[1..].iter().any(|n| present(req, n).is_none()) {
            return Err(Reject::MissingHeader);
        }
        if req.body.is_empty() {
            return Err(Reject::EmptyBody);
        }
        let expected = mac::encode(
            Encoding::Base64,
            &mac::compute(Algorithm::Sha256, key, &[req.body]),
        );
        if mac::ct_eq(value.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Reject::BadSignature)
        }
    }

    /// The HMAC, and neutral values for the required headers the request lacks, of the kind of
    /// webhook the request is (an events webhook when it already carries `shopify-hmac-sha256`).
    fn credential_headers(&self) -> Vec<String> {
        vec![WEBHOOKS[0].into(), EVENTS[0].into()]
    }
    fn sign(&self, req: &Inbound<'_>, key: &[u8]) -> Vec<(String, String)> {
        let names = kind(req);
        let sig = mac::compute(Algorithm::Sha256, key, &[req.body]);
        let mut out = vec![(names[0].to_string(), mac::encode(Encoding::Base64, &sig))];
        let defaults = [
            "test/webhook",
            "test.myshopify.com",
            "2025-01",
            "00000000-test",
            "00000000-test-event",
        ];
        for (name, value) in names[1..].iter().zip(defaults) {
            if present(req, name).is_none() {
                out.push((name.to_string(), value.to_string()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salvo::http::HeaderMap;

    #[test]
    fn vector() {
        // Shopify publishes no vector; computed independently:
        // printf '{"id":820982911946154508,"topic":"orders/create"}' | openssl dgst -sha256 -hmac shpss_hush -binary | base64
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-shopify-topic", "orders/create"),
            ("x-shopify-shop-domain", "shop.myshopify.com"),
            ("x-shopify-api-version", "2025-01"),
            (
                "x-shopify-webhook-id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            ),
        ] {
            h.insert(name, value.parse().unwrap());
        }
        h.insert(
            "x-shopify-hmac-sha256",
            "MyBtQm3e1LjxQsV69Mj6FFjEqhUJk+Eplvy449pPn78="
                .parse()
                .unwrap(),
        );
        let body: &[u8] = br#"{"id":820982911946154508,"topic":"orders/create"}"#;
        let req = Inbound {
            method: "POST",
            url: "",
            headers: &h,
            body,
            now: 0,
        };
        assert_eq!(Shopify.check(&req, b"shpss_hush"), Ok(()));
        assert_eq!(
            Shopify.check(&req, b"shpss_other"),
            Err(Reject::BadSignature)
        );
    }

    /// Found by the `verify` fuzz target: a request carrying an events webhook's headers was
    /// signed as a classic one, which its own check then refused (`engine replay` of such a
    /// fixture with `sign: true` failed).
    #[test]
    fn an_events_webhook_is_signed_as_one() {
        let mut h = HeaderMap::new();
        h.insert("shopify-hmac-sha256", "stale".parse().unwrap());
        h.insert("shopify-topic", "Product".parse().unwrap());
        let body: &[u8] = br#"{"foo": "bar"}"#;
        let unsigned = Inbound {
            method: "POST",
            url: "",
            headers: &h,
            body,
            now: 0,
        };
        let mut signed = h.clone();
        for (k, v) in Shopify.sign(&unsigned, b"key") {
            assert!(k.starts_with("shopify-"), "{k}: a classic header");
            signed.insert(
                salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = Inbound {
            headers: &signed,
            ..unsigned
        };
        assert_eq!(Shopify.check(&req, b"key"), Ok(()));
        assert_eq!(
            signed["shopify-topic"], "Product",
            "the request's own header kept"
        );
    }
}
