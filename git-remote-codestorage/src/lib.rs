//! `git-remote-codestorage`: `git clone codestorage::my-repo` and friends.
//!
//! The helper resolves the URL to a codestorage server, obtains a token with the least scope the
//! command needs (a configured one, or minted per invocation from a private key), and hands the
//! wire work to git's own HTTP transport (`git remote-http`/`remote-https` as a child), so every
//! git feature works. The token reaches the child as an `http.extraHeader` through
//! `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`: never in a URL, argv, or a
//! credential helper, so it is never written to disk.
//!
//! - `target`: URL forms and where the server is.
//! - `token`: where the token comes from.
//! - `session`: the remote-helper conversation with git and the child.

pub mod session;
pub mod target;
pub mod token;

use std::process::Command;

/// Why the helper cannot do what git asked, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `codestorage::` URL does not parse.
    #[error("malformed codestorage URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as git passed it.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing answers at the server address.
    #[error(
        "no codestorage server reachable at {server} ({reason}); start one with `codestorage serve`, or set CODESTORAGE_URL / `git config codestorage.url`"
    )]
    Unreachable {
        /// The server base URL.
        server: String,
        /// The connection error.
        reason: String,
    },
    /// Neither a token nor a key to mint one.
    #[error(
        "no codestorage token or key configured: set CODESTORAGE_TOKEN (or `git config codestorage.token`), or point CODESTORAGE_KEY_FILE / `git config codestorage.keyFile` (with `codestorage.org`) or CODESTORAGE_DATA_DIR / `git config codestorage.dataDir` at a signing key"
    )]
    NoCredentials,
    /// The key could not be used to mint a token.
    #[error("cannot mint a token: {0}")]
    Mint(String),
    /// The server refused the token.
    #[error("the codestorage server refused the token (HTTP {status}): {message}")]
    Refused {
        /// 401 or 403.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Talking to git or the child failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `git config --get KEY` (in the current repository, if any), or `None`.
pub fn git_config(key: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["config", "--get", key])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!v.is_empty()).then_some(v)
}

/// An environment variable, else a git config key.
pub fn setting(env: &str, key: &str) -> Option<String> {
    std::env::var(env)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| git_config(key))
}
