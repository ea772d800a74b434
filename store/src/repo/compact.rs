//! Compaction and pruning: merging a repository's packs into fewer, larger ones.
//!
//! [`Repo::compact`] picks packs to merge — all of them (`full`), or the smallest ones so that
//! the rest form a factor-2 progression by object count (git's `repack --geometric=2` rule) —
//! and writes their objects into at most one new pack per *namespace group* (the set of
//! namespaces an object is visible to), reusing stored entries verbatim through
//! [`crate::packout`]: a delta whose base lands in the same new pack stays a delta, any other
//! is written whole, so every stored pack stays self-contained.
//!
//! A full compaction also prunes: it keeps what any ref or recently moved ref of any namespace
//! reaches, every object of a pack younger than the grace period, and everything those reach;
//! the rest is dropped. Visibility is kept: a kept object serves the namespaces whose refs reach
//! it (an unreachable one keeps the namespaces it served), so after a full compaction a
//! namespace's packs are exactly the closure of its refs again (`closed`: the full-clone fast
//! path), unless recent or young objects say otherwise.
//!
//! The work runs outside the writer lock on a snapshot; only the swap takes the lock: it checks
//! that nothing a ref now needs went missing (refs may have moved meanwhile), moves the new packs
//! into `objects/pack` with a `.keep`, marks the replaced ones `.replaced`, journals one
//! compaction line (fsynced), publishes the new view and only then deletes the replaced files
//! (readers holding them mapped keep reading). A crash before the journal line leaves kept,
//! uncataloged packs (swept at start); after it, replaced packs (also swept). A transaction
//! whose quarantine was verified against packs that a compaction replaced is verified again
//! before it commits ([`Repo::commit`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use gix_hash::ObjectId;
use gix_hashtable::{HashMap, HashSet};
use gix_object::Kind;
use serde::Serialize;

use super::{GraphJob, RECENT_TIPS_KEPT, Repo, View, lock, now};
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::journal::{CompactRecord, TxRecord};
use crate::packout::{self, PackOptions, Selection};
use crate::packs::{FindAdapter, ObjectReader, Pack, PackSet};
use crate::refs::Namespace;
use crate::walk::{self, WalkSpec};

/// Default grace period: objects of packs younger than this are never pruned.
pub const DEFAULT_PRUNE_GRACE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Marker of a pack a journaled compaction replaced (deleted at start if still there).
pub(crate) const REPLACED: &str = "replaced";

/// How to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Merge every pack into one per namespace group, and prune; else geometric, no pruning.
    pub full: bool,
    /// Objects of packs younger than this are kept even if unreachable.
    pub prune_grace: Duration,
    /// Cap on the bytes per second written (`None`: as fast as possible).
    pub max_rate: Option<u64>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            full: false,
            prune_grace: DEFAULT_PRUNE_GRACE,
            max_rate: None,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CompactStats {
    /// Packs before.
    pub packs_before: usize,
    /// Packs after.
    pub packs_after: usize,
    /// Packs merged (replaced).
    pub packs_merged: usize,
    /// Packs written.
    pub packs_written: usize,
    /// Entries of the merged packs (duplicates counted).
    pub entries_merged: u64,
    /// Objects written.
    pub objects_written: u64,
    /// Unreachable objects dropped.
    pub objects_pruned: u64,
    /// Entries copied verbatim.
    pub entries_reused: u64,
    /// Deltas written whole (their base went elsewhere or was dropped).
    pub entries_inflated: u64,
    /// Bytes of the merged packs (`.pack` files).
    pub bytes_merged: u64,
    /// Bytes of the packs written.
    pub bytes_written: u64,
    /// Per namespace, whether its packs are the closure of its refs afterwards.
    pub closed: BTreeMap<String, bool>,
    /// Why nothing was done, if nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Nothing was done because refs moved to pruned history meanwhile: run again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// Wall time in milliseconds.
    pub millis: u64,
}

/// Group flag of unreachable objects kept because they are young (a "cruft" pack, which keeps
/// the age of the youngest pack they came from, so they do not live longer than the grace).
const CRUFT: u8 = 0x80;

fn ns_bit(ns: Namespace) -> u8 {
    match ns {
        Namespace::Default => 1,
        Namespace::Ephemeral => 2,
    }
}

