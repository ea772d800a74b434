//! Shallow clones and fetches: computing the new shallow boundary for `deepen`,
//! `deepen-relative`, `deepen-since` and `deepen-not`, as git's upload-pack does, and what that
//! means for the object walk (grafts, extra wants and haves for unshallowed commits).

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use codestorage_store::walk::{Commits, walk_commits};
use codestorage_store::{ObjectId, RefTable, Result, StoreError, refs};
use gix_hashtable::{HashMap, HashSet};
use gix_object::Kind;

use super::request::Fetch;

/// `deepen 2147483647` (what `--unshallow` sends) means "everything".
pub const INFINITE_DEPTH: u32 = 0x7fff_ffff;

/// The outcome of the shallow computation.
#[derive(Debug, Default, Clone)]
pub struct ShallowPlan {
    /// Whether a `shallow-info` section / shallow list is sent at all.
    pub send_info: bool,
    /// New shallow commits to announce.
    pub shallow: Vec<ObjectId>,
    /// Client shallow commits that are not shallow any more.
    pub unshallow: Vec<ObjectId>,
    /// Commits the object walk treats as parentless.
    pub grafts: HashSet<ObjectId>,
    /// Extra walk roots: parents of unshallowed commits.
    pub extra_wants: Vec<ObjectId>,
    /// Extra uninteresting commits: the unshallowed commits themselves.
    pub extra_haves: Vec<ObjectId>,
}

/// Why a shallow request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ShallowError {
    /// A `deepen-not` name that is no ref here.
    #[error("git upload-pack: ambiguous or unknown deepen-not argument '{0}'")]
    UnknownRef(String),
    /// The request selects no commits at all.
    #[error("no commits selected for shallow requests")]
    NothingSelected,
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compute the shallow plan of `req` against the store (`refs` resolves `deepen-not` names).
pub fn plan(
    commits: &mut Commits<'_>,
    req: &Fetch,
    refs: &RefTable,
    interrupt: &AtomicBool,
) -> std::result::Result<ShallowPlan, ShallowError> {
    let client_shallow: HashSet<ObjectId> = req.shallow.iter().copied().collect();
    let mut plan = ShallowPlan {
        send_info: req.deepens() || !req.shallow.is_empty(),
        grafts: client_shallow.clone(),
        ..Default::default()
    };
    if !req.deepens() {
        return Ok(plan);
    }
    let mut heads = Vec::new();
    for w in &req.wants {
        let (target, kind, _) = commits.peel(*w)?;
        if kind == Kind::Commit {
            heads.push(target);
        }
    }
    let (boundary, not_shallow): (Vec<ObjectId>, HashSet<ObjectId>) = if let Some(depth) = req.depth
    {
        if depth >= INFINITE_DEPTH {
            (Vec::new(), client_shallow.clone())
        } else {
            let mut depth = depth;
            if req.deepen_relative {
                match min_depth_of(commits, &heads, &client_shallow)? {
                    Some(d) => depth = depth.saturating_add(d),
                    None => return Ok(plan),
                }
            }
            by_depth(commits, &heads, depth)?
        }
    } else {
        let mut excluded = Vec::new();
        for name in &req.deepen_not {
            let id = dwim(refs, name).ok_or_else(|| ShallowError::UnknownRef(name.clone()))?;
            let (target, kind, _) = commits.peel(id)?;
            if kind == Kind::Commit {
                excluded.push(target);
            }
        }
        by_rev_list(commits, &heads, req.deepen_since, &excluded, interrupt)?
    };
    for c in &boundary {
        if !client_shallow.contains(c) && !not_shallow.contains(c) {
            plan.shallow.push(*c);
        }
        plan.grafts.insert(*c);
    }
    for c in &req.shallow {
        if not_shallow.contains(c) {
            plan.unshallow.push(*c);
            if let Some(info) = commits.get(c)? {
                plan.extra_wants.extend(info.parents.iter().copied());
            }
            plan.extra_haves.push(*c);
        }
    }
    Ok(plan)
}

