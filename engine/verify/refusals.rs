//! Every refusal reason a scheme gives, reached through the real schemes with the request that
//! earns it, and the docs' table of reasons checked against [`Reject::ALL`]. (Test only: the
//! schemes' own files test their published vectors; this file tests that each reason names
//! what is actually wrong.)

use salvo::http::HeaderMap;

use super::github::Github;
use super::shopify::Shopify;
use super::slack::Slack;
use super::standard_webhooks::StandardWebhooks;
use super::stripe::Stripe;
use super::{Inbound, Reject, Scheme};

const NOW: i64 = 1_700_000_000;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            salvo::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn check(scheme: &dyn Scheme, pairs: &[(&str, &str)], body: &[u8]) -> Result<(), Reject> {
    let h = headers(pairs);
    scheme.check(
        &Inbound {
            method: "POST",
            url: "https://example.com/hook",
            headers: &h,
            body,
            now: NOW,
        },
        b"secret",
    )
}

/// Shopify's required headers besides the HMAC, well formed.
const SHOPIFY: [(&str, &str); 4] = [
    ("x-shopify-topic", "orders/create"),
    ("x-shopify-shop-domain", "shop.myshopify.com"),
    ("x-shopify-api-version", "2025-01"),
    (
        "x-shopify-webhook-id",
        "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    ),
];
const WELL_FORMED_B64: &str = "MyBtQm3e1LjxQsV69Mj6FFjEqhUJk+Eplvy449pPn78=";

#[test]
fn shopify_with_a_well_formed_hmac_and_an_empty_body_is_an_empty_body() {
    let mut pairs = SHOPIFY.to_vec();
    pairs.push(("x-shopify-hmac-sha256", WELL_FORMED_B64));
    assert_eq!(check(&Shopify, &pairs, b""), Err(Reject::EmptyBody));
    assert_eq!(check(&Shopify, &pairs, b"{}"), Err(Reject::BadSignature));
    // a required header missing is named as such, not as a malformed one
    let without_topic: Vec<_> = pairs
        .iter()
        .copied()
        .filter(|(k, _)| *k != "x-shopify-topic")
        .collect();
    assert_eq!(
        check(&Shopify, &without_topic, b"{}"),
        Err(Reject::MissingHeader)
    );
    assert_eq!(
        check(&Shopify, &SHOPIFY, b"{}"),
        Err(Reject::MissingCredentials)
    );
}

#[test]
fn github_reasons() {
    let sig = "sha256=0000000000000000000000000000000000000000000000000000000000000000";
    assert_eq!(check(&Github, &[], b"{}"), Err(Reject::MissingCredentials));
    assert_eq!(
        check(&Github, &[("x-hub-signature-256", "0000")], b"{}"),
        Err(Reject::MalformedHeader)
    );
    assert_eq!(
        check(&Github, &[("x-hub-signature-256", sig)], b""),
        Err(Reject::EmptyBody)
    );
    assert_eq!(
        check(&Github, &[("x-hub-signature-256", sig)], b"{}"),
        Err(Reject::BadSignature)
    );
}

#[test]
fn slack_and_standard_webhooks_name_the_header_that_is_missing() {
    let slack = Slack { tolerance: 300 };
    let v0 = "v0=0000000000000000000000000000000000000000000000000000000000000000";
    assert_eq!(
        check(&slack, &[("x-slack-signature", v0)], b"x"),
        Err(Reject::MissingHeader)
    );
    assert_eq!(
        check(
            &slack,
            &[
                ("x-slack-signature", v0),
                ("x-slack-request-timestamp", "soon")
            ],
            b"x"
        ),
        Err(Reject::MalformedHeader)
    );
    let stale = (NOW - 3600).to_string();
    assert_eq!(
        check(
            &slack,
            &[
                ("x-slack-signature", v0),
                ("x-slack-request-timestamp", &stale)
            ],
            b"x"
        ),
        Err(Reject::StaleTimestamp)
    );
    let sw = StandardWebhooks { tolerance: 300 };
    let now = NOW.to_string();
    let sig = ("webhook-signature", "v1,AAAA");
    assert_eq!(
        check(&sw, &[sig, ("webhook-timestamp", &now)], b"{}"),
        Err(Reject::MissingHeader)
    );
    assert_eq!(
        check(
            &sw,
            &[("webhook-id", "msg_1"), ("webhook-timestamp", &now)],
            b"{}"
        ),
        Err(Reject::MissingCredentials)
    );
    assert_eq!(
        check(
            &sw,
            &[sig, ("webhook-id", "msg_1"), ("webhook-timestamp", &now)],
            b"{}"
        ),
        Err(Reject::BadSignature)
    );
    let stripe = Stripe { tolerance: 300 };
    assert_eq!(
        check(&stripe, &[("stripe-signature", "garbage")], b"{}"),
        Err(Reject::MalformedHeader)
    );
}

/// docs/verify.md's table has one row per reason, in the order of [`Reject::ALL`], and no other.
#[test]
fn the_docs_table_lists_every_reason() {
    let doc = include_str!("../../docs/verify.md");
    let start = doc
        .find("| reason |")
        .expect("docs/verify.md has the reasons table");
    let rows: Vec<&str> = doc[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    let codes: Vec<&str> = Reject::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(rows, codes);
}
