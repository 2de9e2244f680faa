//! The workspaces, repositories and projects that exist in the simulated account.
//!
//! Fixed at start from the config: the operator never creates repositories, so the
//! simulator does not need to either.

use ssh_key::HashAlg;

use super::config::SimConfig;
use super::state::Target;

#[derive(Debug, Clone)]
pub struct Workspace {
    pub slug: String,
    pub uuid: String,
    pub repositories: Vec<Repository>,
    pub projects: Vec<Project>,
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub workspace: String,
    pub slug: String,
    pub name: String,
    pub uuid: String,
    pub project: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub workspace: String,
    pub key: String,
    pub name: String,
    pub uuid: String,
}

impl Repository {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.workspace, self.slug)
    }

    pub fn target(&self) -> Target {
        Target::Repository { workspace: self.workspace.clone(), slug: self.slug.clone() }
    }
}

impl Project {
    pub fn target(&self) -> Target {
        Target::Project { workspace: self.workspace.clone(), key: self.key.clone() }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    workspaces: Vec<Workspace>,
}

impl Catalog {
    pub fn from_config(config: &SimConfig) -> Self {
        let workspaces = config
            .workspaces
            .iter()
            .map(|ws| Workspace {
                slug: ws.slug.clone(),
                uuid: ws.uuid.clone().unwrap_or_else(|| derived_uuid(&format!("workspace:{}", ws.slug))),
                repositories: ws
                    .repositories
                    .iter()
                    .map(|r| Repository {
                        workspace: ws.slug.clone(),
                        slug: r.slug.clone(),
                        name: r.name.clone().unwrap_or_else(|| r.slug.clone()),
                        uuid: r.uuid.clone().unwrap_or_else(|| derived_uuid(&format!("repository:{}/{}", ws.slug, r.slug))),
                        project: r.project.clone(),
                    })
                    .collect(),
                projects: ws
                    .projects
                    .iter()
                    .map(|p| Project {
                        workspace: ws.slug.clone(),
                        key: p.key.clone(),
                        name: p.name.clone().unwrap_or_else(|| p.key.clone()),
                        uuid: p.uuid.clone().unwrap_or_else(|| derived_uuid(&format!("project:{}/{}", ws.slug, p.key))),
                    })
                    .collect(),
            })
            .collect();
        Self { workspaces }
    }

    /// Bitbucket accepts the `{uuid}` wherever a slug goes in a URL.
    pub fn workspace(&self, id: &str) -> Option<&Workspace> {
        self.workspaces.iter().find(|ws| ws.slug == id || ws.uuid == id)
    }

    pub fn repository(&self, workspace: &str, repo: &str) -> Option<&Repository> {
        self.workspace(workspace)?.repositories.iter().find(|r| r.slug == repo || r.uuid == repo)
    }

    pub fn project(&self, workspace: &str, key: &str) -> Option<&Project> {
        self.workspace(workspace)?.projects.iter().find(|p| p.key == key || p.uuid == key)
    }

    /// Looks up `workspace/slug`.
    pub fn repository_by_full_name(&self, full_name: &str) -> Option<&Repository> {
        let (workspace, slug) = full_name.split_once('/')?;
        self.repository(workspace, slug)
    }

    /// Where a key registered on `target` lives, for rendering; `None` if the config no
    /// longer lists it (a state file from an older config).
    pub fn describe(&self, target: &Target) -> Option<TargetRef<'_>> {
        match target {
            Target::Repository { workspace, slug } => self.repository(workspace, slug).map(TargetRef::Repository),
            Target::Project { workspace, key } => self.project(workspace, key).map(TargetRef::Project),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum TargetRef<'a> {
    Repository(&'a Repository),
    Project(&'a Project),
}

/// A stable `{8-4-4-4-12}` UUID derived from a name, so that restarts and reruns give
/// the same UUIDs without persisting them.
pub fn derived_uuid(name: &str) -> String {
    let digest = HashAlg::Sha256.digest(name.as_bytes());
    let mut b = [0u8; 16];
    for (dst, src) in b.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    // Mark it as a version-4/variant-1 UUID so strict parsers accept it.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{{{}-{}-{}-{}-{}}}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_stable_and_braced() {
        let a = derived_uuid("repository:acme/api");
        assert_eq!(a, derived_uuid("repository:acme/api"));
        assert_ne!(a, derived_uuid("repository:acme/web"));
        assert_eq!(a.len(), 38);
        assert!(a.starts_with('{') && a.ends_with('}'));
    }

    #[test]
    fn repositories_are_found_by_slug_or_uuid() {
        let config =
            SimConfig::from_yaml("workspaces: [{slug: acme, repositories: [{slug: api}], projects: [{key: CORE}]}]").expect("config");
        let catalog = Catalog::from_config(&config);
        let repo = catalog.repository("acme", "api").expect("by slug");
        let ws_uuid = catalog.workspace("acme").expect("ws").uuid.clone();
        assert!(catalog.repository(&ws_uuid, &repo.uuid).is_some());
        assert!(catalog.repository("acme", "nope").is_none());
        assert!(catalog.project("acme", "CORE").is_some());
        assert!(catalog.repository_by_full_name("acme/api").is_some());
    }
}
