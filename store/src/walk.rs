//! Revision walks over the store: what `git rev-list --objects WANTS --not HAVES` computes, with
//! shallow grafts and object filters, plus the reachability checks that guard `want` lines.
//!
//! The commit walk is git's limited walk: a queue ordered by committer time, uninteresting marks
//! propagated from the haves, stopping once everything left is uninteresting (with a little slop
//! for clock skew). Objects reachable from the trees of *edge* commits (uninteresting parents of
//! sent commits) are excluded, as `rev-list --objects` does. Commits in `grafts` are treated as
//! having no parents (the client's shallow boundary and the new one being sent).

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};

use gix_hash::ObjectId;
use gix_hashtable::{HashMap, HashSet};
use gix_object::Kind;

use crate::error::{Result, StoreError};
use crate::objects::{CommitInfo, EntryKind, TreeEntries, parse_commit, parse_tag};
use crate::packs::ObjectReader;

/// An object filter (`--filter=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    /// Everything.
    #[default]
    None,
    /// `blob:none`: no blobs.
    BlobNone,
    /// `blob:limit=<n>`: only blobs smaller than n bytes.
    BlobLimit(u64),
    /// `tree:<depth>`: no trees or blobs at depth >= depth below a root tree (which is depth 0).
    TreeDepth(u64),
}

