//! Receiving packs: a quarantine per incoming pack, indexed as it streams in, then verified.
//!
//! A pack (from an upstream fetch or a push) is written and indexed into `tmp/q-*/` by gix
//! (`Bundle::write_to_directory`: every object hashed, thin deltas completed against the store).
//! [`Quarantine::verify`] then walks from the new tips: every object reachable from them must be
//! in the quarantine or the store, and every object of the quarantine must have its closure present,
//! so the store keeps the invariant "each stored object's closure is stored". Only
//! [`crate::Repo::commit`] moves a quarantine into `objects/pack`; dropping one deletes it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use gix_utils::progress;

use gix_hash::{ObjectId, oid};
use gix_object::Kind;

use crate::error::{Result, StoreError};
use crate::graph::GraphCommit;
use crate::objects::{EntryKind, TreeEntries, parse_commit, parse_tag};
use crate::packs::{FindAdapter, ObjectReader, Pack, PackSet};
use crate::refs::Namespace;

/// Delta-base cache of the connectivity walk, which decodes every tree of a pack.
const VERIFY_CACHE_BYTES: usize = 96 << 20;

/// Limits applied while indexing an untrusted pack.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Refuse single allocations above this many bytes (objects and deltas).
    pub max_object_bytes: Option<usize>,
    /// Threads used to resolve deltas.
    pub threads: usize,
    /// Where to count the objects indexed so far (progress of a long receive), if anywhere.
    pub objects_indexed: Option<Arc<AtomicUsize>>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            max_object_bytes: Some(1 << 30),
            threads: 2,
            objects_indexed: None,
        }
    }
}

/// A gix progress tree that only counts the objects indexed (gix's `IndexObjects` progress, at
/// whatever depth it appears) into a shared counter; everything else is discarded.
struct ObjectCount {
    shared: Arc<AtomicUsize>,
    counts: bool,
}

impl ObjectCount {
    fn child(&self, counts: bool) -> ObjectCount {
        ObjectCount {
            shared: self.shared.clone(),
            counts,
        }
    }
}

impl progress::Count for ObjectCount {
    fn set(&self, step: usize) {
        if self.counts {
            self.shared.store(step, Ordering::Relaxed);
        }
    }
    fn step(&self) -> usize {
        if self.counts {
            self.shared.load(Ordering::Relaxed)
        } else {
            0
        }
    }
    fn inc_by(&self, step: usize) {
        if self.counts {
            self.shared.fetch_add(step, Ordering::Relaxed);
        }
    }
    fn counter(&self) -> progress::StepShared {
        if self.counts {
            self.shared.clone()
        } else {
            Arc::new(AtomicUsize::new(0))
        }
    }
}

impl progress::Progress for ObjectCount {
    fn init(&mut self, _max: Option<usize>, _unit: Option<progress::Unit>) {}
    fn set_name(&mut self, _name: String) {}
    fn name(&self) -> Option<String> {
        None
    }
    fn id(&self) -> progress::Id {
        progress::UNKNOWN
    }
    fn message(&self, _level: progress::MessageLevel, _message: String) {}
}

impl progress::NestedProgress for ObjectCount {
    type SubProgress = ObjectCount;
    fn add_child(&mut self, _name: impl Into<String>) -> ObjectCount {
        self.child(false)
    }
    fn add_child_with_id(&mut self, _name: impl Into<String>, id: progress::Id) -> ObjectCount {
        let indexing: progress::Id = gix_pack::index::write::ProgressId::IndexObjects.into();
        self.child(id == indexing)
    }
}

/// The result of [`Quarantine::verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    /// The namespace the tips are for.
    pub ns: Namespace,
    /// The tips the walk started from.
    pub tips: BTreeSet<ObjectId>,
    /// Every object of the pack is reachable from the tips.
    pub pack_reachable: bool,
    /// Every store object the walk stopped at lies in a pack serving `ns`.
    pub stops_in_ns: bool,
    /// The commits the pack adds to the store, parsed (for the commit graph).
    pub commits: Vec<GraphCommit>,
    /// The [`PackSet::generation`] the verification ran against (if a compaction replaced
    /// packs since, the commit verifies again).
    pub generation: u64,
}

/// A received, indexed pack that is not yet part of the store.
#[derive(Debug)]
pub struct Quarantine {
    dir: PathBuf,
    pack: Arc<Pack>,
    verified: Option<Verified>,
}

