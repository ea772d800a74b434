//! A consistent, non-blocking snapshot of one repository's durable files, for backups.
//!
//! Under the writer lock (briefly: no I/O beyond opening files) the snapshot captures the
//! journal's length and the cataloged packs, and opens every file it will copy. After the lock is
//! released, writers go on; the snapshot reads the journal only up to the captured length (it is
//! append-only), and reads packs through the handles it holds (packs are immutable, and an open
//! handle stays readable even if a compaction unlinks the file). So the copy is exactly the
//! repository as of one journal position: every pack the copied journal names is in it.
//! Commit graphs are not copied (rebuilt at open), nor is the index.

use std::fs::File;
use std::path::Path;

use super::{Repo, lock};
use crate::error::{Result, StoreError};

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
        Ok(RepoSnapshot {
            id: record.id,
            name: record.name,
            journal_len,
            packs,
            files,
        })
    }
}
