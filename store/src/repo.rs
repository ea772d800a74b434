//! One repository: its record, its packs and its refs, and the only way to change them.
//!
//! Readers take a [`View`] (an immutable snapshot of packs and refs) and never block writers.
//! Writers go through [`Repo::commit`], which under the repository's write lock checks every ref
//! update by compare-and-swap, moves the transaction's quarantined pack into `objects/pack`
//! (fsynced), appends the transaction to the journal (fsynced), and only then publishes the new
//! view and updates the index. A crash at any point leaves either the old or the new state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gix_hash::ObjectId;
use gix_object::Kind;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::graph::{self, CommitGraph, GraphCommit};
use crate::index::Index;
use crate::ingest::{IngestOptions, Quarantine};
use crate::journal::{Journal, TxRecord};
use crate::objects::parse_commit;
use crate::packs::{ObjectReader, Pack, PackSet};
use crate::record::RepoRecord;
use crate::refs::{Expect, Namespace, RefError, RefTable, RefUpdate, RefValue, valid_ref_name};
use crate::state::{Catalog, RepoState};

mod backup;
pub mod compact;
mod fork;

pub use backup::{RepoSnapshot, SnapshotFile};

/// An immutable snapshot of a repository's packs and refs.
#[derive(Debug, Clone)]
pub struct View {
    /// The packs, in catalog order.
    pub packs: Arc<PackSet>,
    /// The refs of each namespace.
    pub refs: BTreeMap<Namespace, Arc<RefTable>>,
    /// The catalog (journal position, closed flags).
    pub catalog: Catalog,
    /// The commit graph covering the packs (absent while it is being rebuilt).
    pub graph: Option<Arc<CommitGraph>>,
    peeled: Arc<Mutex<BTreeMap<Namespace, Arc<Peeled>>>>,
}

/// Per ref name, the object an annotated tag chain ends at.
pub type Peeled = BTreeMap<String, ObjectId>;

impl View {
    fn new(
        packs: Arc<PackSet>,
        refs: BTreeMap<Namespace, Arc<RefTable>>,
        catalog: Catalog,
        graph: Option<Arc<CommitGraph>>,
    ) -> View {
        View {
            packs,
            refs,
            catalog,
            graph,
            peeled: Default::default(),
        }
    }

