//! `codestorage fsck`: verify a data directory with the server stopped.
//!
//! Checks, per repository: the record parses; the ref journal reads (a torn last line is a note,
//! damage elsewhere a problem); every pack the journal catalogs exists, its trailer and index
//! checksums hold and index and pack agree; every pack file is cataloged (crash leftovers marked
//! by `.keep`, quarantines and temp files are notes, not problems); every ref of every namespace
//! reaches only objects that exist; the index agrees with the journal; the commit graph reads.
//! Without `--rebuild` nothing is changed. With it, the index and commit graphs are rebuilt
//! from the files first (leftovers are swept as at server start).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix_hash::ObjectId;
use gix_hashtable::HashSet;
use gix_object::Kind;

use crate::error::{Result, StoreError};
use crate::journal::Journal;
use crate::objects::{EntryKind, TreeEntries, parse_commit, parse_tag};
use crate::packs::{ObjectReader, Pack, PackSet};
use crate::record::RepoRecord;
use crate::state::RepoState;

/// What fsck found.
#[derive(Debug, Default)]
pub struct Report {
    /// Repositories checked.
    pub repos: usize,
    /// Packs checked.
    pub packs: usize,
    /// Refs checked.
    pub refs: usize,
    /// Things worth knowing that are not corruption (crash leftovers, an index behind).
    pub notes: Vec<String>,
    /// Corruption: each one makes fsck fail.
    pub problems: Vec<String>,
}

/// Check (and with `rebuild`, first rebuild) the data directory `root`.
pub fn run(root: &Path, rebuild: bool) -> Result<Report> {
    if !root.is_dir() {
        return Err(StoreError::Invalid(format!(
            "{} is not a data directory",
            root.display()
        )));
    }
    let format = crate::format::check_readable(root)?;
    if rebuild {
        rebuild_index(root)?;
    }
    let mut report = Report::default();
    if let Some(found) = format.filter(|f| *f < crate::FORMAT && !rebuild) {
        report.notes.push(format!(
            "data directory format {found}: the server migrates it to {} at start",
            crate::FORMAT
        ));
    }
    let repos_dir = root.join("repos");
    let entries = std::fs::read_dir(&repos_dir).map_err(StoreError::io("read", &repos_dir))?;
    let mut states = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if let Some(state) = check_repo(&dir, &mut report) {
            states.push(state);
        }
    }
    check_index(root, &states, &mut report);
    Ok(report)
}

fn rebuild_index(root: &Path) -> Result<()> {
    let index = root.join("index");
    if index.exists() {
        std::fs::remove_dir_all(&index).map_err(StoreError::io("remove", &index))?;
    }
    let repos_dir = root.join("repos");
    if let Ok(entries) = std::fs::read_dir(&repos_dir) {
        for e in entries.flatten() {
            let objects = e.path().join("objects");
            crate::graph::remove_all(&objects)
                .map_err(|err| StoreError::Invalid(format!("removing commit graph: {err}")))?;
        }
    }
    // Opening the store replays every journal into a fresh index, sweeps crash leftovers and
    // writes commit graphs anew.
    let store = crate::Store::open(root)?;
    for repo in store.repos() {
        repo.rebuild_graph()?;
    }
    store.index().flush()?;
    Ok(())
}

