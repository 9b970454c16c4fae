//! YAML loading that remembers where every value came from.
//!
//! Pipeline, settings, env-schema and fixture files are parsed here into a `serde_json::Value`
//! (what the JSON-schema validator and serde see) together with a map from JSON pointer to the
//! line and column of each value and of each mapping key. Validation errors carry the pointer of
//! the offending value; this map turns it back into `file:line:col`.
//!
//! Why not serde_yaml: it gives positions only for its own parse errors, never for an arbitrary
//! value, and schema errors are reported against values.
//!
//! Hostile input is bounded here, before anything else sees it: file size, nesting depth, and the
//! number of nodes that aliases may expand to (a "billion laughs" document is refused with a
//! message, not expanded).

use std::collections::{BTreeMap, HashMap};

mod positions;

use positions::{Located, Pos32, Positions, ScalarInfo};

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Largest configuration file accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may hold once aliases are expanded.
pub const MAX_NODES: usize = 100_000;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn from_marker(m: &Marker) -> Pos {
        // yaml-rust2 markers: line is 1-based, column is 0-based.
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// A parsed YAML document and the positions of its values and keys (`Default`: an empty one,
/// `null` with no positions).
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub value: Value,
    positions: Positions,
}

/// Why a file could not be read as YAML.
#[derive(Debug, Clone, thiserror::Error)]
pub enum YamlError {
    #[error("{message}")]
    Syntax { pos: Pos, message: String },
    #[error("file is larger than {} KiB; configuration files are small", MAX_FILE_BYTES / 1024)]
    TooLarge,
    #[error("file is not valid UTF-8 text")]
    NotUtf8,
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep { pos: Pos },
    #[error(
        "aliases expand to more than {MAX_NODES} values (an alias bomb?); write the values out"
    )]
    TooManyNodes { pos: Pos },
    #[error("alias `*{0}` refers to no anchor defined before it")]
    UnknownAlias(String, Pos),
    #[error("mapping keys must be plain strings")]
    ComplexKey { pos: Pos },
    #[error("key `{key}` appears twice in this mapping")]
    DuplicateKey { pos: Pos, key: String },
    #[error("file holds more than one YAML document; put one pipeline per file")]
    MultipleDocuments { pos: Pos },
}

impl YamlError {
    /// Where the problem is, for `file:line:col` reporting.
    pub fn pos(&self) -> Pos {
        match self {
            YamlError::Syntax { pos, .. }
            | YamlError::TooDeep { pos }
            | YamlError::TooManyNodes { pos }
            | YamlError::UnknownAlias(_, pos)
            | YamlError::ComplexKey { pos }
            | YamlError::DuplicateKey { pos, .. }
            | YamlError::MultipleDocuments { pos } => *pos,
            YamlError::TooLarge | YamlError::NotUtf8 => Pos::START,
        }
    }
}

/// Parse raw bytes (checks size and UTF-8 first).
pub fn parse_bytes(bytes: &[u8]) -> Result<Document, YamlError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(YamlError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| YamlError::NotUtf8)?;
    parse_str(text)
}

/// Parse one YAML document. An empty document is `null`.
pub fn parse_str(text: &str) -> Result<Document, YamlError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(YamlError::TooLarge);
    }
    if text.contains('\0') {
        return Err(YamlError::NotUtf8);
    }
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let parsed = parser.load(&mut builder, true);
    // A limit hit while building comes earlier in the text than any later parse error.
    if let Some(err) = builder.error {
        return Err(err);
    }
    if let Err(e) = parsed {
        if e.info().contains("recursion limit") {
            // The scanner's own nesting guard fired before our depth check saw the events.
            return Err(YamlError::TooDeep {
                pos: Pos::from_marker(e.marker()),
            });
        }
        return Err(YamlError::Syntax {
            pos: Pos::from_marker(e.marker()),
            message: e.info().to_string(),
        });
    }
    Ok(Document {
        value: builder.root.unwrap_or(Value::Null),
        positions: Positions::pack(builder.found),
    })
}

impl Document {
    /// Position of the value at `pointer`, or of its nearest ancestor that has one.
    pub fn value_pos(&self, pointer: &str) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.positions.get(p).and_then(|s| s.value) {
                return pos.into();
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Pos::START,
            }
        }
    }

    /// Position of the key that names the value at `pointer` (falls back to the value).
    pub fn key_pos(&self, pointer: &str) -> Pos {
        match self.positions.get(pointer).and_then(|s| s.key) {
            Some(pos) => pos.into(),
            None => self.value_pos(pointer),
        }
    }

    /// Position of the `offset`-th character inside the string scalar at `pointer`, when the
    /// scalar sits on one line (otherwise the scalar's own position).
    pub fn char_pos(&self, pointer: &str, offset: usize) -> Pos {
        let pos = self.value_pos(pointer);
        match self.positions.get(pointer) {
            Some(Located {
                value: Some(_),
                scalar: Some(info),
                ..
            }) if info.single_line => Pos {
                line: pos.line,
                col: pos.col + usize::from(info.lead) + offset,
            },
            _ => pos,
        }
    }
}

