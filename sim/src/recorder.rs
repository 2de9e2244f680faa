//! Request counters for tests and benchmarks ("how many writes did a restart cost?").
//! Credentials appear by email or consumer key only; paths are recorded without their
//! query string, so nothing secret ever lands here.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub endpoint: &'static str,
    pub status: u16,
    /// `None` when the request carried no valid credential.
    pub credential: Option<String>,
    /// RFC 3339.
    pub timestamp: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLog {
    pub total: u64,
    pub by_credential: BTreeMap<String, u64>,
    pub by_method: BTreeMap<String, u64>,
    pub by_endpoint: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    /// The most recent requests, oldest first.
    pub recent: VecDeque<RecordedRequest>,
    #[serde(skip)]
    capacity: usize,
}

/// How unauthenticated requests are counted in `byCredential`.
pub const ANONYMOUS: &str = "anonymous";

impl RequestLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            total: 0,
            by_credential: BTreeMap::new(),
            by_method: BTreeMap::new(),
            by_endpoint: BTreeMap::new(),
            by_status: BTreeMap::new(),
            recent: VecDeque::new(),
            capacity,
        }
    }

    pub fn record(&mut self, request: RecordedRequest) {
        self.total += 1;
        let credential = request.credential.as_deref().unwrap_or(ANONYMOUS);
        *self.by_credential.entry(credential.to_owned()).or_default() += 1;
        *self.by_method.entry(request.method.clone()).or_default() += 1;
        *self.by_endpoint.entry(request.endpoint.to_owned()).or_default() += 1;
        *self.by_status.entry(request.status.to_string()).or_default() += 1;
        if self.capacity == 0 {
            return;
        }
        while self.recent.len() >= self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(request);
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(status: u16) -> RecordedRequest {
        RecordedRequest {
            method: "GET".into(),
            path: "/2.0/x".into(),
            endpoint: "repo_keys_list",
            status,
            credential: None,
            timestamp: String::new(),
        }
    }

    #[test]
    fn recent_list_is_bounded_and_counters_are_not() {
        let mut log = RequestLog::new(2);
        for status in [200, 404, 429] {
            log.record(req(status));
        }
        assert_eq!(log.total, 3);
        assert_eq!(log.recent.len(), 2);
        assert_eq!(log.recent[0].status, 404);
        assert_eq!(log.by_status.get("429"), Some(&1));
        assert_eq!(log.by_credential.get(ANONYMOUS), Some(&3));
        log.reset();
        assert_eq!(log.total, 0);
    }
}
