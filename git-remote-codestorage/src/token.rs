//! Where the token comes from: `CODESTORAGE_TOKEN`, else `git config codestorage.token`, else
//! minted per invocation — with the least scope the command needs and a short TTL — from a
//! private key: `CODESTORAGE_KEY_FILE` / `codestorage.keyFile` with `codestorage.org`
//! (`CODESTORAGE_ORG`), or the key files of a local server's data directory
//! (`CODESTORAGE_DATA_DIR` / `codestorage.dataDir`).

use std::path::Path;

use codestorage::auth::keys::{SigningKey, signing_key_from_pem};
use codestorage::auth::token::mint;

use crate::{Error, setting};

/// Default token lifetime, seconds (`CODESTORAGE_TOKEN_TTL` / `codestorage.tokenTtl` override).
pub const DEFAULT_TTL: u64 = 3600;

/// What the command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Fetch, clone, ls-remote.
    Read,
    /// Push.
    Write,
}

impl Access {
    fn scope(self) -> &'static str {
        match self {
            Access::Read => "git:read",
            Access::Write => "git:write",
        }
    }
}

fn mint_with(key: &SigningKey, repo: &str, access: Access, ttl: u64) -> Result<String, Error> {
    let claims = codestorage::cli::keys::claims(
        key,
        repo,
        vec![access.scope().to_owned()],
        ttl,
        "git-remote-codestorage",
        None,
    );
    mint(key, &claims).map_err(|e| Error::Mint(e.to_string()))
}

/// A token for `repo` with `access`.
pub fn obtain(repo: &str, access: Access) -> Result<String, Error> {
    if let Some(t) = setting("CODESTORAGE_TOKEN", "codestorage.token") {
        return Ok(t);
    }
    let ttl = setting("CODESTORAGE_TOKEN_TTL", "codestorage.tokenTtl")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Error::Mint(format!("token TTL {t:?} is not a number of seconds")))
        })
        .transpose()?
        .unwrap_or(DEFAULT_TTL);
    if let Some(file) = setting("CODESTORAGE_KEY_FILE", "codestorage.keyFile") {
        let org = setting("CODESTORAGE_ORG", "codestorage.org").ok_or_else(|| {
            Error::Mint("codestorage.keyFile needs codestorage.org (or CODESTORAGE_ORG): the organisation the key signs for".into())
        })?;
        let pem = std::fs::read(&file).map_err(|e| Error::Mint(format!("reading {file}: {e}")))?;
        let key = signing_key_from_pem(&pem, &org, setting("CODESTORAGE_KID", "codestorage.kid"))
            .map_err(|e| Error::Mint(e.to_string()))?;
        return mint_with(&key, repo, access, ttl);
    }
    if let Some(dir) = setting("CODESTORAGE_DATA_DIR", "codestorage.dataDir") {
        let key = SigningKey::require(Path::new(&dir)).map_err(|e| Error::Mint(e.to_string()))?;
        return mint_with(&key, repo, access, ttl);
    }
    Err(Error::NoCredentials)
}
