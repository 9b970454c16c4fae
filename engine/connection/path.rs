//! A connection call's URL: the connection's base URL and the script's path, refused unless the
//! result stays on the base's origin and under its path; `encode_segment` for scripts that put a
//! caller's value into one path segment.

use super::CallError;

/// `base` + `path` (+ `query`), refused unless it stays on `base`'s origin and under its path.
/// A dot segment (`.`, `..`, also percent-encoded) or an encoded separator (`%2f`, `%5c`) is
/// refused outright rather than resolved: a path built from a caller's value must not walk up
/// the API (`/calendars/<id>/events` with an id of `..`), here or at a server that decodes
/// `%2f` as `/`. Scripts encode a value for one segment with `encode_segment`.
pub(super) fn url_for(
    base: &url::Url,
    path: &str,
    query: &[(String, String)],
) -> Result<url::Url, CallError> {
    if !path.starts_with('/') || path.contains(['?', '#', '\\']) || path.starts_with("//") {
        return Err(CallError::PathForm(path.to_string()));
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(CallError::EncodedSeparator(path.to_string()));
    }
    let dot_segment = lower
        .split('/')
        .any(|seg| matches!(seg.replace("%2e", ".").as_str(), "." | ".."));
    if dot_segment {
        return Err(CallError::DotSegment(path.to_string()));
    }
    let mut url = url::Url::parse(&format!("{base}{path}"))
        .map_err(|_| CallError::NotAUrl(path.to_string()))?;
    let under = url.path() == base.path()
        || url
            .path()
            .starts_with(&format!("{}/", base.path().trim_end_matches('/')));
    if url.origin() != base.origin() || !under {
        return Err(CallError::LeavesBase(path.to_string()));
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// `value` percent-encoded for one path segment: everything but RFC 3986's unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`), so a `/`, `?`, `#` or `%` in it stays inside the segment;
/// `.` and `..` on their own become `%2E` and `%2E%2E`, which a request's path check refuses.
pub fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric()
            || b"-_~".contains(&b)
            || (b == b'.' && !matches!(value, "." | ".."))
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_segments_stay_one_segment() {
        let base = url::Url::parse("https://www.googleapis.com/calendar/v3").unwrap();
        assert_eq!(encode_segment("primary"), "primary");
        assert_eq!(encode_segment("a.b_c-d~e"), "a.b_c-d~e");
        assert_eq!(encode_segment("../admin"), "..%2Fadmin");
        assert_eq!(encode_segment("x@y.com"), "x%40y.com");
        assert_eq!(encode_segment("é"), "%C3%A9");
        for hostile in ["..", ".", "../..", "a/b", "a?b#c", "%2e%2e"] {
            let path = format!("/calendars/{}/events", encode_segment(hostile));
            match url_for(&base, &path, &[]) {
                // sent: then it is one segment under the base, holding the value
                Ok(url) => assert_eq!(url.path_segments().unwrap().count(), 5, "{hostile}: {url}"),
                Err(_) => assert!(matches!(hostile, "." | ".." | "../.." | "a/b"), "{hostile}"),
            }
        }
        // an email address as a calendar id, the common case, goes through
        let ok = url_for(
            &base,
            &format!(
                "/calendars/{}/events",
                encode_segment("dr.lee@clinic.example")
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            ok.path(),
            "/calendar/v3/calendars/dr.lee%40clinic.example/events"
        );
    }
}
