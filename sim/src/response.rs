//! The simulator's answers, independent of the HTTP server that sends them.

use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::http::{HeaderValue, StatusCode};
use serde_json::Value;

use super::model;

/// Bitbucket's 429 body, verbatim.
pub const RATE_LIMITED_BODY: &str = "Rate limit for this resource has been exceeded";

#[derive(Debug, Clone)]
pub struct SimResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl SimResponse {
    pub fn empty(status: StatusCode) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn json(status: StatusCode, value: &Value) -> Self {
        // Serialising a `Value` cannot fail; an empty body is the harmless fallback anyway.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self::empty(status).with_header(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8")).with_body(body)
    }

    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self::empty(status)
            .with_header(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))
            .with_body(text.into().into_bytes())
    }

    /// `{"type":"error","error":{"message":...}}`.
    pub fn bitbucket_error(status: StatusCode, message: &str) -> Self {
        Self::json(status, &model::error_body(message, None, None))
    }

    /// A 400 whose `fields` names the offending request field, as Bitbucket's
    /// validation errors do.
    pub fn field_error(field: &str, message: &str) -> Self {
        let fields = serde_json::json!({ field: [message] });
        Self::json(StatusCode::BAD_REQUEST, &model::error_body(message, None, Some(fields)))
    }

    /// 429 exactly as Bitbucket sends it: plain text and no Retry-After.
    pub fn rate_limited() -> Self {
        Self::empty(StatusCode::TOO_MANY_REQUESTS)
            .with_header(CONTENT_TYPE, HeaderValue::from_static("text/plain"))
            .with_body(RATE_LIMITED_BODY.as_bytes().to_vec())
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}
