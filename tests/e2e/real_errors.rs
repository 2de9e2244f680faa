//! Bitbucket's answers as the real service gives them (shared/bitbucket-cloud/FACTS.md),
//! switched on in `bitbucket-sim`: each becomes a condition reason and a message that
//! says what to do.

use std::time::Duration;

use crate::support::{Env, SIM_CONFIG, workspace_yaml};

const READY: Duration = Duration::from_secs(60);

fn with_variants(variants: &str) -> String {
    format!("{SIM_CONFIG}errorVariants: {variants}\n")
}

fn consumer(name: &str, key: &str, secret: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-creds}}\nstringData: {{key: {key}, secret: {secret}}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketOAuthConsumer\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n  consumerSecretRef: {{name: {name}-creds}}\n"
    )
}

fn access_key(name: &str, repos: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n  repositories: [{repos}]\n"
    )
}

#[tokio::test]
async fn a_wrong_consumer_secret_answered_with_unauthorized_client_is_invalid_client() {
    let env = Env::with("real-unauthorized-client", &with_variants("{oauthClientError: unauthorized_client}"), &[]).await;
    env.workspace().await;
    env.apply(&consumer("ci", "ck-main", "wrong-secret-222")).await;
    let m = env.wait_reason("bitbucketoauthconsumers", "ci", "InvalidClient", READY).await;
    assert!(m.contains("unauthorized_client") && m.contains("check the `key` and `secret`"), "{m}");
    env.assert_no_secret_leaked(&["wrong-secret-222".into()]).await;
}

#[tokio::test]
async fn a_consumer_marked_public_is_told_to_be_marked_private() {
    let config = SIM_CONFIG.replace(
        "oauthConsumers:\n",
        "oauthConsumers:\n  - {key: ck-public, secret: cs-public-secret-0123456789, scopes: [repository:admin], public: true}\n",
    );
    let env = Env::with("real-public-consumer", &format!("{config}errorVariants: {{oauthClientError: unauthorized_client}}\n"), &[]).await;
    env.workspace().await;
    env.apply(&consumer("ci", "ck-public", "cs-public-secret-0123456789")).await;
    let m = env.wait_reason("bitbucketoauthconsumers", "ci", "ConsumerNotPrivate", READY).await;
    assert!(m.contains("private consumer"), "{m}");
    env.assert_no_secret_leaked(&["cs-public-secret-0123456789".into()]).await;
}

#[tokio::test]
async fn missing_scopes_in_bitbucket_s_real_shape_are_named_in_the_condition() {
    let env = Env::with("real-missing-scopes", &with_variants("{scopeErrors: real}"), &[]).await;
    env.apply(&workspace_yaml(&env.sim.url, "").replace(
        "stringData: {email: admin@acme.test, token: tok-admin-0123456789}",
        "stringData: {email: reader@acme.test, token: tok-reader-0123456789}",
    ))
    .await;
    env.wait_ready("bitbucketworkspaces", "acme", READY).await;
    env.apply(&access_key("ci", "api")).await;
    let m = env.wait_reason("bitbucketaccesskeys", "ci", "MissingScopes", READY).await;
    assert!(m.contains("lack the Bitbucket scopes write:ssh-key:bitbucket"), "{m}");
    assert!(m.contains("granted: admin:repository:bitbucket"), "{m}");
    assert!(env.sim.keys().await.is_empty());
}

#[tokio::test]
async fn an_error_detail_that_is_an_object_still_reads_clearly() {
    let env = Env::with("real-detail-object", &with_variants("{detailAsObject: true}"), &[]).await;
    env.apply(&workspace_yaml(&env.sim.url, "").replace("tok-admin-0123456789", "tok-wrong-0123456789")).await;
    let m = env.wait_reason("bitbucketworkspaces", "acme", "Unauthorized", READY).await;
    assert!(m.starts_with("workspace acme: Bitbucket rejected the credentials (401): "), "{m}");
    assert!(!m.contains('{') && !m.contains("\"type\""), "the body is read, not pasted: {m}");
    assert!(m.contains("status: 401"), "the detail object is rendered: {m}");
}

#[tokio::test]
async fn a_consumer_of_a_personal_workspace_is_told_it_cannot_reach_the_team_workspace() {
    let config = SIM_CONFIG.replace(
        "oauthConsumers:\n",
        "oauthConsumers:\n  - {key: ck-alice, secret: cs-alice-secret-0123456789, scopes: [repository:admin, project:admin], workspace: alice}\n",
    );
    let env = Env::with("real-personal-consumer", &config, &[]).await;
    let url = &env.sim.url;
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bb-alice}}\nstringData: {{key: ck-alice, secret: cs-alice-secret-0123456789}}\n---\napiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketWorkspace\nmetadata: {{name: acme}}\nspec:\n  workspace: acme\n  apiURL: {url}/2.0\n  siteURL: {url}\n  auth: {{oauthConsumer: {{secretRef: {{name: bb-alice}}}}}}\n"
    ))
    .await;
    let m = env.wait_reason("bitbucketworkspaces", "acme", "ConsumerNotInWorkspace", READY).await;
    assert!(m.contains("2026-05-04") && m.contains("personal") && m.contains("under workspace acme"), "{m}");
    env.assert_no_secret_leaked(&["cs-alice-secret-0123456789".into()]).await;
}
