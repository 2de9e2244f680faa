//! What the simulated Bitbucket remembers: registered keys, minted OAuth tokens, and
//! OAuth consumers replaced at runtime. Persisted atomically after every mutation so a
//! restarted simulator loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SimError;
use super::config::OAuthConsumerConfig;
use super::keys;

const STATE_VERSION: u32 = 1;

/// What an access key is registered on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    Repository { workspace: String, slug: String },
    Project { workspace: String, key: String },
}

impl Target {
    /// `acme/api` or `acme/CORE`.
    pub fn path(&self) -> String {
        match self {
            Target::Repository { workspace, slug } => format!("{workspace}/{slug}"),
            Target::Project { workspace, key } => format!("{workspace}/{key}"),
        }
    }

    /// The inspection API's form: `{"repository":"acme/api"}` or `{"project":"acme/CORE"}`.
    pub fn inspection_json(&self) -> serde_json::Value {
        match self {
            Target::Repository { .. } => serde_json::json!({ "repository": self.path() }),
            Target::Project { .. } => serde_json::json!({ "project": self.path() }),
        }
    }
}

/// A Bitbucket account as rendered in `owner` / `created_by`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    #[serde(rename = "type")]
    pub kind: String,
    pub display_name: String,
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: u64,
    pub target: Target,
    /// `<type> <base64>`, comment stripped.
    pub key: String,
    pub comment: String,
    pub label: String,
    /// Bitbucket's timestamp format, e.g. `2021-08-10T05:28:00.570859+00:00`.
    pub created_on: String,
    pub added_by: Account,
    /// Derived from `key`; recomputed on load rather than trusted from the file.
    #[serde(skip)]
    pub fingerprint: String,
}

/// A minted OAuth access token. Only its SHA-256 is kept, so neither memory dumps nor
/// the state file hold a usable token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub digest: String,
    pub consumer: String,
    pub scopes: Vec<String>,
    /// Unix time in milliseconds.
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct State {
    next_id: u64,
    keys: BTreeMap<u64, KeyRecord>,
    tokens: HashMap<String, TokenRecord>,
    consumers: Vec<OAuthConsumerConfig>,
    /// True once consumers were replaced at runtime; only then are they persisted, so the
    /// config file stays the source of truth until an admin "rotates" something.
    consumers_replaced: bool,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    version: u32,
    next_id: u64,
    keys: Vec<KeyRecord>,
    #[serde(default)]
    tokens: Vec<TokenRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth_consumers: Option<Vec<OAuthConsumerConfig>>,
}

impl State {
    pub fn new(consumers: Vec<OAuthConsumerConfig>, path: Option<PathBuf>) -> Self {
        Self {
            next_id: 1,
            keys: BTreeMap::new(),
            tokens: HashMap::new(),
            consumers,
            consumers_replaced: false,
            path,
        }
    }

    /// Starts from `path` if it exists, otherwise empty.
    pub fn load_or_new(
        consumers: Vec<OAuthConsumerConfig>,
        path: Option<PathBuf>,
    ) -> Result<Self, SimError> {
        let mut state = Self::new(consumers, path.clone());
        let Some(path) = path else {
            return Ok(state);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(load_error(&path, e.to_string())),
        };
        let persisted: Persisted =
            serde_json::from_str(&text).map_err(|e| load_error(&path, e.to_string()))?;
        if persisted.version != STATE_VERSION {
            return Err(load_error(
                &path,
                format!("unsupported state version {}", persisted.version),
            ));
        }
        for mut record in persisted.keys {
            record.fingerprint = keys::fingerprint(&record.key).ok_or_else(|| {
                load_error(&path, format!("key {} is not a valid public key", record.id))
            })?;
            state.keys.insert(record.id, record);
        }
        let highest = state.keys.keys().next_back().copied().unwrap_or(0);
        // Never hand out an id twice, even if the file was edited by hand.
        state.next_id = persisted.next_id.max(highest.saturating_add(1));
        state.tokens = persisted
            .tokens
            .into_iter()
            .map(|t| (t.digest.clone(), t))
            .collect();
        if let Some(consumers) = persisted.oauth_consumers {
            state.consumers = consumers;
            state.consumers_replaced = true;
        }
        Ok(state)
    }

