use std::fmt;

use serde::Deserialize;

/// Where an access key is registered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A repository slug.
    Repository(String),
    /// A project key.
    Project(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Repository(r) => write!(f, "repository {r}"),
            Target::Project(p) => write!(f, "project {p}"),
        }
    }
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Repository(n) | Target::Project(n) => n,
        }
    }
}

/// A deploy key as Bitbucket returns it. `key` holds type and base64 only: Bitbucket
/// strips the comment from it and returns it in `comment`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DeployKey {
    pub id: i64,
    pub key: String,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

impl DeployKey {
    /// `type base64` of the key, whatever Bitbucket did to the comment.
    pub fn key_body(&self) -> &str {
        key_body(&self.key)
    }
}

/// The first two fields of an authorized_keys line.
pub fn key_body(line: &str) -> &str {
    let line = line.trim();
    let mut fields = line.splitn(3, ' ');
    match (fields.next(), fields.next()) {
        (Some(t), Some(b)) => &line[..t.len() + 1 + b.len()],
        _ => line,
    }
}

#[derive(Deserialize)]
pub(crate) struct Page<T> {
    #[serde(default = "Vec::new")]
    pub values: Vec<T>,
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Deserialize)]
pub(crate) struct ErrorDetail {
    /// Text in every known answer; read leniently (any JSON becomes text).
    #[serde(default, deserialize_with = "any_as_text")]
    pub message: String,
    /// Any JSON value: a string in the spec, an object for scope errors
    /// (`{"required": [...], "granted": [...]}`), anything else from elsewhere.
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
    #[serde(default)]
    pub fields: Option<serde_json::Value>,
}

fn any_as_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[derive(Deserialize)]
pub(crate) struct TokenBody {
    pub access_token: String,
    #[serde(default)]
    pub scope: Option<String>,
    /// The field's name before 2026-05-04.
    #[serde(default)]
    pub scopes: Option<String>,
    /// Read leniently (a server may send any number, or a string): see `lifetime`.
    #[serde(default)]
    pub expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(crate) struct OAuthErrorBody {
    #[serde(deserialize_with = "any_as_text")]
    pub error: String,
    #[serde(default, deserialize_with = "any_as_text")]
    pub error_description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_body_drops_the_comment() {
        assert_eq!(key_body("ssh-ed25519 AAAA comment here"), "ssh-ed25519 AAAA");
        assert_eq!(key_body("ssh-ed25519 AAAA"), "ssh-ed25519 AAAA");
        assert_eq!(key_body("garbage"), "garbage");
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_response_never_panics(s in ".*") {
            let _ = serde_json::from_str::<Page<DeployKey>>(&s);
            let _ = serde_json::from_str::<ErrorBody>(&s);
            let _ = serde_json::from_str::<TokenBody>(&s);
            let _ = serde_json::from_str::<OAuthErrorBody>(&s);
            let _ = key_body(&s);
        }
    }
}
