//! The route table: which pipeline answers a method and path.
//!
//! Built once per loaded pipeline set (at boot, and by `engine validate` with the same code, so a
//! conflict is a validation error, never a runtime surprise). Paths use matchit's syntax:
//! `{name}` for one segment, `{*rest}` for the remainder. A path known under another method is a
//! 405 with an `Allow` header, an unknown path a 404.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An HTTP method a pipeline route answers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// The method of an incoming request, if pipelines can declare it.
    pub fn from_http(m: &salvo::http::Method) -> Option<HttpMethod> {
        Some(match m.as_str() {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            "PATCH" => HttpMethod::Patch,
            "DELETE" => HttpMethod::Delete,
            _ => return None,
        })
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Paths the engine answers itself; pipelines cannot claim them (nor anything under
/// `/console`, the operator console's).
pub const RESERVED_PATHS: &[&str] = &["/health", "/ready", "/metrics"];

/// Whether a path is the operator console's (`/console` and everything under it).
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// A route conflict found while building the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    /// Position (in the list given to the build) of the route that could not be added; with
    /// [`RouteTable::build`], the pipeline's index.
    pub pipeline: usize,
    /// Position of the route it clashes with, if any.
    pub with: Option<usize>,
    pub message: String,
}

/// Result of looking up a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found {
        pipeline: usize,
        params: Vec<(String, String)>,
    },
    MethodNotAllowed {
        allowed: Vec<HttpMethod>,
    },
    NotFound,
}

/// Method + path → pipeline index.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    router: matchit::Router<Methods>,
    /// The routes that ignore letter case (the default, as Express's routing), their literal
    /// parts lowercased: asked when the path as written matches nothing.
    folded: matchit::Router<Methods>,
}

/// One route of a pipeline, as [`RouteTable::build_indexed`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub method: HttpMethod,
    pub path: &'a str,
    pub pipeline: usize,
    /// Only the path as written answers, not also with a trailing slash added or removed.
    pub strict_slash: bool,
    /// Letter case counts: `/API/x` is not `/api/x`.
    pub case_sensitive: bool,
}

/// The pipelines of one route path, by method.
#[derive(Debug, Clone, Default)]
struct Methods {
    pipelines: BTreeMap<HttpMethod, usize>,
    /// Only the path as written answers (`trailing_slash: strict` on a route of this path).
    strict: bool,
}

/// The path with its trailing slash removed, or with one added: the other spelling Express's
/// default (non-strict) routing answers. Only one slash: `/x//` is not `/x`, and nothing else of
/// the path changes (dot segments and percent-encoded slashes still match no route).
fn other_spelling(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    match path.strip_suffix('/') {
        Some("") => None,
        Some(stripped) if stripped.ends_with('/') => None,
        Some(stripped) => Some(stripped.into()),
        None => Some(format!("{path}/").into()),
    }
}