/// Escape one JSON-pointer reference token (RFC 6901).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Seq {
        items: Vec<Value>,
        pointer: String,
        anchor: usize,
        nodes: usize,
    },
    Map {
        map: Map<String, Value>,
        pointer: String,
        anchor: usize,
        pending_key: Option<String>,
        nodes: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    documents: usize,
    anchors: HashMap<usize, (Value, usize)>,
    total_nodes: usize,
    /// What is known of each pointer so far: its value's and key's positions, its scalar.
    found: BTreeMap<String, Located>,
    error: Option<YamlError>,
}

impl Builder {
    /// Pointer of the value about to be produced in the current container, or `None` when the
    /// next scalar is a mapping key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { items, pointer, .. }) => Some(format!("{pointer}/{}", items.len())),
            Some(Frame::Map {
                pending_key: Some(k),
                pointer,
                ..
            }) => Some(format!("{pointer}/{}", escape_token(k))),
            Some(Frame::Map {
                pending_key: None, ..
            }) => None,
        }
    }

    /// The value at `pointer` starts at `pos`.
    fn placed(&mut self, pointer: String, pos: Pos) {
        self.found.entry(pointer).or_default().value = Some(pos.into());
    }

    fn fail(&mut self, e: YamlError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Attach a finished value to its parent (or make it the root).
    fn push_value(&mut self, value: Value, nodes: usize, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), nodes));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq {
                items, nodes: n, ..
            }) => {
                items.push(value);
                *n += nodes;
            }
            Some(Frame::Map {
                map,
                pending_key,
                nodes: n,
                ..
            }) => {
                if let Some(k) = pending_key.take() {
                    map.insert(k, value);
                    *n += nodes;
                }
            }
        }
    }

    fn count(&mut self, nodes: usize, pos: Pos) -> bool {
        self.total_nodes = self.total_nodes.saturating_add(nodes);
        if self.total_nodes > MAX_NODES {
            self.fail(YamlError::TooManyNodes { pos });
            return false;
        }
        true
    }

    /// A mapping key: refused when the mapping has it already, else where its value goes next.
    fn key(&mut self, text: String, pos: Pos) {
        let dup =
            matches!(self.stack.last(), Some(Frame::Map { map, .. }) if map.contains_key(&text));
        if dup {
            self.fail(YamlError::DuplicateKey { pos, key: text });
            return;
        }
        if let Some(Frame::Map {
            pending_key,
            pointer,
            map,
            ..
        }) = self.stack.last_mut()
        {
            // yaml-rust2 marks a block mapping's start after its first key; the
            // mapping really starts at that key.
            if map.is_empty()
                && let Some(start) = self
                    .found
                    .get_mut(pointer.as_str())
                    .and_then(|l| l.value.as_mut())
                && Pos32::from(pos) < *start
            {
                *start = pos.into();
            }
            let child = format!("{pointer}/{}", escape_token(&text));
            self.found.entry(child).or_default().key = Some(pos.into());
            *pending_key = Some(text);
        }
    }

    /// A scalar value at `pointer`, resolved, with where its text starts for positions inside
    /// a string.
    fn scalar(
        &mut self,
        pointer: String,
        text: &str,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        pos: Pos,
    ) {
        if !self.count(1, pos) {
            return;
        }
        let value = resolve_scalar(text, style, tag);
        if value.is_string() {
            let lead = u8::from(matches!(
                style,
                TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
            ));
            let single_line = matches!(
                style,
                TScalarStyle::Plain | TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
            ) && !text.contains('\n');
            self.found.entry(pointer.clone()).or_default().scalar =
                Some(ScalarInfo { lead, single_line });
        }
        self.placed(pointer, pos);
        self.push_value(value, 1, anchor);
    }

    /// A sequence (`seq`) or mapping starts: a frame of its own, within the depth and node
    /// bounds.
    fn open(&mut self, seq: bool, anchor: usize, pos: Pos) {
        let Some(pointer) = self.next_pointer() else {
            self.fail(YamlError::ComplexKey { pos });
            return;
        };
        if self.stack.len() >= MAX_DEPTH {
            self.fail(YamlError::TooDeep { pos });
            return;
        }
        if !self.count(1, pos) {
            return;
        }
        self.placed(pointer.clone(), pos);
        self.stack.push(if seq {
            Frame::Seq {
                items: Vec::new(),
                pointer,
                anchor,
                nodes: 1,
            }
        } else {
            Frame::Map {
                map: Map::new(),
                pointer,
                anchor,
                pending_key: None,
                nodes: 1,
            }
        });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = Pos::from_marker(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(YamlError::MultipleDocuments { pos });
                }
            }
            Event::Scalar(text, style, anchor, tag) => match self.next_pointer() {
                None => self.key(text, pos),
                Some(pointer) => self.scalar(pointer, &text, style, anchor, tag.as_ref(), pos),
            },
            Event::Alias(id) => match self.next_pointer() {
                None => self.fail(YamlError::ComplexKey { pos }),
                Some(pointer) => match self.anchors.get(&id).cloned() {
                    None => self.fail(YamlError::UnknownAlias(id.to_string(), pos)),
                    Some((value, nodes)) => {
                        if !self.count(nodes, pos) {
                            return;
                        }
                        self.placed(pointer, pos);
                        self.push_value(value, nodes, 0);
                    }
                },
            },
            Event::SequenceStart(anchor, _) => self.open(true, anchor, pos),
            Event::MappingStart(anchor, _) => self.open(false, anchor, pos),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    anchor,
                    nodes,
                    ..
                }) => self.push_value(Value::Array(items), nodes, anchor),
                Some(Frame::Map {
                    map, anchor, nodes, ..
                }) => self.push_value(Value::Object(map), nodes, anchor),
                None => {}
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Resolve a scalar with the YAML 1.2 core schema: plain scalars may be null, booleans or
/// numbers; quoted and block scalars are always strings; explicit `!!str`-style tags win.
fn resolve_scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && tag.handle == "tag:yaml.org,2002:"
    {
        return match tag.suffix.as_str() {
            "str" => Value::String(text.to_string()),
            "null" => Value::Null,
            "bool" => parse_bool(text).map_or_else(|| Value::String(text.to_string()), Value::Bool),
            "int" | "float" => {
                parse_number(text).map_or_else(|| Value::String(text.to_string()), Value::Number)
            }
            _ => Value::String(text.to_string()),
        };
    }
    if style != TScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        _ => {}
    }
    if let Some(b) = parse_bool(text) {
        return Value::Bool(b);
    }
    if let Some(n) = parse_number(text) {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_number(text: &str) -> Option<Number> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if let Some(hex) = digits.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(Number::from);
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok().map(Number::from);
    }
    let body = digits.strip_prefix('-').unwrap_or(digits);
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = digits.parse::<i64>() {
            return Some(Number::from(i));
        }
        if let Ok(u) = digits.parse::<u64>() {
            return Some(Number::from(u));
        }
    }
    // YAML 1.2 core float: digits with a dot and/or an exponent (no bare words like "inf").
    let looks_float = body
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && body.bytes().any(|b| b.is_ascii_digit());
    if looks_float {
        return digits
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(Number::from_f64);
    }
    None
}

