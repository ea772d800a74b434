//! Who we are to an upstream: the URL of a repository's upstream together with the HTTP Basic
//! credential to present there, resolved fresh for every sync and every forwarded push (so a
//! rotated credential or a refreshed installation token is used by the next one).
//!
//! Credentials never reach a log or an error message: their `Debug` output masks the password.

use std::fmt;
use std::sync::Arc;

use codestorage_store::{Repo, RepoRecord, UpstreamRecord};

use super::github::{self, GithubApp};
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
/// its upstream (rather than applied here). Public-mode GitHub mirrors have no credential to
/// push with: their pushes stay here.
pub fn forwards_pushes(record: &RepoRecord) -> bool {
    record
        .upstream
        .as_ref()
        .is_some_and(|u| !github::is_public(u))
}

/// Resolves repositories' upstream credentials.
pub struct CredentialSource {
    #[allow(dead_code)]
    secrets: Arc<SecretBox>,
    /// The GitHub App, when one is configured.
    github: Option<Arc<GithubApp>>,
}

impl CredentialSource {
    /// A source that opens stored secrets with `secrets`.
    pub fn new(secrets: Arc<SecretBox>) -> CredentialSource {
        CredentialSource {
            secrets,
            github: None,
        }
    }

    /// The same source, minting GitHub installation tokens with `app`.
    pub fn with_github_app(mut self, app: Option<Arc<GithubApp>>) -> CredentialSource {
        self.github = app;
        self
    }

    /// Whether a GitHub App is configured.
    pub fn has_github_app(&self) -> bool {
        self.github.is_some()
    }

    /// The installation token of an App-mode GitHub mirror, as `x-access-token` Basic auth.
    async fn github_credential(
        &self,
        upstream: &UpstreamRecord,
    ) -> Result<UpstreamCredential, CredentialError> {
        let app = self
            .github
            .as_ref()
            .ok_or_else(|| CredentialError::Provider(github::APP_REQUIRED.into()))?;
        let (Some(owner), Some(name)) = (&upstream.owner, &upstream.name) else {
            return Err(CredentialError::Provider(
                github::GithubError::NoRepo.to_string(),
            ));
        };
        let token = app
            .token(owner, name.trim_end_matches(".git"))
            .await
            .map_err(|e| CredentialError::Provider(e.to_string()))?;
        Ok(UpstreamCredential {
            username: github::TOKEN_USER.into(),
            password: token,
        })
    }

    /// The upstream of `repo` with the credential to use now; `None` for a local repository.
    pub async fn target(&self, repo: &Repo) -> Result<Option<UpstreamTarget>, CredentialError> {
        let record = repo.record();
        let Some(upstream) = record.upstream else {
            return Ok(None);
        };
        // GitHub mirrors: the App's installation token, or anonymous in public mode.
        if github::is_github(&upstream) {
            let credential = if github::is_public(&upstream) {
                None
            } else {
                Some(self.github_credential(&upstream).await?)
            };
            return Ok(Some(UpstreamTarget {
                url: upstream.url,
                credential,
            }));
        }
        Ok(Some(UpstreamTarget {
            url: upstream.url,
            credential: None,
        }))
    }
}
