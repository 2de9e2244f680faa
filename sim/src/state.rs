//! What the simulated Bitbucket remembers: registered keys, minted OAuth tokens, and
//! OAuth consumers replaced at runtime. Every change is persisted before it is answered
//! (write-ahead journal plus an atomically replaced snapshot), so a restarted — even
//! SIGKILLed — simulator loses nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
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

/// The simulator's memory. With a path, every change is first appended to a journal
/// (`<path>.journal`, one JSON line per change) and only then applied, so an answered
/// request is never lost and a failed write changes nothing. The journal is folded into
/// the snapshot (`<path>`, written to a temp file and renamed) at start and whenever it
/// grows past the number of keys, which keeps each change O(1) on average even with tens
/// of thousands of keys. No fsync: this guards against the simulator being killed, not
/// against power loss.
#[derive(Debug)]
pub struct State {
    next_id: u64,
    keys: BTreeMap<u64, KeyRecord>,
    /// Per-target index, so listing one repository or checking for a duplicate does not
    /// scan every key (benchmarks hold tens of thousands).
    by_target: HashMap<Target, TargetIndex>,
    tokens: HashMap<String, TokenRecord>,
    consumers: Vec<OAuthConsumerConfig>,
    /// True once consumers were replaced at runtime; only then are they persisted, so the
    /// config file stays the source of truth until an admin "rotates" something.
    consumers_replaced: bool,
    store: Option<Store>,
}

#[derive(Debug, Default)]
struct TargetIndex {
    ids: BTreeSet<u64>,
    /// Key material (`<type> <base64>`) to the number of keys on the target carrying it.
    materials: HashMap<String, usize>,
}

#[derive(Debug)]
struct Store {
    path: PathBuf,
    journal: std::fs::File,
    /// Sequence number of the last change written.
    seq: u64,
    /// Changes in the journal since the last snapshot.
    pending: usize,
}

/// One journal line.
#[derive(Serialize, Deserialize)]
struct JournalEntry {
    seq: u64,
    change: Change,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Change {
    PutKey(Box<KeyRecord>),
    DeleteKey(u64),
    PutToken(TokenRecord),
    Consumers(Vec<OAuthConsumerConfig>),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    version: u32,
    /// Journal entries up to this sequence number are already in this snapshot.
    #[serde(default)]
    seq: u64,
    next_id: u64,
    keys: Vec<KeyRecord>,
    #[serde(default)]
    tokens: Vec<TokenRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth_consumers: Option<Vec<OAuthConsumerConfig>>,
}

/// Fold the journal into the snapshot once it holds this many changes or more than there
/// are keys, whichever is larger.
const COMPACT_AFTER: usize = 1000;

impl State {
    /// In memory only.
    pub fn new(consumers: Vec<OAuthConsumerConfig>) -> Self {
        Self {
            next_id: 1,
            keys: BTreeMap::new(),
            by_target: HashMap::new(),
            tokens: HashMap::new(),
            consumers,
            consumers_replaced: false,
            store: None,
        }
    }

