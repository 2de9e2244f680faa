//! `POST /site/oauth2/access_token`: the client_credentials grant of OAuth consumers.

use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, HeaderValue};
use base64::Engine as _;
use rand::RngCore;
use serde_json::{Value, json};

use super::auth::token_digest;
use super::config::OAuthConsumerConfig;
use super::response::SimResponse;
use super::state::TokenRecord;

/// Bitbucket's description for client_credentials with a consumer not marked private,
/// verbatim (FACTS.md).
pub const PUBLIC_CONSUMER: &str = "Cannot use client_credentials with a consumer marked as \"public\". Calls for auto generated consumers should use urn:bitbucket:oauth2:jwt instead.";

/// RFC 6749 error answer, as Bitbucket sends it.
pub fn oauth_error(error: &str, description: &str) -> SimResponse {
    SimResponse::json(StatusCode::BAD_REQUEST, &json!({ "error": error, "error_description": description }))
}

/// `grant_type` from a form-encoded body (first occurrence).
pub fn grant_type(body: &[u8]) -> Option<String> {
    url::form_urlencoded::parse(body).find(|(name, _)| name == "grant_type").map(|(_, value)| value.into_owned())
}

/// Checks the grant: only client_credentials is simulated.
pub fn check_grant(body: &[u8]) -> Result<(), SimResponse> {
    match grant_type(body).as_deref() {
        Some("client_credentials") => Ok(()),
        Some(other) => Err(oauth_error("invalid_grant", &format!("Unsupported grant type: {other}"))),
        None => Err(oauth_error("invalid_grant", "Unsupported grant type: None")),
    }
}

/// A fresh random token and the record the simulator keeps of it.
pub fn mint(consumer: &OAuthConsumerConfig, now_ms: i64) -> (String, TokenRecord) {
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let lifetime_ms = i64::try_from(consumer.expires_in.saturating_mul(1000)).unwrap_or(i64::MAX);
    let record = TokenRecord {
        digest: token_digest(&token),
        consumer: consumer.key.clone(),
        scopes: consumer.scopes.clone(),
        expires_at_ms: now_ms.saturating_add(lifetime_ms),
    };
    (token, record)
}

/// The success answer: no `refresh_token` for client_credentials, `scope` space-separated.
pub fn token_response(consumer: &OAuthConsumerConfig, token: &str) -> SimResponse {
    let scope_field = if consumer.legacy_scopes_field { "scopes" } else { "scope" };
    let mut body = json!({
        "access_token": token,
        "expires_in": consumer.expires_in,
        "token_type": "bearer",
        "state": "client_credentials",
    });
    body[scope_field] = Value::from(consumer.scopes.join(" "));
    SimResponse::json(StatusCode::OK, &body).with_header(CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_client_credentials_is_granted() {
        assert!(check_grant(b"grant_type=client_credentials").is_ok());
        let refused = check_grant(b"grant_type=password&username=x").expect_err("refused");
        let body: Value = serde_json::from_slice(&refused.body).expect("json");
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_description"], "Unsupported grant type: password");
    }

    #[test]
    fn minted_tokens_are_unique_and_expire() {
        let consumer = OAuthConsumerConfig {
            key: "ck".into(),
            secret: "cs".into(),
            scopes: vec!["repository:admin".into()],
            expires_in: 2,
            legacy_scopes_field: false,
            public: false,
            workspace: None,
        };
        let (a, record) = mint(&consumer, 1000);
        let (b, _) = mint(&consumer, 1000);
        assert_ne!(a, b);
        assert_eq!(record.expires_at_ms, 3000);
        assert_eq!(record.digest, token_digest(&a));
    }

    proptest! {
        #[test]
        fn arbitrary_form_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = check_grant(&body);
        }
    }
}
