//! The module map holds: no import cycle between the engine's top-level modules (a module's
//! files may name `crate::<other>`; following those names never leads back), every top-level
//! module is on the map in docs/architecture.md and in engine/lib.rs, and no file of the engine or its benches holds
//! more than 700 lines (a file that grows past it holds more than one concern: split it), no
//! function over 100 lines, and no type name is defined twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its code names (comments and unit tests left out).
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let (root, files) = engine_files();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let name = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["lib", "main", "alloc"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let entry = deps.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for c in name.captures_iter(line) {
                if c[1] != top {
                    entry.insert(c[1].to_string());
                }
            }
        }
    }
    deps
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The engine's directory and every `.rs` file under it.
fn engine_files() -> (std::path::PathBuf, Vec<std::path::PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine");
    let mut files = Vec::new();
    collect(&root, &mut files);
    (root, files)
}

/// A path `from` → ... → `from`, if there is one.
fn cycle_through(from: &str, deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in deps.get(&at).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if deps.contains_key(next) && seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let deps = dependencies();
    assert!(deps.len() > 20, "{deps:?}");
    let cycles: Vec<String> = deps
        .keys()
        .filter_map(|m| cycle_through(m, &deps))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_engine_or_bench_file_is_over_700_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect(&root.join("engine"), &mut files);
    collect(&root.join("benches"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 700).then(|| format!("{} ({n} lines)", f.strip_prefix(root).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

/// Functions of `file` longer than 100 lines, with their length: from a `fn` line to the `}` at
/// its indentation (rustfmt's layout).
fn long_functions(file: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let after_qualifiers = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        let Some(rest) = after_qualifiers.strip_prefix("fn ") else {
            continue;
        };
        if trimmed.ends_with(';') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[i + 1..].iter().position(|l| l.trim_end() == close) {
            let n = end + 2;
            if n > 100 {
                out.push((name, n));
            }
        }
    }
    out
}

/// No engine function over 100 lines: a long function is read in one sitting or not at all.
#[test]
fn no_engine_function_is_over_100_lines() {
    let (root, files) = engine_files();
    let over: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let at = f.strip_prefix(&root).unwrap().display().to_string();
            long_functions(f)
                .into_iter()
                .map(move |(name, n)| format!("{at} {name} ({n} lines)"))
        })
        .collect();
    assert!(
        over.is_empty(),
        "split these into steps of their own: {over:?}"
    );
}

/// One name for one thing: no struct, enum, trait or type alias is defined under the same name in
/// two of the engine's files (a module-level item; unit tests' helpers are left out). A config type
/// whose runtime component has the same name takes a `Config` suffix.
#[test]
fn no_type_name_is_defined_twice() {
    let (root, files) = engine_files();
    let item = regex::Regex::new(r"^(?:pub(?:\([a-z]+\))? )?(?:struct|enum|trait|type) ([A-Z]\w*)")
        .unwrap();
    let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        let at = f.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            if let Some(c) = item.captures(line) {
                defined
                    .entry(c[1].to_string())
                    .or_default()
                    .push(at.clone());
            }
        }
    }
    let twice: Vec<String> = defined
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(name, at)| format!("{name} in {}", at.join(", ")))
        .collect();
    assert!(twice.is_empty(), "give each its own name: {twice:?}");
}

/// Errors keep their causes: a `Result` whose error is a bare `String` is kept only where the
/// string is the text a person reads (a `/ready` reason, a console page's message, a respond
/// script's failure, a schema's own complaint), at most 10 in all. Everything else is a typed
/// error with its `#[source]`.
#[test]
fn string_errors_are_only_user_facing_text() {
    let (root, files) = engine_files();
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for (at, _) in code.match_indices("Result<") {
            // the generic arguments, up to the matching `>`; the error is the last top-level one
            let mut depth = 0;
            let mut last = at + "Result<".len();
            let mut end = None;
            for (i, c) in code[at + "Result".len()..].char_indices() {
                let i = i + at + "Result".len();
                match c {
                    '<' | '(' | '[' => depth += 1,
                    '>' | ')' | ']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    ',' if depth == 1 => last = i + 1,
                    _ => {}
                }
            }
            if let Some(end) = end
                && code[last..end].trim() == "String"
            {
                let line = code[..at].lines().count();
                found.push(format!(
                    "{}:{line}",
                    f.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        found.len() <= 10,
        "{} `Result<_, String>`: give these an error type that keeps its cause: {found:?}",
        found.len()
    );
}

#[test]
fn every_top_level_module_is_on_the_map() {
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let missing: Vec<String> = dependencies()
        .into_keys()
        .filter(|m| !map.contains(&format!("| `{m}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md's module table lacks: {missing:?}"
    );
}

/// The short map at the top of `engine/lib.rs` names every top-level module too.
#[test]
fn every_top_level_module_is_on_the_lib_map() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/lib.rs"))
        .unwrap();
    let map: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<String> = dependencies()
        .into_keys()
        .filter(|m| !map.contains(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "engine/lib.rs's map lacks: {missing:?}");
}

/// Every metric the code records is listed (with its HELP text) in `ops::metrics::NAMES`, so
/// `/metrics` never shows one without a description.
#[test]
fn every_recorded_metric_is_listed_with_its_help() {
    let (_, files) = engine_files();
    let recorded =
        regex::Regex::new(r#"(?:counter|gauge|histogram)!\(\s*"(engine_[a-z_]+)""#).unwrap();
    let listed: Vec<&str> = engine::ops::metrics::NAMES.iter().map(|n| n.0).collect();
    let mut missing = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for c in recorded.captures_iter(&text) {
            if !listed.contains(&&c[1]) {
                missing.insert(c[1].to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "recorded but not in ops::metrics::NAMES: {missing:?}"
    );
}

/// docs/operations.md's table of answers is the engine's catalogue (`ErrorAnswer`), both ways:
/// every answer the engine can give is documented, and the docs promise no other.
#[test]
fn every_error_answer_is_in_the_docs() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let section = docs
        .split("\n## Answers\n")
        .nth(1)
        .expect("docs/operations.md has a section `## Answers`")
        .split("\n## ")
        .next()
        .unwrap();
    let row = regex::Regex::new(r"(?m)^\| (\d{3}) \| `([a-z_]+)` \|").unwrap();
    let documented: BTreeSet<(u16, String)> = row
        .captures_iter(section)
        .map(|c| (c[1].parse().unwrap(), c[2].to_string()))
        .collect();
    let engine: BTreeSet<(u16, String)> = engine::server::answer::ErrorAnswer::catalogue()
        .iter()
        .map(|a| (a.status().as_u16(), a.code().to_string()))
        .collect();
    assert_eq!(
        documented, engine,
        "docs/operations.md's answers vs the engine's"
    );
}