// Writing YAML back (fixtures: `engine serve --record`, `engine replay --update`).

/// A JSON object as YAML with the keys in `order` first, in that order, then the rest; the
/// objects under `nested` keys ordered the same way by their own lists.
pub fn ordered(v: &Value, order: &[&str], nested: &[(&str, &[&str])]) -> yaml_rust2::Yaml {
    let Value::Object(map) = v else {
        return to_yaml(v);
    };
    let mut hash = yaml_rust2::yaml::Hash::new();
    let rest = map.keys().filter(|k| !order.contains(&k.as_str()));
    for key in order.iter().copied().chain(rest.map(String::as_str)) {
        if let Some(value) = map.get(key) {
            let y = match nested.iter().find(|(k, _)| *k == key) {
                Some((_, inner)) => ordered(value, inner, &[]),
                None => to_yaml(value),
            };
            hash.insert(yaml_rust2::Yaml::String(key.into()), y);
        }
    }
    yaml_rust2::Yaml::Hash(hash)
}

/// Block YAML for a value, without the `---` document marker.
pub fn emit(y: &yaml_rust2::Yaml) -> String {
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // writing into a String cannot fail
    let _ = emitter.dump(y);
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    format!("{}\n", body.trim_end())
}

/// A JSON value as YAML (integers stay integers).
pub fn to_yaml(v: &Value) -> yaml_rust2::Yaml {
    match v {
        // written `null` rather than the emitter's `~`: the word readers know
        Value::Null => yaml_rust2::Yaml::Real("null".into()),
        Value::Bool(b) => yaml_rust2::Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => yaml_rust2::Yaml::Integer(i),
            None => yaml_rust2::Yaml::Real(n.to_string()),
        },
        Value::String(s) => yaml_rust2::Yaml::String(s.clone()),
        Value::Array(items) => yaml_rust2::Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => yaml_rust2::Yaml::Hash(
            map.iter()
                .map(|(k, v)| (yaml_rust2::Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_positions() {
        let doc = parse_str(
            "name: vapi\nroute:\n  method: POST\n  path: \"/a\"\nlist: [1, 2.5, true, ~]\n",
        )
        .unwrap();
        assert_eq!(
            doc.value,
            json!({"name": "vapi", "route": {"method": "POST", "path": "/a"}, "list": [1, 2.5, true, null]})
        );
        assert_eq!(doc.value_pos("/name"), Pos { line: 1, col: 7 });
        assert_eq!(doc.key_pos("/route"), Pos { line: 2, col: 1 });
        assert_eq!(doc.key_pos("/route/method"), Pos { line: 3, col: 3 });
        assert_eq!(doc.value_pos("/route/path"), Pos { line: 4, col: 9 });
        // inside the quoted scalar: the first content character is one column right of the quote
        assert_eq!(doc.char_pos("/route/path", 0), Pos { line: 4, col: 10 });
        assert_eq!(doc.value_pos("/list/1"), Pos { line: 5, col: 11 });
        // a missing pointer falls back to the nearest ancestor
        assert_eq!(doc.value_pos("/route/nope"), Pos { line: 3, col: 3 });
    }

    #[test]
    fn positions_are_found_among_escaped_and_prefixed_pointers() {
        // pointers that sort next to each other (`/a`, `/a/b`, `/a~1b`, `/ab`) and escaped keys
        let doc = parse_str("a:\n  b: 1\na/b: 2\nab: 3\n\"t~x\": '${X}'\n").unwrap();
        assert_eq!(doc.key_pos("/a"), Pos { line: 1, col: 1 });
        assert_eq!(doc.value_pos("/a/b"), Pos { line: 2, col: 6 });
        assert_eq!(doc.key_pos("/a~1b"), Pos { line: 3, col: 1 });
        assert_eq!(doc.value_pos("/a~1b"), Pos { line: 3, col: 6 });
        assert_eq!(doc.value_pos("/ab"), Pos { line: 4, col: 5 });
        assert_eq!(doc.char_pos("/t~0x", 2), Pos { line: 5, col: 11 });
        // a pointer below a scalar: the scalar; nothing at all: the file's start
        assert_eq!(doc.value_pos("/ab/c"), Pos { line: 4, col: 5 });
        assert_eq!(doc.value_pos("/zz"), Pos { line: 1, col: 1 });
    }

    #[test]
    fn an_empty_document_places_everything_at_the_start() {
        let doc = Document::default();
        assert_eq!(doc.value, Value::Null);
        assert_eq!(doc.value_pos("/name"), Pos::START);
        assert_eq!(doc.key_pos("/route/path"), Pos::START);
        assert_eq!(doc.char_pos("/route/path", 3), Pos::START);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let doc = parse_str("a: '123'\nb: \"true\"\nc: 0x1F\nd: 1e3\ne: .inf\nf: 007\n").unwrap();
        assert_eq!(
            doc.value,
            json!({"a": "123", "b": "true", "c": 31, "d": 1000.0, "e": ".inf", "f": 7})
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_str("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(matches!(err, YamlError::Syntax { .. }));
        assert!(err.pos().line >= 2, "{:?}", err.pos());
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            text.push_str(&format!(
                "{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = n;
        }
        let err = parse_str(&text).unwrap_err();
        assert!(matches!(err, YamlError::TooManyNodes { .. }), "{err:?}");
    }

    #[test]
    fn small_aliases_expand() {
        let doc = parse_str("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(doc.value, json!({"base": {"x": 1}, "other": {"x": 1}}));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            parse_str(&text).unwrap_err(),
            YamlError::TooDeep { .. }
        ));
    }

    #[test]
    fn duplicate_keys_and_multiple_documents() {
        assert!(matches!(
            parse_str("a: 1\na: 2\n").unwrap_err(),
            YamlError::DuplicateKey {
                pos: Pos { line: 2, col: 1 },
                ..
            }
        ));
        assert!(matches!(
            parse_str("a: 1\n---\nb: 2\n").unwrap_err(),
            YamlError::MultipleDocuments { .. }
        ));
    }

    #[test]
    fn junk_never_panics() {
        for junk in [
            &b"\xff\xfe\x00binary"[..],
            b"",
            b":",
            b"- - - -",
            b"{{{{",
            b"a: *nope",
            b"? [a]\n: b",
            b"\t\t: x",
        ] {
            let _ = parse_bytes(junk);
        }
        assert_eq!(parse_str("").unwrap().value, Value::Null);
    }
}