/// Resolve a ref the way `git rev-parse` guesses short names.
fn dwim(refs: &RefTable, name: &str) -> Option<ObjectId> {
    [
        name.to_owned(),
        format!("refs/{name}"),
        format!("refs/tags/{name}"),
        format!("refs/heads/{name}"),
        format!("refs/remotes/{name}"),
    ]
    .iter()
    .find_map(|n| refs::resolve(refs, n))
}

/// Minimum depth (want = 1) at which any of `targets` is reached from `heads`.
fn min_depth_of(
    commits: &mut Commits<'_>,
    heads: &[ObjectId],
    targets: &HashSet<ObjectId>,
) -> Result<Option<u32>> {
    let mut seen = HashSet::default();
    let mut queue: VecDeque<(ObjectId, u32)> = heads.iter().map(|h| (*h, 1)).collect();
    while let Some((id, d)) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        if targets.contains(&id) {
            return Ok(Some(d));
        }
        if let Some(info) = commits.get(&id)? {
            for p in info.parents.clone() {
                queue.push_back((p, d + 1));
            }
        }
    }
    Ok(None)
}

/// Breadth-first from `heads` (depth 1): commits at exactly `depth` form the boundary; those
/// above it are "not shallow".
fn by_depth(
    commits: &mut Commits<'_>,
    heads: &[ObjectId],
    depth: u32,
) -> Result<(Vec<ObjectId>, HashSet<ObjectId>)> {
    let mut min_depth: HashMap<ObjectId, u32> = HashMap::default();
    let mut queue: VecDeque<(ObjectId, u32)> = VecDeque::new();
    for h in heads {
        if min_depth.insert(*h, 1).is_none() {
            queue.push_back((*h, 1));
        }
    }
    let mut boundary = Vec::new();
    let mut not_shallow = HashSet::default();
    while let Some((id, d)) = queue.pop_front() {
        if d >= depth {
            boundary.push(id);
            continue;
        }
        not_shallow.insert(id);
        let parents = commits
            .get(&id)?
            .map(|c| c.parents.clone())
            .unwrap_or_default();
        for p in parents {
            if min_depth.get(&p).is_none_or(|m| *m > d + 1) {
                min_depth.insert(p, d + 1);
                queue.push_back((p, d + 1));
            }
        }
    }
    Ok((boundary, not_shallow))
}

/// `rev-list --max-age=<since> WANTS --not DEEPEN_NOT`: the selected commits; those with a
/// parent outside the selection form the boundary.
fn by_rev_list(
    commits: &mut Commits<'_>,
    heads: &[ObjectId],
    since: Option<i64>,
    excluded_tips: &[ObjectId],
    interrupt: &AtomicBool,
) -> std::result::Result<(Vec<ObjectId>, HashSet<ObjectId>), ShallowError> {
    let walk = walk_commits(
        commits,
        heads,
        excluded_tips,
        &HashSet::default(),
        interrupt,
    )?;
    let mut selected: HashSet<ObjectId> = HashSet::default();
    // The limited walk visits interesting commits newest first; an old commit cuts its
    // ancestry off from the selection (as --max-age marks it uninteresting).
    let mut cut: HashSet<ObjectId> = HashSet::default();
    for id in &walk.interesting {
        let info = commits.get(id)?.cloned();
        let Some(info) = info else { continue };
        let too_old = since.is_some_and(|s| info.time < s);
        if too_old || cut.contains(id) {
            cut.extend(info.parents.iter().copied());
            continue;
        }
        selected.insert(*id);
    }
    if selected.is_empty() {
        return Err(ShallowError::NothingSelected);
    }
    let mut boundary = Vec::new();
    for id in &walk.interesting {
        if !selected.contains(id) {
            continue;
        }
        let parents = commits
            .get(id)?
            .map(|c| c.parents.clone())
            .unwrap_or_default();
        if parents.iter().any(|p| !selected.contains(p)) {
            boundary.push(*id);
        }
    }
    let not_shallow = selected
        .iter()
        .filter(|c| !boundary.contains(c))
        .copied()
        .collect();
    Ok((boundary, not_shallow))
}
