//! The stored-entry decoder: whatever bytes Redis hands back for a queue read (an XREADGROUP or
//! XRANGE reply, a dead-letter listing) become deliveries, dead letters or nothing, never a
//! panic. Each entry's `e` (the event without its body, JSON) and `b` (the raw body) are read in
//! both stored forms.
//!
//! Input: a RESP reply, as it comes off the connection (the redis crate's own parser reads it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = redis::parse_redis_value(data) {
        let (deliveries, dead) = engine::queue::redis::read_back(reply);
        for d in deliveries {
            // what the worker does next with a delivery: the event view its transform reads
            let _ = d.event.parsed_body();
        }
        for d in dead {
            if let Some(e) = d.event {
                let _ = e.parsed_body();
            }
        }
    }
    // an entry's two fields, split at the first newline
    let (e, b) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], Some(data[i + 1..].to_vec())),
        None => (data, None),
    };
    if let Some(event) = engine::transform::EventInput::from_stored(e, b) {
        let _ = event.parsed_body();
    }
});
