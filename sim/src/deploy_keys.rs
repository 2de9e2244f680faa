//! The deploy-key ("access key") endpoints of repositories and projects.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::SimError;
use super::auth::Principal;
use super::catalog::Catalog;
use super::keys::{AcceptedKey, accept_public_key};
use super::model;
use super::pagination;
use super::response::SimResponse;
use super::routes::{Operation, Route, parse_key_id};
use super::state::{KeyRecord, State, Target};
use super::variants::{DIFFERENT_DUPLICATE, DeployKeyVariants, DuplicateMessage};

/// Bitbucket's message for a key already on the target, verbatim from the real service
/// (also used for projects, so clients matching on the text behave the same).
pub const DUPLICATE_KEY: &str = "Someone has already added that access key to this repository.";

/// Everything an operation needs besides the request itself.
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub state: &'a mut State,
    pub principal: &'a Principal,
    /// Scheme and host as the client addressed the simulator.
    pub base: &'a str,
    pub default_pagelen: u32,
    pub now: jiff::Timestamp,
    /// Fault injection: every page gets a `next` link to this origin instead of `base`.
    pub next_base: Option<String>,
    /// Answers as the real service may give them.
    pub variants: &'a DeployKeyVariants,
}

pub fn handle(op: Operation, route: &Route, query: Option<&str>, body: &[u8], ctx: Context<'_>) -> SimResponse {
    let bare = ctx.variants.bare_not_found;
    let response = answer(op, route, query, body, ctx);
    if bare && response.status == StatusCode::NOT_FOUND {
        return SimResponse::empty(StatusCode::NOT_FOUND);
    }
    response
}

fn answer(op: Operation, route: &Route, query: Option<&str>, body: &[u8], ctx: Context<'_>) -> SimResponse {
    if let Route::Workspace { workspace } = route {
        return match ctx.catalog.workspace(workspace) {
            Some(ws) => SimResponse::json(
                StatusCode::OK,
                &serde_json::json!({
                    "type": "workspace",
                    "slug": ws.slug,
                    "name": ws.slug,
                    "uuid": ws.uuid,
                    "is_private": true,
                    "links": {"self": {"href": format!("{}/2.0/workspaces/{}", ctx.base, ws.slug)}},
                }),
            ),
            None => SimResponse::bitbucket_error(StatusCode::NOT_FOUND, &format!("No workspace with identifier '{workspace}'.")),
        };
    }
    let (target, key_id) = match resolve_target(route, ctx.catalog) {
        Ok(found) => found,
        Err(response) => return response,
    };
    // A target the credential lost access to answers like one that does not exist.
    if ctx.variants.hides(&target, ctx.principal.credential.id()) {
        let message = match &target {
            Target::Repository { .. } => format!("Repository {} not found", target.path()),
            Target::Project { workspace, key } => format!("Project {key} not found in workspace {workspace}"),
        };
        return SimResponse::bitbucket_error(StatusCode::NOT_FOUND, &message);
    }
    match op {
        Operation::RepoKeysList | Operation::ProjectKeysList => list(&target, query, &ctx),
        Operation::RepoKeyCreate | Operation::ProjectKeyCreate => create(target, body, ctx),
        Operation::RepoKeyGet | Operation::ProjectKeyGet => match find(&target, key_id, ctx.state) {
            Ok(record) => SimResponse::json(StatusCode::OK, &model::key_object(record, ctx.catalog, ctx.base)),
            Err(response) => response,
        },
        Operation::RepoKeyUpdate => update(&target, key_id, body, ctx),
        Operation::RepoKeyDelete | Operation::ProjectKeyDelete => delete(&target, key_id, ctx),
        // The token endpoint is not a deploy-key operation; never routed here.
        Operation::Token | Operation::WorkspaceGet => SimResponse::bitbucket_error(StatusCode::NOT_FOUND, "Resource not found"),
    }
}