fn namespaces_of(mask: u8) -> Vec<Namespace> {
    Namespace::ALL
        .into_iter()
        .filter(|ns| mask & ns_bit(*ns) != 0)
        .collect()
}

/// The packs (positions in `counts`' order) a geometric compaction merges: with packs sorted by
/// object count, the smallest ones whose merge leaves a progression where each pack has at least
/// twice the objects of the next smaller one. Empty when there is nothing to merge.
pub fn geometric_split(counts: &[u64]) -> Vec<usize> {
    const FACTOR: u64 = 2;
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|i| counts[*i]);
    let weight = |k: usize| counts[order[k]].max(1);
    let n = order.len();
    if n < 2 {
        return Vec::new();
    }
    // From the largest down, find where the progression breaks.
    let mut split = n - 1;
    while split > 0 {
        if weight(split) < FACTOR.saturating_mul(weight(split - 1)) {
            break;
        }
        split -= 1;
    }
    if split == 0 {
        return Vec::new();
    }
    // Everything up to the break is merged; the merged pack may in turn absorb the next ones.
    let mut total: u64 = (0..split).map(weight).sum();
    while split < n && weight(split) < FACTOR.saturating_mul(total) {
        total = total.saturating_add(weight(split));
        split += 1;
    }
    if split < 2 {
        return Vec::new();
    }
    order[..split].to_vec()
}

/// A writer that keeps its average rate under a cap by sleeping, and stops when interrupted.
struct Throttled<'a, W> {
    inner: W,
    max_rate: Option<u64>,
    started: Instant,
    written: u64,
    interrupt: &'a AtomicBool,
}