    /// In memory, or loaded from and persisted to `path` (created if missing).
    pub fn load_or_new(consumers: Vec<OAuthConsumerConfig>, path: Option<PathBuf>, now_ms: i64) -> Result<Self, SimError> {
        let mut state = Self::new(consumers);
        let Some(path) = path else {
            return Ok(state);
        };
        let mut seq = 0;
        match std::fs::read_to_string(&path) {
            Ok(text) => seq = state.apply_snapshot(&path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(load_error(&path, e.to_string())),
        }
        let journal_path = journal_path(&path);
        match std::fs::read_to_string(&journal_path) {
            Ok(text) => seq = state.replay(&journal_path, &text, seq)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(load_error(&journal_path, e.to_string())),
        }
        let journal =
            std::fs::OpenOptions::new().create(true).append(true).open(&journal_path).map_err(|e| save_error(&journal_path, e))?;
        state.store = Some(Store { path, journal, seq, pending: 0 });
        // Start from a clean snapshot and an empty journal.
        state.compact(now_ms)?;
        Ok(state)
    }

    fn apply_snapshot(&mut self, path: &Path, text: &str) -> Result<u64, SimError> {
        let persisted: Persisted = serde_json::from_str(text).map_err(|e| load_error(path, e.to_string()))?;
        if persisted.version != STATE_VERSION {
            return Err(load_error(path, format!("unsupported state version {}", persisted.version)));
        }
        self.next_id = persisted.next_id.max(1);
        for record in persisted.keys {
            self.apply(Change::PutKey(Box::new(record))).map_err(|message| load_error(path, message))?;
        }
        for token in persisted.tokens {
            self.tokens.insert(token.digest.clone(), token);
        }
        if let Some(consumers) = persisted.oauth_consumers {
            self.apply(Change::Consumers(consumers)).map_err(|message| load_error(path, message))?;
        }
        Ok(persisted.seq)
    }

    /// Applies journal entries newer than the snapshot. A torn last line (the simulator
    /// was killed mid-write) is ignored; damage anywhere else is an error.
    fn replay(&mut self, path: &Path, text: &str, mut seq: u64) -> Result<u64, SimError> {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for (i, line) in lines.iter().enumerate() {
            let entry: JournalEntry = match serde_json::from_str(line) {
                Ok(entry) => entry,
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => return Err(load_error(path, format!("line {}: {e}", i + 1))),
            };
            if entry.seq <= seq {
                continue;
            }
            seq = entry.seq;
            self.apply(entry.change).map_err(|message| load_error(path, format!("line {}: {message}", i + 1)))?;
        }
        Ok(seq)
    }

    /// Applies a change in memory.
    fn apply(&mut self, change: Change) -> Result<(), String> {
        match change {
            Change::PutKey(mut record) => {
                // Derived, so recomputed rather than trusted from the file.
                record.fingerprint =
                    keys::fingerprint(&record.key).ok_or_else(|| format!("key {} is not a valid public key", record.id))?;
                // Never hand out an id twice, even if the file was edited by hand.
                self.next_id = self.next_id.max(record.id.saturating_add(1));
                if let Some(old) = self.keys.remove(&record.id) {
                    self.unindex(&old);
                }
                let index = self.by_target.entry(record.target.clone()).or_default();
                index.ids.insert(record.id);
                *index.materials.entry(record.key.clone()).or_default() += 1;
                self.keys.insert(record.id, *record);
            }
            Change::DeleteKey(id) => {
                if let Some(old) = self.keys.remove(&id) {
                    self.unindex(&old);
                }
            }
            Change::PutToken(token) => {
                self.tokens.insert(token.digest.clone(), token);
            }
            Change::Consumers(consumers) => {
                self.consumers = consumers;
                self.consumers_replaced = true;
            }
        }
        Ok(())
    }

    fn unindex(&mut self, record: &KeyRecord) {
        let Some(index) = self.by_target.get_mut(&record.target) else {
            return;
        };
        index.ids.remove(&record.id);
        if let Some(count) = index.materials.get_mut(&record.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                index.materials.remove(&record.key);
            }
        }
        if index.ids.is_empty() {
            self.by_target.remove(&record.target);
        }
    }

    /// Writes a change ahead to the journal, then applies it.
    fn commit(&mut self, change: Change, now_ms: i64) -> Result<(), SimError> {
        // Refuse what replay would refuse, before it reaches the journal.
        if let Change::PutKey(record) = &change
            && keys::fingerprint(&record.key).is_none()
        {
            return Err(SimError::Config(format!("key {} is not a valid public key", record.id)));
        }
        let Some(store) = &mut self.store else {
            return self.apply(change).map_err(SimError::Config);
        };
        let entry = JournalEntry { seq: store.seq + 1, change };
        let mut line = serde_json::to_vec(&entry).map_err(|e| save_error(&store.path, std::io::Error::other(e)))?;
        line.push(b'\n');
        // One write call per line: a kill cannot leave half a line except at the end.
        store.journal.write_all(&line).map_err(|e| save_error(&store.path, e))?;
        store.seq += 1;
        store.pending += 1;
        let pending = store.pending;
        self.apply(entry.change).map_err(SimError::Config)?;
        if pending >= COMPACT_AFTER.max(self.keys.len())
            && let Err(e) = self.compact(now_ms)
        {
            // The change is safe in the journal; compaction is retried on the next one.
            tracing::warn!(error = %e, "cannot compact simulator state");
        }
        Ok(())
    }

