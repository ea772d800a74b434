//! The sled index: fast lookups over the durable files, and the only module that names sled.
//!
//! Trees: `records` (repo id → record JSON), `names` (name → repo id), `refs`
//! (`<id>\0<ns>\0<ref>` → encoded value), `catalogs` (repo id → catalog JSON: packs, closed flags,
//! journal position) and `soft` (sync state and other data the next sync rebuilds). Everything here
//! can be rebuilt from `repos/*/record.json` and `repos/*/refs.journal`; a lost or corrupt index
//! loses nothing. No object data ever goes into sled. sled 0.34 is unmaintained: this module is
//! the seam at which it would be swapped for another ordered key-value store.

use std::path::Path;

use sled::Transactional;

use crate::journal::TxRecord;
use crate::record::RepoRecord;
use crate::refs::{Namespace, RefValue};
use crate::state::{Catalog, RepoState};

/// An error from the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// sled failed.
    #[error("index: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("index entry {key} does not decode: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The open index.
#[derive(Debug, Clone)]
pub struct Index {
    db: sled::Db,
    records: sled::Tree,
    names: sled::Tree,
    refs: sled::Tree,
    catalogs: sled::Tree,
    soft: sled::Tree,
}

fn ref_prefix(rid: &str, ns: Namespace) -> Vec<u8> {
    let mut k = Vec::with_capacity(rid.len() + 16);
    k.extend_from_slice(rid.as_bytes());
    k.push(0);
    k.extend_from_slice(ns.as_str().as_bytes());
    k.push(0);
    k
}

fn ref_key(rid: &str, ns: Namespace, name: &str) -> Vec<u8> {
    let mut k = ref_prefix(rid, ns);
    k.extend_from_slice(name.as_bytes());
    k
}

fn decode_err(key: &str, reason: impl ToString) -> IndexError {
    IndexError::Decode {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

impl Index {
    /// Open or create the index at `path`, with a small cache (no object data lives here).
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(16 << 20)
            .flush_every_ms(Some(500))
            .open()?;
        Ok(Index {
            records: db.open_tree("records")?,
            names: db.open_tree("names")?,
            refs: db.open_tree("refs")?,
            catalogs: db.open_tree("catalogs")?,
            soft: db.open_tree("soft")?,
            db,
        })
    }

    /// Like [`Index::open`], but while another handle still holds the lock (sled releases it
    /// from a background thread shortly after a close), retry for up to `max_wait`.
    pub fn open_waiting(path: &Path, max_wait: std::time::Duration) -> Result<Index, IndexError> {
        let start = std::time::Instant::now();
        loop {
            match Index::open(path) {
                Err(IndexError::Sled(sled::Error::Io(e)))
                    if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < max_wait =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Insert or replace a repository record and its name mapping.
    pub fn put_record(&self, rec: &RepoRecord) -> Result<(), IndexError> {
        let json = serde_json::to_vec(rec).map_err(|e| decode_err(&rec.id, e))?;
        (&self.records, &self.names)
            .transaction(|(records, names)| {
                records.insert(rec.id.as_bytes(), json.as_slice())?;
                names.insert(rec.name.as_bytes(), rec.id.as_bytes())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => IndexError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    IndexError::Sled(sled::Error::Unsupported("aborted".into()))
                }
            })
    }

    /// Forget a deleted repository: its record, name, refs and catalog.
    pub fn remove_repo(&self, rec: &RepoRecord) -> Result<(), IndexError> {
        for ns in Namespace::ALL {
            for item in self.refs.scan_prefix(ref_prefix(&rec.id, ns)) {
                let (k, _) = item?;
                self.refs.remove(k)?;
            }
        }
        self.catalogs.remove(rec.id.as_bytes())?;
        self.records.remove(rec.id.as_bytes())?;
        if self.names.get(rec.name.as_bytes())?.as_deref() == Some(rec.id.as_bytes()) {
            self.names.remove(rec.name.as_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// All records.
    pub fn records(&self) -> Result<Vec<RepoRecord>, IndexError> {
        let mut out = Vec::new();
        for item in self.records.iter() {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            out.push(serde_json::from_slice(&v).map_err(|e| decode_err(&key, e))?);
        }
        Ok(out)
    }

    /// The catalog and refs of repository `rid`, if the index has them.
    pub fn load_state(&self, rid: &str) -> Result<Option<RepoState>, IndexError> {
        let Some(cat) = self.catalogs.get(rid.as_bytes())? else {
            return Ok(None);
        };
        let catalog: Catalog = serde_json::from_slice(&cat).map_err(|e| decode_err(rid, e))?;
        let mut state = RepoState {
            catalog,
            refs: Default::default(),
        };
        for ns in Namespace::ALL {
            let prefix = ref_prefix(rid, ns);
            let table = state.refs.entry(ns).or_default();
            for item in self.refs.scan_prefix(&prefix) {
                let (k, v) = item?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let value = std::str::from_utf8(&v)
                    .ok()
                    .and_then(RefValue::decode)
                    .ok_or_else(|| decode_err(&name, "bad ref value"))?;
                table.insert(name, value);
            }
        }
        Ok(Some(state))
    }

    /// Record transaction `tx` of `rid`, leaving the catalog at `catalog`, atomically.
    pub fn apply(&self, rid: &str, tx: &TxRecord, catalog: &Catalog) -> Result<(), IndexError> {
        let cat = serde_json::to_vec(catalog).map_err(|e| decode_err(rid, e))?;
        let updates: Vec<(Vec<u8>, Option<String>)> = tx
            .updates
            .iter()
            .map(|(name, _, new)| {
                (
                    ref_key(rid, tx.ns, name),
                    new.as_ref().map(RefValue::encode),
                )
            })
            .collect();
        (&self.refs, &self.catalogs)
            .transaction(|(refs, catalogs)| {
                for (key, value) in &updates {
                    match value {
                        Some(v) => refs.insert(key.as_slice(), v.as_bytes())?,
                        None => refs.remove(key.as_slice())?,
                    };
                }
                catalogs.insert(rid.as_bytes(), cat.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => IndexError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    IndexError::Sled(sled::Error::Unsupported("aborted".into()))
                }
            })
    }

    /// Replace everything the index knows about `rid` with `state` (rebuild from the journal).
    pub fn replace_state(&self, rid: &str, state: &RepoState) -> Result<(), IndexError> {
        for ns in Namespace::ALL {
            for item in self.refs.scan_prefix(ref_prefix(rid, ns)) {
                let (k, _) = item?;
                self.refs.remove(k)?;
            }
        }
        for (ns, table) in &state.refs {
            for (name, value) in table {
                self.refs
                    .insert(ref_key(rid, *ns, name), value.encode().as_bytes())?;
            }
        }
        let cat = serde_json::to_vec(&state.catalog).map_err(|e| decode_err(rid, e))?;
        self.catalogs.insert(rid.as_bytes(), cat)?;
        Ok(())
    }

    /// Read a soft (rebuildable) value.
    pub fn soft_get(&self, key: &str) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self.soft.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Write a soft (rebuildable) value; not flushed eagerly.
    pub fn soft_put(&self, key: &str, value: &[u8]) -> Result<(), IndexError> {
        self.soft.insert(key.as_bytes(), value)?;
        Ok(())
    }

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<(), IndexError> {
        self.db.flush()?;
        Ok(())
    }
}
