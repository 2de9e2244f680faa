//! Real `git` and `ssh` clone with nothing but what the Secret holds, against a real
//! OpenSSH server that authorises keys the way Bitbucket access keys work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::support::{Env, GitEndpoint, eventually};

const READY: Duration = Duration::from_secs(60);

/// Writes two Secret keys to files the way a pod mounts them (mode 0400).
fn mount(dir: &Path, secret: &Secret, private: &str, known_hosts: &str) -> PathBuf {
    let mnt = dir.join(format!("mount-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
    std::fs::create_dir_all(&mnt).unwrap();
    for (key, file) in [(private, "key"), (known_hosts, "known_hosts")] {
        let bytes = secret.data.as_ref().unwrap().get(key).unwrap_or_else(|| panic!("Secret lacks {key}")).0.clone();
        let path = mnt.join(file);
        std::fs::write(&path, bytes).unwrap();
        let mut p = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o400);
        std::fs::set_permissions(&path, p).unwrap();
    }
    mnt
}

/// `git clone` over SSH with only the mounted files; Ok or the error output.
fn clone(ep: &GitEndpoint, mnt: &Path, repo: &str) -> Result<(), String> {
    let target = mnt.join(format!("clone-{}", repo.replace('/', "-")));
    let _ = std::fs::remove_dir_all(&target);
    let ssh = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        mnt.join("key").display(),
        mnt.join("known_hosts").display()
    );
    let out = Command::new("git")
        .args(["clone", "-q", &format!("ssh://git@127.0.0.1:{}/{repo}.git", ep.port)])
        .arg(&target)
        .env("GIT_SSH_COMMAND", ssh)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).to_string()) }
}

fn push(mnt: &Path, repo: &str) -> Result<(), String> {
    let dir = mnt.join(format!("clone-{}", repo.replace('/', "-")));
    let ssh = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        mnt.join("key").display(),
        mnt.join("known_hosts").display()
    );
    let commit = Command::new("git")
        .current_dir(&dir)
        .args(["-c", "user.name=ci", "-c", "user.email=ci@acme.test", "commit", "-q", "--allow-empty", "-m", "ci"])
        .output()
        .unwrap();
    assert!(commit.status.success());
    let out = Command::new("git").current_dir(&dir).args(["push", "-q", "origin", "main"]).env("GIT_SSH_COMMAND", ssh).output().unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).to_string()) }
}

async fn setup(name: &str) -> (Env, GitEndpoint) {
    let env = Env::new(name).await;
    let ep = GitEndpoint::start(&env.dir, &env.sim, &["acme/api", "acme/web", "acme/tools", "acme/infra"]);
    env.workspace().await;
    env.api("bitbucketworkspaces")
        .patch("acme", &PatchParams::default(), &Patch::Merge(json!({"spec": {"sshHost": ep.ssh_host(), "knownHosts": ep.known_hosts()}})))
        .await
        .unwrap();
    (env, ep)
}

fn access_key(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: bitbucket.credentials.dev/v1alpha1\nkind: BitbucketAccessKey\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: acme}}\n{spec}"
    )
}

#[tokio::test]
async fn the_secret_clones_registered_repositories_and_nothing_else() {
    let (env, ep) = setup("git-clone").await;
    env.apply(&access_key("ci", "  repositories: [tools]\n  projects: [CORE]\n  secret: {formats: [ssh-auth, flux, jenkins]}\n")).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let secret = env.secret("ci").await.unwrap();
    let mnt = mount(&env.dir, &secret, "ssh-privatekey", "known_hosts");
    clone(&ep, &mnt, "acme/tools").expect("clone of a registered repository");
    clone(&ep, &mnt, "acme/api").expect("clone of a repository of a registered project");
    let refused = clone(&ep, &mnt, "acme/infra").expect_err("clone of an unregistered repository");
    assert!(refused.contains("not registered"), "{refused}");
    let push = push(&mnt, "acme/tools").expect_err("push with an access key");
    assert!(push.contains("read-only"), "{push}");
    // The Flux and Jenkins layouts hold the same working key.
    let flux = mount(&env.dir, &secret, "identity", "known_hosts");
    clone(&ep, &flux, "acme/web").expect("clone with the flux identity");
    let jenkins = mount(&env.dir, &secret, "privateKey", "known_hosts");
    clone(&ep, &jenkins, "acme/tools").expect("clone with the jenkins privateKey");
}

#[tokio::test]
async fn after_rotation_the_new_key_clones_at_once_and_the_old_one_stops_after_the_grace_period() {
    let (env, ep) = setup("git-rotate").await;
    env.apply(&access_key("ci", "  repositories: [api]\n  rotation: {period: 1h, gracePeriod: 6s}\n")).await;
    let o = env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let old_fp = o.data["status"]["fingerprint"].as_str().unwrap().to_string();
    let old = mount(&env.dir, &env.secret("ci").await.unwrap(), "ssh-privatekey", "known_hosts");
    clone(&ep, &old, "acme/api").expect("old key before rotation");
    env.api("bitbucketaccesskeys")
        .patch(
            "ci",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"bitbucket.credentials.dev/rotate": "now"}}})),
        )
        .await
        .unwrap();
    let secret = eventually("the Secret holds a new key", READY, || async {
        let o = env.get("bitbucketaccesskeys", "ci").await?;
        let fp = o.data["status"]["fingerprint"].as_str()?.to_string();
        if fp == old_fp {
            return None;
        }
        env.secret("ci").await
    })
    .await;
    let new = mount(&env.dir, &secret, "ssh-privatekey", "known_hosts");
    clone(&ep, &new, "acme/api").expect("the new key clones at once");
    clone(&ep, &old, "acme/api").expect("the old key still clones during the grace period");
    eventually("the old key stops working", Duration::from_secs(40), || async { clone(&ep, &old, "acme/api").err().map(|_| ()) }).await;
    clone(&ep, &new, "acme/api").expect("the new key keeps working");
}

#[tokio::test]
async fn after_deleting_the_object_nothing_clones() {
    let (env, ep) = setup("git-delete").await;
    env.apply(&access_key("ci", "  repositories: [api]\n  projects: [CORE]\n")).await;
    env.wait_ready("bitbucketaccesskeys", "ci", READY).await;
    let mnt = mount(&env.dir, &env.secret("ci").await.unwrap(), "ssh-privatekey", "known_hosts");
    clone(&ep, &mnt, "acme/api").expect("clone before deletion");
    env.api("bitbucketaccesskeys").delete("ci", &DeleteParams::default()).await.unwrap();
    eventually("the object is gone", READY, || async { env.get("bitbucketaccesskeys", "ci").await.is_none().then_some(()) }).await;
    assert!(clone(&ep, &mnt, "acme/api").is_err(), "a deleted object's key must not clone");
    assert!(clone(&ep, &mnt, "acme/web").is_err());
}