/// A route pattern with its literal parts lowercased (ASCII), its `{name}` parts as written.
fn fold_pattern(pattern: &str) -> String {
    let mut depth = 0usize;
    pattern
        .chars()
        .map(|c| {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth == 0 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect()
}

impl RouteTable {
    /// Build from `(method, path)` per pipeline, in pipeline order (case-sensitive, trailing
    /// slash matched).
    pub fn build(routes: &[(HttpMethod, &str)]) -> Result<RouteTable, Vec<RouteConflict>> {
        let specs: Vec<Spec<'_>> = routes
            .iter()
            .enumerate()
            .map(|(i, (m, p))| Spec {
                method: *m,
                path: p,
                pipeline: i,
                strict_slash: false,
                case_sensitive: true,
            })
            .collect();
        RouteTable::build_indexed(&specs)
    }

    /// Build from specs: a pipeline may have several routes (an OAuth pipeline's start and
    /// callback). Conflicts name positions in `routes`; two case-insensitive routes whose paths
    /// differ only in letter case are one.
    pub fn build_indexed(routes: &[Spec<'_>]) -> Result<RouteTable, Vec<RouteConflict>> {
        let exact: Vec<(HttpMethod, String, usize, bool)> = routes
            .iter()
            .map(|r| (r.method, r.path.to_string(), r.pipeline, r.strict_slash))
            .collect();
        let (router, mut conflicts) = table(&exact, &(0..routes.len()).collect::<Vec<_>>());
        // the case-insensitive routes again, folded; positions kept so conflicts name them
        let positions: Vec<usize> = (0..routes.len())
            .filter(|&i| !routes[i].case_sensitive)
            .collect();
        let folded_routes: Vec<(HttpMethod, String, usize, bool)> = positions
            .iter()
            .map(|&i| {
                let r = routes[i];
                (r.method, fold_pattern(r.path), r.pipeline, r.strict_slash)
            })
            .collect();
        let (folded, folded_conflicts) = table(&folded_routes, &positions);
        for c in folded_conflicts {
            // what the exact table already reports is not said twice
            if conflicts.iter().any(|e| e.pipeline == c.pipeline) {
                continue;
            }
            let path = routes[c.pipeline].path;
            let message = match c.with.map(|w| routes[w].path) {
                Some(other) if !other.eq_ignore_ascii_case(path) || other == path => c.message,
                Some(other) => format!(
                    "path `{path}` is `{other}` with other capitals, and routes ignore letter case (as Express's did): rename one, or set `route.case_sensitive: true` on both"
                ),
                None => c.message,
            };
            conflicts.push(RouteConflict { message, ..c });
        }
        if conflicts.is_empty() {
            Ok(RouteTable { router, folded })
        } else {
            Err(conflicts)
        }
    }

    /// Find the pipeline for a request: the path as written, else (as Express's default
    /// routing does) the path with its trailing slash removed or added, unless that route is
    /// `trailing_slash: strict`; else the same ignoring letter case, for the routes that do.
    /// Captured segments keep the case they were sent in.
    pub fn lookup(&self, method: Option<HttpMethod>, path: &str) -> Lookup {
        match lookup_in(&self.router, method, path, path) {
            Lookup::NotFound => {}
            found => return found,
        }
        lookup_in(&self.folded, method, &path.to_ascii_lowercase(), path)
    }
}

/// `method` and `path` in `router`, with the trailing-slash rule; captured values read from
/// `sent` (the path as the client wrote it) at the places they were found in `path`.
fn lookup_in(
    router: &matchit::Router<Methods>,
    method: Option<HttpMethod>,
    path: &str,
    sent: &str,
) -> Lookup {
    if let Ok(m) = router.at(path) {
        return found(method, &m, path, sent).0;
    }
    let Some(other) = other_spelling(path) else {
        return Lookup::NotFound;
    };
    match router
        .at(&other)
        .ok()
        .map(|m| found(method, &m, &other, sent))
    {
        Some((lookup, false)) => lookup,
        _ => Lookup::NotFound,
    }
}

/// A router of `routes` (method, pattern, pipeline, strict slash), and the conflicts, each
/// naming positions through `positions` (route i is `positions[i]` of the caller's list).
fn table(
    routes: &[(HttpMethod, String, usize, bool)],
    positions: &[usize],
) -> (matchit::Router<Methods>, Vec<RouteConflict>) {
    // method -> (pipeline, position)
    let mut by_path: BTreeMap<&str, BTreeMap<HttpMethod, (usize, usize)>> = BTreeMap::new();
    let mut strict_paths: std::collections::BTreeSet<&str> = Default::default();
    let mut first_of_path: Vec<(&str, usize)> = Vec::new();
    let mut conflicts = Vec::new();
    for (i, (method, path, pipeline, strict)) in routes.iter().enumerate() {
        let at = positions[i];
        let path = path.as_str();
        if *strict {
            strict_paths.insert(path);
        }
        if RESERVED_PATHS.contains(&path) || is_console_path(path) {
            conflicts.push(RouteConflict {
                pipeline: at,
                with: None,
                message: format!("path `{path}` is reserved for the engine; choose another path"),
            });
            continue;
        }
        let methods = by_path.entry(path).or_default();
        if methods.is_empty() {
            first_of_path.push((path, at));
        }
        if let Some(&(_, other)) = methods.get(method) {
            conflicts.push(RouteConflict {
                pipeline: at,
                with: Some(other),
                message: format!("route {method} {path} is already taken"),
            });
            continue;
        }
        methods.insert(*method, (*pipeline, at));
    }
    let mut router = matchit::Router::new();
    let mut inserted: Vec<(&str, usize)> = Vec::new();
    for (path, first) in first_of_path {
        let methods = Methods {
            pipelines: by_path
                .remove(path)
                .unwrap_or_default()
                .into_iter()
                .map(|(m, (pipeline, _))| (m, pipeline))
                .collect(),
            strict: strict_paths.contains(path),
        };
        if let Err(e) = router.insert(path, methods) {
            let with = match &e {
                matchit::InsertError::Conflict { with } => {
                    inserted.iter().find(|(p, _)| p == with).map(|(_, i)| *i)
                }
                _ => None,
            };
            let message = match &e {
                matchit::InsertError::Conflict { with } => {
                    format!("path `{path}` overlaps `{with}`: a request could match both")
                }
                other => format!("path `{path}` is not a valid route: {other}"),
            };
            conflicts.push(RouteConflict {
                pipeline: first,
                with,
                message,
            });
        } else {
            inserted.push((path, first));
        }
    }
    (router, conflicts)
}

/// A matched path's answer for `method`, and whether the path is strict. `matched` is the text
/// matchit read (the path, lowercased, or its other spelling: every byte but the last where the
/// path's is), so each captured value is taken from `sent` at the same place, in the case the
/// client sent it.
fn found(
    method: Option<HttpMethod>,
    m: &matchit::Match<'_, '_, &Methods>,
    matched: &str,
    sent: &str,
) -> (Lookup, bool) {
    let as_sent = |v: &str| {
        let at = (v.as_ptr() as usize).wrapping_sub(matched.as_ptr() as usize);
        sent.get(at..at + v.len())
            .filter(|s| s.eq_ignore_ascii_case(v))
            .unwrap_or(v)
            .to_string()
    };
    let lookup = match method.and_then(|meth| m.value.pipelines.get(&meth)) {
        Some(&pipeline) => Lookup::Found {
            pipeline,
            params: m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), as_sent(v)))
                .collect(),
        },
        None => Lookup::MethodNotAllowed {
            allowed: m.value.pipelines.keys().copied().collect(),
        },
    };
    (lookup, m.value.strict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HttpMethod::*;

    /// The lookup of a found route.
    fn found(pipeline: usize, params: &[(&str, &str)]) -> Lookup {
        Lookup::Found {
            pipeline,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Case-insensitive specs from (method, path, pipeline, strict slash).
    fn specs<'a>(list: &[(HttpMethod, &'a str, usize, bool)]) -> Vec<Spec<'a>> {
        list.iter()
            .map(|&(method, path, pipeline, strict_slash)| Spec {
                method,
                path,
                pipeline,
                strict_slash,
                case_sensitive: false,
            })
            .collect()
    }

    #[test]
    fn letter_case_is_ignored_as_express_did_unless_case_sensitive() {
        let mut list = specs(&[
            (Post, "/api/webhooks/vapi", 0, false),
            (Post, "/t/{Tenant}/Sms", 1, false),
            (Post, "/Exact", 2, false),
            (Post, "/Hooks/{*rest}", 4, false),
        ]);
        list[2].case_sensitive = true;
        let t = RouteTable::build_indexed(&list).unwrap();
        let at = |path| t.lookup(Some(Post), path);
        assert_eq!(at("/API/webhooks/Vapi"), found(0, &[]));
        assert_eq!(at("/API/WEBHOOKS/VAPI/"), found(0, &[]));
        // captured segments keep the case they were sent in, their names the YAML's
        assert_eq!(at("/T/AcMe/sms"), found(1, &[("Tenant", "AcMe")]));
        assert_eq!(at("/t/sms/SMS"), found(1, &[("Tenant", "sms")]));
        assert_eq!(at("/hooks/A/B/"), found(4, &[("rest", "A/B/")]));
        // case-sensitive: only as written
        assert_eq!(at("/Exact"), found(2, &[]));
        assert_eq!(at("/exact"), Lookup::NotFound);
        // what stays refused
        for path in [
            "/api/webhooks//vapi",
            "/API/webhooks/x/../vapi",
            "/api/webhooks/vapi%2F",
        ] {
            assert_eq!(at(path), Lookup::NotFound, "{path}");
        }
        assert_eq!(
            t.lookup(Some(Get), "/API/webhooks/vapi"),
            Lookup::MethodNotAllowed {
                allowed: vec![Post]
            }
        );
        // two routes one with other capitals: a conflict, unless both are case-sensitive
        let clash = specs(&[(Post, "/Hooks", 0, false), (Post, "/hooks", 1, false)]);
        let e = RouteTable::build_indexed(&clash).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].message.contains("with other capitals"),
            "{}",
            e[0].message
        );
        let mut apart = clash.clone();
        apart[0].case_sensitive = true;
        apart[1].case_sensitive = true;
        assert!(RouteTable::build_indexed(&apart).is_ok());
    }

    #[test]
    fn a_trailing_slash_answers_as_express_did_unless_strict() {
        let t = RouteTable::build_indexed(&specs(&[
            (Post, "/api/webhooks/vapi", 0, false),
            (Post, "/hooks/{tenant}/", 1, false),
            (Post, "/strict", 2, true),
            (Post, "/both", 3, false),
            (Post, "/both/", 4, false),
        ]))
        .unwrap();
        let at = |method, path| t.lookup(Some(method), path);
        assert_eq!(at(Post, "/api/webhooks/vapi/"), found(0, &[]));
        assert_eq!(at(Post, "/hooks/acme"), found(1, &[("tenant", "acme")]));
        assert_eq!(at(Post, "/hooks/acme/"), found(1, &[("tenant", "acme")]));
        assert_eq!(
            at(Get, "/api/webhooks/vapi/"),
            Lookup::MethodNotAllowed {
                allowed: vec![Post]
            }
        );
        // strict: only as written
        assert_eq!(at(Post, "/strict"), found(2, &[]));
        assert_eq!(at(Post, "/strict/"), Lookup::NotFound);
        // both spellings declared: each its own
        assert_eq!(at(Post, "/both"), found(3, &[]));
        assert_eq!(at(Post, "/both/"), found(4, &[]));
        // one slash only, nothing else normalized
        for path in [
            "/api/webhooks/vapi//",
            "/api/webhooks/vapi/.",
            "/api/webhooks/vapi/./",
            "/api/webhooks/x/../vapi",
            "/api/webhooks/vapi%2F",
            "/api/webhooks/vapi/%2e",
            "/api/webhooks//vapi",
            "/",
        ] {
            assert_eq!(at(Post, path), Lookup::NotFound, "{path}");
        }
    }

    #[test]
    fn lookup_found_405_404() {
        let t = RouteTable::build(&[(Post, "/a"), (Get, "/a"), (Post, "/t/{tenant}/sms")]).unwrap();
        assert_eq!(
            t.lookup(Some(Post), "/a"),
            Lookup::Found {
                pipeline: 0,
                params: vec![]
            }
        );
        assert_eq!(
            t.lookup(Some(Delete), "/a"),
            Lookup::MethodNotAllowed {
                allowed: vec![Get, Post]
            }
        );
        assert_eq!(
            t.lookup(None, "/a"),
            Lookup::MethodNotAllowed {
                allowed: vec![Get, Post]
            }
        );
        assert_eq!(
            t.lookup(Some(Post), "/t/acme/sms"),
            Lookup::Found {
                pipeline: 2,
                params: vec![("tenant".into(), "acme".into())]
            }
        );
        assert_eq!(t.lookup(Some(Post), "/b"), Lookup::NotFound);
    }

    #[test]
    fn conflicts_are_reported() {
        let err = RouteTable::build(&[
            (Post, "/a"),
            (Post, "/a"),
            (Post, "/health"),
            (Get, "/x/{a}"),
            (Get, "/x/{b}"),
        ])
        .unwrap_err();
        assert_eq!(err.len(), 3);
        assert_eq!(
            err[0],
            RouteConflict {
                pipeline: 1,
                with: Some(0),
                message: "route POST /a is already taken".into()
            }
        );
        assert_eq!(err[1].pipeline, 2);
        assert_eq!(err[2].pipeline, 4);
        assert_eq!(err[2].with, Some(3));
    }

    #[test]
    fn the_console_paths_are_the_engines() {
        let err = RouteTable::build(&[
            (Post, "/console"),
            (Get, "/console/hooks"),
            (Post, "/consoles"),
        ])
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].message.contains("reserved for the engine"));
    }
}
