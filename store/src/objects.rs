//! Minimal, allocation-light parsers for the parts of git objects that walks need: a commit's
//! tree, parents and committer time; a tag's target; a tree's entries.
//!
//! Full object validation is not done here (ingest hashes every object; `git fsck` is the
//! oracle in tests); these parsers only refuse what they cannot read.

use gix_hash::{ObjectId, oid};
use gix_object::Kind;

/// What a walk needs of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The root tree.
    pub tree: ObjectId,
    /// Parents, in order.
    pub parents: Vec<ObjectId>,
    /// Committer time, unix seconds.
    pub time: i64,
}

fn hex_id(s: &[u8]) -> Option<ObjectId> {
    if s.len() != 40 {
        return None;
    }
    ObjectId::from_hex(s).ok()
}

/// Parse a commit's headers.
pub fn parse_commit(data: &[u8]) -> Option<CommitInfo> {
    let mut tree = None;
    let mut parents = Vec::new();
    let mut time = 0;
    for line in data.split(|b| *b == b'\n') {
        if line.is_empty() {
            break;
        }
        if let Some(rest) = line.strip_prefix(b"tree ") {
            tree = Some(hex_id(rest)?);
        } else if let Some(rest) = line.strip_prefix(b"parent ") {
            parents.push(hex_id(rest)?);
        } else if let Some(rest) = line.strip_prefix(b"committer ") {
            time = signature_time(rest).unwrap_or(0);
        }
    }
    Some(CommitInfo {
        tree: tree?,
        parents,
        time,
    })
}

/// The time of a `Name <email> 1234567890 +0000` signature.
fn signature_time(sig: &[u8]) -> Option<i64> {
    let close = sig.iter().rposition(|b| *b == b'>')?;
    let rest = std::str::from_utf8(&sig[close + 1..]).ok()?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A tag's target id and target kind.
pub fn parse_tag(data: &[u8]) -> Option<(ObjectId, Kind)> {
    let mut target = None;
    let mut kind = None;
    for line in data.split(|b| *b == b'\n') {
        if line.is_empty() {
            break;
        }
        if let Some(rest) = line.strip_prefix(b"object ") {
            target = Some(hex_id(rest)?);
        } else if let Some(rest) = line.strip_prefix(b"type ") {
            kind = Kind::from_bytes(rest).ok();
        }
    }
    Some((target?, kind?))
}

/// What a tree entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A subtree.
    Tree,
    /// A file or symlink.
    Blob,
    /// A submodule commit, which lives in another repository.
    Gitlink,
}

/// Iterate over a tree's entries as `(kind, id, name)`. Stops (with `None` items skipped) at the
/// first malformed entry; [`TreeEntries::malformed`] tells whether that happened.
pub struct TreeEntries<'a> {
    rest: &'a [u8],
    malformed: bool,
}

impl<'a> TreeEntries<'a> {
    /// Start iterating `data`, the body of a tree object.
    pub fn new(data: &'a [u8]) -> Self {
        TreeEntries {
            rest: data,
            malformed: false,
        }
    }

    /// Whether iteration stopped at a malformed entry.
    pub fn malformed(&self) -> bool {
        self.malformed
    }
}

impl<'a> Iterator for TreeEntries<'a> {
    type Item = (EntryKind, &'a oid, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let sp = self.rest.iter().position(|b| *b == b' ')?;
            let mode = &self.rest[..sp];
            let nul = sp + 1 + self.rest[sp + 1..].iter().position(|b| *b == 0)?;
            let name = &self.rest[sp + 1..nul];
            let id_end = nul + 1 + 20;
            let id = oid::try_from_bytes(self.rest.get(nul + 1..id_end)?).ok()?;
            let kind = match mode {
                b"40000" | b"040000" => EntryKind::Tree,
                b"160000" => EntryKind::Gitlink,
                _ => EntryKind::Blob,
            };
            Some((kind, id, name, id_end))
        })();
        match parsed {
            Some((kind, id, name, end)) => {
                self.rest = &self.rest[end..];
                Some((kind, id, name))
            }
            None => {
                self.malformed = true;
                self.rest = &[];
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commit_headers() {
        let c = b"tree 0123456789abcdef0123456789abcdef01234567\n\
parent 1111111111111111111111111111111111111111\n\
parent 2222222222222222222222222222222222222222\n\
author A U Thor <a@example.com> 1700000000 +0100\n\
committer C O Mitter <c@example.com> 1700000123 -0500\n\
\n\
message\nparent ffffffffffffffffffffffffffffffffffffffff\n";
        let info = parse_commit(c).expect("parses");
        assert_eq!(info.parents.len(), 2);
        assert_eq!(info.time, 1700000123);
    }

    #[test]
    fn parses_tree_entries() {
        let mut t = Vec::new();
        t.extend_from_slice(b"100644 a.txt\0");
        t.extend_from_slice(&[1u8; 20]);
        t.extend_from_slice(b"40000 dir\0");
        t.extend_from_slice(&[2u8; 20]);
        t.extend_from_slice(b"160000 sub\0");
        t.extend_from_slice(&[3u8; 20]);
        let kinds: Vec<_> = TreeEntries::new(&t)
            .map(|(k, _, n)| (k, n.to_vec()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EntryKind::Blob, b"a.txt".to_vec()),
                (EntryKind::Tree, b"dir".to_vec()),
                (EntryKind::Gitlink, b"sub".to_vec()),
            ]
        );
        let mut it = TreeEntries::new(b"100644 broken");
        assert!(it.next().is_none());
        assert!(it.malformed());
    }
}