fn check_repo(dir: &Path, report: &mut Report) -> Option<(String, RepoState)> {
    let shown = dir.display().to_string();
    let record: RepoRecord = match std::fs::read(dir.join("record.json")) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                report
                    .problems
                    .push(format!("{shown}/record.json does not parse: {e}"));
                return None;
            }
        },
        Err(_) => {
            report.notes.push(format!(
                "{shown}: no record.json (an interrupted creation; removed at start)"
            ));
            return None;
        }
    };
    report.repos += 1;
    let name = record.name.clone();
    let journal_path = dir.join("refs.journal");
    let mut state = RepoState::default();
    if journal_path.exists() {
        match Journal::read_only(&journal_path) {
            Ok(out) => {
                if out.torn_bytes > 0 {
                    report.notes.push(format!(
                        "{name}: ref journal ends in a torn write of {} bytes (cut off at start)",
                        out.torn_bytes
                    ));
                }
                for (tx, end) in &out.records {
                    state.apply(tx, *end);
                }
            }
            Err(e) => {
                report.problems.push(format!("{name}: {e}"));
                return None;
            }
        }
    }
    let pack_dir = dir.join("objects").join("pack");
    let cataloged: BTreeSet<String> = state.catalog.packs.iter().map(|p| p.name.clone()).collect();
    let mut packs = Vec::new();
    for entry in &state.catalog.packs {
        report.packs += 1;
        match verify_pack(&pack_dir, &entry.name) {
            Ok(pack) => packs.push((std::sync::Arc::new(pack), entry.namespaces.clone())),
            Err(e) => report
                .problems
                .push(format!("{name}: pack {}: {e}", entry.name)),
        }
    }
    check_leftovers(dir, &pack_dir, &cataloged, &name, report);
    let set = std::sync::Arc::new(PackSet::new(packs));
    for (ns, table) in &state.refs {
        let mut seen = HashSet::default();
        for (refname, value) in table {
            report.refs += 1;
            let Some(id) = value.id() else { continue };
            if let Err(missing) = check_closure(&set, id, &mut seen) {
                report.problems.push(format!(
                    "{name}: ref {refname} ({ns}) at {id} is broken: {missing}"
                ));
            }
        }
    }
    let graph = crate::graph::CommitGraph::open(&dir.join("objects"))
        .and_then(|g| g.map(|g| g.verify()).transpose());
    if let Err(e) = graph {
        report.problems.push(format!(
            "{name}: commit graph is damaged ({e}); run fsck --rebuild"
        ));
    }
    Some((record.id, state))
}

pub(crate) fn verify_pack(pack_dir: &Path, name: &str) -> std::result::Result<Pack, String> {
    for ext in ["pack", "idx"] {
        let p = pack_dir.join(format!("{name}.{ext}"));
        if !p.is_file() {
            return Err(format!("{} is missing", p.display()));
        }
    }
    let pack = Pack::open(pack_dir, name).map_err(|e| e.to_string())?;
    let interrupt = AtomicBool::new(false);
    let data_sum = pack
        .data()
        .verify_checksum(&mut gix_utils::progress::Discard, &interrupt)
        .map_err(|e| format!("pack checksum: {e}"))?;
    pack.index()
        .verify_checksum(&mut gix_utils::progress::Discard, &interrupt)
        .map_err(|e| format!("index checksum: {e}"))?;
    if pack.index().pack_checksum() != data_sum {
        return Err("index belongs to a different pack (checksum mismatch)".into());
    }
    if pack.index().num_objects() != pack.data().num_objects() {
        return Err(format!(
            "index lists {} objects, pack holds {}",
            pack.index().num_objects(),
            pack.data().num_objects()
        ));
    }
    let stem = format!("pack-{}", data_sum.to_hex());
    if stem != name {
        return Err(format!(
            "pack file name does not match its checksum {data_sum}"
        ));
    }
    Ok(pack)
}

