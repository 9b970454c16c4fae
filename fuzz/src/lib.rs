//! What the fuzz targets share: the request text format their inputs and seeds are written in,
//! and the repository's files they load once (conformance suites, shipped pipelines, fixtures).
//!
//! ```text
//! <first line>            the target's own: `<provider> <url> <now>` (verify),
//!                         `<METHOD> <path> [sign]` (request), JSON pointers (request_fields)
//! name: value             headers, one per line, until an empty line
//!
//! <body>                  every byte after the empty line
//! ```
//!
//! The format is lenient on purpose: any bytes split into some first line, some headers and
//! some body, so every input the fuzzer makes reaches the code under test.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};

/// An input split into its first line, headers and body.
pub struct Split<'a> {
    pub first: &'a str,
    pub headers: HeaderMap,
    pub body: &'a [u8],
}

/// Split `data` as the module doc describes; header lines that are not valid HTTP are skipped
/// (the HTTP layer refuses them before the engine sees them).
pub fn split(data: &[u8]) -> Split<'_> {
    let (first, mut rest) = line(data);
    let mut headers = HeaderMap::new();
    loop {
        if rest.is_empty() {
            break;
        }
        let (l, after) = line(rest);
        rest = after;
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':')
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    Split {
        first,
        headers,
        body: rest,
    }
}

/// One line (without its `\n`, lossy: invalid UTF-8 reads as empty) and what follows it.
fn line(data: &[u8]) -> (&str, &[u8]) {
    let end = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let text = std::str::from_utf8(&data[..end]).unwrap_or("");
    (text, data.get(end + 1..).unwrap_or(&[]))
}

/// The repository's root (the fuzz crate lives in `fuzz/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ has a parent")
        .to_path_buf()
}

/// A YAML file of the repository as JSON, for the targets' one-time setup.
pub fn yaml_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    engine::yaml::parse_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .value
}

/// The files of `dir` with extension `ext`, sorted.
pub fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    listing(dir, |p| p.extension().is_some_and(|x| x == ext))
}

/// The directories inside `dir`, sorted.
pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    listing(dir, |p| p.is_dir())
}

fn listing(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| keep(p));
    out.sort();
    out
}

/// A tokio runtime for one thread, made once per target.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_first_line_headers_and_body() {
        let s = split(b"stripe https://x/y 1700000000\nstripe-signature: t=1,v1=ab\nbad header\n\n{\"a\":1}\n");
        assert_eq!(s.first, "stripe https://x/y 1700000000");
        assert_eq!(s.headers.len(), 1);
        assert_eq!(s.body, b"{\"a\":1}\n");
    }
}
