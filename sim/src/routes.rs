//! Which Bitbucket endpoint a request is for.
//!
//! Hand-rolled rather than axum's router so that every input, however odd, ends in a
//! Bitbucket-shaped answer (axum's rejections answer in its own words) and so the whole
//! path can be property-tested without a server.

use axum::http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    RepoKeys { workspace: String, repo: String },
    RepoKey { workspace: String, repo: String, key_id: String },
    ProjectKeys { workspace: String, project: String },
    ProjectKey { workspace: String, project: String, key_id: String },
    Token,
    Workspace { workspace: String },
    NotFound,
}

/// One API operation; its name is the "endpoint kind" of the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    RepoKeysList,
    RepoKeyCreate,
    RepoKeyGet,
    RepoKeyUpdate,
    RepoKeyDelete,
    ProjectKeysList,
    ProjectKeyCreate,
    ProjectKeyGet,
    ProjectKeyDelete,
    Token,
    WorkspaceGet,
}

impl Operation {
    pub fn kind(self) -> &'static str {
        match self {
            Operation::RepoKeysList => "repo_keys_list",
            Operation::RepoKeyCreate => "repo_key_create",
            Operation::RepoKeyGet => "repo_key_get",
            Operation::RepoKeyUpdate => "repo_key_update",
            Operation::RepoKeyDelete => "repo_key_delete",
            Operation::ProjectKeysList => "project_keys_list",
            Operation::ProjectKeyCreate => "project_key_create",
            Operation::ProjectKeyGet => "project_key_get",
            Operation::ProjectKeyDelete => "project_key_delete",
            Operation::Token => "token",
            Operation::WorkspaceGet => "workspace_get",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Op(Operation),
    /// The path exists but not with this method; `allow` is the `Allow` header.
    MethodNotAllowed {
        allow: &'static str,
    },
    NotFound,
}

impl Resolved {
    pub fn kind(&self) -> &'static str {
        match self {
            Resolved::Op(op) => op.kind(),
            Resolved::MethodNotAllowed { .. } => "method_not_allowed",
            Resolved::NotFound => "not_found",
        }
    }
}

pub fn parse_route(path: &str) -> Route {
    let Some(segments) = segments(path) else {
        return Route::NotFound;
    };
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["2.0", "repositories", ws, repo, "deploy-keys"] => Route::RepoKeys { workspace: (*ws).to_owned(), repo: (*repo).to_owned() },
        ["2.0", "repositories", ws, repo, "deploy-keys", id] => {
            Route::RepoKey { workspace: (*ws).to_owned(), repo: (*repo).to_owned(), key_id: (*id).to_owned() }
        }
        ["2.0", "workspaces", ws, "projects", project, "deploy-keys"] => {
            Route::ProjectKeys { workspace: (*ws).to_owned(), project: (*project).to_owned() }
        }
        ["2.0", "workspaces", ws, "projects", project, "deploy-keys", id] => {
            Route::ProjectKey { workspace: (*ws).to_owned(), project: (*project).to_owned(), key_id: (*id).to_owned() }
        }
        ["site", "oauth2", "access_token"] => Route::Token,
        ["2.0", "workspaces", ws] => Route::Workspace { workspace: (*ws).to_owned() },
        _ => Route::NotFound,
    }
}

pub fn resolve(route: &Route, method: &Method) -> Resolved {
    let op = match (route, method.as_str()) {
        (Route::RepoKeys { .. }, "GET") => Operation::RepoKeysList,
        (Route::RepoKeys { .. }, "POST") => Operation::RepoKeyCreate,
        (Route::RepoKey { .. }, "GET") => Operation::RepoKeyGet,
        (Route::RepoKey { .. }, "PUT") => Operation::RepoKeyUpdate,
        (Route::RepoKey { .. }, "DELETE") => Operation::RepoKeyDelete,
        (Route::ProjectKeys { .. }, "GET") => Operation::ProjectKeysList,
        (Route::ProjectKeys { .. }, "POST") => Operation::ProjectKeyCreate,
        (Route::ProjectKey { .. }, "GET") => Operation::ProjectKeyGet,
        (Route::ProjectKey { .. }, "DELETE") => Operation::ProjectKeyDelete,
        (Route::Token, "POST") => Operation::Token,
        (Route::Workspace { .. }, "GET") => Operation::WorkspaceGet,
        (Route::Workspace { .. }, _) => return Resolved::MethodNotAllowed { allow: "GET" },
        (Route::NotFound, _) => return Resolved::NotFound,
        (Route::RepoKeys { .. } | Route::ProjectKeys { .. }, _) => {
            return Resolved::MethodNotAllowed { allow: "GET, POST" };
        }
        (Route::RepoKey { .. }, _) => {
            return Resolved::MethodNotAllowed { allow: "GET, PUT, DELETE" };
        }
        // Project keys have no PUT in Bitbucket: delete and add again.
        (Route::ProjectKey { .. }, _) => {
            return Resolved::MethodNotAllowed { allow: "GET, DELETE" };
        }
        (Route::Token, _) => return Resolved::MethodNotAllowed { allow: "POST" },
    };
    Resolved::Op(op)
}

/// Decoded path segments; one trailing slash is tolerated (Bitbucket's own examples
/// use `.../deploy-keys/`). `None` for empty segments or undecodable escapes.
pub fn segments(path: &str) -> Option<Vec<String>> {
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    trimmed
        .split('/')
        .map(|seg| {
            let decoded = percent_decode(seg)?;
            (!decoded.is_empty()).then_some(decoded)
        })
        .collect()
}

/// `%XX` decoding of a path segment (no `+` rule: that is for query strings).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16))?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A key id as Bitbucket would route it: digits only, fitting in 64 bits.
pub fn parse_key_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn deploy_key_paths_are_recognised() {
        assert_eq!(
            parse_route("/2.0/repositories/acme/api/deploy-keys/"),
            Route::RepoKeys { workspace: "acme".into(), repo: "api".into() }
        );
        assert_eq!(
            parse_route("/2.0/workspaces/%7Bws%7D/projects/CORE/deploy-keys/12"),
            Route::ProjectKey { workspace: "{ws}".into(), project: "CORE".into(), key_id: "12".into() }
        );
        assert_eq!(parse_route("/site/oauth2/access_token"), Route::Token);
        assert_eq!(parse_route("/2.0/repositories//api/deploy-keys"), Route::NotFound);
        assert_eq!(parse_route("/2.0/repositories/a/b/deploy-keys/%zz"), Route::NotFound);
    }

    #[test]
    fn project_keys_have_no_put() {
        let route = parse_route("/2.0/workspaces/acme/projects/CORE/deploy-keys/1");
        assert_eq!(resolve(&route, &Method::PUT), Resolved::MethodNotAllowed { allow: "GET, DELETE" });
    }

    #[test]
    fn key_ids_are_digits_only() {
        assert_eq!(parse_key_id("42"), Some(42));
        assert_eq!(parse_key_id("+42"), None);
        assert_eq!(parse_key_id("99999999999999999999999"), None);
        assert_eq!(parse_key_id(""), None);
    }

    proptest! {
        #[test]
        fn arbitrary_paths_never_panic(path in "(/[%-~]{0,12}){0,9}/?", method in "[A-Z]{1,8}") {
            let route = parse_route(&path);
            if let Ok(method) = Method::from_bytes(method.as_bytes()) {
                let _ = resolve(&route, &method);
            }
        }

        #[test]
        fn arbitrary_segments_never_panic(s in ".*") {
            let _ = percent_decode(&s);
            let _ = parse_key_id(&s);
            let _ = segments(&s);
        }
    }
}
