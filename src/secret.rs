//! What the operator writes into Secrets: the layouts CI systems read.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::{AccessKeyFormat, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SecretMetadata, TokenFormat};
use crate::keys::KeyPair;

pub(crate) const SSH_AUTH_TYPE: &str = "kubernetes.io/ssh-auth";
pub(crate) const BASIC_AUTH_TYPE: &str = "kubernetes.io/basic-auth";
/// Where a rotation's new private key waits, persisted before it is registered, until the
/// Secret switches to it.
pub(crate) const PENDING_KEY: &str = "rotation-pending-privatekey";
pub(crate) const TOKEN_USERNAME: &str = "x-token-auth";

/// Where the access key's Secret points SSH clients.
pub(crate) struct SshTarget<'a> {
    pub ssh_host: &'a str,
    pub known_hosts: &'a str,
    pub workspace: &'a str,
    /// The Argo CD project of the `argocd` layout, if any.
    pub argocd_project: Option<&'a str>,
}

/// Where an OAuth token is used over HTTPS.
pub(crate) struct HttpsTarget<'a> {
    /// `scheme://host[:port]` of the site (`https://bitbucket.org`).
    pub origin: &'a str,
    pub workspace: &'a str,
    /// The Argo CD project of the `argocd` layout, if any.
    pub argocd_project: Option<&'a str>,
}

const ARGOCD_SECRET_TYPE: &str = "argocd.argoproj.io/secret-type";

/// Where a Secret goes and what the user asked to put on it.
pub(crate) struct Placement<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
    pub user: &'a SecretMetadata,
}