impl Filter {
    /// Parse a filter spec as sent on the wire. `None` for unsupported specs.
    pub fn parse(spec: &str) -> Option<Filter> {
        if spec == "blob:none" {
            return Some(Filter::BlobNone);
        }
        if let Some(n) = spec.strip_prefix("blob:limit=") {
            return parse_size(n).map(Filter::BlobLimit);
        }
        if let Some(n) = spec.strip_prefix("tree:") {
            return n.parse().ok().map(Filter::TreeDepth);
        }
        None
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// What to walk.
#[derive(Debug, Default, Clone)]
pub struct WalkSpec {
    /// Objects to send, with everything they reach (any kind).
    pub wants: Vec<ObjectId>,
    /// Commits the client has; they and their ancestors are not sent.
    pub haves: Vec<ObjectId>,
    /// Commits treated as parentless.
    pub grafts: HashSet<ObjectId>,
    /// The object filter. Objects named in `wants` are sent whatever it says.
    pub filter: Filter,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walked {
    /// The objects to send.
    pub objects: HashSet<ObjectId>,
    /// Objects known to be on the client (edge trees and everything below): thin-pack bases.
    pub client_has: HashSet<ObjectId>,
    /// Number of commits among `objects`.
    pub commits: usize,
}

const SEEN: u8 = 1;
const UNINTERESTING: u8 = 2;
const PROCESSED: u8 = 4;

/// Commit access with a cache, shared by the walks of one request.
pub struct Commits<'r> {
    reader: &'r mut ObjectReader,
    cache: HashMap<ObjectId, CommitInfo>,
    buf: Vec<u8>,
}

impl<'r> Commits<'r> {
    /// Wrap `reader`.
    pub fn new(reader: &'r mut ObjectReader) -> Self {
        Commits {
            reader,
            cache: HashMap::default(),
            buf: Vec::new(),
        }
    }

    /// The reader underneath.
    pub fn reader(&mut self) -> &mut ObjectReader {
        self.reader
    }

    /// The commit `id`, or `None` if it is missing or not a commit.
    pub fn get(&mut self, id: &ObjectId) -> Result<Option<&CommitInfo>> {
        if !self.cache.contains_key(id) {
            if let Some(e) = self.reader.graph().and_then(|g| g.lookup(id)) {
                self.cache.insert(
                    *id,
                    CommitInfo {
                        tree: e.tree,
                        parents: e.parents,
                        time: e.commit_time,
                    },
                );
                return Ok(self.cache.get(id));
            }
            let info = match self.reader.find(id, &mut self.buf)? {
                Some((Kind::Commit, data)) => {
                    parse_commit(data).ok_or_else(|| StoreError::BadObject {
                        id: *id,
                        reason: "unparseable commit".into(),
                    })?
                }
                _ => return Ok(None),
            };
            self.cache.insert(*id, info);
        }
        Ok(self.cache.get(id))
    }

    /// Parents of `id`, or none if it is grafted.
    fn parents(&mut self, id: &ObjectId, grafts: &HashSet<ObjectId>) -> Result<Vec<ObjectId>> {
        if grafts.contains(id) {
            return Ok(Vec::new());
        }
        Ok(self.get(id)?.map(|c| c.parents.clone()).unwrap_or_default())
    }

    /// Peel tags: the first non-tag object `id` leads to, with the tags passed on the way.
    pub fn peel(&mut self, id: ObjectId) -> Result<(ObjectId, Kind, Vec<ObjectId>)> {
        let mut tags = Vec::new();
        let mut id = id;
        for _ in 0..32 {
            let (kind, data) = self.reader.must_find(&id, &mut self.buf)?;
            if kind != Kind::Tag {
                return Ok((id, kind, tags));
            }
            let (target, _) = parse_tag(data).ok_or_else(|| StoreError::BadObject {
                id,
                reason: "unparseable tag".into(),
            })?;
            tags.push(id);
            id = target;
        }
        Err(StoreError::BadObject {
            id,
            reason: "tag chain too long".into(),
        })
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    time: i64,
    seq: std::cmp::Reverse<u64>,
    id: ObjectId,
}

/// Result of the limited commit walk.
#[derive(Debug, Default)]
pub struct CommitWalk {
    /// Commits reachable from the wants but not from the haves, newest first (roughly).
    pub interesting: Vec<ObjectId>,
    /// Uninteresting parents of interesting commits.
    pub edges: Vec<ObjectId>,
    flags: HashMap<ObjectId, u8>,
}

impl CommitWalk {
    /// Whether `id` was found reachable from the haves.
    pub fn is_uninteresting(&self, id: &ObjectId) -> bool {
        self.flags.get(id).is_some_and(|f| f & UNINTERESTING != 0)
    }
}

/// The limited commit walk: commits reachable from `wants` and not from `haves`.
pub fn walk_commits(
    commits: &mut Commits<'_>,
    wants: &[ObjectId],
    haves: &[ObjectId],
    grafts: &HashSet<ObjectId>,
    interrupt: &AtomicBool,
) -> Result<CommitWalk> {
    let mut flags: HashMap<ObjectId, u8> = HashMap::default();
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let mut interesting_queued = 0usize;

    let mut push =
        |commits: &mut Commits<'_>, queue: &mut BinaryHeap<Queued>, id: ObjectId| -> Result<bool> {
            let Some(info) = commits.get(&id)? else {
                return Ok(false);
            };
            seq += 1;
            queue.push(Queued {
                time: info.time,
                seq: std::cmp::Reverse(seq),
                id,
            });
            Ok(true)
        };

    for w in wants {
        if flags.contains_key(w) {
            continue;
        }
        if push(commits, &mut queue, *w)? {
            flags.insert(*w, SEEN);
            interesting_queued += 1;
        }
    }
    for h in haves {
        mark_uninteresting(
            commits,
            &mut flags,
            &mut queue,
            &mut interesting_queued,
            *h,
            grafts,
            &mut push,
        )?;
    }

    let mut processed = Vec::new();
    let mut slop = 5;
    while let Some(Queued { id, .. }) = queue.pop() {
        if interrupt.load(Ordering::Relaxed) {
            return Err(StoreError::Interrupted);
        }
        let f = flags.get(&id).copied().unwrap_or(0);
        if f & PROCESSED != 0 {
            continue;
        }
        flags.insert(id, f | PROCESSED);
        let parents = commits.parents(&id, grafts)?;
        if f & UNINTERESTING != 0 {
            for p in parents {
                mark_uninteresting(
                    commits,
                    &mut flags,
                    &mut queue,
                    &mut interesting_queued,
                    p,
                    grafts,
                    &mut push,
                )?;
            }
        } else {
            interesting_queued = interesting_queued.saturating_sub(1);
            processed.push(id);
            for p in parents {
                if flags.contains_key(&p) {
                    continue;
                }
                if push(commits, &mut queue, p)? {
                    flags.insert(p, SEEN);
                    interesting_queued += 1;
                }
            }
        }
        if interesting_queued == 0 {
            if slop == 0 {
                break;
            }
            slop -= 1;
        } else {
            slop = 5;
        }
    }

    let interesting: Vec<ObjectId> = processed
        .into_iter()
        .filter(|id| flags.get(id).is_some_and(|f| f & UNINTERESTING == 0))
        .collect();
    let mut edges = Vec::new();
    let mut edge_seen = HashSet::default();
    for id in &interesting {
        for p in commits.parents(id, grafts)? {
            if flags.get(&p).is_some_and(|f| f & UNINTERESTING != 0) && edge_seen.insert(p) {
                edges.push(p);
            }
        }
    }
    Ok(CommitWalk {
        interesting,
        edges,
        flags,
    })
}

/// Adds a commit to the walk queue; `false` if it is not a commit in the store.
type PushFn<'a> =
    dyn FnMut(&mut Commits<'_>, &mut BinaryHeap<Queued>, ObjectId) -> Result<bool> + 'a;

#[allow(clippy::too_many_arguments)]
fn mark_uninteresting(
    commits: &mut Commits<'_>,
    flags: &mut HashMap<ObjectId, u8>,
    queue: &mut BinaryHeap<Queued>,
    interesting_queued: &mut usize,
    start: ObjectId,
    grafts: &HashSet<ObjectId>,
    push: &mut PushFn<'_>,
) -> Result<()> {
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        match flags.get(&id).copied() {
            Some(f) if f & UNINTERESTING != 0 => {}
            Some(f) => {
                flags.insert(id, f | UNINTERESTING);
                if f & PROCESSED != 0 {
                    // Already walked as interesting: its parents inherit the mark now.
                    stack.extend(commits.parents(&id, grafts)?);
                } else {
                    *interesting_queued = interesting_queued.saturating_sub(1);
                }
            }
            None => {
                if push(commits, queue, id)? {
                    flags.insert(id, SEEN | UNINTERESTING);
                }
            }
        }
    }
    Ok(())
}

struct ObjectWalk<'a, 'r> {
    commits: &'a mut Commits<'r>,
    filter: Filter,
    uninteresting: HashSet<ObjectId>,
    added: HashSet<ObjectId>,
    tree_depth: HashMap<ObjectId, u64>,
    buf: Vec<u8>,
}

impl ObjectWalk<'_, '_> {
    fn add(&mut self, id: ObjectId) -> bool {
        self.added.insert(id)
    }

    /// Mark `tree` and everything below it as on the client.
    fn mark_tree_uninteresting(&mut self, tree: ObjectId) -> Result<()> {
        let mut stack = vec![tree];
        while let Some(t) = stack.pop() {
            if !self.uninteresting.insert(t) {
                continue;
            }
            let (kind, data) = match self.commits.reader.find(&t, &mut self.buf)? {
                Some(found) => found,
                None => continue,
            };
            if kind != Kind::Tree {
                continue;
            }
            for (k, child, _) in TreeEntries::new(data) {
                match k {
                    EntryKind::Tree => stack.push(child.to_owned()),
                    EntryKind::Blob => {
                        self.uninteresting.insert(child.to_owned());
                    }
                    EntryKind::Gitlink => {}
                }
            }
        }
        Ok(())
    }

    fn blob_allowed(&mut self, id: &ObjectId, depth: u64) -> Result<bool> {
        Ok(match self.filter {
            Filter::None => true,
            Filter::BlobNone => false,
            Filter::TreeDepth(max) => depth < max,
            Filter::BlobLimit(limit) => match self.commits.reader.header(id)? {
                Some((_, size)) => size < limit,
                None => return Err(StoreError::MissingObject(*id)),
            },
        })
    }

    /// Walk `root` (a tree at `depth`) and add what the filter lets through. A `forced` root is
    /// added whatever the filter and the client have (it was named in a `want`).
    fn walk_tree(&mut self, root: ObjectId, depth: u64, forced: bool) -> Result<()> {
        let mut stack = vec![(root, depth, forced)];
        while let Some((tree, depth, forced)) = stack.pop() {
            if forced {
                self.add(tree);
            } else {
                if self.uninteresting.contains(&tree) {
                    continue;
                }
                if let Filter::TreeDepth(max) = self.filter {
                    if depth >= max {
                        continue;
                    }
                    match self.tree_depth.get(&tree) {
                        Some(d) if *d <= depth => continue,
                        _ => {
                            self.tree_depth.insert(tree, depth);
                        }
                    }
                    self.add(tree);
                } else if !self.add(tree) {
                    continue;
                }
            }
            let (kind, data) = self.commits.reader.must_find(&tree, &mut self.buf)?;
            if kind != Kind::Tree {
                return Err(StoreError::BadObject {
                    id: tree,
                    reason: format!("expected a tree, found a {kind}"),
                });
            }
            let mut blobs = Vec::new();
            for (k, child, _) in TreeEntries::new(data) {
                let child = child.to_owned();
                match k {
                    EntryKind::Tree => stack.push((child, depth + 1, false)),
                    EntryKind::Blob => blobs.push(child),
                    EntryKind::Gitlink => {}
                }
            }
            for blob in blobs {
                if self.uninteresting.contains(&blob) || self.added.contains(&blob) {
                    continue;
                }
                if self.blob_allowed(&blob, depth + 1)? {
                    self.add(blob);
                }
            }
        }
        Ok(())
    }
}

/// `rev-list --objects`: every object reachable from the wants and not from the haves, with the
/// filter applied (except to the wants themselves).
pub fn walk_objects(
    reader: &mut ObjectReader,
    spec: &WalkSpec,
    interrupt: &AtomicBool,
) -> Result<Walked> {
    let mut commits = Commits::new(reader);
    let mut want_commits = Vec::new();
    let mut direct = Vec::new();
    for w in &spec.wants {
        let (target, kind, tags) = commits.peel(*w)?;
        direct.extend(tags);
        match kind {
            Kind::Commit => want_commits.push(target),
            _ => direct.push(target),
        }
    }
    let have_commits: Vec<ObjectId> = spec
        .haves
        .iter()
        .copied()
        .filter(|h| commits.reader.contains(h))
        .collect();
    let cw = walk_commits(
        &mut commits,
        &want_commits,
        &have_commits,
        &spec.grafts,
        interrupt,
    )?;

    let mut walk = ObjectWalk {
        commits: &mut commits,
        filter: spec.filter,
        uninteresting: HashSet::default(),
        added: HashSet::default(),
        tree_depth: HashMap::default(),
        buf: Vec::new(),
    };
    for edge in &cw.edges {
        if let Some(info) = walk.commits.get(edge)? {
            let tree = info.tree;
            walk.mark_tree_uninteresting(tree)?;
        }
    }
    // Objects named in a want are sent whatever the filter says; wanted trees are walked too.
    for id in &direct {
        match walk.commits.reader.header(id)?.map(|(k, _)| k) {
            Some(Kind::Tree) => walk.walk_tree(*id, 0, true)?,
            Some(_) => {
                walk.add(*id);
            }
            None => return Err(StoreError::MissingObject(*id)),
        }
    }
    for c in &cw.interesting {
        walk.add(*c);
    }
    let commit_count = cw.interesting.len();
    for (i, c) in cw.interesting.iter().enumerate() {
        if i % 256 == 0 && interrupt.load(Ordering::Relaxed) {
            return Err(StoreError::Interrupted);
        }
        let tree = walk
            .commits
            .get(c)?
            .map(|info| info.tree)
            .ok_or(StoreError::MissingObject(*c))?;
        walk.walk_tree(tree, 0, false)?;
    }
    Ok(Walked {
        objects: walk.added,
        client_has: walk.uninteresting,
        commits: commit_count,
    })
}

/// The subset of `wants` that is *not* reachable from `tips` (which may include tags).
pub fn unreachable_wants(
    reader: &mut ObjectReader,
    tips: &[ObjectId],
    wants: &[ObjectId],
    interrupt: &AtomicBool,
) -> Result<Vec<ObjectId>> {
    let tip_set: HashSet<ObjectId> = tips.iter().copied().collect();
    let mut commits = Commits::new(reader);
    // Peel the tips; remember every tag on the way (a tag is reachable only through refs).
    let mut tip_commits = Vec::new();
    let mut reachable_direct: HashSet<ObjectId> = HashSet::default();
    let mut tip_roots = Vec::new();
    for t in tips {
        let (target, kind, tags) = commits.peel(*t)?;
        reachable_direct.extend(tags);
        reachable_direct.insert(target);
        match kind {
            Kind::Commit => tip_commits.push(target),
            _ => tip_roots.push((target, kind)),
        }
    }
    let mut pending_commits = Vec::new();
    let mut pending_other = Vec::new();
    for w in wants {
        if tip_set.contains(w) || reachable_direct.contains(w) {
            continue;
        }
        match commits.reader.header(w)? {
            None => pending_other.push(*w),
            Some((Kind::Commit, _)) => pending_commits.push(*w),
            Some(_) => pending_other.push(*w),
        }
    }
    let mut unreachable = Vec::new();
    if !pending_commits.is_empty() {
        let cw = walk_commits(
            &mut commits,
            &pending_commits,
            &tip_commits,
            &HashSet::default(),
            interrupt,
        )?;
        unreachable.extend(pending_commits.iter().filter(|c| !cw.is_uninteresting(c)));
    }
    if !pending_other.is_empty() {
        let found = find_reachable(
            &mut commits,
            &tip_commits,
            &tip_roots,
            &pending_other,
            interrupt,
        )?;
        unreachable.extend(pending_other.iter().filter(|o| !found.contains(*o)));
    }
    Ok(unreachable)
}

/// Walk everything reachable from the tips until all `targets` are found (or the walk ends).
fn find_reachable(
    commits: &mut Commits<'_>,
    tip_commits: &[ObjectId],
    tip_roots: &[(ObjectId, Kind)],
    targets: &[ObjectId],
    interrupt: &AtomicBool,
) -> Result<HashSet<ObjectId>> {
    let wanted: HashSet<ObjectId> = targets.iter().copied().collect();
    let mut found = HashSet::default();
    let mut seen_commits: HashSet<ObjectId> = HashSet::default();
    let mut seen_trees: HashSet<ObjectId> = HashSet::default();
    let mut commit_stack: Vec<ObjectId> = tip_commits.to_vec();
    let mut tree_stack: Vec<ObjectId> = tip_roots
        .iter()
        .filter(|(_, k)| *k == Kind::Tree)
        .map(|(id, _)| *id)
        .collect();
    for (id, _) in tip_roots {
        if wanted.contains(id) {
            found.insert(*id);
        }
    }
    let mut buf = Vec::new();
    while found.len() < wanted.len() {
        if let Some(tree) = tree_stack.pop() {
            if !seen_trees.insert(tree) {
                continue;
            }
            if wanted.contains(&tree) {
                found.insert(tree);
            }
            let (kind, data) = commits.reader.must_find(&tree, &mut buf)?;
            if kind != Kind::Tree {
                continue;
            }
            for (k, child, _) in TreeEntries::new(data) {
                let child = child.to_owned();
                match k {
                    EntryKind::Tree => tree_stack.push(child),
                    EntryKind::Blob => {
                        if wanted.contains(&child) {
                            found.insert(child);
                        }
                    }
                    EntryKind::Gitlink => {}
                }
            }
            continue;
        }
        let Some(c) = commit_stack.pop() else { break };
        if !seen_commits.insert(c) {
            continue;
        }
        if interrupt.load(Ordering::Relaxed) {
            return Err(StoreError::Interrupted);
        }
        if let Some(info) = commits.get(&c)? {
            tree_stack.push(info.tree);
            commit_stack.extend(info.parents.iter().copied());
        }
    }
    Ok(found)
}
