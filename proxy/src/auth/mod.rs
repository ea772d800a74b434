//! Authentication and authorization: who is calling (a verified JWT from HTTP Basic `t:<jwt>`
//! or `Authorization: Bearer`), and what the token allows (scopes, repository, organisation,
//! ref policies). Tokens never appear in logs or error messages.
//!
//! - `keys`: key files and key generation.
//! - `token`: claims, minting, verification.
//! - `policy`: ref policies from the token.
//! - `revoke`: the deny-list.

pub mod keys;
pub mod policy;
pub mod revoke;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderMap;

use keys::{SigningKey, VerifyingKey};
use policy::Policy;
use token::{Claims, Keyring, TokenError};

/// A permission a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Clone, fetch, read routes.
    GitRead,
    /// Push, write routes (implies read).
    GitWrite,
    /// Create and delete repositories, manage credentials.
    RepoWrite,
    /// List the organisation's repositories.
    OrgRead,
    /// Operator actions (only from the data directory's key; implies everything).
    Admin,
}

impl Scope {
    /// The claim string.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::GitRead => "git:read",
            Scope::GitWrite => "git:write",
            Scope::RepoWrite => "repo:write",
            Scope::OrgRead => "org:read",
            Scope::Admin => "admin",
        }
    }
}

/// Why a request is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No usable token: 401 with `WWW-Authenticate`.
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// A valid token that does not allow this: 403.
    #[error("{0}")]
    Forbidden(String),
}

impl From<TokenError> for Denied {
    fn from(e: TokenError) -> Self {
        Denied::Unauthenticated(e.to_string())
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's claims.
    pub claims: Claims,
    /// Its ref policy.
    pub policy: Policy,
    /// Whether it was issued by the data directory's own organisation.
    pub local_org: bool,
}

impl Identity {
    /// Whether the token grants `scope` (`git:write` implies `git:read`; `admin` everything).
    pub fn has(&self, scope: Scope) -> bool {
        let has = |s: Scope| self.claims.scopes.iter().any(|c| c == s.as_str());
        if self.local_org && has(Scope::Admin) {
            return true;
        }
        has(scope) || (scope == Scope::GitRead && has(Scope::GitWrite))
    }

    /// Whether this is an organisation-wide token (`repo` absent or `"org"`).
    pub fn org_wide(&self) -> bool {
        matches!(self.claims.repo.as_deref(), None | Some("org"))
    }

    /// Who, for logs: `sub` and `jti` (never the token).
    pub fn who(&self) -> String {
        format!(
            "{} (jti {})",
            self.claims.sub.as_deref().unwrap_or("-"),
            self.claims.jti.as_deref().unwrap_or("-")
        )
    }

    /// Require `scope` on repository `repo` owned by organisation `org`.
    pub fn require_repo(&self, scope: Scope, repo: &str, org: &str) -> Result<(), Denied> {
        let admin = self.local_org
            && self
                .claims
                .scopes
                .iter()
                .any(|s| s == Scope::Admin.as_str());
        if !admin {
            if self.claims.iss != org {
                return Err(Denied::Forbidden(format!(
                    "token of organisation '{}' has no access to this repository",
                    self.claims.iss
                )));
            }
            if !self.org_wide() && self.claims.repo.as_deref() != Some(repo) {
                return Err(Denied::Forbidden("token is for another repository".into()));
            }
        }
        if !self.has(scope) {
            return Err(Denied::Forbidden(format!(
                "token lacks the {} scope",
                scope.as_str()
            )));
        }
        Ok(())
    }