fn check_leftovers(
    dir: &Path,
    pack_dir: &Path,
    cataloged: &BTreeSet<String>,
    name: &str,
    report: &mut Report,
) {
    if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
        for e in entries.flatten() {
            report.notes.push(format!(
                "{name}: leftover quarantine {} (removed at start)",
                e.path().display()
            ));
        }
    }
    let Ok(entries) = std::fs::read_dir(pack_dir) else {
        report
            .problems
            .push(format!("{name}: {} is missing", pack_dir.display()));
        return;
    };
    let files: BTreeSet<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    for file in &files {
        let (stem, ext) = file.rsplit_once('.').unwrap_or((file.as_str(), ""));
        match ext {
            "pack" | "idx" if !cataloged.contains(stem) => {
                if files.contains(&format!("{stem}.keep")) {
                    report.notes.push(format!(
                        "{name}: {file} is left from an interrupted ingest (removed at start)"
                    ));
                } else if files.contains(&format!("{stem}.replaced")) {
                    report.notes.push(format!(
                        "{name}: {file} was replaced by a compaction (removed at start)"
                    ));
                } else {
                    report
                        .problems
                        .push(format!("{name}: {file} is not in the pack catalog"));
                }
            }
            "keep" | "replaced" => report
                .notes
                .push(format!("{name}: stale {file} (removed at start)")),
            _ if file.starts_with("tmp_") || file.starts_with(".tmp-") => report
                .notes
                .push(format!("{name}: temporary file {file} (removed at start)")),
            _ => {}
        }
    }
}

/// Walk everything reachable from `root`; `Err` names the first missing or malformed object.
fn check_closure(
    set: &std::sync::Arc<PackSet>,
    root: ObjectId,
    seen: &mut HashSet<ObjectId>,
) -> std::result::Result<(), String> {
    let mut reader = ObjectReader::new(set.clone());
    let mut buf = Vec::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let (kind, data) = match reader.find(&id, &mut buf) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(format!("object {id} is missing")),
            Err(e) => return Err(format!("object {id} cannot be read: {e}")),
        };
        match kind {
            Kind::Commit => {
                let c = parse_commit(data).ok_or_else(|| format!("commit {id} does not parse"))?;
                stack.push(c.tree);
                stack.extend(c.parents);
            }
            Kind::Tree => {
                let mut entries = TreeEntries::new(data);
                for (k, child, _) in entries.by_ref() {
                    match k {
                        EntryKind::Tree => stack.push(child.to_owned()),
                        EntryKind::Blob => {
                            if !set.contains(child) {
                                return Err(format!("blob {child} (in tree {id}) is missing"));
                            }
                        }
                        EntryKind::Gitlink => {}
                    }
                }
                if entries.malformed() {
                    return Err(format!("tree {id} is malformed"));
                }
            }
            Kind::Tag => {
                let (target, _) =
                    parse_tag(data).ok_or_else(|| format!("tag {id} does not parse"))?;
                stack.push(target);
            }
            Kind::Blob => {}
        }
    }
    Ok(())
}

fn check_index(root: &Path, states: &[(String, RepoState)], report: &mut Report) {
    let path = root.join("index");
    if !path.exists() {
        report
            .notes
            .push("the index does not exist yet (it is built at start)".into());
        return;
    }
    let opened = crate::index::Index::open_waiting(&path, std::time::Duration::from_secs(3));
    let index = match opened {
        Ok(i) => i,
        Err(e) => {
            report.problems.push(format!(
                "the index cannot be opened ({e}); is the server running? else run fsck --rebuild"
            ));
            return;
        }
    };
    for (rid, state) in states {
        match index.load_state(rid) {
            Ok(Some(indexed)) => {
                if indexed.catalog.journal_pos < state.catalog.journal_pos {
                    report.notes.push(format!(
                        "index of {rid} is behind its journal (caught up at start)"
                    ));
                } else if indexed.catalog != state.catalog
                    || strip_empty(&indexed) != strip_empty(state)
                {
                    report.problems.push(format!(
                        "index of {rid} disagrees with its journal; run fsck --rebuild"
                    ));
                }
            }
            Ok(None) => report
                .notes
                .push(format!("index has no entry for {rid} yet (built at start)")),
            Err(e) => report
                .problems
                .push(format!("index entry of {rid}: {e}; run fsck --rebuild")),
        }
    }
}

fn strip_empty(state: &RepoState) -> Vec<(crate::refs::Namespace, &crate::refs::RefTable)> {
    state
        .refs
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(n, t)| (*n, t))
        .collect()
}
