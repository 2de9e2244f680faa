//! Who is calling, and may they: Bitbucket's three credential kinds and their scopes.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use ssh_key::HashAlg;

use super::catalog::derived_uuid;
use super::config::{AccessTokenConfig, ApiTokenConfig, OAuthConsumerConfig};
use super::routes::Operation;
use super::state::{Account, State};

/// Bitbucket's answer to a Bearer header carrying something it did not mint as a
/// Bearer token (an API token, a made-up token).
pub const TOKEN_INVALID: &str = "Token is invalid, expired, or not supported for this endpoint.";
/// Bitbucket's answer when repository/project/workspace access tokens call deploy keys.
pub const MECHANISM_REFUSED: &str = "This API is not accessible by this authentication mechanism";

/// The Authorization header, parsed but not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Missing,
    Basic { user: String, secret: String },
    Bearer(String),
    Malformed,
}

pub fn parse_authorization(headers: &HeaderMap) -> Authorization {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Authorization::Missing;
    };
    if values.next().is_some() {
        return Authorization::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Authorization::Malformed;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return Authorization::Malformed;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Authorization::Malformed;
        };
        match decoded.split_once(':') {
            Some((user, secret)) => Authorization::Basic { user: user.to_owned(), secret: secret.to_owned() },
            None => Authorization::Malformed,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Authorization::Bearer(rest.to_owned())
    } else {
        Authorization::Malformed
    }
}

/// The credential a request was made with, named the way the request log may show it:
/// by email or consumer key, never by secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiToken { email: String },
    OAuthConsumer { key: String },
}

impl Credential {
    pub fn id(&self) -> &str {
        match self {
            Credential::ApiToken { email } => email,
            Credential::OAuthConsumer { key } => key,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub credential: Credential,
    pub scopes: Vec<String>,
    /// From the config, for API-token users.
    pub display_name: Option<String>,
}

impl Principal {
    /// The account Bitbucket shows as `owner` / `created_by` of keys this caller adds.
    pub fn account(&self) -> Account {
        match &self.credential {
            Credential::ApiToken { email } => {
                let nickname = email.split('@').next().unwrap_or(email).to_owned();
                Account {
                    kind: "user".into(),
                    display_name: self.display_name.clone().unwrap_or_else(|| nickname.clone()),
                    uuid: derived_uuid(&format!("user:{email}")),
                    account_id: Some(account_id(email)),
                    nickname: Some(nickname),
                }
            }
            Credential::OAuthConsumer { key } => Account {
                kind: "user".into(),
                display_name: format!("{key} (OAuth consumer)"),
                uuid: derived_uuid(&format!("consumer:{key}")),
                account_id: None,
                nickname: None,
            },
        }
    }
}

fn account_id(email: &str) -> String {
    let digest = HashAlg::Sha256.digest(email.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("557058:{hex}")
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// 401.
    Unauthorized(String),
    /// 403 (recognised, but this mechanism may not call this API).
    Forbidden(String),
}

/// The credentials fixed in the config.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub api_tokens: Vec<ApiTokenConfig>,
    pub access_tokens: Vec<AccessTokenConfig>,
}

impl Credentials {
    /// Authenticates a call to a `/2.0/` endpoint.
    pub fn authenticate(
        &self,
        authorization: &Authorization,
        token_in_query: bool,
        state: &State,
        now_ms: i64,
    ) -> Result<Principal, AuthFailure> {
        if token_in_query {
            // Bitbucket stopped accepting `?access_token=`; a client relying on it must fail.
            return Err(AuthFailure::Unauthorized(
                "Access tokens are not accepted in the query string; send them in the Authorization: Bearer header.".into(),
            ));
        }
        match authorization {
            Authorization::Missing => Err(AuthFailure::Unauthorized("Authentication is required for this resource.".into())),
            Authorization::Malformed => Err(AuthFailure::Unauthorized("The Authorization header is malformed.".into())),
            Authorization::Basic { user, secret } => self
                .api_tokens
                .iter()
                .find(|t| t.email == *user && ct_eq(t.token.as_bytes(), secret.as_bytes()))
                .map(|t| Principal {
                    credential: Credential::ApiToken { email: t.email.clone() },
                    scopes: t.scopes.clone(),
                    display_name: t.display_name.clone(),
                })
                .ok_or_else(|| AuthFailure::Unauthorized("Invalid credentials.".into())),
            Authorization::Bearer(token) => {
                if let Some(minted) = state.token(&token_digest(token)) {
                    if minted.expires_at_ms <= now_ms {
                        return Err(AuthFailure::Unauthorized("Access token expired.".into()));
                    }
                    // A consumer deleted by an admin takes its tokens with it.
                    if !state.consumers().iter().any(|c| c.key == minted.consumer) {
                        return Err(AuthFailure::Unauthorized(TOKEN_INVALID.into()));
                    }
                    return Ok(Principal {
                        credential: Credential::OAuthConsumer { key: minted.consumer.clone() },
                        scopes: minted.scopes.clone(),
                        display_name: None,
                    });
                }
                if self.access_tokens.iter().any(|t| ct_eq(t.token.as_bytes(), token.as_bytes())) {
                    return Err(AuthFailure::Forbidden(MECHANISM_REFUSED.into()));
                }
                Err(AuthFailure::Unauthorized(TOKEN_INVALID.into()))
            }
        }
    }

    /// The log name of an access token, if `authorization` carries one.
    pub fn access_token_name(&self, authorization: &Authorization) -> Option<String> {
        let Authorization::Bearer(token) = authorization else {
            return None;
        };
        self.access_tokens
            .iter()
            .enumerate()
            .find(|(_, t)| ct_eq(t.token.as_bytes(), token.as_bytes()))
            .map(|(i, t)| t.name.clone().unwrap_or_else(|| format!("access-token-{}", i + 1)))
    }
}

/// Checks an OAuth consumer's `key:secret` at the token endpoint.
pub fn authenticate_client<'a>(
    authorization: &Authorization,
    consumers: &'a [OAuthConsumerConfig],
) -> Result<&'a OAuthConsumerConfig, String> {
    let Authorization::Basic { user, secret } = authorization else {
        return Err("Client credentials missing; authenticate with HTTP Basic using the consumer key and secret.".into());
    };
    consumers
        .iter()
        .find(|c| c.key == *user && ct_eq(c.secret.as_bytes(), secret.as_bytes()))
        .ok_or_else(|| "Invalid OAuth client credentials".into())
}

