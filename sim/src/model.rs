//! Bitbucket's JSON objects, shaped as the spec and the real service shape them.

use serde_json::{Map, Value, json};

use super::catalog::{Catalog, TargetRef};
use super::state::{KeyRecord, Target};

/// `{"type":"error","error":{"message":..., "detail"?:..., "fields"?:...}}`.
pub fn error_body(message: &str, detail: Option<&str>, fields: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("message".into(), Value::from(message));
    if let Some(detail) = detail {
        error.insert("detail".into(), Value::from(detail));
    }
    if let Some(fields) = fields {
        error.insert("fields".into(), fields);
    }
    json!({ "type": "error", "error": error })
}

/// Bitbucket's timestamp format: microseconds and an explicit `+00:00`.
pub fn timestamp(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S.%6f+00:00").to_string()
}

/// The API path of a target's key collection (without scheme and host).
pub fn collection_path(target: &Target) -> String {
    match target {
        Target::Repository { workspace, slug } => {
            format!("/2.0/repositories/{workspace}/{slug}/deploy-keys")
        }
        Target::Project { workspace, key } => {
            format!("/2.0/workspaces/{workspace}/projects/{key}/deploy-keys")
        }
    }
}

/// The API path of a key (without scheme and host).
pub fn key_path(target: &Target, id: u64) -> String {
    format!("{}/{id}", collection_path(target))
}

/// A `deploy_key` or `project_deploy_key` object. `base` is scheme and host as the
/// client addressed us, so `links.self.href` is absolute and usable.
pub fn key_object(record: &KeyRecord, catalog: &Catalog, base: &str) -> Value {
    let mut obj = Map::new();
    obj.insert("id".into(), Value::from(record.id));
    obj.insert("key".into(), Value::from(record.key.as_str()));
    obj.insert("comment".into(), Value::from(record.comment.as_str()));
    obj.insert("label".into(), Value::from(record.label.as_str()));
    // The schema says `added_on`, every real answer says `created_on`: send both.
    obj.insert("added_on".into(), Value::from(record.created_on.as_str()));
    obj.insert("created_on".into(), Value::from(record.created_on.as_str()));
    obj.insert("last_used".into(), Value::Null);
    obj.insert("links".into(), json!({ "self": { "href": format!("{base}{}", key_path(&record.target, record.id)) } }));
    let account = serde_json::to_value(&record.added_by).unwrap_or(Value::Null);
    match (&record.target, catalog.describe(&record.target)) {
        (_, Some(TargetRef::Repository(repo))) => {
            obj.insert("type".into(), Value::from("deploy_key"));
            obj.insert(
                "repository".into(),
                json!({
                    "type": "repository",
                    "full_name": repo.full_name(),
                    "name": repo.name,
                    "uuid": repo.uuid,
                }),
            );
            obj.insert("owner".into(), account);
        }
        (_, Some(TargetRef::Project(project))) => {
            obj.insert("type".into(), Value::from("project_deploy_key"));
            obj.insert(
                "project".into(),
                json!({
                    "type": "project",
                    "key": project.key,
                    "name": project.name,
                    "uuid": project.uuid,
                }),
            );
            obj.insert("created_by".into(), account);
        }
        // Only reachable for keys whose target vanished from the config; still answer.
        (Target::Repository { .. }, None) => {
            obj.insert("type".into(), Value::from("deploy_key"));
            obj.insert("owner".into(), account);
        }
        (Target::Project { .. }, None) => {
            obj.insert("type".into(), Value::from("project_deploy_key"));
            obj.insert("created_by".into(), account);
        }
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_bitbuckets() {
        let ts: jiff::Timestamp = "2021-08-10T05:28:00.570859Z".parse().expect("ts");
        assert_eq!(timestamp(ts), "2021-08-10T05:28:00.570859+00:00");
    }

    #[test]
    fn error_body_has_optional_parts() {
        assert_eq!(error_body("m", None, None), json!({"type": "error", "error": {"message": "m"}}));
        let full = error_body("m", Some("d"), Some(json!({"key": ["bad"]})));
        assert_eq!(full["error"]["fields"]["key"][0], "bad");
        assert_eq!(full["error"]["detail"], "d");
    }
}