    /// Require `scope` for an organisation-wide action.
    pub fn require_org(&self, scope: Scope) -> Result<(), Denied> {
        if !self.has(scope) {
            return Err(Denied::Forbidden(format!(
                "token lacks the {} scope",
                scope.as_str()
            )));
        }
        Ok(())
    }
}

/// The bearer token of a request: `Authorization: Bearer <jwt>` or Basic with the JWT as the
/// password (any user name).
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    if let Some(t) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Verifies requests: keys of the data directory and configured issuers, plus the deny-list.
pub struct Authenticator {
    data_dir: PathBuf,
    keyring: RwLock<Keyring>,
    issuers: Vec<(String, VerifyingKey)>,
    local_org: RwLock<String>,
    last_reload: Mutex<(Instant, Vec<FileStamp>)>,
    revoked: revoke::Watch,
}

/// What identifies a version of a file: modification time, length and inode (a rewrite within
/// one clock tick still changes the inode or the length).
pub type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

/// The stamp of `path`.
pub fn file_stamp(path: &Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// The stamps of the key files that `keys generate` changes.
fn keys_stamp(data_dir: &Path) -> Vec<FileStamp> {
    let keys = data_dir.join("keys");
    vec![
        file_stamp(&keys.join("signing.kid")),
        file_stamp(&keys.join("trusted")),
    ]
}

/// The keyring of the data directory's keys plus `issuers`, and the data directory's org.
fn build_keyring(
    data_dir: &Path,
    issuers: &[(String, VerifyingKey)],
) -> Result<(Keyring, String), keys::KeyError> {
    let signing = SigningKey::require(data_dir)?;
    let mut ring = Keyring::default();
    ring.add(&signing.org, signing.verifying()?);
    for (org, key) in keys::trusted_keys(data_dir)? {
        ring.add(&org, key);
    }
    for (org, key) in issuers {
        ring.add(org, key.clone());
    }
    Ok((ring, signing.org))
}

impl Authenticator {
    /// Load the data directory's keys (creating an organisation `local` with an EC P-256 key if
    /// there is none) and trust `issuers` (organisation, key) besides.
    pub fn load(
        data_dir: &Path,
        issuers: Vec<(String, VerifyingKey)>,
    ) -> Result<Authenticator, keys::KeyError> {
        if SigningKey::load(data_dir)?.is_none() {
            let k = SigningKey::generate(data_dir, keys::KeyAlg::Es256, "local")?;
            tracing::info!(org = %k.org, kid = %k.kid, dir = %data_dir.join("keys").display(), "created a signing key");
        }
        let (ring, local_org) = build_keyring(data_dir, &issuers)?;
        Ok(Authenticator {
            data_dir: data_dir.to_owned(),
            keyring: RwLock::new(ring),
            issuers,
            local_org: RwLock::new(local_org),
            last_reload: Mutex::new((Instant::now(), keys_stamp(data_dir))),
            revoked: revoke::Watch::new(data_dir),
        })
    }

    /// Re-read the data directory's keys (after `keys generate`): at once when the key files
    /// changed, else at most once a second (a token naming an unknown key is no reason to read
    /// the disk on every request).
    fn reload(&self) -> bool {
        {
            let stamp = keys_stamp(&self.data_dir);
            let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
            if last.1 == stamp && last.0.elapsed() < Duration::from_secs(1) {
                return false;
            }
            *last = (Instant::now(), stamp);
        }
        match build_keyring(&self.data_dir, &self.issuers) {
            Ok((ring, org)) => {
                if let Ok(mut k) = self.keyring.write() {
                    *k = ring;
                }
                if let Ok(mut o) = self.local_org.write() {
                    *o = org;
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read the signing keys");
                false
            }
        }
    }

    /// The data directory's organisation (owner of repositories created by admin tokens).
    pub fn local_org(&self) -> String {
        self.local_org.read().map(|o| o.clone()).unwrap_or_default()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Verify the request's token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, Denied> {
        let token = bearer(headers).ok_or_else(|| Denied::Unauthenticated("no token".into()))?;
        self.verify(&token)
    }

    /// Verify `token` (from a header, or nested in a request body).
    pub fn verify(&self, token: &str) -> Result<Identity, Denied> {
        let now = crate::time::now_unix() as i64;
        let verify = || {
            self.keyring
                .read()
                .map_err(|_| TokenError::Invalid("keyring unavailable".into()))
                .and_then(|ring| ring.verify(token, now))
        };
        let claims = match verify() {
            Err(TokenError::UnknownIssuer | TokenError::UnknownKey) if self.reload() => verify()?,
            other => other?,
        };
        if self.revoked.is_revoked(&claims) {
            return Err(TokenError::Revoked.into());
        }
        let policy = Policy::from_claims(claims.refs.as_ref(), claims.ops.as_deref())
            .map_err(|e| Denied::Unauthenticated(e.to_string()))?;
        Ok(Identity {
            local_org: claims.iss == self.local_org(),
            claims,
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_tokens_are_found() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer abc.def.ghi".parse().expect("header"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("abc.def.ghi"));
        let basic = base64::engine::general_purpose::STANDARD.encode("t:abc.def.ghi");
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {basic}").parse().expect("header"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("abc.def.ghi"));
        let anyone = base64::engine::general_purpose::STANDARD.encode("someone:xyz");
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {anyone}").parse().expect("header"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("xyz"));
    }

    #[test]
    fn scopes_imply_and_repos_and_orgs_must_match() {
        let id = |scopes: &[&str], repo: Option<&str>, iss: &str, local: bool| Identity {
            claims: Claims {
                iss: iss.into(),
                repo: repo.map(Into::into),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            policy: Policy::default(),
            local_org: local,
        };
        let w = id(&["git:write"], Some("r"), "acme", false);
        assert!(w.require_repo(Scope::GitRead, "r", "acme").is_ok());
        assert!(w.require_repo(Scope::GitRead, "other", "acme").is_err());
        assert!(w.require_repo(Scope::GitRead, "r", "other-org").is_err());
        let r = id(&["git:read"], Some("r"), "acme", false);
        assert!(matches!(
            r.require_repo(Scope::GitWrite, "r", "acme"),
            Err(Denied::Forbidden(_))
        ));
        let org = id(&["org:read"], Some("org"), "acme", false);
        assert!(org.require_org(Scope::OrgRead).is_ok());
        let admin = id(&["admin"], None, "local", true);
        assert!(
            admin
                .require_repo(Scope::GitWrite, "anything", "acme")
                .is_ok()
        );
        let fake_admin = id(&["admin"], None, "acme", false);
        assert!(
            fake_admin
                .require_repo(Scope::GitWrite, "r", "acme")
                .is_err()
        );
    }
}