    /// Writes the snapshot (temp file + rename) and empties the journal.
    fn compact(&mut self, now_ms: i64) -> Result<(), SimError> {
        let Some(store) = &mut self.store else {
            return Ok(());
        };
        let persisted = Persisted {
            version: STATE_VERSION,
            seq: store.seq,
            next_id: self.next_id,
            keys: self.keys.values().cloned().collect(),
            tokens: self.tokens.values().filter(|t| t.expires_at_ms > now_ms).cloned().collect(),
            oauth_consumers: self.consumers_replaced.then(|| self.consumers.clone()),
        };
        let path = store.path.clone();
        let text = serde_json::to_vec(&persisted).map_err(|e| save_error(&path, std::io::Error::other(e)))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(|e| save_error(&path, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| save_error(&path, e))?;
        // A kill between rename and truncation is harmless: replay skips entries whose
        // seq the snapshot already covers.
        store.journal.set_len(0).map_err(|e| save_error(&journal_path(&path), e))?;
        store.pending = 0;
        Ok(())
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// Keys on one target, oldest first (Bitbucket lists in creation order).
    pub fn keys_on<'a>(&'a self, target: &Target) -> impl Iterator<Item = &'a KeyRecord> {
        self.by_target.get(target).into_iter().flat_map(|index| index.ids.iter()).filter_map(|id| self.keys.get(id))
    }

    pub fn key(&self, id: u64) -> Option<&KeyRecord> {
        self.keys.get(&id)
    }

    pub fn has_key_material_on(&self, target: &Target, key: &str) -> bool {
        self.by_target.get(target).is_some_and(|index| index.materials.contains_key(key))
    }

    /// Allocates the next id. An id whose key then fails to persist may be handed out
    /// again after a restart; no client ever saw it.
    pub fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// Adds or replaces a key.
    pub fn put_key(&mut self, record: KeyRecord, now_ms: i64) -> Result<(), SimError> {
        self.commit(Change::PutKey(Box::new(record)), now_ms)
    }

    pub fn remove_key(&mut self, id: u64, now_ms: i64) -> Result<Option<KeyRecord>, SimError> {
        let Some(existing) = self.keys.get(&id).cloned() else {
            return Ok(None);
        };
        self.commit(Change::DeleteKey(id), now_ms)?;
        Ok(Some(existing))
    }

    pub fn token(&self, digest: &str) -> Option<&TokenRecord> {
        self.tokens.get(digest)
    }

    pub fn insert_token(&mut self, record: TokenRecord, now_ms: i64) -> Result<(), SimError> {
        // Expired tokens are useless; dropping them keeps memory flat in long benchmarks.
        self.tokens.retain(|_, t| t.expires_at_ms > now_ms);
        self.commit(Change::PutToken(record), now_ms)
    }

    pub fn consumers(&self) -> &[OAuthConsumerConfig] {
        &self.consumers
    }