impl Quarantine {
    /// Index `input` (a pack stream) into a new quarantine under `tmp_dir`, completing thin deltas
    /// from `store`.
    /// `Ok(None)` for a pack without objects (what git sends when the receiver has them all).
    pub(crate) fn receive(
        tmp_dir: &Path,
        store: Arc<PackSet>,
        input: &mut dyn BufRead,
        opts: IngestOptions,
        interrupt: &AtomicBool,
    ) -> Result<Option<Quarantine>> {
        let mut header = [0u8; 12];
        input
            .read_exact(&mut header)
            .map_err(|e| StoreError::Invalid(format!("pack header: {e}")))?;
        let (_, count) =
            gix_pack::data::header::decode(&header).map_err(StoreError::git("read pack header"))?;
        if count == 0 {
            let mut trailer = [0u8; 20];
            input
                .read_exact(&mut trailer)
                .map_err(|e| StoreError::Invalid(format!("pack trailer: {e}")))?;
            let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
            h.update(&header);
            let sum = h
                .try_finalize()
                .map_err(StoreError::git("hash pack header"))?;
            if sum.as_bytes() != trailer {
                return Err(StoreError::Invalid("pack checksum mismatch".into()));
            }
            return Ok(None);
        }
        let mut input =
            std::io::BufReader::with_capacity(64 << 10, std::io::Read::chain(&header[..], input));
        Self::receive_objects(tmp_dir, store, &mut input, opts, interrupt).map(Some)
    }

    fn receive_objects(
        tmp_dir: &Path,
        store: Arc<PackSet>,
        input: &mut dyn BufRead,
        opts: IngestOptions,
        interrupt: &AtomicBool,
    ) -> Result<Quarantine> {
        let dir = tmp_dir.join(format!("q-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create quarantine", &dir))?;
        // From here on, dropping `guard` removes the directory.
        let mut guard = DirGuard(Some(dir.clone()));
        let lookup = FindAdapter(std::cell::RefCell::new(ObjectReader::new(store)));
        let options = gix_pack::bundle::write::Options {
            thread_limit: Some(opts.threads.max(1)),
            iteration_mode: gix_pack::data::input::Mode::Verify,
            index_version: Default::default(),
            alloc_limit_bytes: opts.max_object_bytes,
            compression: gix_zlib::Compression::BEST_SPEED,
        };
        let mut counting = opts.objects_indexed.clone().map(|shared| ObjectCount {
            shared,
            counts: false,
        });
        let mut discard = progress::Discard;
        let tree: &mut dyn progress::DynNestedProgress = match counting.as_mut() {
            Some(c) => c,
            None => &mut discard,
        };
        let outcome = gix_pack::Bundle::write_to_directory(
            input,
            Some(&dir),
            tree,
            interrupt,
            Some(lookup),
            gix_hash::Kind::Sha1,
            options,
        )
        .map_err(|e| match opts.max_object_bytes {
            // Say which limit, rather than gix's allocation-limit diagnostic.
            Some(max)
                if e.classify().has(gix_error::Class::ResourceExhaustion(
                    gix_error::ResourceExhaustionKind::AllocationLimit,
                )) =>
            {
                StoreError::Invalid(format!(
                    "an object in the pack is larger than the limit of {max} bytes"
                ))
            }
            _ => StoreError::git("index received pack")(e),
        })?;
        crate::fault::point("ingest-pack-written");
        let pack = Arc::new(Pack::open_written(&dir, outcome.data_path)?);
        guard.0 = None;
        Ok(Quarantine {
            dir,
            pack,
            verified: None,
        })
    }

    /// The quarantined pack.
    pub fn pack(&self) -> &Arc<Pack> {
        &self.pack
    }

    /// The outcome of the last [`Quarantine::verify`].
    pub fn verified(&self) -> Option<&Verified> {
        self.verified.as_ref()
    }

    /// Check connectivity: every object reachable from `tips` exists in the quarantine or in
    /// `store`, and every quarantined object's closure exists. Errors name the first missing object.
    pub fn verify(
        &mut self,
        store: Arc<PackSet>,
        ns: Namespace,
        tips: &[ObjectId],
    ) -> Result<&Verified> {
        let pack = self.pack.clone();
        let generation = store.generation();
        let mut walk = ClosureWalk {
            reader: ObjectReader::with_extra(store.clone(), pack.clone())
                .with_cache_bytes(VERIFY_CACHE_BYTES),
            store,
            pack,
            visited: vec![false; self.pack.num_objects() as usize],
            ns,
            stops_in_ns: true,
            buf: Vec::new(),
            queue: BinaryHeap::new(),
            commits: Vec::new(),
            seen: gix_hashtable::HashSet::default(),
        };
        for tip in tips {
            walk.run(*tip)?;
        }
        // Copies of objects the store already holds do not count: they add nothing.
        let unreached: Vec<ObjectId> = (0..self.pack.num_objects())
            .filter(|i| !walk.visited[*i as usize])
            .map(|i| self.pack.oid_at(i))
            .filter(|id| !walk.store.contains(id))
            .collect();
        let pack_reachable = unreached.is_empty();
        // Objects the tips do not reach still need their closure, so that the store's
        // invariant holds whatever later points at them.
        for id in unreached {
            walk.run(id)?;
        }
        self.verified = Some(Verified {
            ns,
            tips: tips.iter().copied().collect(),
            pack_reachable,
            stops_in_ns: walk.stops_in_ns,
            commits: walk.commits,
            generation,
        });
        self.verified.as_ref().ok_or(StoreError::Interrupted)
    }

