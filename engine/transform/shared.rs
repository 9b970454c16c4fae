//! Compiled scripts held once per text: what lets a thousand pipelines that run one script file
//! hold one compiled tree of it.

use std::sync::Arc;

use rhai::AST;

/// `ast`, or the one already compiled from the same text while that one is in use: pipelines
/// that run one script file (a team's tenants, each with its own pipeline) hold one compiled copy
/// of it, where each held its own (~9 KiB for the shipped SMS script; a thousand pipelines: 9
/// MiB; docs/benchmarks.md, "Many pipelines"). Each is still compiled under its own pipeline's
/// limits first, so what one would refuse is refused; what compiles is the same tree whatever the
/// limits (they bound sizes and depths, and every engine has the same functions). The map holds
/// only weak references, swept as it grows: it keeps no script alive.
pub(super) fn held_once(ast: AST, text: String, expression: bool) -> Arc<AST> {
    type Compiled = std::collections::HashMap<(bool, String), std::sync::Weak<AST>>;
    static COMPILED: std::sync::LazyLock<std::sync::Mutex<Compiled>> =
        std::sync::LazyLock::new(Default::default);
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    let key = (expression, text);
    if let Some(existing) = compiled.get(&key).and_then(std::sync::Weak::upgrade) {
        return existing;
    }
    if compiled.len() >= 64 && compiled.len().is_power_of_two() {
        compiled.retain(|_, w| w.strong_count() > 0);
    }
    let ast = Arc::new(ast);
    compiled.insert(key, Arc::downgrade(&ast));
    ast
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::sandbox;
    use crate::transform::{ScriptSource, compile};
    use std::path::Path;

    fn compiled(text: &str, expression: bool) -> Arc<AST> {
        let engine = sandbox::engine(&crate::config::transform::ScriptLimits::default());
        let (ast, _) = compile(
            &engine,
            Path::new("p.yaml"),
            Path::new("."),
            ScriptSource::Inline(text),
            "/transform/0/inline",
            expression,
        )
        .unwrap();
        ast
    }

    #[test]
    fn one_script_text_is_held_once_while_in_use() {
        let text = "let x = 40; x + 2 // shared_while_in_use";
        let (a, b) = (compiled(text, false), compiled(text, false));
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same text shares one compiled tree"
        );
        let other = compiled("let x = 41; x + 1 // shared_while_in_use", false);
        assert!(!Arc::ptr_eq(&a, &other));
        // an expression of the same text is compiled as one, apart
        let expr = compiled("40 + 2 // shared_while_in_use", true);
        assert!(!Arc::ptr_eq(
            &expr,
            &compiled("40 + 2 // shared_while_in_use", false)
        ));
        let engine = sandbox::engine(&crate::config::transform::ScriptLimits::default());
        assert_eq!(engine.eval_ast::<i64>(&b).unwrap(), 42);
        // once every holder is gone, nothing keeps it: the next compile makes a new one
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        assert_eq!(engine.eval_ast::<i64>(&compiled(text, false)).unwrap(), 42);
    }
}