/// The repository or project in the path (404 if unknown) and the key id, if any.
fn resolve_target<'r>(route: &'r Route, catalog: &Catalog) -> Result<(Target, Option<&'r str>), SimResponse> {
    let not_found = |message: String| SimResponse::bitbucket_error(StatusCode::NOT_FOUND, &message);
    match route {
        Route::RepoKeys { workspace, repo } | Route::RepoKey { workspace, repo, .. } => {
            let key_id = match route {
                Route::RepoKey { key_id, .. } => Some(key_id.as_str()),
                _ => None,
            };
            catalog
                .repository(workspace, repo)
                .map(|r| (r.target(), key_id))
                .ok_or_else(|| not_found(format!("Repository {workspace}/{repo} not found")))
        }
        Route::ProjectKeys { workspace, project } | Route::ProjectKey { workspace, project, .. } => {
            let key_id = match route {
                Route::ProjectKey { key_id, .. } => Some(key_id.as_str()),
                _ => None,
            };
            if catalog.workspace(workspace).is_none() {
                return Err(not_found(format!("Workspace {workspace} not found")));
            }
            catalog
                .project(workspace, project)
                .map(|p| (p.target(), key_id))
                .ok_or_else(|| not_found(format!("Project {project} not found in workspace {workspace}")))
        }
        Route::Token | Route::Workspace { .. } | Route::NotFound => Err(not_found("Resource not found".into())),
    }
}

fn find<'s>(target: &Target, key_id: Option<&str>, state: &'s State) -> Result<&'s KeyRecord, SimResponse> {
    let raw = key_id.unwrap_or("");
    parse_key_id(raw)
        .and_then(|id| state.key(id))
        .filter(|record| &record.target == target)
        .ok_or_else(|| SimResponse::bitbucket_error(StatusCode::NOT_FOUND, &format!("Deploy key {raw} not found on {}", target.path())))
}

fn list(target: &Target, query: Option<&str>, ctx: &Context<'_>) -> SimResponse {
    let request = match pagination::parse_page_query(query, ctx.default_pagelen) {
        Ok(request) => request,
        Err(message) => return SimResponse::bitbucket_error(StatusCode::BAD_REQUEST, &message),
    };
    let records: Vec<&KeyRecord> = ctx.state.keys_on(target).collect();
    let self_url = format!("{}{}", ctx.base, model::collection_path(target));
    let render = |record: &&KeyRecord| model::key_object(record, ctx.catalog, ctx.base);
    match pagination::page(&records, request, &self_url, render) {
        Some(mut page) => {
            if let Some(elsewhere) = &ctx.next_base {
                page["next"] = serde_json::Value::from(format!(
                    "{elsewhere}{}?pagelen={}&page={}",
                    model::collection_path(target),
                    request.pagelen,
                    request.page.saturating_add(1)
                ));
            }
            SimResponse::json(StatusCode::OK, &page)
        }
        None => SimResponse::bitbucket_error(StatusCode::NOT_FOUND, "Invalid page"),
    }
}