    /// The commits the last verification parsed (taken: later calls get `None`).
    pub(crate) fn take_commits(&mut self) -> Option<Vec<GraphCommit>> {
        self.verified
            .as_mut()
            .map(|v| std::mem::take(&mut v.commits))
    }

    /// Detach the directory from this value so dropping it no longer deletes anything.
    pub(crate) fn into_parts(mut self) -> (PathBuf, Arc<Pack>) {
        let dir = std::mem::take(&mut self.dir);
        (dir, self.pack.clone())
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The connectivity walk over a quarantined pack. Objects of the pack are decoded in pack
/// order (a min-heap by offset), so a delta's base was usually decoded just before and is in the
/// cache: far cheaper than a depth-first order on large packs.
struct ClosureWalk {
    reader: ObjectReader,
    store: Arc<PackSet>,
    pack: Arc<Pack>,
    visited: Vec<bool>,
    ns: Namespace,
    stops_in_ns: bool,
    buf: Vec<u8>,
    queue: BinaryHeap<Reverse<(u64, u32, Option<Kind>)>>,
    commits: Vec<GraphCommit>,
    seen: gix_hashtable::HashSet<ObjectId>,
}

impl ClosureWalk {
    /// Account for a reference to `id` (expected to be a `kind`): a stop if the store has it,
    /// queued if the pack has it and it is new, an error if nobody has it.
    fn reach(&mut self, id: &oid, kind: Option<Kind>) -> Result<()> {
        // Trees mostly repeat their entries from one version to the next: a hash lookup spares
        // the binary searches below for every id met before.
        if !self.seen.insert(id.to_owned()) {
            return Ok(());
        }
        // Objects the store has already have their closure there: the walk stops at them
        // (including the bases a thin pack's completion appended, which are copies).
        if self.store.contains(id) {
            if !self.store.contains_in(id, self.ns) {
                self.stops_in_ns = false;
            }
            return Ok(());
        }
        let Some(index) = self.pack.lookup(id) else {
            return Err(StoreError::MissingObject(id.to_owned()));
        };
        let slot = &mut self.visited[index as usize];
        if *slot {
            return Ok(());
        }
        *slot = true;
        if kind == Some(Kind::Blob) {
            // Blobs reference nothing: that one exists is all the walk needs (indexing already
            // hashed it); decompressing it would be most of the work.
            return Ok(());
        }
        let offset = self.pack.index().pack_offset_at_index(index);
        self.queue.push(Reverse((offset, index, kind)));
        Ok(())
    }

    fn run(&mut self, root: ObjectId) -> Result<()> {
        self.reach(&root, None)?;
        while let Some(Reverse((_, index, expected))) = self.queue.pop() {
            let id = self.pack.oid_at(index);
            let (kind, data) = self.reader.must_find(&id, &mut self.buf)?;
            if let Some(expected) = expected
                && expected != kind
            {
                return Err(StoreError::BadObject {
                    id,
                    reason: format!("expected a {expected}, found a {kind}"),
                });
            }
            let mut refs: Vec<(ObjectId, Option<Kind>)> = Vec::new();
            match kind {
                Kind::Commit => {
                    let info = parse_commit(data).ok_or_else(|| StoreError::BadObject {
                        id,
                        reason: "unparseable commit".into(),
                    })?;
                    refs.push((info.tree, Some(Kind::Tree)));
                    refs.extend(info.parents.iter().map(|p| (*p, Some(Kind::Commit))));
                    self.commits.push(GraphCommit {
                        id,
                        tree: info.tree,
                        parents: info.parents,
                        commit_time: info.time,
                    });
                }
                Kind::Tree => {
                    let mut entries = TreeEntries::new(data);
                    for (k, child, _) in entries.by_ref() {
                        match k {
                            EntryKind::Tree => refs.push((child.to_owned(), Some(Kind::Tree))),
                            EntryKind::Blob => refs.push((child.to_owned(), Some(Kind::Blob))),
                            EntryKind::Gitlink => {}
                        }
                    }
                    if entries.malformed() {
                        return Err(StoreError::BadObject {
                            id,
                            reason: "malformed tree".into(),
                        });
                    }
                }
                Kind::Tag => {
                    let (target, target_kind) =
                        parse_tag(data).ok_or_else(|| StoreError::BadObject {
                            id,
                            reason: "unparseable tag".into(),
                        })?;
                    refs.push((target, Some(target_kind)));
                }
                Kind::Blob => {}
            }
            for (child, kind) in refs {
                self.reach(&child, kind)?;
            }
        }
        Ok(())
    }
}
