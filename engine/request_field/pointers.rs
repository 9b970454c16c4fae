//! JSON pointers (RFC 6901) read by streaming through a body: compiled once into a tree of their
//! segments ([`JsonPointers`]), then one pass per body that builds only the values at the
//! pointers. The request path reads a route's key fields with it, the worker a `map` step's
//! fields and its `when` field.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The value at the JSON pointer `ptr` (RFC 6901, as `serde_json::Value::pointer` reads it) in
/// the JSON document `body`; `None` when the body is not JSON or nothing is there.
pub fn json_pointer(body: &[u8], ptr: &str) -> Option<serde_json::Value> {
    json_pointers(body, &[ptr])?.pop().flatten()
}

/// The values at several JSON pointers, in one pass through `body`: only the values found are
/// built, everything else is skipped without allocating. `None` when the body is not JSON (with
/// nothing but whitespace after it, as for a whole parse).
pub fn json_pointers(body: &[u8], ptrs: &[&str]) -> Option<Vec<Option<serde_json::Value>>> {
    JsonPointers::new(ptrs).read(body)
}

/// Whether `p` is a JSON pointer (RFC 6901): `""` is the whole document; anything else starts
/// with `/`.
pub fn is_pointer(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

/// JSON pointers compiled once into one tree of their segments, to be read from many bodies
/// ([`json_pointers`] compiles them on every call): a route's key fields, a transform step's
/// `when` field and `map`.
///
/// ```text
/// /message/type, /message/call/id, /message/call/orgId
///   -> root ─ message ─┬─ type            (slot 0)
///                      └─ call ─┬─ id     (slot 1)
///                               └─ orgId  (slot 2)
/// ```
///
/// A pass over a body follows the tree: an object key is looked up among the children of the
/// node the walk is at (each distinct segment once, however many pointers share it), a value
/// no pointer leads into is skipped without being built, and a value a pointer ends at is built
/// once and answers every pointer that ends at it or goes on into it.
#[derive(Debug, Clone)]
pub struct JsonPointers {
    texts: Vec<String>,
    /// Each pointer's unescaped segments; `None` for text that is no pointer (reads nothing).
    segments: Vec<Option<Vec<String>>>,
    root: Node,
}

/// One place in the documents the pointers lead to.
#[derive(Debug, Clone, Default)]
struct Node {
    /// How many segments lead here (0: the root).
    depth: usize,
    /// Slots of the pointers ending at this value, in slot order.
    ends: Vec<usize>,
    /// Slots of the pointers going on below this value (answered from it when it is built).
    deeper: Vec<usize>,
    /// The next segments: an object key, and the array index the same text names (if any).
    children: Vec<(String, Option<usize>, Node)>,
}

impl Node {
    fn insert(&mut self, slot: usize, rest: &[String]) {
        let Some((first, rest)) = rest.split_first() else {
            self.ends.push(slot);
            return;
        };
        self.deeper.push(slot);
        let at = match self.children.iter().position(|(s, _, _)| s == first) {
            Some(i) => i,
            None => {
                let child = Node {
                    depth: self.depth + 1,
                    ..Node::default()
                };
                self.children
                    .push((first.clone(), array_index(first), child));
                self.children.len() - 1
            }
        };
        self.children[at].2.insert(slot, rest);
    }

    /// Every slot at or below this value.
    fn slots(&self) -> impl Iterator<Item = &usize> {
        self.ends.iter().chain(&self.deeper)
    }
}

impl JsonPointers {
    pub fn new(ptrs: &[&str]) -> JsonPointers {
        let segments: Vec<Option<Vec<String>>> = ptrs
            .iter()
            .map(|p| {
                is_pointer(p).then(|| {
                    p.split('/')
                        .skip(1)
                        .map(|s| s.replace("~1", "/").replace("~0", "~"))
                        .collect()
                })
            })
            .collect();
        let mut root = Node::default();
        for (slot, s) in segments.iter().enumerate() {
            if let Some(s) = s {
                root.insert(slot, s);
            }
        }
        JsonPointers {
            texts: ptrs.iter().map(|p| p.to_string()).collect(),
            segments,
            root,
        }
    }

    /// The pointers' texts, in slot order.
    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// The value at each pointer in an already parsed document.
    pub fn read_value(&self, doc: &serde_json::Value) -> Vec<Option<serde_json::Value>> {
        self.texts.iter().map(|p| doc.pointer(p).cloned()).collect()
    }

    /// The value at each pointer, in one pass through `body`; `None` when it is not JSON.
    ///
    /// The body is checked to be UTF-8 once, in one pass, and then read as text: a reader of
    /// bytes checks each string it keeps (every object key included) on its own, about a tenth
    /// of the walk. A body that is not UTF-8 is read as bytes, so it fails or answers exactly as
    /// before (a bad byte in a string nothing reads is skipped, as `serde_json` skips it).
    pub fn read(&self, body: &[u8]) -> Option<Vec<Option<serde_json::Value>>> {
        match std::str::from_utf8(body) {
            Ok(text) => self.read_from(serde_json::Deserializer::from_str(text)),
            Err(_) => self.read_from(serde_json::Deserializer::from_slice(body)),
        }
    }

    fn read_from<'de, R: serde_json::de::Read<'de>>(
        &self,
        mut de: serde_json::Deserializer<R>,
    ) -> Option<Vec<Option<serde_json::Value>>> {
        let mut out = vec![None; self.segments.len()];
        Walk {
            node: &self.root,
            segments: &self.segments,
            out: &mut out,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        Some(out)
    }
}

/// Walks one value along the pointers' tree, writing what it finds to `out`.
struct Walk<'o, 'p> {
    node: &'p Node,
    segments: &'p [Option<Vec<String>>],
    out: &'o mut [Option<serde_json::Value>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let Walk {
            node,
            segments,
            out,
        } = self;
        if node.ends.is_empty() {
            if node.children.is_empty() {
                return <IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| ());
            }
            return d.deserialize_any(Walk {
                node,
                segments,
                out,
            });
        }
        // a pointer ends here: build this value and answer every pointer into it from it
        let v: serde_json::Value = serde::Deserialize::deserialize(d)?;
        for &slot in &node.deeper {
            let rest = segments[slot].as_deref().unwrap_or_default();
            out[slot] = follow(&v, &rest[node.depth..]).cloned();
        }
        // the value itself is moved to the last pointer ending here (a 2 KiB transcript is not
        // built twice), copied to the others
        let (last, others) = node.ends.split_last().expect("not empty");
        for &slot in others {
            out[slot] = Some(v.clone());
        }
        out[*last] = Some(v);
        Ok(())
    }
}

