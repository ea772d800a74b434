//! A consistent, non-blocking snapshot of one repository's durable files, for backups.
//!
//! Under the writer lock (briefly: no I/O beyond opening files) the snapshot captures the
//! journal's length and the cataloged packs, and opens every file it will copy. After the lock is
//! released, writers go on; the snapshot reads the journal only up to the captured length (it is
//! append-only), and reads packs through the handles it holds (packs are immutable, and an open
//! handle stays readable even if a compaction unlinks the file). So the copy is exactly the
//! repository as of one journal position: every pack the copied journal names is in it.
//! Commit graphs are not copied (rebuilt at open), nor is the index.
//!
//! Also the recovery counterpart, [`Repo::adopt_packs`]: catalog packs whose journal entries
//! were lost (a journal cut back or replaced after damage), so that `import-refs` can point
//! refs at their objects again.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::{GraphJob, Repo, View, lock, now};
use crate::error::{Result, StoreError};
use crate::journal::TxRecord;
use crate::refs::Namespace;

/// One file of a snapshot: where it goes (relative to the data directory, `/`-separated), how
/// many bytes of it belong to the snapshot, and a handle to read them from.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Path relative to the data directory, e.g. `repos/r0123…/refs.journal`.
    pub path: String,
    /// Bytes to copy from the start of `file`.
    pub len: u64,
    /// The open file.
    pub file: File,
}

/// A repository's files as of one journal position.
#[derive(Debug)]
pub struct RepoSnapshot {
    /// The repository's id (its directory name).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The journal length captured.
    pub journal_len: u64,
    /// The cataloged packs, by file stem.
    pub packs: Vec<String>,
    /// The record, the journal and every cataloged pack and index.
    pub files: Vec<SnapshotFile>,
}

fn open(dir: &Path, prefix: &str, name: &str, len: Option<u64>) -> Result<SnapshotFile> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(StoreError::io("open for backup", &path))?;
    let on_disk = file
        .metadata()
        .map_err(StoreError::io("stat for backup", &path))?
        .len();
    let len = match len {
        Some(l) if l > on_disk => {
            return Err(StoreError::Invalid(format!(
                "{} is shorter ({on_disk} bytes) than the state it holds ({l} bytes)",
                path.display()
            )));
        }
        Some(l) => l,
        None => on_disk,
    };
    Ok(SnapshotFile {
        path: format!("{prefix}/{name}"),
        len,
        file,
    })
}

impl Repo {
    /// Capture this repository's durable files as of its current journal position.
    pub fn snapshot(&self) -> Result<RepoSnapshot> {
        let record = self.record();
        let prefix = format!("repos/{}", record.id);
        let w = lock(&self.writer);
        let locked = std::time::Instant::now();
        let journal_len = w.journal.len();
        let packs: Vec<String> = w
            .state
            .catalog
            .packs
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let mut files = Vec::with_capacity(2 + 2 * packs.len());
        // The record is replaced atomically: the handle holds one whole version of it.
        files.push(open(&self.dir, &prefix, "record.json", None)?);
        files.push(open(&self.dir, &prefix, "refs.journal", Some(journal_len))?);
        for p in &packs {
            for ext in ["pack", "idx"] {
                files.push(open(
                    &self.dir,
                    &prefix,
                    &format!("objects/pack/{p}.{ext}"),
                    None,
                )?);
            }
        }
        drop(w);
        tracing::debug!(
            repo = %record.name,
            packs = packs.len(),
            locked_us = locked.elapsed().as_micros() as u64,
            "repository snapshot taken"
        );
        Ok(RepoSnapshot {
            id: record.id,
            name: record.name,
            journal_len,
            packs,
            files,
        })
    }

    /// Catalog every verified pack in `objects/pack` that the journal does not name and that
    /// is not an interrupted ingest (`.keep`) nor replaced by a compaction (`.replaced`): one
    /// journal entry each, without ref changes,
    /// in the default namespace, not "closed" (no full-clone fast path until the refs say so).
    /// A pack that fails verification stops the adoption with an error naming it. Returns
    /// the adopted packs.
    pub fn adopt_packs(&self) -> Result<Vec<String>> {
        let mut w = lock(&self.writer);
        let pack_dir = self.dir.join("objects").join("pack");
        let cataloged: BTreeSet<String> = w
            .state
            .catalog
            .packs
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let entries = std::fs::read_dir(&pack_dir).map_err(StoreError::io("read", &pack_dir))?;
        let mut orphans: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|f| f.strip_suffix(".pack").map(str::to_owned))
            .filter(|stem| stem.starts_with("pack-") && !cataloged.contains(stem))
            .filter(|stem| !pack_dir.join(format!("{stem}.keep")).exists())
            // A pack a compaction replaced (its marker) is on its way out, never adopted.
            .filter(|stem| !pack_dir.join(format!("{stem}.replaced")).exists())
            .collect();
        orphans.sort();
        let rid = self.record().id;
        for name in &orphans {
            let pack = crate::fsck::verify_pack(&pack_dir, name)
                .map_err(|e| StoreError::Invalid(format!("cannot adopt {name}: {e}")))?;
            let record = TxRecord {
                seq: w.state.catalog.journal_seq + 1,
                time: now(),
                who: "adopt-packs".into(),
                ns: Namespace::Default,
                pack: Some(name.clone()),
                closed: false,
                updates: Vec::new(),
                compact: None,
            };
            let end = w.journal.append(&record)?;
            w.state.apply(&record, end);
            if let Err(e) = self.index.apply(&rid, &record, &w.state.catalog) {
                tracing::warn!(error = %e, "index update failed; it will be rebuilt from the journal");
            }
            let view = self.view();
            let packs = Arc::new(view.packs.with_pack(Arc::new(pack), Namespace::Default));
            self.publish(View::new(
                packs.clone(),
                view.refs.clone(),
                w.state.catalog.clone(),
                None,
            ));
            self.queue_graph(GraphJob::Extend {
                packs,
                commits: None,
            });
            tracing::info!(repo = %self.record().name, pack = %name, "adopted an uncataloged pack");
        }
        Ok(orphans)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use crate::{Expect, Namespace, RefUpdate, RefValue, RepoName, Store, Transaction};

    #[test]
    fn a_snapshot_holds_the_journal_as_of_its_capture_and_adopt_finds_no_orphans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let name = RepoName::new("team/app").expect("name");
        let repo = store
            .create_repo(&name, "main", None, None)
            .expect("create");
        let journal_path = repo.dir().join("refs.journal");
        let before = std::fs::read(&journal_path).expect("read");
        let mut snap = repo.snapshot().expect("snapshot");
        assert_eq!(snap.journal_len, before.len() as u64);
        repo.commit(Transaction {
            ns: Namespace::Default,
            updates: vec![RefUpdate {
                name: "HEAD".into(),
                expect: Expect::Any,
                new: Some(RefValue::Symbolic("refs/heads/dev".into())),
            }],
            who: "test".into(),
            atomic: true,
            quarantine: None,
        })
        .expect("commit");
        assert!(std::fs::metadata(&journal_path).expect("stat").len() > snap.journal_len);
        let rid = repo.record().id;
        let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                format!("repos/{rid}/record.json"),
                format!("repos/{rid}/refs.journal")
            ]
        );
        let journal = &mut snap.files[1];
        let mut got = Vec::new();
        (&mut journal.file)
            .take(journal.len)
            .read_to_end(&mut got)
            .expect("read");
        assert_eq!(
            got, before,
            "the snapshot's journal stops where it was captured"
        );
        assert!(repo.adopt_packs().expect("adopt").is_empty());
    }
}
