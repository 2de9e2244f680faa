//! Deploy-key answers as the real service may give them rather than as documented:
//! another text for the duplicate 400, comments not kept, bare 404s, and repositories or
//! projects a credential can no longer see. Each one is a switch (config and
//! `/_sim/deploy-key-variants`), off by default; docs/simulator.md gives the evidence.

use serde::{Deserialize, Serialize};

use super::state::Target;

/// The text of the 400 for a key already on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DuplicateMessage {
    /// "Someone has already added that access key to this repository." (FACTS.md).
    #[default]
    Documented,
    /// A bare "Bad request" with no field and no word about keys.
    Generic,
    /// Another wording about the key that does not say "already added".
    Different,
}

/// What happens to the comment of a key line on create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Comments {
    /// Kept whole, returned in `comment`.
    #[default]
    Kept,
    /// Dropped: `comment` is empty.
    Dropped,
    /// Cut to its first word.
    FirstWord,
}

/// A repository (`acme/api`) or project (`acme/CORE`) that answers 404 to a credential
/// (an API token's email or an OAuth consumer's key), as when the credential lost access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HiddenTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub credential: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployKeyVariants {
    #[serde(default)]
    pub duplicate_message: DuplicateMessage,
    #[serde(default)]
    pub comments: Comments,
    /// Every 404 of the deploy-key endpoints has an empty body: a missing key, repository
    /// or project cannot be told apart by the answer.
    #[serde(default)]
    pub bare_not_found: bool,
    #[serde(default)]
    pub hidden: Vec<HiddenTarget>,
}

/// The duplicate key's text in the Different variant.
pub const DIFFERENT_DUPLICATE: &str = "This SSH key is in use as an access key here.";

impl DeployKeyVariants {
    pub fn comment(&self, comment: String) -> String {
        match self.comments {
            Comments::Kept => comment,
            Comments::Dropped => String::new(),
            Comments::FirstWord => comment.split_whitespace().next().unwrap_or_default().to_owned(),
        }
    }

    /// Whether `target` answers 404 to `credential`.
    pub fn hides(&self, target: &Target, credential: &str) -> bool {
        let path = target.path();
        self.hidden.iter().any(|h| {
            h.credential == credential
                && match target {
                    Target::Repository { .. } => h.repository.as_deref() == Some(path.as_str()),
                    Target::Project { .. } => h.project.as_deref() == Some(path.as_str()),
                }
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        for h in &self.hidden {
            let named = h.repository.iter().chain(h.project.iter()).count();
            if named != 1 || h.credential.is_empty() {
                return Err("each hidden entry names exactly one of repository or project (workspace/name) and a credential".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_kept_dropped_or_cut() {
        let mut v = DeployKeyVariants::default();
        assert_eq!(v.comment("a b c".into()), "a b c");
        v.comments = Comments::Dropped;
        assert_eq!(v.comment("a b c".into()), "");
        v.comments = Comments::FirstWord;
        assert_eq!(v.comment("a b c".into()), "a");
        assert_eq!(v.comment("".into()), "");
    }

    #[test]
    fn a_hidden_target_is_hidden_from_its_credential_only() {
        let v: DeployKeyVariants = serde_json::from_value(serde_json::json!({
            "hidden": [{"repository": "acme/api", "credential": "admin@acme.test"}]
        }))
        .unwrap();
        let api = Target::Repository { workspace: "acme".into(), slug: "api".into() };
        let core = Target::Project { workspace: "acme".into(), key: "api".into() };
        assert!(v.hides(&api, "admin@acme.test"));
        assert!(!v.hides(&api, "ck"));
        assert!(!v.hides(&core, "admin@acme.test"));
        assert!(v.validate().is_ok());
        let bad: DeployKeyVariants = serde_json::from_value(serde_json::json!({"hidden": [{"credential": "x"}]})).unwrap();
        assert!(bad.validate().is_err());
    }
}
