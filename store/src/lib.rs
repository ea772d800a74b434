//! The codestorage object store: packs, object lookup, commit graph, refs and repository records.
//!
//! Durable truth lives in plain files; sled indexes them and can always be rebuilt from them.
//!
//! # Data directory layout
//!
//! ```text
//! <data>/FORMAT                        format version of this directory (a decimal number;
//!                                      see [`format`] for the versions and migrations)
//! <data>/index/                        sled: the rebuildable index (records, refs, catalogs, soft state)
//! <data>/repos/<id>/record.json        the repository record (atomically replaced), with the
//!                                      sealed upstream credential
//! <data>/repos/<id>/refs.journal       append-only, fsynced ref transactions: refs + pack catalog
//! <data>/repos/<id>/objects/pack/      standard git packs (pack-<hex>.pack + .idx; `.keep` /
//!                                      `.replaced` markers while a compaction swaps packs)
//! <data>/repos/<id>/objects/info/commit-graphs/   git commit-graph chain, one layer per pack
//! <data>/repos/<id>/tmp/               quarantines of packs being received, compactions being written
//! ```
//!
//! `<id>` is generated (`r` + 16 hex digits); repository names never become paths.
//!
//! # Layout of this crate
//!
//! - [`name`] — what a valid repository name is.
//! - [`refs`] — ref values, namespaces, updates.
//! - [`journal`] — the ref journal file.
//! - [`state`] — catalog and refs derived from the journal.
//! - [`index`] — the sled index (the only module that names sled).
//! - [`record`] — repository records.
//! - [`packs`] — open packs and object lookup.
//! - [`ingest`] — quarantines for received packs and their connectivity check.
//! - [`repo`] — one repository, its snapshots and its transactions; [`repo::compact`] merges
//!   and prunes its packs.
//! - [`objects`] — parsers for commit, tag and tree objects.
//! - [`packout`] — pack generation by reusing stored entries.
//! - [`graph`] — commit-graph layers.
//! - [`fsck`] — verification of a data directory.
//! - [`format`] — data directory format versions and in-place migrations.
//! - [`refs_text`] — refs as plain text (`export-refs`, `import-refs`).
//! - [`walk`] — revision walks (`rev-list --objects`) and want reachability.
//! - [`fsutil`] — durable file operations.
//! - [`fault`] — fault-injection points for crash tests (`CODESTORAGE_FAULT`).

pub mod error;
pub mod fault;
pub mod format;
pub mod fsck;
pub mod fsutil;
pub mod graph;
pub mod index;
pub mod ingest;
pub mod journal;
pub mod name;
pub mod objects;
pub mod packout;
pub mod packs;
pub mod record;
pub mod refs;
pub mod refs_text;
pub mod repo;
pub mod state;
pub mod walk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use error::{Result, StoreError};
pub use gix_hash::ObjectId;
pub use index::Index;
pub use ingest::{IngestOptions, Quarantine};
pub use name::RepoName;
pub use packs::{ObjectReader, Pack, PackSet};
pub use record::{CredentialRecord, RepoRecord, UpstreamRecord};
pub use refs::{Expect, Namespace, RefError, RefTable, RefUpdate, RefValue};
pub use repo::compact::{CompactOptions, CompactStats};
pub use repo::{Repo, Transaction, TxOutcome, View};

pub use format::FORMAT;

