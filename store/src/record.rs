//! Repository records: what a repository is (name, default branch, upstream), as JSON files
//! written atomically. They are durable truth; the index only caches them.

use serde::{Deserialize, Serialize};

/// Where a mirrored repository comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UpstreamRecord {
    /// The git URL fetched from and pushed to.
    pub url: String,
    /// Forge name as given at creation (`github`, `gitlab`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Owner / namespace on the forge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Repository name on the forge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host of a self-hosted forge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// The upstream's default branch as given at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    /// How we authenticate to the upstream, as given at creation (`base_repo.auth.auth_type`):
    /// `public` for an anonymously fetched GitHub mirror whose pushes stay local; absent for
    /// the provider's default (the GitHub App for `github`, stored credentials otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
}

/// A repository's upstream credential (compat.md §5.6), as stored: the user name and password
/// are sealed together by the server (the store never sees plaintext), so this record may be
/// written to disk, indexed and logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// The credential's id (`ggc_` + 16 hex digits).
    pub id: String,
    /// The sealed user name and password (opaque to the store).
    pub sealed: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Time of the last rotation (or creation), unix seconds.
    pub updated_at: u64,
}

impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("id", &self.id)
            .field("sealed", &"<sealed>")
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A repository's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// The generated id; also the name of the repository's directory.
    pub id: String,
    /// The repository name (validated by [`crate::RepoName`]).
    pub name: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// The default branch (short name), used for `HEAD` of local repositories.
    pub default_branch: String,
    /// The upstream, for mirrors; `None` for local-only repositories.
    #[serde(default)]
    pub upstream: Option<UpstreamRecord>,
    /// The organisation that owns the repository (the `iss` of the token that created it);
    /// `None` for the data directory's own organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// When the first sync from the upstream succeeded (unix seconds); until then a mirror
    /// serves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_synced_at: Option<u64>,
    /// The credential presented to the upstream, if one is stored (one per repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialRecord>,
}
