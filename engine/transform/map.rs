//! `map` steps: one row whose fields are read from the event by JSON pointer, without a script.
//!
//! ```text
//! compile   every pointer the fields read -> one list (each pointer once: `Pointers`), each
//!           field keeping the slots of its pointers
//! run       body -> one streaming pass over the raw JSON (request_field::JsonPointers; only the
//!           values at the pointers are built, the rest is skipped)
//!           -> per field: json, else seconds_between, else event, else default -> `as` -> row
//!              (a value that does not convert: null, the field's default, or the event fails,
//!              as `on_invalid` says)
//! ```
//!
//! A script step builds the whole body as Rhai values, evaluates, and turns its map back into
//! JSON; a map step builds only the values it copies, which is most of what an event costs the
//! worker (docs/benchmarks.md, "Map steps").

use serde_json::{Map, Value};

use super::EventInput;
use crate::config::transform::{Convert, EventField, MapField, OnInvalid};
use crate::request_field::JsonPointers;

/// The JSON pointers one step reads, each once, in slot order.
#[derive(Debug, Default)]
pub(crate) struct Pointers {
    texts: Vec<String>,
}

impl Pointers {
    /// The slot of `pointer`, added when new.
    pub(crate) fn slot(&mut self, pointer: &str) -> usize {
        match self.texts.iter().position(|p| p == pointer) {
            Some(i) => i,
            None => {
                self.texts.push(pointer.to_string());
                self.texts.len() - 1
            }
        }
    }

    /// The list, split once for reading bodies.
    pub(crate) fn compile(&self) -> JsonPointers {
        let texts: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        JsonPointers::new(&texts)
    }
}

/// A compiled `map`: its row fields in key order.
#[derive(Debug)]
pub(crate) struct Mapping {
    fields: Vec<Field>,
    /// How many fields read each slot: a value read by one field only is moved into the row, not
    /// copied.
    uses: Vec<u32>,
}

#[derive(Debug)]
struct Field {
    name: String,
    json: Vec<usize>,
    between: Option<(Vec<usize>, Vec<usize>)>,
    event: Option<EventField>,
    default: Option<Value>,
    convert: Option<Convert>,
    on_invalid: OnInvalid,
    required: bool,
    /// Where it was looked for, for the reason a required field fails with.
    looked: String,
}

/// A text written where a JSON pointer goes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a JSON pointer: start it with `/`, e.g. `/{0}` (RFC 6901; `~1` for a `/` inside a key)"
)]
pub(crate) struct NotAPointer(String);

/// Why a map step makes no row for an event (the reason its failure carries). It names the
/// field and the kind of value, never the value (it is the sender's data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("field `{field}` (seconds_between): {kind} is not {expected}")]
    NotATime {
        field: String,
        kind: &'static str,
        expected: &'static str,
    },
    #[error("required field `{field}` has no value (looked at {looked})")]
    Missing { field: String, looked: String },
    #[error("field `{field}`: {why} and `on_invalid: fail`")]
    Invalid { field: String, why: String },
    #[error("required field `{field}`: {why}")]
    RequiredInvalid { field: String, why: String },
}

/// A pointer is `""` (the whole body) or starts with `/` (RFC 6901): the problem otherwise.
pub(crate) fn check_pointer(p: &str) -> Result<(), NotAPointer> {
    if crate::request_field::is_pointer(p) {
        Ok(())
    } else {
        Err(NotAPointer(p.to_string()))
    }
}