/// The whole store: every repository under one data directory. One process owns it at a time.
pub struct Store {
    root: PathBuf,
    index: Index,
    repos: RwLock<BTreeMap<String, Arc<Repo>>>,
    create: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// Open the index, moving a corrupt one aside (it is rebuilt from the files).
fn open_index(root: &Path) -> Result<Index> {
    let path = root.join("index");
    match Index::open(&path) {
        Ok(i) => Ok(i),
        Err(e) => {
            let aside = root.join(format!("index.broken-{}", rand::random::<u32>()));
            tracing::warn!(error = %e, aside = %aside.display(), "index unreadable; rebuilding it from the journals");
            std::fs::rename(&path, &aside).map_err(StoreError::io("move aside", &path))?;
            Ok(Index::open(&path)?)
        }
    }
}

impl Store {
    /// Open (creating if needed) the data directory `root`: check its format, open the index,
    /// sweep crash leftovers and replay journal tails the index has not seen.
    pub fn open(root: &Path) -> Result<Store> {
        fsutil::create_dir_all_durable(root).map_err(StoreError::io("create", root))?;
        format::prepare(root)?;
        let repos_dir = root.join("repos");
        fsutil::create_dir_all_durable(&repos_dir).map_err(StoreError::io("create", &repos_dir))?;
        let index = open_index(root)?;
        let _ = std::fs::remove_dir_all(root.join("trash"));
        let mut repos = BTreeMap::new();
        let entries = std::fs::read_dir(&repos_dir).map_err(StoreError::io("read", &repos_dir))?;
        for e in entries.flatten() {
            let dir = e.path();
            let record_path = dir.join("record.json");
            let bytes = match std::fs::read(&record_path) {
                Ok(b) => b,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // Creation never got as far as writing the record: nothing refers to it.
                    tracing::info!(dir = %dir.display(), "removing incompletely created repository");
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
                Err(err) => return Err(StoreError::io("read", &record_path)(err)),
            };
            let record: RepoRecord = serde_json::from_slice(&bytes)
                .map_err(|err| StoreError::Invalid(format!("{}: {err}", record_path.display())))?;
            index.put_record(&record)?;
            let name = record.name.clone();
            let repo = Repo::open(dir, record, index.clone())?;
            repos.insert(name, Arc::new(repo));
        }
        index.flush()?;
        Ok(Store {
            root: root.to_owned(),
            index,
            repos: RwLock::new(repos),
            create: Mutex::new(()),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index (for soft state such as sync status).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The repository called `name`.
    pub fn repo(&self, name: &str) -> Option<Arc<Repo>> {
        self.repos.read().ok().and_then(|m| m.get(name).cloned())
    }

    /// All repositories, by name.
    pub fn repos(&self) -> Vec<Arc<Repo>> {
        self.repos
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Wait until background work (commit-graph updates) of every repository is done.
    pub fn wait_idle(&self) {
        for repo in self.repos() {
            repo.wait_graph();
        }
    }

    /// Delete the repository `name`: it disappears at once (its directory moves to `trash/`,
    /// which is emptied now and swept at start), and its index entries go.
    pub fn delete_repo(&self, name: &str) -> Result<()> {
        let _guard = self.create.lock().unwrap_or_else(|p| p.into_inner());
        let repo = self
            .repos
            .write()
            .ok()
            .and_then(|mut m| m.remove(name))
            .ok_or_else(|| StoreError::RepoNotFound(name.to_owned()))?;
        self.trash(&repo)
    }

    /// Move `repo`'s directory to the trash, forget its index entries, empty the trash.
    fn trash(&self, repo: &Repo) -> Result<()> {
        let record = repo.record();
        let trash = self.root.join("trash");
        fsutil::create_dir_all_durable(&trash).map_err(StoreError::io("create", &trash))?;
        let dest = trash.join(format!("{}-{:08x}", record.id, rand::random::<u32>()));
        std::fs::rename(repo.dir(), &dest).map_err(StoreError::io("move to trash", repo.dir()))?;
        fsutil::fsync_dir(&self.root.join("repos"))
            .map_err(StoreError::io("fsync", self.root.join("repos")))?;
        self.index.remove_repo(&record)?;
        if let Err(e) = std::fs::remove_dir_all(&dest) {
            tracing::warn!(error = %e, dir = %dest.display(), "could not empty the trash; it is swept at start");
        }
        Ok(())
    }

    /// Create a repository. Its `HEAD` points at `refs/heads/<default_branch>` until a sync says
    /// otherwise.
    pub fn create_repo(
        &self,
        name: &RepoName,
        default_branch: &str,
        upstream: Option<UpstreamRecord>,
        org: Option<String>,
    ) -> Result<Arc<Repo>> {
        self.create_with(name, default_branch, upstream, org, |_| Ok(()))
    }

    /// Create `name` as a fork of `source`: a local repository that shares the source's objects
    /// (its packs are hard-linked, not copied) and starts with `refs` in its default namespace
    /// (`HEAD` points at `refs/heads/<default_branch>`). The fork becomes visible only once its
    /// refs are in place; a crash before that leaves an empty repository of that name.
    pub fn fork_repo(
        &self,
        source: &Repo,
        name: &RepoName,
        default_branch: &str,
        org: Option<String>,
        refs: Vec<(String, RefValue)>,
    ) -> Result<Arc<Repo>> {
        // The source's pack files must outlive the linking: no compaction replaces them meanwhile.
        let _hold = source.hold_compaction();
        let view = source.view();
        self.create_with(name, default_branch, None, org, |repo| {
            repo.adopt(&view, source.dir(), refs, "fork")
        })
    }

    fn create_with(
        &self,
        name: &RepoName,
        default_branch: &str,
        upstream: Option<UpstreamRecord>,
        org: Option<String>,
        populate: impl FnOnce(&Repo) -> Result<()>,
    ) -> Result<Arc<Repo>> {
        let _guard = self.create.lock().unwrap_or_else(|p| p.into_inner());
        if self.repo(name.as_str()).is_some() {
            return Err(StoreError::RepoExists(name.to_string()));
        }
        let head_target = format!("refs/heads/{default_branch}");
        if !refs::valid_ref_name(&head_target) {
            return Err(StoreError::Invalid(format!(
                "invalid default branch {default_branch:?}"
            )));
        }
        let id = format!("r{:016x}", rand::random::<u64>());
        let dir = self.root.join("repos").join(&id);
        fsutil::create_dir_all_durable(&dir.join("objects").join("pack"))
            .map_err(StoreError::io("create", &dir))?;
        let record = RepoRecord {
            id,
            name: name.to_string(),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            default_branch: default_branch.to_owned(),
            upstream,
            org,
            first_synced_at: None,
            credential: None,
        };
        let record_path = dir.join("record.json");
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| StoreError::Invalid(format!("encode record: {e}")))?;
        fsutil::atomic_write(&record_path, &json).map_err(StoreError::io("write", &record_path))?;
        self.index.put_record(&record)?;
        let repo = Arc::new(Repo::open(dir, record, self.index.clone())?);
        // Every namespace starts with HEAD on the default branch (unborn until pushed).
        for ns in Namespace::ALL {
            repo.commit(Transaction {
                ns,
                updates: vec![RefUpdate {
                    name: "HEAD".into(),
                    expect: Expect::Any,
                    new: Some(RefValue::Symbolic(head_target.clone())),
                }],
                who: "create".into(),
                atomic: true,
                quarantine: None,
            })?;
        }
        if let Err(e) = populate(&repo) {
            if let Err(cleanup) = self.trash(&repo) {
                tracing::warn!(error = %cleanup, "could not remove a repository whose creation failed");
            }
            return Err(e);
        }
        if let Ok(mut m) = self.repos.write() {
            m.insert(name.to_string(), repo.clone());
        }
        Ok(repo)
    }
}
