//! The token deny-list, `<data>/keys/revoked.json`: revoked token ids, revoked subjects, and a
//! time before which every token counts as revoked. The CLI writes it (atomically) while the
//! server runs; the server re-reads it whenever the file changes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::token::Claims;

/// The deny-list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// Revoked `jti`s.
    #[serde(default)]
    pub jti: BTreeSet<String>,
    /// Revoked `sub`s.
    #[serde(default)]
    pub sub: BTreeSet<String>,
    /// Tokens issued before this time (unix seconds) are revoked.
    #[serde(default)]
    pub issued_before: Option<i64>,
}

impl Revocations {
    /// Whether `claims` are revoked.
    pub fn covers(&self, claims: &Claims) -> bool {
        claims.jti.as_ref().is_some_and(|j| self.jti.contains(j))
            || claims.sub.as_ref().is_some_and(|s| self.sub.contains(s))
            || self.issued_before.is_some_and(|t| claims.iat < t)
    }

    /// The file of the data directory `data`.
    pub fn path(data: &Path) -> PathBuf {
        data.join("keys").join("revoked.json")
    }

    /// Read the list (empty if there is none).
    pub fn load(data: &Path) -> std::io::Result<Revocations> {
        match std::fs::read(Self::path(data)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revocations::default()),
            Err(e) => Err(e),
        }
    }

    /// Write the list atomically.
    pub fn save(&self, data: &Path) -> std::io::Result<()> {
        let path = Self::path(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        codestorage_store::fsutil::atomic_write(&path, &json)
    }
}

/// The deny-list as the server sees it, reloaded when the file's modification time changes.
pub struct Watch {
    data: PathBuf,
    state: Mutex<(super::FileStamp, Revocations)>,
}

impl Watch {
    /// Watch the list of the data directory `data`.
    pub fn new(data: &Path) -> Watch {
        Watch {
            data: data.to_owned(),
            state: Mutex::new((None, Revocations::default())),
        }
    }

    /// Whether `claims` are revoked (per the current file).
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let stamp = super::file_stamp(&Revocations::path(&self.data));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 != stamp {
            match Revocations::load(&self.data) {
                Ok(r) => *state = (stamp, r),
                // Unreadable: keep the last good list rather than forgetting revocations.
                Err(e) => tracing::error!(error = %e, "cannot read the token deny-list"),
            }
        }
        state.1.covers(claims)
    }
}
