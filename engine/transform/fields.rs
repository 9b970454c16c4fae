//! What a transform step's rows carry, read from the compiled script without running it.
//!
//! The table check needs to know which columns a pipeline writes before any event arrives, and a
//! deployment carries `pipelines/` but seldom `fixtures/`. A step's script returns a map (one
//! row), an array of maps (several rows) or `()`; wherever that value is written out as a map
//! literal, its keys are the row's fields:
//!
//! ```text
//! script AST -> every `return x` and the script's last value (through if/else, try/catch,
//!               blocks, array literals)
//!   -> `#{ a: .., b: .. }`       fields a, b (known)
//!   -> `()`                      no row
//!   -> anything else (a variable, a function call, a map built up field by field, a switch)
//!                                opaque: the step may write fields nobody can name here
//! ```
//!
//! [`Fields::known`] is what the step is known to write (a missing column for one of them is a
//! proven problem); [`Fields::complete`] says whether that is all it can write (only then is a
//! NOT NULL column nothing fills a proven problem).

use std::collections::{BTreeMap, BTreeSet};

use rhai::{AST, Dynamic, Expr, Stmt};

/// The fields of the rows one or more steps return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// Fields some returned map literal names.
    pub known: BTreeSet<String>,
    /// Every value the steps can return was read: `known` is all they write.
    pub complete: bool,
    /// Fields a `map` step converts (`as:`), and to what: the type a column for them needs.
    pub converts: BTreeMap<String, crate::config::transform::Convert>,
}

impl Fields {
    /// Nothing returned yet, and nothing unread.
    pub fn none() -> Fields {
        Fields {
            known: BTreeSet::new(),
            complete: true,
            converts: BTreeMap::new(),
        }
    }

    /// The fields of `ast`'s rows.
    pub fn of(ast: &AST) -> Fields {
        let mut fields = Fields::none();
        fields.block(ast.as_ref(), true);
        fields
    }

    /// Both steps' rows together (two steps writing one sink).
    pub fn merge(&mut self, other: Fields) {
        self.known.extend(other.known);
        self.complete &= other.complete;
        self.converts.extend(other.converts);
    }

    /// Statements of a block; `tail`: the block's last value is what the script returns.
    fn block(&mut self, stmts: &[Stmt], tail: bool) {
        for (i, stmt) in stmts.iter().enumerate() {
            self.stmt(stmt, tail && i + 1 == stmts.len());
        }
    }

    fn stmt(&mut self, stmt: &Stmt, tail: bool) {
        match stmt {
            Stmt::Return(value, flags, _) if !flags.contains(rhai::ASTFlags::BREAK) => {
                if let Some(e) = value {
                    self.value(e);
                }
            }
            Stmt::Return(..) | Stmt::Noop(_) => {}
            Stmt::If(flow, _) => {
                self.returns_in(&flow.expr);
                self.block(flow.body.statements(), tail);
                self.block(flow.branch.statements(), tail);
            }
            Stmt::TryCatch(flow, _) => {
                self.block(flow.body.statements(), tail);
                self.block(flow.branch.statements(), tail);
            }
            Stmt::Block(b) => self.block(b.statements(), tail),
            Stmt::While(flow, _) | Stmt::Do(flow, ..) => {
                self.returns_in(&flow.expr);
                self.block(flow.body.statements(), false);
            }
            Stmt::For(f, _) => {
                self.returns_in(&f.2.expr);
                self.block(f.2.body.statements(), false);
            }
            // `break value` makes a loop's value, and a loop can be the script's last statement
            Stmt::BreakLoop(Some(_), ..) => self.complete = false,
            Stmt::BreakLoop(None, ..) => {}
            Stmt::Var(v, ..) => self.returns_in(&v.1),
            Stmt::Assignment(a) => {
                self.returns_in(&a.1.lhs);
                self.returns_in(&a.1.rhs);
            }
            Stmt::Expr(e) if tail => self.value(e),
            Stmt::Expr(e) => self.returns_in(e),
            // A call as the last statement returns whatever the function returns; a switch's
            // arms are not read. Either way: fields nobody can name here.
            Stmt::FnCall(..) if tail => self.complete = false,
            Stmt::FnCall(..) => {}
            _ => self.complete = false,
        }
    }

