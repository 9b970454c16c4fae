//! Every signature scheme's header and signature parsing, on any headers, URL and body.
//!
//! Input: `<provider> <url> <now>`, headers, an empty line, the body (`engine_fuzz::split`).
//! The verifiers are the conformance suites' (`tests/conformance/<provider>.yaml`, their test
//! secrets), so seeds made from those cases start at real signed requests.
//!
//! Checks: no input panics; and the same request signed by the verifier's own `sign` (the one
//! `engine replay` and the tests use) verifies, whatever the URL, clock and body (an empty body
//! is refused by design: nothing was signed; so is a Twilio JSON body whose hash the signed URL
//! does not name).
#![no_main]

use std::sync::LazyLock;

use engine::verify::{Context, Inbound, Reject, Verifier, VerifyError};
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

struct Setup {
    verifiers: Vec<(String, Verifier)>,
    runtime: tokio::runtime::Runtime,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = engine_fuzz::repo().join("tests/conformance");
    let verifiers = engine_fuzz::files(&dir, "yaml")
        .iter()
        .map(|path| {
            let doc = engine_fuzz::yaml_file(path);
            let provider = doc["provider"].as_str().expect("provider").to_string();
            let cfg: engine::config::verify::Verify =
                serde_json::from_value(doc["verify"].clone()).expect("a verify section");
            let v = Verifier::build(&cfg).unwrap_or_else(|e| panic!("{provider}: {e:?}"));
            (provider, v)
        })
        .collect();
    Setup {
        verifiers,
        runtime: engine_fuzz::runtime(),
    }
});

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let input = engine_fuzz::split(data);
    let mut words = input.first.split(' ');
    let provider = words.next().unwrap_or("");
    let url = words.next().unwrap_or("https://example.com/hook");
    // a server clock in seconds before the year 33658: a larger number in a timestamp header
    // is read as milliseconds (`mac::parse_timestamp`), so no real clock is past it
    let now = words
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .map_or(1_700_000_000, |n| n.rem_euclid(1_000_000_000_000));
    let ctx = Context {
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        tenant_id: None,
        tenants: None,
    };
    // the named provider, or every one when the name is none of them
    let named: Vec<&(String, Verifier)> = match setup.verifiers.iter().find(|(p, _)| p == provider)
    {
        Some(one) => vec![one],
        None => setup.verifiers.iter().collect(),
    };
    for (name, verifier) in named {
        let req = Inbound {
            method: "POST",
            url,
            headers: &input.headers,
            body: input.body,
            now,
        };
        let _ = setup.runtime.block_on(verifier.verify(&req, &ctx));
        if input.body.is_empty() {
            continue; // refused whatever its signature: nothing was signed (Reject::EmptyBody)
        }

        let mut signed = input.headers.clone();
        for (k, v) in verifier.sign(&req) {
            let k = HeaderName::from_bytes(k.as_bytes()).expect("sign names a valid header");
            let v = HeaderValue::from_str(&v).expect("sign makes a valid header value");
            signed.insert(k, v);
        }
        let req = Inbound {
            headers: &signed,
            ..req
        };
        match setup.runtime.block_on(verifier.verify(&req, &ctx)) {
            Ok(()) => {}
            // Twilio's JSON requests: the URL the sender signed names the body's SHA-256
            // (`bodySHA256`); a body that is not the one named is refused whatever the signature
            Err(VerifyError::Rejected(Reject::BodyHashMismatch)) if name == "twilio" => {}
            Err(e) => panic!("{name}: a request signed by its own verifier is refused: {e:?}"),
        }
    }
});
