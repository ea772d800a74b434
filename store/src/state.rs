//! The derived state of a repository: its ref tables and its pack catalog, and how a journal
//! transaction changes them. Pure data; both the index (sled) and the in-memory view are
//! rebuilt by folding journal transactions through [`RepoState::apply`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::journal::TxRecord;
use crate::refs::{Namespace, RefTable};

/// A pack as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// File stem, `pack-<hex>`.
    pub name: String,
    /// The namespaces whose refs this pack was ingested for.
    pub namespaces: Vec<Namespace>,
}

/// Catalog and journal position of a repository (refs are kept separately, per ref).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Catalog {
    /// Byte offset in the journal up to which this state is applied.
    pub journal_pos: u64,
    /// Sequence number of the last applied transaction.
    pub journal_seq: u64,
    /// Packs in the order they were added.
    pub packs: Vec<PackEntry>,
    /// Per namespace: are the objects of its packs exactly the closure of its refs?
    pub closed: BTreeMap<Namespace, bool>,
    /// When each ephemeral ref last changed (unix seconds): what expiry goes by.
    #[serde(default)]
    pub ephemeral_updated: BTreeMap<String, u64>,
}

/// Catalog plus ref tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepoState {
    /// The pack catalog and journal position.
    pub catalog: Catalog,
    /// The refs of each namespace.
    pub refs: BTreeMap<Namespace, RefTable>,
}

impl Catalog {
    /// Whether `ns` may use the full-clone fast path.
    pub fn is_closed(&self, ns: Namespace) -> bool {
        // A namespace nobody wrote to is empty, and an empty set is its own closure.
        self.closed.get(&ns).copied().unwrap_or(true)
    }

    /// Apply the catalog part of `tx`, which ends at journal offset `end`.
    pub fn apply(&mut self, tx: &TxRecord, end: u64) {
        if let Some(c) = &tx.compact {
            // The new packs take the place of the first pack they replace.
            let at = self
                .packs
                .iter()
                .position(|p| c.remove.contains(&p.name))
                .unwrap_or(self.packs.len());
            let before = self.packs[..at]
                .iter()
                .filter(|p| !c.remove.contains(&p.name))
                .count();
            self.packs.retain(|p| !c.remove.contains(&p.name));
            let fresh = c
                .add
                .iter()
                .filter(|(name, _)| !self.packs.iter().any(|p| &p.name == name))
                .map(|(name, namespaces)| PackEntry {
                    name: name.clone(),
                    namespaces: namespaces.clone(),
                })
                .collect::<Vec<_>>();
            self.packs.splice(before..before, fresh);
            for (ns, closed) in &c.closed {
                self.closed.insert(*ns, *closed);
            }
            self.journal_pos = end;
            self.journal_seq = tx.seq;
            return;
        }
        if let Some(pack) = &tx.pack {
            match self.packs.iter_mut().find(|p| &p.name == pack) {
                Some(entry) => {
                    if !entry.namespaces.contains(&tx.ns) {
                        entry.namespaces.push(tx.ns);
                    }
                }
                None => self.packs.push(PackEntry {
                    name: pack.clone(),
                    namespaces: vec![tx.ns],
                }),
            }
        }
        self.closed.insert(tx.ns, tx.closed);
        if tx.ns == Namespace::Ephemeral {
            for (name, _, new) in &tx.updates {
                match new {
                    Some(_) => {
                        self.ephemeral_updated.insert(name.clone(), tx.time);
                    }
                    None => {
                        self.ephemeral_updated.remove(name);
                    }
                }
            }
        }
        self.journal_pos = end;
        self.journal_seq = tx.seq;
    }
}

impl RepoState {
    /// Apply `tx`, which ends at journal offset `end`.
    pub fn apply(&mut self, tx: &TxRecord, end: u64) {
        self.catalog.apply(tx, end);
        let table = self.refs.entry(tx.ns).or_default();
        for (name, _old, new) in &tx.updates {
            match new {
                Some(v) => {
                    table.insert(name.clone(), v.clone());
                }
                None => {
                    table.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::CompactRecord;

    fn tx(seq: u64, pack: Option<&str>, compact: Option<CompactRecord>) -> TxRecord {
        TxRecord {
            seq,
            time: seq,
            who: "test".into(),
            ns: Namespace::Default,
            pack: pack.map(str::to_owned),
            closed: true,
            updates: Vec::new(),
            compact,
        }
    }

    #[test]
    fn a_compaction_replaces_its_packs_in_place_and_sets_every_closed_flag() {
        let mut c = Catalog::default();
        for (i, p) in ["a", "b", "c", "d"].into_iter().enumerate() {
            c.apply(&tx(i as u64 + 1, Some(p), None), 10 * (i as u64 + 1));
        }
        let compact = CompactRecord {
            add: vec![
                ("x".into(), vec![Namespace::Default]),
                ("y".into(), vec![Namespace::Ephemeral]),
            ],
            remove: vec!["b".into(), "d".into()],
            closed: vec![(Namespace::Default, true), (Namespace::Ephemeral, false)],
        };
        c.apply(&tx(5, None, Some(compact.clone())), 50);
        let names: Vec<&str> = c.packs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "x", "y", "c"]);
        assert_eq!(c.packs[2].namespaces, [Namespace::Ephemeral]);
        assert!(c.is_closed(Namespace::Default));
        assert!(!c.is_closed(Namespace::Ephemeral));
        assert_eq!((c.journal_pos, c.journal_seq), (50, 5));
        // Replaying the same line (a journal read twice) changes nothing more.
        let before = c.clone();
        c.apply(&tx(5, None, Some(compact)), 50);
        assert_eq!(c, before);
    }
}