impl Mapping {
    /// Compile `fields`, their pointers added to `pointers`; the problems, each with the pointer
    /// (under the step's `map`) of the value at fault.
    pub(crate) fn compile(
        fields: &std::collections::BTreeMap<String, MapField>,
        pointers: &mut Pointers,
    ) -> Result<Mapping, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for (name, f) in fields {
            let at = |rest: &str| format!("/{}{rest}", name.replace('~', "~0").replace('/', "~1"));
            let mut slots = |list: &[String], rest: &str, errors: &mut Vec<(String, String)>| {
                let mut s = Vec::new();
                for (i, p) in list.iter().enumerate() {
                    match check_pointer(p) {
                        Ok(()) => s.push(pointers.slot(p)),
                        Err(e) => errors.push((
                            at(&if list.len() > 1 {
                                format!("{rest}/{i}")
                            } else {
                                rest.to_string()
                            }),
                            e.to_string(),
                        )),
                    }
                }
                s
            };
            let json = f
                .json
                .as_ref()
                .map(|p| slots(p.list(), "/json", &mut errors))
                .unwrap_or_default();
            let between = f.seconds_between.as_ref().map(|[from, to]| {
                (
                    slots(from.list(), "/seconds_between/0", &mut errors),
                    slots(to.list(), "/seconds_between/1", &mut errors),
                )
            });
            errors.extend(
                conversion_problems(f)
                    .into_iter()
                    .map(|(rest, e)| (at(rest), e)),
            );
            if f.json.is_none()
                && f.seconds_between.is_none()
                && f.event.is_none()
                && f.default.is_none()
            {
                errors.push((
                    at(""),
                    "name where the value comes from: `json` (a pointer into the body), `seconds_between`, `event` or `default`".into(),
                ));
            }
            let mut looked: Vec<String> = f
                .json
                .iter()
                .flat_map(|p| p.list().iter().cloned())
                .collect();
            if f.seconds_between.is_some() {
                looked.push("seconds_between".into());
            }
            if let Some(e) = f.event {
                // the word the YAML uses (`received_at`), not the Rust name
                let word = serde_json::to_value(e).ok();
                looked.push(format!(
                    "event.{}",
                    word.as_ref().and_then(Value::as_str).unwrap_or("?")
                ));
            }
            out.push(Field {
                looked: looked.join(", "),
                name: name.clone(),
                json,
                between,
                event: f.event,
                default: f.default.clone(),
                convert: f.convert,
                on_invalid: f.on_invalid.unwrap_or_default(),
                required: f.required,
            });
        }
        let mut uses = vec![0; pointers.texts.len()];
        for f in &out {
            let between = f.between.iter().flat_map(|(a, b)| a.iter().chain(b));
            for &slot in f.json.iter().chain(between) {
                uses[slot] += 1;
            }
        }
        if errors.is_empty() {
            Ok(Mapping { fields: out, uses })
        } else {
            Err(errors)
        }
    }

    /// The first value of `slots` that is there and not null; moved out of `values` when no
    /// other field reads that slot.
    fn first(&self, values: &mut [Option<Value>], slots: &[usize]) -> Option<Value> {
        let slot = *slots.iter().find(|&&s| {
            values
                .get(s)
                .is_some_and(|v| v.as_ref().is_some_and(|v| !v.is_null()))
        })?;
        if self.uses.get(slot) == Some(&1) {
            values[slot].take()
        } else {
            values[slot].clone()
        }
    }

    /// The row's field names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// The fields with an `as:` conversion, and what they convert to.
    pub(crate) fn converts(&self) -> impl Iterator<Item = (&str, Convert)> {
        self.fields
            .iter()
            .filter_map(|f| Some((f.name.as_str(), f.convert?)))
    }

    /// The row, from the values read at the step's pointers; a reason when a required field has
    /// no value, or a value does not convert and its field says `on_invalid: fail`.
    pub(crate) fn row(
        &self,
        values: &mut [Option<Value>],
        event: &EventInput,
    ) -> Result<Value, MapError> {
        let mut row: Vec<(String, Value)> = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let mut value = self.first(values, &f.json);
            if value.is_none()
                && let Some((from, to)) = &f.between
            {
                let times = (self.first(values, from), self.first(values, to));
                if let (Some(from), Some(to)) = times {
                    let ms = |v: &Value| {
                        time_ms(v).ok_or_else(|| MapError::NotATime {
                            field: f.name.clone(),
                            kind: crate::schema::value_kind(v),
                            expected: expected(Convert::Time),
                        })
                    };
                    let (from, to) = (ms(&from)?, ms(&to)?);
                    value = serde_json::Number::from_f64((to - from) as f64 / 1000.0)
                        .map(Value::Number);
                }
            }
            if value.is_none() {
                value = f.event.and_then(|e| event_value(e, event));
            }
            if value.is_none() {
                value = f.default.clone();
            }
            let value = match (value, f.convert) {
                (Some(v), Some(to)) => match converted(&v, to) {
                    Some(v) => v,
                    None => f.invalid(&v, to)?,
                },
                (Some(v), None) => v,
                (None, _) if f.required => {
                    return Err(MapError::Missing {
                        field: f.name.clone(),
                        looked: f.looked.clone(),
                    });
                }
                (None, _) => Value::Null,
            };
            row.push((f.name.clone(), value));
        }
        // the fields come in the order of their names (compiled from the step's map), so the
        // row's map (a B-tree) is bulk-built from them in one pass rather than by an insert per
        // field, each a walk down the tree comparing names (~400 instructions a field, per
        // callgrind)
        Ok(Value::Object(
            row.into_iter().collect::<Map<String, Value>>(),
        ))
    }
}