/// Scopes an operation needs, per credential kind (from the spec's
/// `x-atlassian-oauth2-scopes` for API tokens and its `oauth2` security for consumers).
pub fn required_scopes(op: Operation, credential: &Credential) -> &'static [&'static str] {
    use Operation::*;
    match credential {
        Credential::OAuthConsumer { .. } => match op {
            RepoKeysList | RepoKeyGet | RepoKeyCreate | RepoKeyUpdate | RepoKeyDelete => &["repository:admin"],
            ProjectKeysList | ProjectKeyGet | ProjectKeyCreate | ProjectKeyDelete => &["project:admin"],
            Token | WorkspaceGet => &[],
        },
        Credential::ApiToken { .. } => match op {
            RepoKeysList | RepoKeyGet => &["admin:repository:bitbucket"],
            RepoKeyCreate | RepoKeyUpdate => &["admin:repository:bitbucket", "write:ssh-key:bitbucket"],
            RepoKeyDelete => &["admin:repository:bitbucket", "delete:ssh-key:bitbucket"],
            ProjectKeysList | ProjectKeyGet => &["admin:project:bitbucket"],
            ProjectKeyCreate => &["admin:project:bitbucket", "write:ssh-key:bitbucket"],
            ProjectKeyDelete => &["admin:project:bitbucket", "delete:ssh-key:bitbucket"],
            WorkspaceGet => &["read:workspace:bitbucket"],
            Token => &[],
        },
    }
}

pub fn missing_scopes<'a>(required: &[&'a str], granted: &[String]) -> Vec<&'a str> {
    required.iter().copied().filter(|r| !granted.iter().any(|g| g == r)).collect()
}

/// How minted tokens are stored and looked up: SHA-256, base64.
pub fn token_digest(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(HashAlg::Sha256.digest(token.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ, so the simulator
/// does not teach clients bad habits about secret comparison either.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn basic_and_bearer_are_parsed() {
        let basic = base64::engine::general_purpose::STANDARD.encode("a@b:t:with:colons");
        assert_eq!(
            parse_authorization(&headers(&format!("Basic {basic}"))),
            Authorization::Basic { user: "a@b".into(), secret: "t:with:colons".into() }
        );
        assert_eq!(parse_authorization(&headers("bearer abc")), Authorization::Bearer("abc".into()));
        assert_eq!(parse_authorization(&HeaderMap::new()), Authorization::Missing);
        assert_eq!(parse_authorization(&headers("Basic !!")), Authorization::Malformed);
        assert_eq!(parse_authorization(&headers("Bearer")), Authorization::Malformed);
        assert_eq!(parse_authorization(&headers("Digest x")), Authorization::Malformed);
    }

    #[test]
    fn api_token_as_bearer_is_refused_with_bitbuckets_message() {
        let creds = Credentials {
            api_tokens: vec![ApiTokenConfig { email: "a@b".into(), token: "tok".into(), scopes: vec![], display_name: None }],
            access_tokens: vec![],
        };
        let state = State::new(vec![]);
        let result = creds.authenticate(&Authorization::Bearer("tok".into()), false, &state, 0);
        assert_eq!(result.err(), Some(AuthFailure::Unauthorized(TOKEN_INVALID.into())));
    }

    #[test]
    fn delete_needs_the_delete_scope() {
        let cred = Credential::ApiToken { email: "a".into() };
        let missing = missing_scopes(required_scopes(Operation::RepoKeyDelete, &cred), &["admin:repository:bitbucket".to_owned()]);
        assert_eq!(missing, vec!["delete:ssh-key:bitbucket"]);
    }

    proptest! {
        #[test]
        fn arbitrary_authorization_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.insert(AUTHORIZATION, v);
            }
            let _ = parse_authorization(&h);
        }

        #[test]
        fn arbitrary_basic_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let _ = parse_authorization(&headers(&format!("Basic {encoded}")));
        }
    }
}
