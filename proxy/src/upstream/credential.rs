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

/// The user name presented with a token-only credential (no user name given): the forge's
/// convention for access tokens. GitHub: `x-access-token`; GitLab: `oauth2`; Bitbucket
/// (repository and workspace access tokens): `x-token-auth`. Gitea, Forgejo, Codeberg and
/// SourceHut accept a token with any user name, and so do most other git hosts that take tokens,
/// so they (and mirrors given by URL only) get `git`.
pub fn conventional_username(provider: Option<&str>) -> &'static str {
    match provider.map(str::to_ascii_lowercase).as_deref() {
        Some("github") => "x-access-token",
        Some("gitlab") => "oauth2",
        Some("bitbucket") => "x-token-auth",
        _ => "git",
    }
}

/// The sealing context of a repository's credential: binds the sealed value to the repository
/// (by its generated id, which never changes) and to the credential id.
fn context(repo_id: &str, credential_id: &str) -> String {
    format!("credential:{repo_id}:{credential_id}")
}

/// What is sealed: the user name (if given) and the password, together.
#[derive(serde::Serialize, serde::Deserialize)]
struct Plain {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    password: String,
}

/// Seal a credential for storage in `repo_id`'s record under `credential_id`.
pub fn seal(
    secrets: &SecretBox,
    repo_id: &str,
    credential_id: &str,
    username: Option<&str>,
    password: &Secret,
) -> Result<String, CredentialError> {
    let plain = Plain {
        username: username.map(str::to_owned),
        password: password.expose().to_owned(),
    };
    let json = serde_json::to_string(&plain)
        .map_err(|e| CredentialError::Provider(format!("encoding a credential: {e}")))?;
    Ok(secrets.seal(&context(repo_id, credential_id), &Secret::new(json))?)
}

fn open_plain(secrets: &SecretBox, record: &RepoRecord) -> Result<Option<Plain>, CredentialError> {
    let Some(stored) = &record.credential else {
        return Ok(None);
    };
    let json = secrets.open(&context(&record.id, &stored.id), &stored.sealed)?;
    let plain: Plain = serde_json::from_str(json.expose()).map_err(|_| SecretError::Open)?;
    Ok(Some(plain))
}

/// The user name stored with `record`'s credential, as given (`None`: token only).
pub fn stored_username(
    secrets: &SecretBox,
    record: &RepoRecord,
) -> Result<Option<String>, CredentialError> {
    Ok(open_plain(secrets, record)?.and_then(|p| p.username))
}

/// Open the stored credential of `record`, with the conventional user name filled in.
pub fn open(
    secrets: &SecretBox,
    record: &RepoRecord,
) -> Result<Option<UpstreamCredential>, CredentialError> {
    let Some(plain) = open_plain(secrets, record)? else {
        return Ok(None);
    };
    let provider = record.upstream.as_ref().and_then(|u| u.provider.as_deref());
    Ok(Some(UpstreamCredential {
        username: plain
            .username
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| conventional_username(provider).to_owned()),
        password: Secret::new(plain.password),
    }))
}

/// Resolves repositories' upstream credentials.
pub struct CredentialSource {
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
    /// The stored credential is opened afresh each time, so a rotation applies to the next use.
    pub async fn target(&self, repo: &Repo) -> Result<Option<UpstreamTarget>, CredentialError> {
        let record = repo.record();
        let Some(upstream) = &record.upstream else {
            return Ok(None);
        };
        // GitHub mirrors: anonymous in public mode; otherwise the App's installation token
        // (a stored credential only stands in where no App is configured).
        if github::is_github(upstream) {
            let credential = if github::is_public(upstream) {
                None
            } else if self.github.is_some() || record.credential.is_none() {
                Some(self.github_credential(upstream).await?)
            } else {
                open(&self.secrets, &record)?
            };
            return Ok(Some(UpstreamTarget {
                url: upstream.url.clone(),
                credential,
            }));
        }
        let credential = open(&self.secrets, &record)?;
        Ok(Some(UpstreamTarget {
            url: upstream.url.clone(),
            credential,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codestorage_store::{CredentialRecord, UpstreamRecord};

    fn record(provider: Option<&str>) -> RepoRecord {
        RepoRecord {
            id: "r0123456789abcdef".into(),
            name: "team/app".into(),
            created_at: 1,
            default_branch: "main".into(),
            upstream: Some(UpstreamRecord {
                url: "https://git.example.com/team/app.git".into(),
                provider: provider.map(Into::into),
                ..Default::default()
            }),
            org: None,
            first_synced_at: None,
            credential: None,
        }
    }

    #[test]
    fn token_only_credentials_get_the_forges_user_name() {
        assert_eq!(conventional_username(Some("github")), "x-access-token");
        assert_eq!(conventional_username(Some("GitLab")), "oauth2");
        assert_eq!(conventional_username(Some("bitbucket")), "x-token-auth");
        for other in [
            Some("gitea"),
            Some("forgejo"),
            Some("codeberg"),
            Some("sr.ht"),
            None,
        ] {
            assert_eq!(conventional_username(other), "git", "{other:?}");
        }
    }

    #[test]
    fn a_sealed_credential_opens_only_in_its_own_record() {
        let secrets = SecretBox::from_key(&[3u8; 32]).expect("key");
        let mut rec = record(Some("gitlab"));
        let sealed = seal(&secrets, &rec.id, "ggc_1", None, &Secret::new("tok-123")).expect("seal");
        assert!(!sealed.contains("tok-123"));
        rec.credential = Some(CredentialRecord {
            id: "ggc_1".into(),
            sealed: sealed.clone(),
            created_at: 1,
            updated_at: 1,
        });
        let cred = open(&secrets, &rec).expect("open").expect("stored");
        assert_eq!(cred.username, "oauth2");
        assert_eq!(cred.password.expose(), "tok-123");
        assert!(!format!("{cred:?} {:?}", rec).contains("tok-123"));
        assert!(
            !format!("{:?}", rec).contains(&sealed),
            "records do not print sealed values"
        );

        let mut other = record(None);
        other.id = "r1111111111111111".into();
        other.credential = rec.credential.clone();
        assert!(open(&secrets, &other).is_err(), "bound to its repository");
        let mut renamed = rec.clone();
        if let Some(c) = renamed.credential.as_mut() {
            c.id = "ggc_2".into();
        }
        assert!(open(&secrets, &renamed).is_err(), "bound to its id");
    }
}