/// `segments` from `v`, as `serde_json::Value::pointer` follows them.
fn follow<'v>(v: &'v serde_json::Value, segments: &[String]) -> Option<&'v serde_json::Value> {
    segments.iter().try_fold(v, |v, s| match v {
        serde_json::Value::Object(m) => m.get(s),
        serde_json::Value::Array(a) => a.get(array_index(s)?),
        _ => None,
    })
}

/// An RFC 6901 array index: digits, no leading zero (serde_json's rule).
fn array_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() > 1) {
        return None;
    }
    s.parse().ok()
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar where the pointers go on: nothing there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk {
            node,
            segments,
            out,
        } = self;
        while let Some(next) = map.next_key_seed(KeyMatch(node))? {
            let Some(child) = next else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            // a repeated key: the last one wins, as in a parsed `Value`
            for &slot in child.slots() {
                out[slot] = None;
            }
            map.next_value_seed(Walk {
                node: child,
                segments,
                out: &mut *out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk {
            node,
            segments,
            out,
        } = self;
        let mut i = 0;
        loop {
            let child = node
                .children
                .iter()
                .find(|(_, index, _)| *index == Some(i))
                .map(|(_, _, n)| n);
            let more = match child {
                None => seq.next_element::<IgnoredAny>()?.is_some(),
                Some(child) => seq
                    .next_element_seed(Walk {
                        node: child,
                        segments,
                        out: &mut *out,
                    })?
                    .is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// The child of a node that an object key leads to (`None`: no pointer goes there), compared
/// without copying the key.
struct KeyMatch<'p>(&'p Node);

impl<'de, 'p> DeserializeSeed<'de> for KeyMatch<'p> {
    type Value = Option<&'p Node>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for KeyMatch<'p> {
    type Value = Option<&'p Node>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .children
            .iter()
            .find(|(segment, _, _)| segment == key)
            .map(|(_, _, n)| n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streaming reader agrees with `serde_json::Value::pointer` on every pointer into real
    /// provider payloads (and on some that lead nowhere).
    #[test]
    fn json_pointer_agrees_with_a_whole_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/payloads");
        let mut checked = 0;
        for provider in std::fs::read_dir(dir).unwrap() {
            let provider = provider.unwrap().path();
            if !provider.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(provider).unwrap() {
                let path = file.unwrap().path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let body = std::fs::read(&path).unwrap();
                let whole: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut pointers = vec![String::new(), "/nope".into(), "/0".into()];
                collect_pointers(&whole, String::new(), &mut pointers);
                // all of them at once, in one pass
                let all: Vec<&str> = pointers.iter().map(String::as_str).collect();
                let at_once = json_pointers(&body, &all).unwrap();
                for (p, v) in all.iter().zip(&at_once) {
                    assert_eq!(v.as_ref(), whole.pointer(p), "{} at {p:?}", path.display());
                }
                // subsets without the whole document (so the walk goes down the tree rather
                // than answering everything from the root's value), with pointers that end
                // inside others, lead past scalars, and repeat
                let mut rng = fastrand::Rng::with_seed(checked as u64);
                for _ in 0..40 {
                    let mut subset: Vec<String> = Vec::new();
                    for p in &pointers[1..] {
                        if rng.u8(..4) == 0 {
                            subset.push(match rng.u8(..6) {
                                0 => format!("{p}/missing"),
                                1 => format!("{p}/0"),
                                _ => p.clone(),
                            });
                        }
                    }
                    let subset: Vec<&str> = subset
                        .iter()
                        .chain(subset.first())
                        .map(String::as_str)
                        .collect();
                    let compiled = JsonPointers::new(&subset);
                    let at_once = compiled.read(&body).unwrap();
                    for (p, v) in subset.iter().zip(&at_once) {
                        assert_eq!(v.as_ref(), whole.pointer(p), "{} at {p:?}", path.display());
                    }
                }
                for p in &pointers {
                    for p in [p.clone(), format!("{p}/missing"), format!("{p}/0")] {
                        assert_eq!(
                            json_pointer(&body, &p).as_ref(),
                            whole.pointer(&p),
                            "{} at {p:?}",
                            path.display()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 300, "only {checked} pointers checked");
    }

    fn collect_pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        let children: Vec<(String, &serde_json::Value)> = match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
                .collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => return,
        };
        for (k, child) in children {
            let p = format!("{at}/{k}");
            out.push(p.clone());
            collect_pointers(child, p, out);
        }
    }

    #[test]
    fn json_pointer_edge_cases() {
        let body = br#"{"a/b":{"m~n":[10,{"x":"y"}]},"d":1,"d":2,"s":"t\"u","e":""} "#;
        assert_eq!(
            json_pointer(body, "/a~1b/m~0n/0"),
            Some(serde_json::json!(10))
        );
        assert_eq!(
            json_pointer(body, "/a~1b/m~0n/1/x"),
            Some(serde_json::json!("y"))
        );
        assert_eq!(json_pointer(body, "/a~1b/m~0n/01"), None, "leading zero");
        assert_eq!(json_pointer(body, "/a~1b/m~0n/+1"), None);
        assert_eq!(json_pointer(body, "/a~1b/m~0n/2"), None);
        assert_eq!(
            json_pointer(body, "/d"),
            Some(serde_json::json!(2)),
            "last key wins"
        );
        assert_eq!(json_pointer(body, "/s"), Some(serde_json::json!("t\"u")));
        assert_eq!(json_pointer(body, "/d/x"), None, "into a number");
        assert_eq!(json_pointer(body, "/e"), Some(serde_json::json!("")));
        assert_eq!(json_pointer(body, "d"), None, "a pointer starts with /");
        // not JSON, or JSON with something after it: nothing, as a whole parse would give
        assert_eq!(json_pointer(br#"{"d":1} x"#, "/d"), None);
        assert_eq!(json_pointer(br#"{"d":1"#, "/d"), None);
        assert_eq!(json_pointer(br#"{"d":1,"z":[}"#, "/d"), None);
        assert_eq!(json_pointer(b"", "/d"), None);
        // text beyond ASCII reads the same; a body that is not UTF-8 is read as bytes: a bad
        // byte in a string no pointer reads is skipped, one in a string read is no value
        let text = r#"{"k":"café ☕ 😀","é":{"ü":1}}"#.as_bytes();
        assert_eq!(
            json_pointer(text, "/k"),
            Some(serde_json::json!("café ☕ 😀"))
        );
        assert_eq!(json_pointer(text, "/é/ü"), Some(serde_json::json!(1)));
        let bad = b"{\"skipped\":\"\xff\xfe\",\"n\":1,\"read\":\"\xff\"}";
        assert_eq!(json_pointer(bad, "/n"), Some(serde_json::json!(1)));
        assert_eq!(json_pointer(bad, "/read"), None);
    }

    #[test]
    fn json_pointers_in_one_pass() {
        let body = br#"{"a":{"x":1,"l":[5,6]},"b":"t","a":{"y":2,"l":[7]}}"#;
        let got = json_pointers(
            body,
            &["/a/x", "/a/y", "/a", "/b", "/a/l/0", "/a/l/1", "x", "/a/y"],
        );
        let whole: serde_json::Value = serde_json::from_slice(body).unwrap();
        let want: Vec<Option<serde_json::Value>> = ["/a/x", "/a/y", "/a", "/b", "/a/l/0", "/a/l/1"]
            .iter()
            .map(|p| whole.pointer(p).cloned())
            .chain([None, whole.pointer("/a/y").cloned()])
            .collect();
        assert_eq!(got, Some(want));
        // several pointers ending at one value, and one going on into it: the value is moved to
        // one of them, copied to the rest
        let ptrs = ["/a", "/a/b", "/a", "/s", "/s"];
        let body = br#"{"a":{"b":[1,{"c":"d"}]},"s":"long text"}"#;
        let whole: serde_json::Value = serde_json::from_slice(body).unwrap();
        let compiled = JsonPointers::new(&ptrs);
        for _ in 0..2 {
            let got = compiled.read(body).unwrap();
            let want: Vec<_> = ptrs.iter().map(|p| whole.pointer(p).cloned()).collect();
            assert_eq!(got, want);
        }
        assert_eq!(json_pointers(b"{", &["/a"]), None);
        assert_eq!(json_pointers(b"[1]", &[]), Some(vec![]));
    }
}