    /// Writes the state to its file (if any): temp file then rename, so a reader or a
    /// crash never sees half a file. No fsync: this guards against the simulator being
    /// killed, not against power loss.
    pub fn save(&self, now_ms: i64) -> Result<(), SimError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let persisted = Persisted {
            version: STATE_VERSION,
            next_id: self.next_id,
            keys: self.keys.values().cloned().collect(),
            tokens: self
                .tokens
                .values()
                .filter(|t| t.expires_at_ms > now_ms)
                .cloned()
                .collect(),
            oauth_consumers: self.consumers_replaced.then(|| self.consumers.clone()),
        };
        let text = serde_json::to_vec_pretty(&persisted)
            .map_err(|e| save_error(path, std::io::Error::other(e)))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(|e| save_error(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| save_error(path, e))?;
        Ok(())
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// Keys on one target, oldest first (Bitbucket lists in creation order).
    pub fn keys_on<'a>(&'a self, target: &'a Target) -> impl Iterator<Item = &'a KeyRecord> {
        self.keys.values().filter(move |k| &k.target == target)
    }

    pub fn key(&self, id: u64) -> Option<&KeyRecord> {
        self.keys.get(&id)
    }

    pub fn key_mut(&mut self, id: u64) -> Option<&mut KeyRecord> {
        self.keys.get_mut(&id)
    }

    pub fn has_key_material_on(&self, target: &Target, key: &str) -> bool {
        self.keys_on(target).any(|k| k.key == key)
    }

    /// Allocates the next id; ids are never reused.
    pub fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    pub fn insert_key(&mut self, record: KeyRecord) {
        self.keys.insert(record.id, record);
    }

    pub fn remove_key(&mut self, id: u64) -> Option<KeyRecord> {
        self.keys.remove(&id)
    }

    pub fn token(&self, digest: &str) -> Option<&TokenRecord> {
        self.tokens.get(digest)
    }

    pub fn insert_token(&mut self, record: TokenRecord, now_ms: i64) {
        // Expired tokens are useless; dropping them keeps memory flat in long benchmarks.
        self.tokens.retain(|_, t| t.expires_at_ms > now_ms);
        self.tokens.insert(record.digest.clone(), record);
    }

    pub fn remove_token(&mut self, digest: &str) {
        self.tokens.remove(digest);
    }

    pub fn consumers(&self) -> &[OAuthConsumerConfig] {
        &self.consumers
    }

    /// Replaces the consumers and returns the old list (for rollback).
    pub fn replace_consumers(
        &mut self,
        consumers: Vec<OAuthConsumerConfig>,
    ) -> (Vec<OAuthConsumerConfig>, bool) {
        let old = std::mem::replace(&mut self.consumers, consumers);
        let was_replaced = std::mem::replace(&mut self.consumers_replaced, true);
        (old, was_replaced)
    }

    pub fn restore_consumers(&mut self, consumers: Vec<OAuthConsumerConfig>, replaced: bool) {
        self.consumers = consumers;
        self.consumers_replaced = replaced;
    }
}

fn load_error(path: &Path, message: String) -> SimError {
    SimError::LoadState {
        path: path.to_path_buf(),
        message,
    }
}

fn save_error(path: &Path, source: std::io::Error) -> SimError {
    SimError::SaveState {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO";

    fn record(state: &mut State) -> KeyRecord {
        KeyRecord {
            id: state.allocate_id(),
            target: Target::Repository {
                workspace: "acme".into(),
                slug: "api".into(),
            },
            key: ED25519.into(),
            comment: "c".into(),
            label: "l".into(),
            created_on: "2024-01-01T00:00:00.000000+00:00".into(),
            added_by: Account {
                kind: "user".into(),
                display_name: "a".into(),
                uuid: "{u}".into(),
                account_id: None,
                nickname: None,
            },
            fingerprint: keys::fingerprint(ED25519).unwrap_or_default(),
        }
    }

    #[test]
    fn state_survives_a_restart_and_ids_keep_increasing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut state = State::new(vec![], Some(path.clone()));
        let first = record(&mut state);
        state.insert_key(first.clone());
        let second = record(&mut state);
        state.insert_key(second.clone());
        state.remove_key(second.id);
        state.save(0).expect("save");

        let mut reloaded = State::load_or_new(vec![], Some(path)).expect("load");
        assert_eq!(reloaded.key(first.id), Some(&first));
        assert!(reloaded.key(second.id).is_none());
        assert_eq!(reloaded.allocate_id(), 3, "a deleted id is never reused");
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(State::load_or_new(vec![], Some(path)).is_err());
    }
}
