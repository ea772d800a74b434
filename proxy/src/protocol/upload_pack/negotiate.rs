//! Negotiation state: which of the client's `have`s we share, and whether we know enough to
//! send the pack (`ready`). Pure state over the store's commits; no I/O.

use std::collections::VecDeque;

use codestorage_store::ObjectId;
use codestorage_store::Result;
use codestorage_store::walk::Commits;
use gix_hashtable::HashSet;

/// What a `have` line told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Have {
    /// We have it, and it is newly common.
    Common,
    /// We have it, but already knew it was common (a parent of an earlier have).
    Known,
    /// We do not have it.
    Unknown,
}

/// The common-commit state of one request.
#[derive(Debug, Default)]
pub struct Negotiation {
    /// Haves we share, in the order received.
    pub common: Vec<ObjectId>,
    they_have: HashSet<ObjectId>,
    oldest_have: Option<i64>,
}

impl Negotiation {
    /// Process one `have`.
    pub fn have(&mut self, commits: &mut Commits<'_>, id: ObjectId) -> Result<Have> {
        if !commits.reader().contains(&id) {
            return Ok(Have::Unknown);
        }
        if let Some(info) = commits.get(&id)? {
            let (time, parents) = (info.time, info.parents.clone());
            self.oldest_have = Some(self.oldest_have.map_or(time, |t| t.min(time)));
            self.they_have.extend(parents);
        }
        if !self.they_have.insert(id) {
            return Ok(Have::Known);
        }
        self.common.push(id);
        Ok(Have::Common)
    }

    /// Whether every wanted commit reaches something the client has (so a pack computed now
    /// is as good as it gets): git's `ok_to_give_up`.
    pub fn ok_to_give_up(&self, commits: &mut Commits<'_>, wants: &[ObjectId]) -> Result<bool> {
        let Some(oldest) = self.oldest_have else {
            return Ok(false);
        };
        for want in wants {
            let (target, kind, _) = commits.peel(*want)?;
            if kind != gix_object::Kind::Commit {
                continue;
            }
            if !self.reaches_have(commits, target, oldest)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn reaches_have(&self, commits: &mut Commits<'_>, from: ObjectId, oldest: i64) -> Result<bool> {
        let mut seen = HashSet::default();
        let mut queue = VecDeque::from([from]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            if self.they_have.contains(&id) {
                return Ok(true);
            }
            let Some(info) = commits.get(&id)? else {
                continue;
            };
            if info.time < oldest {
                continue;
            }
            queue.extend(info.parents.iter().copied());
        }
        Ok(false)
    }
}