impl<W: Write> Write for Throttled<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.interrupt.load(std::sync::atomic::Ordering::Relaxed) {
            // Not `ErrorKind::Interrupted`: `write_all` would retry that forever.
            return Err(std::io::Error::other("compaction interrupted"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if let Some(rate) = self.max_rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.written as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed + Duration::from_millis(20) {
                std::thread::sleep((due - elapsed).min(Duration::from_secs(1)));
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A pack written for the swap, in its own directory under `tmp/`.
struct Written {
    dir: PathBuf,
    pack: Arc<Pack>,
    namespaces: Vec<Namespace>,
    /// The age to give the pack (cruft keeps its sources' age); `None`: now.
    mtime: Option<SystemTime>,
}

/// Removes the work directory of a compaction unless disarmed.
struct WorkDir(Option<PathBuf>);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Age and modification time of a pack (by its `.pack` file; unknown counts as new).
fn pack_age(pack: &Pack) -> (Duration, SystemTime) {
    let now = SystemTime::now();
    let mtime = std::fs::metadata(pack.data_path())
        .and_then(|m| m.modified())
        .unwrap_or(now);
    (now.duration_since(mtime).unwrap_or(Duration::ZERO), mtime)
}

/// Ids of the direct ref values of `refs` (and `extra`), for a walk.
fn tips(view: &View, ns: Namespace, extra: &[ObjectId]) -> Vec<ObjectId> {
    let mut out: Vec<ObjectId> = view
        .refs(ns)
        .values()
        .filter_map(|v| v.id())
        .chain(extra.iter().copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every object reachable from `wants` (commits in `haves` and their history excluded).
fn reach(
    view: &View,
    wants: Vec<ObjectId>,
    haves: Vec<ObjectId>,
    interrupt: &AtomicBool,
) -> Result<HashSet<ObjectId>> {
    if wants.is_empty() {
        return Ok(HashSet::default());
    }
    let mut reader = view.reader().with_cache_bytes(64 << 20);
    let spec = WalkSpec {
        wants,
        haves,
        ..Default::default()
    };
    Ok(walk::walk_objects(&mut reader, &spec, interrupt)?.objects)
}

/// The commits among `ids`.
fn commits_among(reader: &mut ObjectReader, ids: &[ObjectId]) -> Result<Vec<ObjectId>> {
    let mut out = Vec::new();
    for id in ids {
        if matches!(reader.header(id)?, Some((Kind::Commit, _))) {
            out.push(*id);
        }
    }
    Ok(out)
}

impl Repo {
    /// Hold off compactions of this repository (a fork linking its pack files) while alive.
    pub(crate) fn hold_compaction(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.maintenance)
    }

    /// Compact this repository's packs (see the module docs). One compaction per repository
    /// runs at a time; readers and writers are never blocked except for the swap itself.
    pub fn compact(&self, opts: &CompactOptions, interrupt: &AtomicBool) -> Result<CompactStats> {
        let started = Instant::now();
        let _one = lock(&self.maintenance);
        let mut stats = self.compact_locked(opts, interrupt)?;
        // The commit graph is rebuilt for the new packs before the caller hears "done".
        self.wait_graph();
        stats.millis = started.elapsed().as_millis() as u64;
        Ok(stats)
    }

    fn compact_locked(
        &self,
        opts: &CompactOptions,
        interrupt: &AtomicBool,
    ) -> Result<CompactStats> {
        let view = self.view();
        let all = view.packs.packs();
        let mut stats = CompactStats {
            packs_before: all.len(),
            packs_after: all.len(),
            ..Default::default()
        };
        for ns in Namespace::ALL {
            stats
                .closed
                .insert(ns.as_str().to_owned(), view.catalog.is_closed(ns));
        }
        let merged: Vec<usize> = if opts.full {
            (0..all.len()).collect()
        } else {
            let counts: Vec<u64> = all.iter().map(|p| u64::from(p.num_objects())).collect();
            let mut m = geometric_split(&counts);
            m.sort_unstable();
            m
        };
        if merged.is_empty() || (merged.len() < 2 && !opts.full) {
            stats.skipped = Some("nothing to merge".into());
            return Ok(stats);
        }

        // Each distinct object of the merged packs, with the namespaces it serves.
        let mut served: HashMap<ObjectId, u8> = HashMap::default();
        // Young objects, with the modification time of the youngest pack holding them.
        let mut young: HashMap<ObjectId, SystemTime> = HashMap::default();
        let mut cruft_time: Option<SystemTime> = None;
        for i in &merged {
            let pack = &all[*i];
            let mask = Namespace::ALL
                .into_iter()
                .filter(|ns| view.packs.serves(*i, *ns))
                .fold(0u8, |m, ns| m | ns_bit(ns));
            let (age, mtime) = pack_age(pack);
            let is_young = opts.full && age < opts.prune_grace;
            stats.entries_merged += u64::from(pack.num_objects());
            stats.bytes_merged += std::fs::metadata(pack.data_path())
                .map(|m| m.len())
                .unwrap_or(0);
            for k in 0..pack.num_objects() {
                let id = pack.oid_at(k);
                *served.entry(id).or_insert(0) |= mask;
                if is_young {
                    let t = young.entry(id).or_insert(mtime);
                    *t = (*t).max(mtime);
                }
            }
        }

        // Which objects go into which group (namespace mask); absent = pruned.
        let mut group_of: HashMap<ObjectId, u8> = HashMap::default();
        let mut closed: Vec<(Namespace, bool)> = Vec::new();
        if opts.full {
            let recent_grace = opts.prune_grace.min(RECENT_TIPS_KEPT);
            let mut reached: Vec<(Namespace, HashSet<ObjectId>, bool)> = Vec::new();
            let mut ref_tips = Vec::new();
            for ns in Namespace::ALL {
                let wants = tips(&view, ns, &[]);
                ref_tips.extend(wants.iter().copied());
                let set = reach(&view, wants, Vec::new(), interrupt)?;
                reached.push((ns, set, true));
            }
            let mut reader = view.reader();
            let ref_commits = commits_among(&mut reader, &ref_tips)?;
            for (ns, set, exact) in &mut reached {
                // Values refs held a moment ago stay fetchable: keep what they reach (for that
                // namespace), though it makes the namespace more than its refs' closure.
                let recent: Vec<ObjectId> = self
                    .recent_tips(*ns, recent_grace)
                    .into_iter()
                    .filter(|id| !set.contains(id))
                    .collect();
                if !recent.is_empty() {
                    *exact = false;
                    let more = reach(&view, recent, ref_commits.clone(), interrupt)?;
                    set.extend(more);
                }
            }
            for (ns, set, _) in &reached {
                for id in set {
                    if served.contains_key(id) {
                        *group_of.entry(*id).or_insert(0) |= ns_bit(*ns);
                    }
                }
            }
            // Young objects nothing reaches are kept with what they reach.
            let unreached: Vec<ObjectId> = young
                .iter()
                .filter(|(id, _)| !group_of.contains_key(*id))
                .map(|(id, _)| *id)
                .collect();
            // The cruft pack keeps the age of the youngest pack its unreached objects came from
            // (not of every young pack merged: the previous compaction's pack is always young,
            // and taking its age would restart the grace at every run).
            cruft_time = unreached
                .iter()
                .filter_map(|id| young.get(id))
                .max()
                .copied();
            if !unreached.is_empty() {
                let mut wants = unreached;
                wants.sort_unstable();
                wants.dedup();
                for id in reach(&view, wants, ref_commits.clone(), interrupt)? {
                    if let Some(mask) = served.get(&id)
                        && !group_of.contains_key(&id)
                    {
                        group_of.insert(id, *mask | CRUFT);
                    }
                }
            }
            // A namespace is closed when it holds exactly what its refs reach: every merged
            // pack is replaced, so its objects are the group members that name it.
            for (ns, set, exact) in &reached {
                let bit = ns_bit(*ns);
                let holds = group_of.values().filter(|m| *m & bit != 0).count();
                let exact = *exact
                    && holds == set.len()
                    && set
                        .iter()
                        .all(|id| group_of.get(id).is_some_and(|m| m & bit != 0));
                closed.push((*ns, exact));
            }
        } else {
            group_of = served.clone();
            for ns in Namespace::ALL {
                closed.push((ns, view.catalog.is_closed(ns)));
            }
        }
        stats.objects_pruned = (served.len() - group_of.len()) as u64;
        drop(served);

        let mut groups: BTreeMap<u8, Vec<ObjectId>> = BTreeMap::new();
        for (id, mask) in &group_of {
            groups.entry(*mask).or_default().push(*id);
        }
        drop(group_of);
        let unchanged = opts.full
            && merged.len() == 1
            && stats.objects_pruned == 0
            && groups.len() == 1
            && groups.keys().all(|m| {
                namespaces_of(*m)
                    .iter()
                    .all(|ns| view.packs.serves(merged[0], *ns))
            })
            && closed
                .iter()
                .all(|(ns, c)| view.catalog.is_closed(*ns) == *c);
        if unchanged {
            stats.skipped = Some("already compact".into());
            return Ok(stats);
        }

        // Write one pack per group.
        let work = self
            .dir
            .join("tmp")
            .join(format!("c-{:016x}", rand::random::<u64>()));
        fsutil::create_dir_all_durable(&work).map_err(StoreError::io("create", &work))?;
        let _work = WorkDir(Some(work.clone()));
        let source = Arc::new(PackSet::new(
            merged
                .iter()
                .map(|i| (all[*i].clone(), Vec::new()))
                .collect(),
        ));
        let mut written = Vec::new();
        for (mask, ids) in groups {
            if ids.is_empty() {
                continue;
            }
            let w = self.write_group(&source, ids, &work, opts, interrupt, &mut stats)?;
            written.push(Written {
                namespaces: namespaces_of(mask),
                mtime: if mask & CRUFT != 0 { cruft_time } else { None },
                ..w
            });
        }
        crate::fault::point("compact-pack-written");
        let removed: Vec<String> = merged.iter().map(|i| all[*i].name().to_owned()).collect();
        self.swap(&view, written, removed, closed, &mut stats)?;
        Ok(stats)
    }

    /// Write the objects `ids` of `source` as one self-contained pack, indexed, under `work`.
    fn write_group(
        &self,
        source: &Arc<PackSet>,
        ids: Vec<ObjectId>,
        work: &Path,
        opts: &CompactOptions,
        interrupt: &AtomicBool,
        stats: &mut CompactStats,
    ) -> Result<Written> {
        let raw = work.join(format!("raw-{:08x}.pack", rand::random::<u32>()));
        let expected = ids.len() as u64;
        {
            let file = std::fs::File::create(&raw).map_err(StoreError::io("create", &raw))?;
            let mut out = Throttled {
                inner: std::io::BufWriter::with_capacity(1 << 20, file),
                max_rate: opts.max_rate,
                started: Instant::now(),
                written: 0,
                interrupt,
            };
            let s = packout::write_pack(
                source,
                Selection::Objects(ids),
                &|_| false,
                PackOptions {
                    ofs_delta: true,
                    thin: false,
                },
                &mut out,
                &mut |_, _| {},
            )?;
            out.flush().map_err(StoreError::io("write", &raw))?;
            stats.objects_written += s.objects;
            stats.entries_reused += s.reused;
            stats.entries_inflated += s.inflated;
        }
        // Index it: every object is hashed again, deltas resolve within the pack (no lookup
        // elsewhere: the pack must be complete on its own).
        let dir = work.join(format!("p-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
        let input = std::fs::File::open(&raw).map_err(StoreError::io("open", &raw))?;
        let mut input = std::io::BufReader::with_capacity(1 << 20, input);
        let options = gix_pack::bundle::write::Options {
            thread_limit: Some(1),
            iteration_mode: gix_pack::data::input::Mode::Verify,
            index_version: Default::default(),
            alloc_limit_bytes: None,
            compression: gix_zlib::Compression::BEST_SPEED,
        };
        let outcome = gix_pack::Bundle::write_to_directory(
            &mut input,
            Some(&dir),
            &mut gix_utils::progress::Discard,
            interrupt,
            None::<FindAdapter>,
            gix_hash::Kind::Sha1,
            options,
        )
        .map_err(StoreError::git("index compacted pack"))?;
        let _ = std::fs::remove_file(&raw);
        let pack = Arc::new(Pack::open_written(&dir, outcome.data_path)?);
        if u64::from(pack.num_objects()) != expected {
            return Err(StoreError::Invalid(format!(
                "compacted pack holds {} objects, {expected} were written",
                pack.num_objects()
            )));
        }
        stats.bytes_written += std::fs::metadata(pack.data_path())
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(Written {
            dir,
            pack,
            namespaces: Vec::new(),
            mtime: None,
        })
    }

    /// Swap `written` in for `removed` under the writer lock (see the module docs).
    fn swap(
        &self,
        before: &View,
        written: Vec<Written>,
        removed: Vec<String>,
        mut closed: Vec<(Namespace, bool)>,
        stats: &mut CompactStats,
    ) -> Result<()> {
        let mut w = lock(&self.writer);
        let current = self.view();
        let pack_dir = self.dir.join("objects").join("pack");
        let conflict = |stats: &mut CompactStats, why: String| {
            tracing::info!(reason = %why, "compaction abandoned; the next run retries");
            stats.skipped = Some(why);
            stats.retry = true;
            Ok(())
        };
        if removed
            .iter()
            .any(|name| !w.state.catalog.packs.iter().any(|p| &p.name == name))
        {
            return conflict(
                stats,
                "the pack catalog changed under the compaction".into(),
            );
        }
        // The pack set after the swap.
        let mut next: Vec<(Arc<Pack>, Vec<Namespace>)> = Vec::new();
        let mut placed = false;
        for (i, pack) in current.packs.packs().iter().enumerate() {
            if removed.iter().any(|r| r == pack.name()) {
                if !placed {
                    for wr in &written {
                        next.push((wr.pack.clone(), wr.namespaces.clone()));
                    }
                    placed = true;
                }
                continue;
            }
            let nss = Namespace::ALL
                .into_iter()
                .filter(|ns| current.packs.serves(i, *ns))
                .collect();
            next.push((pack.clone(), nss));
        }
        let next_set = Arc::new(PackSet::new(next));
        // Refs that moved since the snapshot: what they reach must still be there.
        let moved = w.state.catalog.journal_seq != before.catalog.journal_seq;
        if moved {
            let probe = View::new(
                next_set.clone(),
                current.refs.clone(),
                current.catalog.clone(),
                None,
            );
            let mut reader = probe.reader();
            let before_packs: Vec<&str> = before.packs.packs().iter().map(|p| p.name()).collect();
            for ns in Namespace::ALL {
                // Its closed flag was computed for the refs and packs of the snapshot: if either
                // changed for this namespace, it is not known to be closed any more.
                let gained_pack =
                    current.packs.packs().iter().enumerate().any(|(i, p)| {
                        current.packs.serves(i, ns) && !before_packs.contains(&p.name())
                    });
                if gained_pack || before.refs(ns) != current.refs(ns) {
                    for (n, c) in &mut closed {
                        if *n == ns {
                            *c = false;
                        }
                    }
                }
                let old: Vec<ObjectId> = tips(before, ns, &[]);
                let now_tips: Vec<ObjectId> = tips(&current, ns, &[]);
                if old == now_tips {
                    continue;
                }
                let new: Vec<ObjectId> = now_tips
                    .into_iter()
                    .filter(|id| !old.contains(id))
                    .collect();
                if new.is_empty() {
                    continue;
                }
                if let Some(id) = new.iter().find(|id| !next_set.contains(id)) {
                    return conflict(stats, format!("a ref moved to {id}, which was pruned"));
                }
                let haves = commits_among(&mut reader, &old)?;
                let reached = match reach(&probe, new, haves, &AtomicBool::new(false)) {
                    Ok(r) => r,
                    Err(e) => {
                        return conflict(stats, format!("a ref moved to pruned history: {e}"));
                    }
                };
                if let Some(id) = reached.iter().find(|id| !next_set.contains(id)) {
                    return conflict(stats, format!("a ref moved to pruned history ({id})"));
                }
                // The walk passes over a parent it cannot find: check every parent explicitly.
                let mut buf = Vec::new();
                for id in &reached {
                    let Some((Kind::Commit, data)) = reader.find(id, &mut buf)? else {
                        continue;
                    };
                    let parents = crate::objects::parse_commit(data)
                        .map(|c| c.parents)
                        .unwrap_or_default();
                    if let Some(p) = parents.iter().find(|p| !next_set.contains(p)) {
                        return conflict(
                            stats,
                            format!("a ref moved to history whose commit {p} was pruned"),
                        );
                    }
                }
            }
        }

        // A written pack may be byte for byte one it replaces (same content, so same name):
        // rewriting a group that was already one pack. That file stays where it is.
        let same: Vec<String> = written
            .iter()
            .map(|wr| wr.pack.name().to_owned())
            .filter(|n| removed.contains(n))
            .collect();
        if same.len() == written.len() && same.len() == removed.len() {
            let catalog_same = written.iter().all(|wr| {
                w.state
                    .catalog
                    .packs
                    .iter()
                    .any(|p| p.name == wr.pack.name() && p.namespaces == wr.namespaces)
            });
            let closed_same = closed
                .iter()
                .all(|(ns, c)| w.state.catalog.is_closed(*ns) == *c);
            if catalog_same && closed_same {
                stats.skipped = Some("already compact".into());
                stats.packs_after = current.packs.packs().len();
                return Ok(());
            }
        }

        // Promote: .keep first, then data; the old packs get their .replaced marker.
        for wr in written
            .iter()
            .filter(|wr| !same.iter().any(|n| n == wr.pack.name()))
        {
            let name = wr.pack.name();
            let keep = wr.dir.join(format!("{name}.keep"));
            std::fs::write(&keep, b"codestorage: compaction in progress\n")
                .map_err(StoreError::io("write", &keep))?;
            if let Some(t) = wr.mtime {
                let src = wr.dir.join(format!("{name}.pack"));
                std::fs::File::options()
                    .write(true)
                    .open(&src)
                    .and_then(|f| f.set_modified(t))
                    .map_err(StoreError::io("set the age of", &src))?;
            }
            for ext in ["pack", "idx"] {
                let src = wr.dir.join(format!("{name}.{ext}"));
                fsutil::fsync_file(&src).map_err(StoreError::io("fsync", &src))?;
            }
            for ext in ["keep", "pack", "idx"] {
                let src = wr.dir.join(format!("{name}.{ext}"));
                let dst = pack_dir.join(format!("{name}.{ext}"));
                std::fs::rename(&src, &dst).map_err(StoreError::io("move into place", &dst))?;
                if ext == "keep" {
                    // The marker is durable before the pack it guards appears.
                    fsutil::fsync_dir(&pack_dir).map_err(StoreError::io("fsync", &pack_dir))?;
                }
            }
        }
        for name in removed.iter().filter(|n| !same.contains(n)) {
            let marker = pack_dir.join(format!("{name}.{REPLACED}"));
            std::fs::write(&marker, b"codestorage: replaced by a compaction\n")
                .map_err(StoreError::io("write", &marker))?;
        }
        fsutil::fsync_dir(&pack_dir).map_err(StoreError::io("fsync", &pack_dir))?;
        crate::fault::point("compact-packs-promoted");

        let record = TxRecord {
            seq: w.state.catalog.journal_seq + 1,
            time: now(),
            who: "maintain".into(),
            ns: Namespace::Default,
            pack: None,
            closed: false,
            updates: Vec::new(),
            compact: Some(CompactRecord {
                add: written
                    .iter()
                    .map(|wr| (wr.pack.name().to_owned(), wr.namespaces.clone()))
                    .collect(),
                remove: removed.clone(),
                closed: closed.clone(),
            }),
        };
        // Open the new packs from their final place before the journal names them, so that
        // a failure here leaves the old state in force.
        let mut reopened = Vec::with_capacity(next_set.packs().len());
        for (i, pack) in next_set.packs().iter().enumerate() {
            let nss: Vec<Namespace> = Namespace::ALL
                .into_iter()
                .filter(|ns| next_set.serves(i, *ns))
                .collect();
            let pack = if written.iter().any(|wr| wr.pack.name() == pack.name()) {
                Arc::new(Pack::open(&pack_dir, pack.name())?)
            } else {
                pack.clone()
            };
            reopened.push((pack, nss));
        }
        let end = w.journal.append(&record)?;
        crate::fault::point("compact-journaled");
        w.state.apply(&record, end);
        let rid = self.record().id;
        if let Err(e) = self.index.apply(&rid, &record, &w.state.catalog) {
            tracing::warn!(error = %e, "index update failed; it will be rebuilt from the journal");
        }
        let packs =
            Arc::new(PackSet::new(reopened).with_generation(current.packs.generation() + 1));
        self.publish(View::new(
            packs.clone(),
            current.refs.clone(),
            w.state.catalog.clone(),
            None,
        ));
        for wr in &written {
            let _ = std::fs::remove_file(pack_dir.join(format!("{}.keep", wr.pack.name())));
        }
        for name in removed.iter().filter(|n| !same.contains(n)) {
            for ext in ["pack", "idx", REPLACED] {
                let _ = std::fs::remove_file(pack_dir.join(format!("{name}.{ext}")));
            }
        }
        let _ = fsutil::fsync_dir(&pack_dir);
        stats.packs_after = packs.packs().len();
        // Queued under the writer lock, so no commit's graph extension can run before it.
        self.queue_graph(GraphJob::Rebuild { packs });
        drop(w);
        stats.packs_written = written.len();
        stats.packs_merged = removed.len();
        stats.closed = closed
            .iter()
            .map(|(ns, c)| (ns.as_str().to_owned(), *c))
            .collect();
        tracing::info!(
            repo = %self.record().name,
            merged = stats.packs_merged,
            written = stats.packs_written,
            pruned = stats.objects_pruned,
            bytes_before = stats.bytes_merged,
            bytes_after = stats.bytes_written,
            "compacted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::geometric_split;

    fn split(counts: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = geometric_split(counts)
            .into_iter()
            .map(|i| counts[i])
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn geometric_merges_the_small_packs_and_leaves_a_progression() {
        assert!(split(&[]).is_empty());
        assert!(split(&[100]).is_empty());
        // Already a factor-2 progression.
        assert!(split(&[1, 2, 4, 8, 1000]).is_empty());
        // Many tiny packs next to a big one: the tiny ones roll up, the big one stays.
        assert_eq!(split(&[10_000, 1, 1, 1, 1, 1]), vec![1, 1, 1, 1, 1]);
        // Equal packs all merge.
        assert_eq!(split(&[5, 5, 5]), vec![5, 5, 5]);
        // The merged small packs absorb a mid-size pack that no longer doubles them.
        assert_eq!(split(&[1000, 6, 3, 3]), vec![3, 3, 6]);
    }
}
