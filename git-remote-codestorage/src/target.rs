//! URL forms: `codestorage::<repo>`, `codestorage::<repo>+ephemeral`,
//! `codestorage::https://host[:port]/<repo>`, `codestorage::http://host[:port]/<repo>` and
//! `codestorage://host[:port]/<repo>` (https). The server of the short form comes from
//! `CODESTORAGE_URL`, else `git config codestorage.url`, else `http://127.0.0.1:8080`.

use crate::{Error, setting};

/// The local server's default address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Where a `codestorage::` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http(s)://host[:port]` (plus any path prefix), without a trailing slash.
    pub server: String,
    /// The repository path as served: `team/project` or `team/project+ephemeral`.
    pub path: String,
    /// The repository name the token is for (without `+ephemeral`).
    pub repo: String,
}

impl Target {
    /// The smart-HTTP URL git's transport uses.
    pub fn http_url(&self) -> String {
        format!("{}/{}.git", self.server, self.path)
    }

    /// Whether the server speaks TLS.
    pub fn is_https(&self) -> bool {
        self.server.starts_with("https://")
    }
}

fn bad(url: &str, reason: &str) -> Error {
    Error::BadUrl {
        url: redact(url),
        reason: reason.to_owned(),
    }
}

/// `url` with any user-info (which may be a token) replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Split `repo[+ephemeral][.git]` into the served path and the repository name.
fn repo_path(url: &str, raw: &str) -> Result<(String, String), Error> {
    let raw = raw.trim_matches('/');
    let raw = raw.strip_suffix(".git").unwrap_or(raw);
    let (name, suffix) = match raw.strip_suffix("+ephemeral") {
        Some(n) => (n, "+ephemeral"),
        None => (raw, ""),
    };
    if name.is_empty() {
        return Err(bad(url, "no repository name"));
    }
    if name.len() > 200 || !name.split('/').all(valid_segment) {
        return Err(bad(
            url,
            "a repository name is /-separated segments of A-Z a-z 0-9 . _ - (no empty, . or .. segment), at most 200 characters",
        ));
    }
    if name.ends_with(".git") {
        return Err(bad(url, "a repository name must not end in .git"));
    }
    Ok((format!("{name}{suffix}"), name.to_owned()))
}

/// Split `scheme://host[:port]/rest` into (`scheme://host[:port]`, `rest`).
fn split_server<'a>(url: &str, scheme: &str, rest: &'a str) -> Result<(String, &'a str), Error> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        return Err(bad(
            url,
            "expected scheme://host[:port]/repo (no user or token in the URL)",
        ));
    }
    Ok((format!("{scheme}://{authority}"), path))
}

/// Resolve the URL git passed (`<repo>`, `https://…`, `codestorage://…`).
pub fn resolve(url: &str) -> Result<Target, Error> {
    let (server, raw) = if let Some(rest) = url.strip_prefix("codestorage://") {
        split_server(url, "https", rest)?
    } else if let Some(rest) = url.strip_prefix("https://") {
        split_server(url, "https", rest)?
    } else if let Some(rest) = url.strip_prefix("http://") {
        split_server(url, "http", rest)?
    } else if url.contains("://") {
        return Err(bad(
            url,
            "only codestorage://, https:// and http:// servers are supported",
        ));
    } else {
        let server = setting("CODESTORAGE_URL", "codestorage.url")
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let server = server.trim_end_matches('/').to_owned();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(bad(
                &server,
                "CODESTORAGE_URL / codestorage.url must be an http:// or https:// URL",
            ));
        }
        (server, url)
    };
    let (path, repo) = repo_path(url, raw)?;
    Ok(Target { server, path, repo })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_url_form() {
        let t = resolve("https://cs.example.com:8443/team/app").expect("https");
        assert_eq!(t.http_url(), "https://cs.example.com:8443/team/app.git");
        assert_eq!(t.repo, "team/app");
        let t = resolve("codestorage://cs.example.com/team/app+ephemeral").expect("codestorage://");
        assert_eq!(
            t.http_url(),
            "https://cs.example.com/team/app+ephemeral.git"
        );
        assert_eq!(t.repo, "team/app");
        let t = resolve("http://127.0.0.1:9/x.git").expect("http");
        assert_eq!(t.http_url(), "http://127.0.0.1:9/x.git");
    }

    #[test]
    fn messages_never_show_user_info() {
        assert_eq!(redact("https://t:secret@host/x"), "https://***@host/x");
        assert_eq!(redact("https://host/x@y"), "https://host/x@y");
        let err = resolve("https://t:secret@host/x")
            .expect_err("refused")
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn refuses_malformed_urls() {
        for url in [
            "https://host/",
            "https://user:pw@host/x",
            "ssh://host/x",
            "https:///x",
            "https://host/a//b",
            "https://host/../x",
            "https://host/x.git.git",
            "https://host/a b",
        ] {
            assert!(resolve(url).is_err(), "{url}");
        }
    }
}
