//! The positions a [`super::Document`] keeps: where each value and key is, by JSON pointer,
//! packed once the document is read.

use std::collections::BTreeMap;

use super::Pos;

/// Where each value and key of a document is, by JSON pointer: every pointer's text one after
/// another in one string, and one sorted slot per pointer. Two allocations a document, where a
/// map per kind held a string per pointer: 7.2 KiB for `twilio-sms.yaml` instead of 18.6, and
/// nothing scattered among the allocations that outlive loading (docs/benchmarks.md, "Many
/// pipelines").
#[derive(Debug, Clone, Default)]
pub(super) struct Positions {
    text: String,
    /// Sorted by their pointer's text.
    slots: Vec<Located>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Located {
    /// The pointer's text: `text[at..at + len]`.
    at: u32,
    len: u32,
    pub(super) value: Option<Pos32>,
    pub(super) key: Option<Pos32>,
    /// Raw scalar information for strings, used to place `${VAR}` references precisely.
    pub(super) scalar: Option<ScalarInfo>,
}

/// A position as stored (files are at most [`super::MAX_FILE_BYTES`], so `u32` holds any line);
/// ordered by line, then column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos32 {
    line: u32,
    col: u32,
}

impl From<Pos> for Pos32 {
    fn from(p: Pos) -> Pos32 {
        Pos32 {
            line: u32::try_from(p.line).unwrap_or(u32::MAX),
            col: u32::try_from(p.col).unwrap_or(u32::MAX),
        }
    }
}

impl From<Pos32> for Pos {
    fn from(p: Pos32) -> Pos {
        Pos {
            line: p.line as usize,
            col: p.col as usize,
        }
    }
}

impl Positions {
    /// What the builder found of each pointer, packed.
    pub(super) fn pack(all: BTreeMap<String, Located>) -> Positions {
        let mut text = String::with_capacity(all.keys().map(String::len).sum());
        let mut slots = Vec::with_capacity(all.len());
        for (pointer, found) in all {
            // within MAX_FILE_BYTES' nodes, pointers total far below u32::MAX
            let at = u32::try_from(text.len()).unwrap_or(u32::MAX);
            text.push_str(&pointer);
            slots.push(Located {
                at,
                len: u32::try_from(pointer.len()).unwrap_or(u32::MAX),
                ..found
            });
        }
        Positions { text, slots }
    }

    pub(super) fn get(&self, pointer: &str) -> Option<&Located> {
        let at = self
            .slots
            .binary_search_by(|s| {
                let (from, to) = (s.at as usize, s.at as usize + s.len as usize);
                self.text.get(from..to).unwrap_or_default().cmp(pointer)
            })
            .ok()?;
        self.slots.get(at)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ScalarInfo {
    /// Characters between the scalar's position and its first content character (quotes).
    pub(super) lead: u8,
    pub(super) single_line: bool,
}
