//! Forks: a new repository that shares its source's objects without copying them.
//!
//! The source's packs are hard-linked into the fork's `objects/pack` (the data directory is one
//! file system, so a link is a new name for the same bytes; a copy is the fallback where a link
//! is refused), then journaled as the fork's own packs together with the fork's refs. From then
//! on the two repositories are independent: each may gain packs and move refs, deleting one
//! leaves the other's files intact.
//!
//! Crash safety follows ingest's: every linked pack has a `.keep` until the journal names it, and
//! a start sweeps kept packs the journal does not know.

use std::path::Path;
use std::sync::Arc;

use super::{GraphJob, Repo, View, lock, now};
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::journal::TxRecord;
use crate::packs::{Pack, PackSet};
use crate::refs::{Namespace, RefValue};

/// Link `from` to `to`, copying (and syncing) where a link is refused.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        return Ok(());
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Another filesystem, or one without hard links: correct, but no longer free.
            tracing::warn!(error = %e, from = %from.display(), "cannot hard-link a pack; copying it");
            std::fs::copy(from, to).map_err(StoreError::io("copy", from))?;
            fsutil::fsync_file(to).map_err(StoreError::io("fsync", to))
        }
    }
}

impl Repo {
    /// Take the packs of `source` (a view of the repository in `source_dir`) as this
    /// repository's own and set the default namespace's refs to `refs` (`HEAD` included), in
    /// one journaled step. Meant for a repository just created and not yet visible to anyone.
    pub(crate) fn adopt(
        &self,
        source: &View,
        source_dir: &Path,
        refs: Vec<(String, RefValue)>,
        who: &str,
    ) -> Result<()> {
        let mut w = lock(&self.writer);
        let pack_dir = self.dir.join("objects").join("pack");
        let source_packs = source_dir.join("objects").join("pack");
        let names: Vec<String> = source
            .packs
            .packs()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        for name in &names {
            let keep = pack_dir.join(format!("{name}.keep"));
            std::fs::write(&keep, b"fork\n").map_err(StoreError::io("write", &keep))?;
        }
        fsutil::fsync_dir(&pack_dir).map_err(StoreError::io("fsync", &pack_dir))?;
        for name in &names {
            for ext in ["idx", "pack"] {
                let file = format!("{name}.{ext}");
                link_or_copy(&source_packs.join(&file), &pack_dir.join(&file))?;
            }
        }
        fsutil::fsync_dir(&pack_dir).map_err(StoreError::io("fsync", &pack_dir))?;

        let table = w
            .state
            .refs
            .get(&Namespace::Default)
            .cloned()
            .unwrap_or_default();
        let mut updates: Vec<(String, Option<RefValue>, Option<RefValue>)> = refs
            .into_iter()
            .filter(|(name, value)| table.get(name) != Some(value))
            .map(|(name, value)| {
                let old = table.get(&name).cloned();
                (name, old, Some(value))
            })
            .collect();
        // One journal line per pack; the refs ride on the last one, so they appear only once
        // every object they need is cataloged.
        let steps: Vec<Option<&String>> = if names.is_empty() {
            vec![None]
        } else {
            names.iter().map(Some).collect()
        };
        let last = steps.len() - 1;
        for (i, pack) in steps.into_iter().enumerate() {
            let record = TxRecord {
                seq: w.state.catalog.journal_seq + 1,
                time: now(),
                who: who.to_owned(),
                ns: Namespace::Default,
                pack: pack.cloned(),
                closed: false,
                updates: if i == last {
                    std::mem::take(&mut updates)
                } else {
                    Vec::new()
                },
                compact: None,
            };
            let end = w.journal.append(&record)?;
            w.state.apply(&record, end);
            if let Err(e) = self
                .index
                .apply(&self.record().id, &record, &w.state.catalog)
            {
                tracing::warn!(error = %e, "index update failed; it will be rebuilt from the journal");
            }
        }
        let mut packs = Vec::with_capacity(names.len());
        for name in &names {
            packs.push((
                Arc::new(Pack::open(&pack_dir, name)?),
                vec![Namespace::Default],
            ));
            let _ = std::fs::remove_file(pack_dir.join(format!("{name}.keep")));
        }
        let packs = Arc::new(PackSet::new(packs));
        let view = self.view();
        let mut tables = view.refs.clone();
        tables.insert(
            Namespace::Default,
            Arc::new(
                w.state
                    .refs
                    .get(&Namespace::Default)
                    .cloned()
                    .unwrap_or_default(),
            ),
        );
        self.publish(View::new(
            packs.clone(),
            tables,
            w.state.catalog.clone(),
            None,
        ));
        if !names.is_empty() {
            self.queue_graph(GraphJob::Extend {
                packs,
                commits: None,
            });
        }
        Ok(())
    }
}
