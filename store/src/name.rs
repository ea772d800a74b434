//! Repository names: the one place that decides what a valid name is.
//!
//! A name is one or more `/`-separated segments of `[A-Za-z0-9._-]`, with no empty, `.` or `..`
//! segment, not ending in `.git`, at most 200 characters, case-sensitive. `+` is reserved for
//! namespace suffixes (`+ephemeral`). Names are never used as filesystem paths: each repository
//! lives in a directory named by its generated id.

use std::fmt;

/// The longest name accepted, in bytes (all valid names are ASCII).
pub const MAX_NAME_LEN: usize = 200;

/// A validated repository name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

/// Why a string is not a valid repository name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("repository name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// A segment between slashes is empty (leading, trailing or doubled `/`).
    #[error("repository name has an empty path segment")]
    EmptySegment,
    /// A segment is `.` or `..`.
    #[error("repository name has a '.' or '..' segment")]
    DotSegment,
    /// The name ends in `.git`, which would be ambiguous in URLs.
    #[error("repository name must not end in '.git'")]
    GitSuffix,
    /// A character outside `[A-Za-z0-9._-/]`.
    #[error("repository name has an invalid character {0:?} (allowed: A-Z a-z 0-9 . _ - /)")]
    InvalidChar(char),
}

impl RepoName {
    /// Validate `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(NameError::InvalidChar(c));
        }
        for segment in name.split('/') {
            match segment {
                "" => return Err(NameError::EmptySegment),
                "." | ".." => return Err(NameError::DotSegment),
                _ => {}
            }
        }
        if name.ends_with(".git") {
            return Err(NameError::GitSuffix);
        }
        Ok(RepoName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_names() {
        for ok in [
            "a",
            "team/project",
            "a.b_c-d/e",
            "x/y/z",
            "A9",
            ".hidden",
            "a.git.x",
        ] {
            assert!(RepoName::new(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(201);
        let cases = [
            ("", NameError::Empty),
            (long.as_str(), NameError::TooLong),
            ("a//b", NameError::EmptySegment),
            ("/a", NameError::EmptySegment),
            ("a/", NameError::EmptySegment),
            ("a/./b", NameError::DotSegment),
            ("../x", NameError::DotSegment),
            ("x.git", NameError::GitSuffix),
            ("a+b", NameError::InvalidChar('+')),
            ("a b", NameError::InvalidChar(' ')),
            ("a%2Fb", NameError::InvalidChar('%')),
        ];
        for (name, want) in cases {
            assert_eq!(RepoName::new(name), Err(want), "{name:?}");
        }
        assert!(RepoName::new(&"a".repeat(200)).is_ok());
    }
}