    pub fn replace_consumers(&mut self, consumers: Vec<OAuthConsumerConfig>, now_ms: i64) -> Result<(), SimError> {
        self.commit(Change::Consumers(consumers), now_ms)
    }
}

fn journal_path(path: &Path) -> PathBuf {
    let mut journal = path.as_os_str().to_owned();
    journal.push(".journal");
    PathBuf::from(journal)
}

fn load_error(path: &Path, message: String) -> SimError {
    SimError::LoadState { path: path.to_path_buf(), message }
}

fn save_error(path: &Path, source: std::io::Error) -> SimError {
    SimError::SaveState { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO";

    fn record(state: &mut State, n: u64) -> KeyRecord {
        KeyRecord {
            id: state.allocate_id(),
            target: Target::Repository { workspace: "acme".into(), slug: format!("repo-{}", n % 7) },
            key: ED25519.into(),
            comment: format!("c{n}"),
            label: "l".into(),
            created_on: "2024-01-01T00:00:00.000000+00:00".into(),
            added_by: Account { kind: "user".into(), display_name: "a".into(), uuid: "{u}".into(), account_id: None, nickname: None },
            fingerprint: keys::fingerprint(ED25519).unwrap_or_default(),
        }
    }

    #[test]
    fn state_survives_a_restart_and_ids_keep_increasing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut state = State::load_or_new(vec![], Some(path.clone()), 0).expect("new");
        let first = record(&mut state, 1);
        state.put_key(first.clone(), 0).expect("put");
        let second = record(&mut state, 2);
        state.put_key(second.clone(), 0).expect("put");
        assert!(state.remove_key(second.id, 0).expect("remove").is_some());
        drop(state);

        let mut reloaded = State::load_or_new(vec![], Some(path), 0).expect("load");
        assert_eq!(reloaded.key(first.id), Some(&first));
        assert!(reloaded.key(second.id).is_none());
        assert_eq!(reloaded.allocate_id(), 3, "a deleted id is never reused");
    }

    #[test]
    fn many_changes_compact_and_replay_to_the_same_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut state = State::load_or_new(vec![], Some(path.clone()), 0).expect("new");
        for n in 0..2500 {
            let r = record(&mut state, n);
            state.put_key(r, 0).expect("put");
            if n % 3 == 0 {
                let id = state.keys().next().map(|k| k.id).unwrap_or_default();
                state.remove_key(id, 0).expect("remove");
            }
        }
        let expected: Vec<KeyRecord> = state.keys().cloned().collect();
        let journal_len = std::fs::metadata(journal_path(&path)).map(|m| m.len()).unwrap_or(0);
        assert!(journal_len < 2500 * 300, "the journal was compacted ({journal_len} bytes)");
        drop(state);
        let reloaded = State::load_or_new(vec![], Some(path), 0).expect("load");
        assert_eq!(reloaded.keys().cloned().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_torn_last_journal_line_is_ignored_and_covered_entries_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut state = State::load_or_new(vec![], Some(path.clone()), 0).expect("new");
        let kept = record(&mut state, 1);
        state.put_key(kept.clone(), 0).expect("put");
        drop(state);
        let journal = std::fs::read_to_string(journal_path(&path)).expect("journal");
        // Replaying the same entry twice (snapshot written, journal not yet truncated)
        // and a half-written line must both be harmless.
        State::load_or_new(vec![], Some(path.clone()), 0).expect("compacts");
        std::fs::write(journal_path(&path), format!("{journal}{{\"seq\":99,\"chan")).expect("write");
        let reloaded = State::load_or_new(vec![], Some(path), 0).expect("load");
        assert_eq!(reloaded.keys().cloned().collect::<Vec<_>>(), vec![kept]);
    }

    #[test]
    fn a_deleted_key_may_be_added_again() {
        let mut state = State::new(vec![]);
        let first = record(&mut state, 1);
        let target = first.target.clone();
        state.put_key(first.clone(), 0).expect("put");
        assert!(state.has_key_material_on(&target, ED25519));
        assert_eq!(state.keys_on(&target).count(), 1);
        state.remove_key(first.id, 0).expect("remove");
        assert!(!state.has_key_material_on(&target, ED25519));
        assert_eq!(state.keys_on(&target).count(), 0);
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(State::load_or_new(vec![], Some(path), 0).is_err());
    }
}
