//! Ref values, namespaces and ref updates: the vocabulary of ref transactions.
//!
//! This module only defines types and validation; the journal makes updates durable
//! (`journal.rs`) and the repository applies them by compare-and-swap (`repo.rs`).

use std::collections::BTreeMap;
use std::fmt;

use gix_hash::ObjectId;

/// A ref namespace of a repository. Objects are shared by all namespaces of a repository; refs are not.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// The refs mirrored from (and pushed to) the upstream.
    Default,
    /// Short-lived refs that never leave this server (`<repo>+ephemeral.git`).
    Ephemeral,
}

impl Namespace {
    /// All namespaces, in a fixed order.
    pub const ALL: [Namespace; 2] = [Namespace::Default, Namespace::Ephemeral];

    /// The stable on-disk name.
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Default => "default",
            Namespace::Ephemeral => "ephemeral",
        }
    }

    /// Parse the on-disk name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "default" => Some(Namespace::Default),
            "ephemeral" => Some(Namespace::Ephemeral),
            _ => None,
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a ref holds: an object id, or (for `HEAD`) the name of another ref.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefValue {
    /// Points at an object.
    Direct(ObjectId),
    /// Points at another ref by name.
    Symbolic(String),
}

impl RefValue {
    /// The object id, if this is a direct ref.
    pub fn id(&self) -> Option<ObjectId> {
        match self {
            RefValue::Direct(id) => Some(*id),
            RefValue::Symbolic(_) => None,
        }
    }

    /// Encode for the journal and the index: 40 hex digits, or `ref: <name>`.
    pub fn encode(&self) -> String {
        match self {
            RefValue::Direct(id) => id.to_hex().to_string(),
            RefValue::Symbolic(target) => format!("ref: {target}"),
        }
    }

    /// Decode what [`RefValue::encode`] wrote.
    pub fn decode(s: &str) -> Option<Self> {
        if let Some(target) = s.strip_prefix("ref: ") {
            return valid_ref_name(target).then(|| RefValue::Symbolic(target.to_owned()));
        }
        if s.len() != 40 {
            return None;
        }
        ObjectId::from_hex(s.as_bytes()).ok().map(RefValue::Direct)
    }
}

/// The refs of one namespace, by full name (`HEAD`, `refs/heads/main`, …).
pub type RefTable = BTreeMap<String, RefValue>;

/// Resolve `name` in `table` to an object id, following symbolic refs (at most 5 levels).
pub fn resolve(table: &RefTable, name: &str) -> Option<ObjectId> {
    let mut name = name;
    for _ in 0..5 {
        match table.get(name)? {
            RefValue::Direct(id) => return Some(*id),
            RefValue::Symbolic(target) => name = target,
        }
    }
    None
}

/// What a ref must hold for an update to apply (compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Apply whatever the current value.
    Any,
    /// The ref must not exist.
    Absent,
    /// The ref must hold exactly this value.
    Value(RefValue),
}

/// One requested ref change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// Full ref name.
    pub name: String,
    /// The compare-and-swap condition.
    pub expect: Expect,
    /// The new value; `None` deletes the ref.
    pub new: Option<RefValue>,
}

/// Why a single ref update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The ref did not hold the expected value.
    #[error("stale info: {name} changed concurrently")]
    Stale {
        /// The ref.
        name: String,
    },
    /// The ref name is not a valid git ref name.
    #[error("invalid ref name")]
    InvalidName,
    /// The new value names an object that is not in the store.
    #[error("missing object {0}")]
    MissingObject(ObjectId),
    /// Another update in an atomic transaction failed.
    #[error("transaction failed")]
    TransactionFailed,
}

/// Check a full ref name the way `git check-ref-format` does (plus `HEAD`).
pub fn valid_ref_name(name: &str) -> bool {
    if name == "HEAD" {
        return true;
    }
    if !name.starts_with("refs/") || name.len() > 1024 {
        return false;
    }
    if name.ends_with('/') || name.ends_with('.') || name.contains("..") || name.contains("@{") {
        return false;
    }
    if name
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b))
    {
        return false;
    }
    name.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_check_ref_format() {
        for ok in [
            "HEAD",
            "refs/heads/main",
            "refs/heads/feature/x",
            "refs/tags/v1.0",
        ] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "main",
            "refs/heads/",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/.x",
            "refs/heads/x.lock",
            "refs//x",
            "refs/heads/a@{1}",
            "refs/heads/a:b",
            "refs/heads/x.",
        ] {
            assert!(!valid_ref_name(bad), "{bad}");
        }
    }

    #[test]
    fn ref_values_round_trip() {
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
        for v in [
            RefValue::Direct(id),
            RefValue::Symbolic("refs/heads/main".into()),
        ] {
            assert_eq!(RefValue::decode(&v.encode()), Some(v));
        }
        assert_eq!(RefValue::decode("xyz"), None);
    }
}