impl Placement<'_> {
    /// The Secret, labelled as the operator's so that its metadata-only watch sees it.
    fn secret(
        self,
        type_: &str,
        mut labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        data: BTreeMap<String, ByteString>,
    ) -> Secret {
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.into()),
                namespace: Some(self.namespace.into()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: Some(vec![self.owner]),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// The data, labels and annotations of an access key's Secret.
pub(crate) fn access_key_secret(
    at: Placement<'_>,
    formats: &[AccessKeyFormat],
    key: &KeyPair,
    pending: Option<&KeyPair>,
    target: &SshTarget<'_>,
) -> Secret {
    let mut data = BTreeMap::new();
    let mut labels = at.user.labels.clone();
    let mut annotations = at.user.annotations.clone();
    let private = || ByteString(key.private_openssh().expose().as_bytes().to_vec());
    let public = || ByteString(format!("{}\n", key.public_key()).into_bytes());
    let known_hosts = ByteString(known_hosts_for(target.known_hosts, target.ssh_host).into_bytes());
    // The type kubernetes.io/ssh-auth requires `ssh-privatekey` whatever the formats.
    data.insert("ssh-privatekey".into(), private());
    for f in formats {
        match f {
            AccessKeyFormat::SshAuth => {
                data.insert("ssh-publickey".into(), public());
                data.insert("known_hosts".into(), known_hosts.clone());
            }
            AccessKeyFormat::Flux => {
                data.insert("identity".into(), private());
                data.insert("identity.pub".into(), public());
                data.insert("known_hosts".into(), known_hosts.clone());
            }
            AccessKeyFormat::Tekton => {
                annotations.insert("tekton.dev/git-0".into(), target.ssh_host.into());
            }
            AccessKeyFormat::Jenkins => {
                labels.insert("jenkins.io/credentials-type".into(), "basicSSHUserPrivateKey".into());
                data.insert("username".into(), ByteString(b"git".to_vec()));
                data.insert("privateKey".into(), private());
            }
            AccessKeyFormat::Argocd => {
                labels.insert(ARGOCD_SECRET_TYPE.into(), "repo-creds".into());
                data.insert("url".into(), ByteString(format!("git@{}:{}/", target.ssh_host, target.workspace).into_bytes()));
                data.insert("sshPrivateKey".into(), private());
                data.insert("type".into(), ByteString(b"git".to_vec()));
                if let Some(project) = target.argocd_project {
                    data.insert("project".into(), ByteString(project.as_bytes().to_vec()));
                }
            }
        }
    }
    if let Some(p) = pending {
        data.insert(PENDING_KEY.into(), ByteString(p.private_openssh().expose().as_bytes().to_vec()));
    }
    at.secret(SSH_AUTH_TYPE, labels, annotations, data)
}

/// known_hosts lines, rewritten for a non-default port as `[host]:port` the way OpenSSH
/// looks them up.
pub(crate) fn known_hosts_for(known_hosts: &str, ssh_host: &str) -> String {
    let mut out = known_hosts.trim_end().to_string();
    out.push('\n');
    if let Some((host, port)) = ssh_host.rsplit_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
        && !host.contains(':')
    {
        let bracketed = format!("[{host}]:{port}");
        out = out
            .lines()
            .map(|l| match l.split_once(' ') {
                Some((h, rest)) if h == host || h == ssh_host => format!("{bracketed} {rest}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
    }
    out
}

/// The data of an OAuth token Secret, and its type.
pub(crate) fn token_secret(at: Placement<'_>, formats: &[TokenFormat], token: &str, target: &HttpsTarget<'_>) -> Secret {
    let mut data = BTreeMap::new();
    let mut type_ = "Opaque";
    let mut labels = at.user.labels.clone();
    for f in formats {
        match f {
            TokenFormat::Token => {
                data.insert("token".into(), ByteString(token.as_bytes().to_vec()));
            }
            TokenFormat::BasicAuth => {
                type_ = BASIC_AUTH_TYPE;
                data.insert("username".into(), ByteString(TOKEN_USERNAME.as_bytes().to_vec()));
                data.insert("password".into(), ByteString(token.as_bytes().to_vec()));
            }
            TokenFormat::GitCredentials => {
                data.insert(".git-credentials".into(), ByteString(git_credentials_line(target.origin, token).into_bytes()));
            }
            TokenFormat::Argocd => {
                // Argo CD matches repository URLs against `url` as a prefix.
                labels.insert(ARGOCD_SECRET_TYPE.into(), "repo-creds".into());
                let origin = if target.origin.contains("://") { target.origin.to_string() } else { format!("https://{}", target.origin) };
                data.insert("url".into(), ByteString(format!("{origin}/{}/", target.workspace).into_bytes()));
                data.insert("username".into(), ByteString(TOKEN_USERNAME.as_bytes().to_vec()));
                data.insert("password".into(), ByteString(token.as_bytes().to_vec()));
                data.insert("type".into(), ByteString(b"git".to_vec()));
                if let Some(project) = target.argocd_project {
                    data.insert("project".into(), ByteString(project.as_bytes().to_vec()));
                }
            }
        }
    }
    let annotations = at.user.annotations.clone();
    at.secret(type_, labels, annotations, data)
}

/// `https://x-token-auth:TOKEN@bitbucket.org`, the line git's `store` helper reads.
fn git_credentials_line(origin: &str, token: &str) -> String {
    match origin.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{TOKEN_USERNAME}:{token}@{host}\n"),
        None => format!("https://{TOKEN_USERNAME}:{token}@{origin}\n"),
    }
}

/// Whether `actual` already holds everything `desired` says (data equal, labels and
/// annotations present, same type and owner), so a write would change nothing.
pub(crate) fn up_to_date(actual: &Secret, desired: &Secret) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    actual.data == desired.data
        && actual.type_ == desired.type_
        && subset(&desired.metadata.labels, &actual.metadata.labels)
        && subset(&desired.metadata.annotations, &actual.metadata.annotations)
        && desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| actual.metadata.owner_references.iter().flatten().any(|a| a.uid == o.uid))
}

/// Whether `actual` carries a label or annotation that `manager` applied before and
/// `desired` no longer has (one removed from `spec.secret`): an apply removes it, so the
/// Secret needs one although `up_to_date` says it holds everything.
pub(crate) fn has_stale_fields(actual: &Secret, desired: &Secret, manager: &str) -> bool {
    let owned = |field: &str| -> Vec<String> {
        actual
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply"))
            .filter_map(|m| m.fields_v1.as_ref()?.0.get("f:metadata")?.get(field)?.as_object().cloned())
            .flat_map(|fields| fields.into_iter().filter_map(|(k, _)| k.strip_prefix("f:").map(String::from)))
            .collect()
    };
    let stale = |field: &str, want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        owned(field).iter().any(|k| have.as_ref().is_some_and(|h| h.contains_key(k)) && !want.as_ref().is_some_and(|w| w.contains_key(k)))
    };
    stale("f:labels", &desired.metadata.labels, &actual.metadata.labels)
        || stale("f:annotations", &desired.metadata.annotations, &actual.metadata.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_the_operator_applied_and_no_longer_wants_is_stale() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let mut actual = Secret::default();
        actual.metadata.labels = Some([("team".to_string(), "a".to_string()), ("theirs".to_string(), "x".to_string())].into());
        actual.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("op".into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:metadata": {"f:labels": {"f:team": {}}}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                operation: Some("Update".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:metadata": {"f:labels": {"f:theirs": {}}}}))),
                ..Default::default()
            },
        ]);
        let mut desired = Secret::default();
        assert!(has_stale_fields(&actual, &desired, "op"), "team was ours and is no longer wanted");
        desired.metadata.labels = Some([("team".to_string(), "b".to_string())].into());
        assert!(!has_stale_fields(&actual, &desired, "op"), "still wanted (its value is up_to_date's business)");
        assert!(!has_stale_fields(&actual, &Secret::default(), "other"), "another manager's fields are not ours to drop");
    }

    #[test]
    fn known_hosts_use_brackets_for_a_port() {
        assert_eq!(known_hosts_for("localhost ssh-ed25519 AAAA", "localhost:2222"), "[localhost]:2222 ssh-ed25519 AAAA\n");
        assert_eq!(known_hosts_for("bitbucket.org ssh-ed25519 AAAA\n", "bitbucket.org"), "bitbucket.org ssh-ed25519 AAAA\n");
    }
}