impl Field {
    /// What a value that does not convert to `to` becomes, as `on_invalid` says. The reason
    /// names the field and the kind of value, never the value (it is the sender's data).
    fn invalid(&self, v: &Value, to: Convert) -> Result<Value, MapError> {
        let why = || {
            format!(
                "{} is not {} (`as: {}`)",
                crate::schema::value_kind(v),
                expected(to),
                to.word()
            )
        };
        let value = match self.on_invalid {
            OnInvalid::Fail => {
                return Err(MapError::Invalid {
                    field: self.name.clone(),
                    why: why(),
                });
            }
            OnInvalid::Default => self.default.clone().unwrap_or(Value::Null),
            OnInvalid::Null => Value::Null,
        };
        if value.is_null() && self.required {
            return Err(MapError::RequiredInvalid {
                field: self.name.clone(),
                why: why(),
            });
        }
        Ok(value)
    }
}

/// The problems of a field's `as`, `on_invalid` and `default`, each with the pointer (under the
/// field) of the value at fault.
fn conversion_problems(f: &MapField) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(on) = f.on_invalid {
        if f.convert.is_none() {
            out.push((
                "/on_invalid",
                "`on_invalid` says what a value that does not convert becomes: give the field an `as:` (boolean, integer, number, text, json or time), or remove `on_invalid`".to_string(),
            ));
        }
        if on == OnInvalid::Default && f.default.is_none() {
            out.push((
                "/on_invalid",
                "`on_invalid: default` writes the field's `default`: give the field one (`default: false`), or say `on_invalid: null`".to_string(),
            ));
        }
    }
    if let (Some(to), Some(d)) = (f.convert, &f.default)
        && !d.is_null()
        && converted(d, to).is_none()
    {
        out.push((
            "/default",
            format!(
                "the default is {}, which does not convert to {} (`as: {}`): write one that does",
                crate::schema::value_kind(d),
                expected(to),
                to.word()
            ),
        ));
    }
    out
}

/// What a conversion makes, for reasons.
fn expected(to: Convert) -> &'static str {
    match to {
        Convert::Boolean => "a boolean",
        Convert::Integer => "a whole number",
        Convert::Number => "a number",
        Convert::Text => "text",
        Convert::Json => "JSON",
        Convert::Time => "a time (RFC 3339 text, or epoch seconds or milliseconds)",
    }
}

/// `v` converted as `as:` says; `None` when it does not convert.
pub(crate) fn converted(v: &Value, to: Convert) -> Option<Value> {
    match to {
        Convert::Json => Some(v.clone()),
        Convert::Text => Some(Value::String(match v {
            Value::String(s) => s.clone(),
            Value::Null => return None,
            Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => v.to_string(),
        })),
        Convert::Boolean => boolean(v).map(Value::Bool),
        Convert::Integer => integer(v).map(Value::from),
        Convert::Number => match v {
            Value::Number(_) => Some(v.clone()),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i64>().map(Value::from).ok().or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                })
            }
            _ => None,
        },
        Convert::Time => time_ms(v).map(|ms| Value::String(super::sandbox::format_time(ms))),
    }
}

/// Booleans as Postgres spells them in text (`boolean` input), and 1 / 0.
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
            "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A whole number that fits 64 bits: an integer, a number without a fraction, or text spelling
/// either.
fn integer(v: &Value) -> Option<i64> {
    let whole = |f: f64| (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64);
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(whole)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(whole))
        }
        _ => None,
    }
}

/// Epoch milliseconds of a time value: RFC 3339 text, or epoch seconds or milliseconds.
fn time_ms(v: &Value) -> Option<i64> {
    use super::sandbox::{float_ms, int_ms, text_ms};
    match v {
        Value::Number(n) => n.as_i64().map(int_ms).or_else(|| n.as_f64().map(float_ms)),
        Value::String(s) => text_ms(s),
        _ => None,
    }
}

/// One of the event's own fields, as a script reads it from `event`.
fn event_value(field: EventField, e: &EventInput) -> Option<Value> {
    Some(match field {
        EventField::Id => Value::String(e.id.clone()),
        EventField::Pipeline => Value::String(e.pipeline.clone()),
        EventField::ReceivedAt => Value::String(super::sandbox::format_time(e.received_at_ms)),
        EventField::ReceivedAtMs => Value::from(e.received_at_ms),
        EventField::Method => Value::String(e.method.clone()),
        EventField::Path => Value::String(e.path.clone()),
        EventField::Tenant => Value::String(e.tenant.clone()?),
    })
}