    /// For each ref of `ns` that points at an annotated tag, the object the tag chain ends at.
    /// Computed once per snapshot.
    pub fn peeled(&self, ns: Namespace) -> Result<Arc<Peeled>> {
        if let Some(p) = lock(&self.peeled).get(&ns) {
            return Ok(p.clone());
        }
        let mut reader = self.reader();
        let mut buf = Vec::new();
        let mut out = BTreeMap::new();
        for (name, value) in self.refs(ns).iter() {
            let Some(mut id) = value.id() else { continue };
            let mut is_tag = false;
            for _ in 0..32 {
                match reader.find(&id, &mut buf)? {
                    Some((Kind::Tag, data)) => match crate::objects::parse_tag(data) {
                        Some((target, _)) => {
                            is_tag = true;
                            id = target;
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
            if is_tag {
                out.insert(name.clone(), id);
            }
        }
        let out = Arc::new(out);
        lock(&self.peeled).insert(ns, out.clone());
        Ok(out)
    }

    /// The refs of `ns` (empty if it has none).
    pub fn refs(&self, ns: Namespace) -> Arc<RefTable> {
        self.refs.get(&ns).cloned().unwrap_or_default()
    }

    /// A fresh object reader over this view's packs (and commit graph).
    pub fn reader(&self) -> ObjectReader {
        let mut r = ObjectReader::new(self.packs.clone());
        r.set_graph(self.graph.clone());
        r
    }
}

/// A set of ref updates to apply together, optionally with the pack they need.
#[derive(Debug)]
pub struct Transaction {
    /// The namespace the refs live in.
    pub ns: Namespace,
    /// The updates.
    pub updates: Vec<RefUpdate>,
    /// Who asks (for the journal; never a credential).
    pub who: String,
    /// All or nothing.
    pub atomic: bool,
    /// The verified pack holding the new objects, if any.
    pub quarantine: Option<Quarantine>,
}

/// What [`Repo::commit`] did.
#[derive(Debug, Default)]
pub struct TxOutcome {
    /// Per update, in order: applied, or why not.
    pub results: Vec<std::result::Result<(), RefError>>,
    /// The journal sequence number, if anything was committed.
    pub seq: Option<u64>,
}

struct Writer {
    journal: Journal,
    state: RepoState,
}

/// An open repository.
pub struct Repo {
    dir: PathBuf,
    index: Index,
    record: RwLock<RepoRecord>,
    /// Serializes record writers, so a read-modify-write never loses another's change.
    record_writer: Mutex<()>,
    writer: Mutex<Writer>,
    view: Arc<RwLock<Arc<View>>>,
    /// The latest commit graph; views take it when published.
    graph: Arc<RwLock<Option<Arc<CommitGraph>>>>,
    /// Appends to the commit graph run on a worker, off the commit path, in commit order.
    graph_jobs: Mutex<Option<std::sync::mpsc::Sender<GraphJob>>>,
    /// Tips refs held until recently, per namespace: a stateless client may fetch what it saw
    /// in an advertisement made just before a ref moved.
    recent: Mutex<VecDeque<(Instant, Namespace, ObjectId)>>,
    /// Held by a compaction for its whole run: one at a time per repository.
    maintenance: Mutex<()>,
}

/// How long former ref values are remembered at most.
const RECENT_TIPS_KEPT: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo").field("dir", &self.dir).finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the journal half-written (appends are
    // all-or-nothing), so the data behind a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Repo {
    /// Open the repository in `dir` with `record`, bringing the index up to date with the journal.
    pub(crate) fn open(dir: PathBuf, record: RepoRecord, index: Index) -> Result<Repo> {
        let journal_path = dir.join("refs.journal");
        let mut state = index.load_state(&record.id)?.unwrap_or_default();
        let journal_len = std::fs::metadata(&journal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        if state.catalog.journal_pos > journal_len {
            // The index claims more than the journal holds: it is not to be trusted.
            state = RepoState::default();
        }
        let (journal, tail) = match Journal::open(&journal_path, state.catalog.journal_pos) {
            Ok(ok) => ok,
            Err(_) if state.catalog.journal_pos != 0 => {
                // The index's position may not be a line boundary; replay from the start.
                state = RepoState::default();
                Journal::open(&journal_path, 0)?
            }
            Err(e) => return Err(e.into()),
        };
        if tail.torn_bytes > 0 {
            tracing::warn!(repo = %record.name, bytes = tail.torn_bytes, "cut a torn write off the ref journal");
        }
        let replayed = !tail.records.is_empty() || state.catalog.journal_pos == 0;
        for (tx, end) in &tail.records {
            state.apply(tx, *end);
        }
        if replayed {
            index.replace_state(&record.id, &state)?;
        }
        let pack_dir = dir.join("objects").join("pack");
        fsutil::create_dir_all_durable(&pack_dir).map_err(StoreError::io("create", &pack_dir))?;
        fsutil::create_dir_all_durable(&dir.join("tmp"))
            .map_err(StoreError::io("create", dir.join("tmp")))?;
        sweep_leftovers(&dir, &pack_dir, &state.catalog)?;
        let mut packs = Vec::with_capacity(state.catalog.packs.len());
        for entry in &state.catalog.packs {
            packs.push((
                Arc::new(Pack::open(&pack_dir, &entry.name)?),
                entry.namespaces.clone(),
            ));
        }
        let packs = Arc::new(PackSet::new(packs));
        let objects = dir.join("objects");
        let _ = graph::remove_stale_lock(&objects);
        let commit_graph = match open_graph(&objects) {
            Some(g) if graph_covers_tips(&g, &packs, &state) => Some(g),
            _ => build_graph(&objects, &packs),
        };
        let view = View::new(
            packs,
            state
                .refs
                .iter()
                .map(|(ns, t)| (*ns, Arc::new(t.clone())))
                .collect(),
            state.catalog.clone(),
            commit_graph,
        );
        Ok(Repo {
            dir,
            index,
            record: RwLock::new(record),
            record_writer: Mutex::new(()),
            writer: Mutex::new(Writer { journal, state }),
            graph: Arc::new(RwLock::new(view.graph.clone())),
            view: Arc::new(RwLock::new(Arc::new(view))),
            graph_jobs: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            maintenance: Mutex::new(()),
        })
    }

    /// Rebuild the commit graph from all packs (fsck --rebuild).
    pub fn rebuild_graph(&self) -> Result<()> {
        let _w = lock(&self.writer);
        self.wait_graph();
        let view = self.view();
        let objects = self.dir.join("objects");
        graph::remove_all(&objects)
            .map_err(|e| StoreError::Invalid(format!("commit graph: {e}")))?;
        let g = build_graph(&objects, &view.packs);
        set_graph(&self.graph, &self.view, g);
        Ok(())
    }

    /// Publish `next` as the current view, with the latest commit graph.
    fn publish(&self, mut next: View) {
        let mut slot = self.view.write().unwrap_or_else(|p| p.into_inner());
        next.graph = self.graph.read().map(|g| g.clone()).unwrap_or(None);
        *slot = Arc::new(next);
    }

    /// Queue the commit graph extension for `packs`' newest pack.
    fn queue_graph(&self, job: GraphJob) {
        let mut jobs = lock(&self.graph_jobs);
        if jobs.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<GraphJob>();
            let objects = self.dir.join("objects");
            let (graph, view) = (self.graph.clone(), self.view.clone());
            let spawned = std::thread::Builder::new()
                .name("commit-graph".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            GraphJob::Extend { packs, commits } => {
                                let current = graph.read().map(|g| g.clone()).unwrap_or(None);
                                let next =
                                    extend_graph(&objects, current.as_deref(), &packs, commits);
                                set_graph(&graph, &view, next);
                            }
                            GraphJob::Rebuild { packs } => {
                                let next = build_graph(&objects, &packs);
                                set_graph(&graph, &view, next);
                            }
                            GraphJob::Barrier(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            match spawned {
                Ok(_) => *jobs = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no commit-graph worker; the graph lags until the next start");
                    return;
                }
            }
        }
        if let Some(tx) = jobs.as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Wait until queued commit-graph work is done (tests, fsck, shutdown).
    pub fn wait_graph(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = lock(&self.graph_jobs)
            .as_ref()
            .is_some_and(|jobs| jobs.send(GraphJob::Barrier(tx)).is_ok());
        if queued {
            let _ = rx.recv();
        }
    }

    /// Values refs of `ns` held until less than `grace` ago.
    pub fn recent_tips(&self, ns: Namespace, grace: Duration) -> Vec<ObjectId> {
        let mut recent = lock(&self.recent);
        while recent
            .front()
            .is_some_and(|(t, _, _)| t.elapsed() > RECENT_TIPS_KEPT)
        {
            recent.pop_front();
        }
        recent
            .iter()
            .filter(|(t, n, _)| *n == ns && t.elapsed() < grace)
            .map(|(_, _, id)| *id)
            .collect()
    }

    fn remember_tips(&self, ns: Namespace, tips: impl Iterator<Item = ObjectId>) {
        let mut recent = lock(&self.recent);
        let now = Instant::now();
        recent.extend(tips.map(|id| (now, ns, id)));
        while recent.len() > 10_000 {
            recent.pop_front();
        }
    }

    /// The repository's record.
    pub fn record(&self) -> RepoRecord {
        self.record
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The repository's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index the repository lives in (for its soft state).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The current snapshot.
    pub fn view(&self) -> Arc<View> {
        self.view
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Index an incoming pack into a new quarantine (not yet visible to anyone); `None` for a
    /// pack without objects.
    pub fn receive_pack(
        &self,
        input: &mut dyn BufRead,
        opts: IngestOptions,
        interrupt: &AtomicBool,
    ) -> Result<Option<Quarantine>> {
        Quarantine::receive(
            &self.dir.join("tmp"),
            self.view().packs.clone(),
            input,
            opts,
            interrupt,
        )
    }

    /// Apply `tx`: compare-and-swap each ref, make the quarantined pack durable, journal the
    /// change, then publish it. See the module docs for the ordering.
    pub fn commit(&self, mut tx: Transaction) -> Result<TxOutcome> {
        let started = Instant::now();
        let mut w = lock(&self.writer);
        let view = self.view();
        if let Some(q) = tx.quarantine.as_mut()
            && let Some(v) = q.verified()
            && v.generation != view.packs.generation()
        {
            // A compaction replaced (and may have pruned) packs the verification stopped at.
            let (ns, tips): (Namespace, Vec<ObjectId>) = (v.ns, v.tips.iter().copied().collect());
            match q.verify(view.packs.clone(), ns, &tips) {
                Ok(_) => {}
                Err(StoreError::MissingObject(id)) => {
                    tracing::warn!(%id, "an object the pack needs was pruned meanwhile");
                    let results = tx
                        .updates
                        .iter()
                        .map(|_| Err(RefError::MissingObject(id)))
                        .collect();
                    return Ok(TxOutcome { results, seq: None });
                }
                Err(e) => return Err(e),
            }
        }
        let table = w.state.refs.get(&tx.ns).cloned().unwrap_or_default();
        let quarantine_pack = tx.quarantine.as_ref().map(|q| q.pack().clone());
        let exists = |id: &ObjectId| {
            view.packs.contains(id)
                || quarantine_pack
                    .as_ref()
                    .is_some_and(|p| p.lookup(id).is_some())
        };
        let mut results = Vec::with_capacity(tx.updates.len());
        for u in &tx.updates {
            results.push(check_update(&table, u, &exists));
        }
        if tx.atomic && results.iter().any(|r| r.is_err()) {
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(RefError::TransactionFailed);
                }
            }
            return Ok(TxOutcome { results, seq: None });
        }
        let applied: Vec<&RefUpdate> = tx
            .updates
            .iter()
            .zip(&results)
            .filter(|(u, r)| r.is_ok() && table.get(&u.name) != u.new.as_ref())
            .map(|(u, _)| u)
            .collect();
        if applied.is_empty() {
            return Ok(TxOutcome { results, seq: None });
        }

        let closed = self.closed_after(&w.state.catalog, &view, &tx, &applied, &table)?;
        let pack_dir = self.dir.join("objects").join("pack");
        let mut new_pack = None;
        let mut new_commits = None;
        if let Some(mut q) = tx.quarantine {
            new_commits = q.take_commits();
            let (qdir, qpack) = q.into_parts();
            let name = qpack.name().to_owned();
            drop(qpack);
            let already = w.state.catalog.packs.iter().any(|p| p.name == name);
            if !already {
                promote(&qdir, &pack_dir, &name)?;
                crate::fault::point("commit-pack-promoted");
            }
            let _ = std::fs::remove_dir_all(&qdir);
            new_pack = Some(name);
        }

        let record = TxRecord {
            seq: w.state.catalog.journal_seq + 1,
            time: now(),
            who: tx.who,
            ns: tx.ns,
            pack: new_pack.clone(),
            closed,
            updates: applied
                .iter()
                .map(|u| (u.name.clone(), table.get(&u.name).cloned(), u.new.clone()))
                .collect(),
            compact: None,
        };
        let promoted = started.elapsed();
        let end = w.journal.append(&record)?;
        crate::fault::point("commit-journaled");
        let journaled = started.elapsed();
        w.state.apply(&record, end);
        let rid = self.record().id;
        if let Err(e) = self.index.apply(&rid, &record, &w.state.catalog) {
            // The journal is the truth; the index catches up on the next open.
            tracing::warn!(error = %e, "index update failed; it will be rebuilt from the journal");
        }
        crate::fault::point("commit-indexed");

        let mut packs = view.packs.clone();
        if let Some(name) = &new_pack {
            let pack = match view.packs.packs().iter().find(|p| p.name() == name) {
                Some(p) => p.clone(),
                None => Arc::new(Pack::open(&pack_dir, name)?),
            };
            packs = Arc::new(packs.with_pack(pack, tx.ns));
            let _ = std::fs::remove_file(pack_dir.join(format!("{name}.keep")));
        }
        let mut refs = view.refs.clone();
        refs.insert(
            tx.ns,
            Arc::new(w.state.refs.get(&tx.ns).cloned().unwrap_or_default()),
        );
        let indexed = started.elapsed();
        let added_pack = new_pack
            .as_ref()
            .is_some_and(|name| !view.packs.packs().iter().any(|p| p.name() == name));
        let next = View::new(packs.clone(), refs, w.state.catalog.clone(), None);
        self.publish(next);
        if added_pack {
            self.queue_graph(GraphJob::Extend {
                packs,
                commits: new_commits,
            });
        }
        tracing::debug!(
            promote_us = promoted.as_micros() as u64,
            journal_us = (journaled - promoted).as_micros() as u64,
            index_us = (indexed - journaled).as_micros() as u64,
            publish_us = (started.elapsed() - indexed).as_micros() as u64,
            "transaction committed"
        );
        self.remember_tips(
            tx.ns,
            applied
                .iter()
                .filter_map(|u| table.get(&u.name).and_then(RefValue::id)),
        );
        Ok(TxOutcome {
            results,
            seq: Some(record.seq),
        })
    }

    /// Whether the namespace stays "closed" (its packs are exactly the closure of its refs).
    fn closed_after(
        &self,
        catalog: &Catalog,
        view: &View,
        tx: &Transaction,
        applied: &[&RefUpdate],
        table: &RefTable,
    ) -> Result<bool> {
        if !catalog.is_closed(tx.ns) {
            return Ok(false);
        }
        let verified = match &tx.quarantine {
            Some(q) => match q.verified() {
                Some(v) if v.ns == tx.ns && v.pack_reachable && v.stops_in_ns => Some(v),
                _ => return Ok(false),
            },
            None => None,
        };
        let new_tips: BTreeSet<ObjectId> = applied
            .iter()
            .filter_map(|u| u.new.as_ref().and_then(RefValue::id))
            .collect();
        if let Some(v) = verified
            && !v.tips.is_subset(&new_tips)
        {
            // Some of the pack was meant for refs that were not applied.
            return Ok(false);
        }
        let mut reader = match &tx.quarantine {
            Some(q) => ObjectReader::with_extra(view.packs.clone(), q.pack().clone()),
            None => view.reader(),
        };
        for u in applied {
            let old = table.get(&u.name).and_then(RefValue::id);
            let new = match &u.new {
                None => return Ok(false),
                Some(RefValue::Symbolic(_)) => continue,
                Some(RefValue::Direct(id)) => *id,
            };
            let in_pack = verified.is_some_and(|v| v.tips.contains(&new));
            if !in_pack && !view.packs.contains_in(&new, tx.ns) {
                return Ok(false);
            }
            if let Some(old) = old
                && old != new
                && !is_ancestor(&mut reader, old, new)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Replace the record (e.g. a changed upstream), durably. Prefer [`Repo::update_record`]
    /// when the new record is derived from the current one.
    pub fn set_record(&self, record: RepoRecord) -> Result<()> {
        let _w = lock(&self.record_writer);
        self.write_record(record)
    }

    /// Change the record with `change` and store the result durably, atomically with respect to
    /// other record writers (no lost updates). When `change` fails nothing is written.
    pub fn update_record<T, E>(
        &self,
        change: impl FnOnce(&mut RepoRecord) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<StoreError>,
    {
        let _w = lock(&self.record_writer);
        let mut record = self.record();
        let out = change(&mut record)?;
        if record != self.record() {
            self.write_record(record)?;
        }
        Ok(out)
    }

    fn write_record(&self, record: RepoRecord) -> Result<()> {
        let path = self.dir.join("record.json");
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| StoreError::Invalid(format!("encode record: {e}")))?;
        fsutil::atomic_write(&path, &json).map_err(StoreError::io("write", &path))?;
        self.index.put_record(&record)?;
        match self.record.write() {
            Ok(mut r) => *r = record,
            Err(p) => *p.into_inner() = record,
        }
        Ok(())
    }
}

fn check_update(
    table: &RefTable,
    u: &RefUpdate,
    exists: &dyn Fn(&ObjectId) -> bool,
) -> std::result::Result<(), RefError> {
    if !valid_ref_name(&u.name) {
        return Err(RefError::InvalidName);
    }
    let current = table.get(&u.name);
    let ok = match &u.expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Value(v) => current == Some(v),
    };
    if !ok {
        return Err(RefError::Stale {
            name: u.name.clone(),
        });
    }
    if let Some(RefValue::Direct(id)) = &u.new
        && !exists(id)
    {
        return Err(RefError::MissingObject(*id));
    }
    Ok(())
}

/// Move a verified quarantine's files into `objects/pack`, `.keep` first, fsyncing data and
/// directory. Until the journal names the pack, the `.keep` marks it as a crash leftover.
fn promote(qdir: &Path, pack_dir: &Path, name: &str) -> Result<()> {
    let keep_src = qdir.join(format!("{name}.keep"));
    if !keep_src.exists() {
        std::fs::write(&keep_src, b"codestorage: ingest in progress\n")
            .map_err(StoreError::io("write", &keep_src))?;
    }
    // The .keep marks by existence; its content needs no fsync.
    for ext in ["pack", "idx"] {
        let src = qdir.join(format!("{name}.{ext}"));
        fsutil::fsync_file(&src).map_err(StoreError::io("fsync", &src))?;
    }
    for ext in ["keep", "pack", "idx"] {
        let src = qdir.join(format!("{name}.{ext}"));
        let dst = pack_dir.join(format!("{name}.{ext}"));
        std::fs::rename(&src, &dst).map_err(StoreError::io("move into place", &dst))?;
        if ext == "keep" {
            fsutil::fsync_dir(pack_dir).map_err(StoreError::io("fsync", pack_dir))?;
        }
    }
    fsutil::fsync_dir(pack_dir).map_err(StoreError::io("fsync", pack_dir))
}

/// Remove what a crash left behind: quarantines and compaction work, packs promoted but never
/// journaled (they still carry their `.keep`), packs a journaled compaction replaced (they carry
/// a `.replaced` marker), and stale markers of cataloged packs.
fn sweep_leftovers(dir: &Path, pack_dir: &Path, catalog: &Catalog) -> Result<()> {
    let tmp = dir.join("tmp");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            tracing::info!(path = %e.path().display(), "removing leftover quarantine");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let cataloged: BTreeSet<&str> = catalog.packs.iter().map(|p| p.name.as_str()).collect();
    let entries = std::fs::read_dir(pack_dir).map_err(StoreError::io("read", pack_dir))?;
    for e in entries.flatten() {
        let path = e.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(stem) = file.strip_suffix(&format!(".{}", compact::REPLACED)) {
            if !cataloged.contains(stem) {
                tracing::info!(pack = stem, "removing a pack a compaction replaced");
                for ext in ["idx", "pack"] {
                    let _ = std::fs::remove_file(pack_dir.join(format!("{stem}.{ext}")));
                }
            }
            let _ = std::fs::remove_file(&path);
        } else if let Some(stem) = file.strip_suffix(".keep") {
            if !cataloged.contains(stem) {
                tracing::info!(pack = stem, "removing pack left by an interrupted ingest");
                for ext in ["idx", "pack"] {
                    let _ = std::fs::remove_file(pack_dir.join(format!("{stem}.{ext}")));
                }
            }
            let _ = std::fs::remove_file(&path);
        } else if file.starts_with("tmp_") || file.starts_with(".tmp-") {
            let _ = std::fs::remove_file(&path);
        }
    }
    fsutil::fsync_dir(pack_dir).map_err(StoreError::io("fsync", pack_dir))
}

/// Whether commit `ancestor` is reachable from commit `descendant` (or equal).
pub fn is_ancestor(
    reader: &mut ObjectReader,
    ancestor: ObjectId,
    descendant: ObjectId,
) -> Result<bool> {
    if ancestor == descendant {
        return Ok(true);
    }
    let mut buf = Vec::new();
    let anc_time = match reader.find(&ancestor, &mut buf)? {
        Some((Kind::Commit, data)) => parse_commit(data).map(|c| c.time).unwrap_or(i64::MIN),
        _ => return Ok(false),
    };
    // Commits older than the ancestor (with a day of slack for clock skew) cannot lead to it.
    let cutoff = anc_time.saturating_sub(86_400);
    let mut seen = BTreeSet::new();
    let mut queue = vec![descendant];
    while let Some(id) = queue.pop() {
        if !seen.insert(id) {
            continue;
        }
        let info = match reader.find(&id, &mut buf)? {
            Some((Kind::Commit, data)) => parse_commit(data),
            _ => None,
        };
        let Some(info) = info else { continue };
        if info.time < cutoff {
            continue;
        }
        for p in info.parents {
            if p == ancestor {
                return Ok(true);
            }
            queue.push(p);
        }
    }
    Ok(false)
}

fn open_graph(objects: &Path) -> Option<Arc<CommitGraph>> {
    match CommitGraph::open(objects) {
        Ok(g) => g.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "commit graph unreadable; rebuilding it");
            None
        }
    }
}

/// Whether every ref tip that is a commit is in the graph (a cheap completeness check).
fn graph_covers_tips(g: &CommitGraph, packs: &Arc<PackSet>, state: &RepoState) -> bool {
    let mut reader = ObjectReader::new(packs.clone());
    state
        .refs
        .values()
        .flat_map(|t| t.values())
        .filter_map(RefValue::id)
        .all(|id| g.contains(&id) || !matches!(reader.header(&id), Ok(Some((Kind::Commit, _)))))
}

/// The commits of `packs` not in `known`, parsed for the graph.
fn commits_of(
    packs: &[Arc<Pack>],
    all: &Arc<PackSet>,
    known: Option<&CommitGraph>,
) -> Result<Vec<GraphCommit>> {
    let mut reader = ObjectReader::new(all.clone());
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for pack in packs {
        for i in 0..pack.num_objects() {
            let id = pack.oid_at(i);
            if known.is_some_and(|g| g.contains(&id)) || seen.contains(&id) {
                continue;
            }
            if !matches!(reader.header(&id)?, Some((Kind::Commit, _))) {
                continue;
            }
            if let Some((Kind::Commit, data)) = reader.find(&id, &mut buf)?
                && let Some(info) = parse_commit(data)
            {
                seen.insert(id);
                out.push(GraphCommit {
                    id,
                    tree: info.tree,
                    parents: info.parents,
                    commit_time: info.time,
                });
            }
        }
    }
    Ok(out)
}

/// Write a graph of every commit in `packs` from scratch.
fn build_graph(objects: &Path, packs: &Arc<PackSet>) -> Option<Arc<CommitGraph>> {
    let result = (|| -> Result<Option<Arc<CommitGraph>>> {
        let _ = graph::remove_all(objects);
        let commits = commits_of(packs.packs(), packs, None)?;
        graph::append_layer(objects, commits)
            .map_err(|e| StoreError::Invalid(format!("commit graph: {e}")))?;
        Ok(open_graph(objects))
    })();
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not build the commit graph; walks decode commits instead");
        None
    })
}

/// Add the commits of the newest pack of `packs` (`known` if the caller parsed them already)
/// to the graph (or rebuild it if it has gaps).
fn extend_graph(
    objects: &Path,
    current: Option<&CommitGraph>,
    packs: &Arc<PackSet>,
    known: Option<Vec<GraphCommit>>,
) -> Option<Arc<CommitGraph>> {
    let Some(current) = current else {
        // The first pack: what verification parsed is all there is.
        if let (Some(commits), 1) = (known, packs.packs().len()) {
            let _ = graph::remove_all(objects);
            return match graph::append_layer(objects, commits) {
                Ok(_) => open_graph(objects),
                Err(e) => {
                    tracing::info!(error = %e, "rebuilding the commit graph");
                    build_graph(objects, packs)
                }
            };
        }
        return build_graph(objects, packs);
    };
    let newest = packs.packs().last().cloned();
    let result = (|| -> Result<()> {
        let commits = match known {
            Some(c) => c.into_iter().filter(|c| !current.contains(&c.id)).collect(),
            None => commits_of(newest.as_slice(), packs, Some(current))?,
        };
        graph::append_layer(objects, commits)
            .map_err(|e| StoreError::Invalid(format!("commit graph: {e}")))?;
        Ok(())
    })();
    match result {
        Ok(()) => open_graph(objects),
        Err(e) => {
            tracing::info!(error = %e, "commit graph has gaps; rebuilding it");
            build_graph(objects, packs)
        }
    }
}

/// Work for the commit-graph worker.
enum GraphJob {
    /// Add the newest pack of `packs` (whose commits verification may have parsed already).
    Extend {
        packs: Arc<PackSet>,
        commits: Option<Vec<GraphCommit>>,
    },
    /// Rebuild the graph from `packs` (after a compaction dropped commits).
    Rebuild { packs: Arc<PackSet> },
    /// Answer once everything queued before is done.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Make `next` the latest graph and give it to the current view.
fn set_graph(
    graph: &RwLock<Option<Arc<CommitGraph>>>,
    view: &RwLock<Arc<View>>,
    next: Option<Arc<CommitGraph>>,
) {
    let mut slot = view.write().unwrap_or_else(|p| p.into_inner());
    *graph.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
    let current = slot.clone();
    *slot = Arc::new(View::new(
        current.packs.clone(),
        current.refs.clone(),
        current.catalog.clone(),
        next,
    ));
}
