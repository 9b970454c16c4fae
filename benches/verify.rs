//! Cost of checking one signed request per verifier, on a 4 KiB body (`cargo bench --bench verify`).

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use engine::config::verify::{Algorithm, Encoding, SecretEncoding};
use engine::verify::hmac::{HmacScheme, Template};
use engine::verify::{Inbound, Scheme};
use salvo::http::{HeaderMap, HeaderName, HeaderValue};

/// A scheme under test: name, scheme, body it signs, key bytes.
type Case<'a> = (&'a str, Box<dyn Scheme>, &'a [u8], Vec<u8>);

fn bench(c: &mut Criterion) {
    let body: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    let form: Vec<u8> = {
        // a Twilio-shaped form body of 4 KiB
        let mut s =
            String::from("AccountSid=AC0123&CallSid=CA0123&From=%2B14155550100&To=%2B14155550101");
        while s.len() < 4096 {
            s.push_str("&Param=value");
        }
        s.truncate(4096);
        s.into_bytes()
    };
    let key = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let now = 1_700_000_000;
    let url = "https://api.example.com/api/twilio/sms";

    let schemes: Vec<Case> = vec![
        (
            "twilio",
            Box::new(engine::verify::twilio::Twilio),
            &form,
            key.to_vec(),
        ),
        (
            "stripe",
            Box::new(engine::verify::stripe::Stripe { tolerance: 300 }),
            &body,
            key.to_vec(),
        ),
        (
            "github",
            Box::new(engine::verify::github::Github),
            &body,
            key.to_vec(),
        ),
        (
            "standard_webhooks",
            Box::new(engine::verify::standard_webhooks::StandardWebhooks { tolerance: 300 }),
            &body,
            engine::verify::standard_webhooks::StandardWebhooks { tolerance: 300 }
                .key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap(),
        ),
        (
            "slack",
            Box::new(engine::verify::slack::Slack { tolerance: 300 }),
            &body,
            key.to_vec(),
        ),
        (
            "shopify",
            Box::new(engine::verify::shopify::Shopify),
            &body,
            key.to_vec(),
        ),
        (
            "vapi_hmac",
            Box::new(HmacScheme {
                algorithm: Algorithm::Sha256,
                header: "x-signature".into(),
                prefix: String::new(),
                encoding: Encoding::Hex,
                secret_encoding: SecretEncoding::Utf8,
                payload: Template::parse("{timestamp}.{body}").unwrap(),
                timestamp_header: Some("x-timestamp".into()),
                id_header: None,
                tolerance: 300,
            }),
            &body,
            key.to_vec(),
        ),
        (
            "vapi_bearer",
            Box::new(engine::verify::token::Token {
                header: "authorization".into(),
                bearer_prefix: true,
            }),
            &body,
            key.to_vec(),
        ),
    ];

    let mut group = c.benchmark_group("verify_4KiB");
    group.throughput(Throughput::Bytes(4096));
    for (name, scheme, payload, key) in &schemes {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let unsigned = Inbound {
            method: "POST",
            url,
            headers: &headers,
            body: payload,
            now,
        };
        let signed = scheme.sign(&unsigned, key);
        for (k, v) in signed {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        let req = Inbound {
            method: "POST",
            url,
            headers: &headers,
            body: payload,
            now,
        };
        assert_eq!(scheme.check(&req, key), Ok(()), "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| scheme.check(black_box(&req), black_box(key)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