fn create(target: Target, body: &[u8], ctx: Context<'_>) -> SimResponse {
    let fields = match parse_object(body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let raw_key = match string_field(&fields, "key") {
        Ok(Some(key)) => key,
        Ok(None) => return SimResponse::field_error("key", "This field is required."),
        Err(response) => return response,
    };
    let label = match string_field(&fields, "label") {
        Ok(label) => label.unwrap_or_default(),
        Err(response) => return response,
    };
    let accepted = match accept_public_key(&raw_key) {
        Ok(accepted) => accepted,
        Err(rejection) => return SimResponse::field_error("key", &rejection.to_string()),
    };
    if ctx.state.has_key_material_on(&target, &accepted.key) {
        return match ctx.variants.duplicate_message {
            DuplicateMessage::Documented => SimResponse::field_error("key", DUPLICATE_KEY),
            DuplicateMessage::Generic => SimResponse::bitbucket_error(StatusCode::BAD_REQUEST, "Bad request"),
            DuplicateMessage::Different => SimResponse::field_error("key", DIFFERENT_DUPLICATE),
        };
    }
    let AcceptedKey { key, comment, fingerprint } = accepted;
    let comment = ctx.variants.comment(comment);
    let record = KeyRecord {
        id: ctx.state.allocate_id(),
        target,
        key,
        comment,
        label,
        created_on: model::timestamp(ctx.now),
        added_by: ctx.principal.account(),
        fingerprint,
    };
    save_and_answer(record, ctx)
}

/// PUT: label and comment may change, the key material may not.
fn update(target: &Target, key_id: Option<&str>, body: &[u8], ctx: Context<'_>) -> SimResponse {
    let existing = match find(target, key_id, ctx.state) {
        Ok(record) => record.clone(),
        Err(response) => return response,
    };
    let fields = match parse_object(body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let (label, comment, raw_key) = match (string_field(&fields, "label"), string_field(&fields, "comment"), string_field(&fields, "key")) {
        (Ok(label), Ok(comment), Ok(key)) => (label, comment, key),
        (Err(response), _, _) | (_, Err(response), _) | (_, _, Err(response)) => return response,
    };
    let mut updated = existing.clone();
    if let Some(raw_key) = raw_key {
        let accepted = match accept_public_key(&raw_key) {
            Ok(accepted) => accepted,
            Err(rejection) => return SimResponse::field_error("key", &rejection.to_string()),
        };
        if accepted.key != existing.key {
            return SimResponse::field_error("key", "The key of an access key cannot be changed; delete it and add the new key.");
        }
        // The comment is "parsed from the deploy key": a key line sets it.
        updated.comment = accepted.comment;
    }
    if let Some(comment) = comment {
        updated.comment = comment;
    }
    if let Some(label) = label {
        updated.label = label;
    }
    save_and_answer(updated, ctx)
}

/// Stores a key and answers 200 with the key object, as create and update do.
fn save_and_answer(record: KeyRecord, ctx: Context<'_>) -> SimResponse {
    let id = record.id;
    if let Err(response) = persist(ctx.state.put_key(record, ctx.now.as_millisecond())) {
        return response;
    }
    match ctx.state.key(id) {
        Some(record) => SimResponse::json(StatusCode::OK, &model::key_object(record, ctx.catalog, ctx.base)),
        None => internal_error(),
    }
}

fn delete(target: &Target, key_id: Option<&str>, ctx: Context<'_>) -> SimResponse {
    let id = match find(target, key_id, ctx.state) {
        Ok(record) => record.id,
        Err(response) => return response,
    };
    match persist(ctx.state.remove_key(id, ctx.now.as_millisecond())) {
        Ok(Some(_)) => SimResponse::empty(StatusCode::NO_CONTENT),
        Ok(None) => internal_error(),
        Err(response) => response,
    }
}

/// Turns a failed state write into a 500. `State` writes ahead, so a failed change
/// left nothing behind in memory or on disk.
pub fn persist<T>(result: Result<T, SimError>) -> Result<T, SimResponse> {
    result.map_err(|e| {
        tracing::error!(error = %e, "cannot persist simulator state");
        internal_error()
    })
}

fn internal_error() -> SimResponse {
    SimResponse::bitbucket_error(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
}

/// The request body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, SimResponse> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SimResponse::bitbucket_error(StatusCode::BAD_REQUEST, "Bad request: the body must be a JSON object.")),
        Err(e) => Err(SimResponse::bitbucket_error(StatusCode::BAD_REQUEST, &format!("Bad request: the body is not valid JSON ({e})."))),
    }
}

/// A string field; `null` counts as absent, any other type is a 400.
fn string_field(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, SimResponse> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(SimResponse::field_error(name, "Expected a string.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(map) = parse_object(&body) {
                let _ = string_field(&map, "key");
            }
        }

        #[test]
        fn arbitrary_json_objects_never_panic(key in prop::option::of(".*"), label in any::<Option<i32>>()) {
            let body = serde_json::json!({ "key": key, "label": label });
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Ok(map) = parse_object(&bytes) {
                let _ = string_field(&map, "key");
                let _ = string_field(&map, "label");
            }
        }
    }
}
