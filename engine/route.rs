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

impl RouteTable {
    /// Build from `(method, path)` per pipeline, in pipeline order.
    pub fn build(routes: &[(HttpMethod, &str)]) -> Result<RouteTable, Vec<RouteConflict>> {
        let indexed: Vec<(HttpMethod, &str, usize, bool)> = routes
            .iter()
            .enumerate()
            .map(|(i, (m, p))| (*m, *p, i, false))
            .collect();
        RouteTable::build_indexed(&indexed)
    }

    /// Build from `(method, path, pipeline, strict)`: a pipeline may have several routes (an
    /// OAuth pipeline's start and callback); `strict`: the path answers only as written, not
    /// also with a trailing slash added or removed. Conflicts name positions in `routes`.
    pub fn build_indexed(
        routes: &[(HttpMethod, &str, usize, bool)],
    ) -> Result<RouteTable, Vec<RouteConflict>> {
        // method -> (pipeline, position in `routes`)
        let mut by_path: BTreeMap<&str, BTreeMap<HttpMethod, (usize, usize)>> = BTreeMap::new();
        let mut strict_paths: std::collections::BTreeSet<&str> = Default::default();
        let mut first_of_path: Vec<(&str, usize)> = Vec::new();
        let mut conflicts = Vec::new();
        for (i, (method, path, pipeline, strict)) in routes.iter().enumerate() {
            if *strict {
                strict_paths.insert(path);
            }
            if RESERVED_PATHS.contains(path) || is_console_path(path) {
                conflicts.push(RouteConflict {
                    pipeline: i,
                    with: None,
                    message: format!(
                        "path `{path}` is reserved for the engine; choose another path"
                    ),
                });
                continue;
            }
            let methods = by_path.entry(path).or_default();
            if methods.is_empty() {
                first_of_path.push((path, i));
            }
            if let Some(&(_, other)) = methods.get(method) {
                conflicts.push(RouteConflict {
                    pipeline: i,
                    with: Some(other),
                    message: format!("route {method} {path} is already taken"),
                });
                continue;
            }
            methods.insert(*method, (*pipeline, i));
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
        if conflicts.is_empty() {
            Ok(RouteTable { router })
        } else {
            Err(conflicts)
        }
    }

    /// Find the pipeline for a request: the path as written, else (as Express's default
    /// routing does) the path with its trailing slash removed or added, unless that route is
    /// `trailing_slash: strict`.
    pub fn lookup(&self, method: Option<HttpMethod>, path: &str) -> Lookup {
        let m = match self.router.at(path) {
            Ok(m) => m,
            Err(_) => match other_spelling(path)
                .and_then(|other| self.router.at(&other).ok().map(|m| found(method, &m)))
            {
                Some((lookup, false)) => return lookup,
                _ => return Lookup::NotFound,
            },
        };
        found(method, &m).0
    }
}

/// A matched path's answer for `method`, and whether the path is strict.
fn found(method: Option<HttpMethod>, m: &matchit::Match<'_, '_, &Methods>) -> (Lookup, bool) {
    let lookup = match method.and_then(|meth| m.value.pipelines.get(&meth)) {
        Some(&pipeline) => Lookup::Found {
            pipeline,
            params: m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
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

    #[test]
    fn a_trailing_slash_answers_as_express_did_unless_strict() {
        let t = RouteTable::build_indexed(&[
            (Post, "/api/webhooks/vapi", 0, false),
            (Post, "/hooks/{tenant}/", 1, false),
            (Post, "/strict", 2, true),
            (Post, "/both", 3, false),
            (Post, "/both/", 4, false),
        ])
        .unwrap();
        let at = |method, path| t.lookup(Some(method), path);
        let found = |pipeline, params: &[(&str, &str)]| Lookup::Found {
            pipeline,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
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