    /// A value the script returns.
    fn value(&mut self, expr: &Expr) {
        match expr {
            Expr::Map(m, _) => {
                self.known
                    .extend(m.0.iter().map(|(name, _)| name.name.to_string()));
                for (_, v) in &m.0 {
                    self.returns_in(v);
                }
            }
            Expr::Array(items, _) => items.iter().for_each(|item| self.value(item)),
            Expr::Unit(_) => {}
            Expr::Stmt(b) => self.block(b.statements(), true),
            Expr::DynamicConstant(d, _) => self.constant(d),
            _ => self.complete = false,
        }
    }

    /// A constant the optimizer folded a literal into.
    fn constant(&mut self, value: &Dynamic) {
        if value.is_unit() {
            // no row
        } else if let Some(map) = value.read_lock::<rhai::Map>() {
            self.known.extend(map.keys().map(|k| k.to_string()));
        } else if let Some(items) = value.read_lock::<rhai::Array>() {
            items.iter().for_each(|item| self.constant(item));
        } else {
            self.complete = false;
        }
    }

    /// `return` inside an expression (a statement block in a map value, an `if` expression).
    fn returns_in(&mut self, expr: &Expr) {
        if let Expr::Stmt(b) = expr {
            self.block(b.statements(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(script: &str) -> Fields {
        let engine = crate::transform::sandbox::engine(&Default::default());
        Fields::of(&engine.compile(script).unwrap())
    }

    fn known(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_map_literal_as_the_last_value_is_the_row() {
        let f = fields("let b = event.body;\n#{ call_sid: b.CallSid, status: get(b, \"x\", ()) }");
        assert_eq!(f.known, known(&["call_sid", "status"]));
        assert!(f.complete);
    }

    #[test]
    fn every_return_path_counts() {
        let f = fields(
            "if event.body.kind == \"partial\" { return (); }\n\
             if event.body.kind == \"b\" { return #{ b: 1 }; }\n\
             if event.body.n > 2 { #{ a: 1, c: 2 } } else { [#{ a: 2 }, #{ d: 3 }] }",
        );
        assert_eq!(f.known, known(&["a", "b", "c", "d"]));
        assert!(f.complete);
    }

    #[test]
    fn constant_maps_folded_by_the_optimizer_are_read() {
        let f = fields("#{ kind: \"fixed\", n: 1 }");
        assert_eq!(f.known, known(&["kind", "n"]));
        assert!(f.complete);
    }

    #[test]
    fn what_cannot_be_read_makes_the_fields_incomplete() {
        for script in [
            "let row = #{ a: 1 }; row.b = 2; row",
            "fn make() { #{ a: 1 } } make()",
            "let x = 1; switch x { 1 => #{ a: 1 }, _ => () }",
            "event.body",
        ] {
            let f = fields(script);
            assert!(!f.complete, "{script}: {f:?}");
        }
        // what was read is still known
        let f = fields("if event.body.a { return #{ a: 1 }; } event.body");
        assert_eq!(f.known, known(&["a"]));
        assert!(!f.complete);
    }

    #[test]
    fn a_script_that_returns_nothing_writes_nothing() {
        let f = fields("let x = 1;");
        assert!(f.known.is_empty() && f.complete);
        let f = fields("for i in 0..3 { if i == 2 { return #{ i: i }; } }");
        assert_eq!(f.known, known(&["i"]));
        assert!(f.complete);
    }

    #[test]
    fn maps_used_inside_the_script_are_not_rows() {
        let f = fields("let lookup = #{ x: 1 }; let v = get(lookup, \"x\", 0); #{ value: v }");
        assert_eq!(f.known, known(&["value"]));
        assert!(f.complete);
    }

    #[test]
    fn the_shipped_scripts_are_read_whole() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/scripts");
        let engine = crate::transform::sandbox::engine(&Default::default());
        for (script, expect) in [
            ("twilio-sms.rhai", "received_at"),
            ("twilio-call-status.rhai", "occurred_at"),
            ("vapi-transcript.rhai", "spoken_at"),
            ("vapi-status-update.rhai", "occurred_at"),
        ] {
            let text = std::fs::read_to_string(dir.join(script)).unwrap();
            let f = Fields::of(&engine.compile(&text).unwrap());
            assert!(f.complete, "{script}: {f:?}");
            assert!(f.known.contains(expect), "{script}: {f:?}");
            assert!(f.known.contains("event_id"), "{script}: {f:?}");
        }
    }
}
