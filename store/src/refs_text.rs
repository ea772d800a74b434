//! Refs as plain text, a small human-readable safety net: `export` lists every ref of every
//! repository from the ref journals; `import` sets refs from such a listing.
//!
//! One ref per line, tab-separated: `<repo>\t<namespace>\t<ref>\t<value>`, where the value is
//! an object id (40 hex digits) or `ref: <target>` for a symbolic ref. Lines starting with `#`
//! and blank lines are comments.
//!
//! [`export`] reads the journals directly (read-only; a journal is append-only, so this is safe
//! while a server runs, and needs no index); [`export_store`] lists an open store (the server's
//! `GET /api/v1/admin/refs`). Import goes through [`crate::Repo::commit`] on an open
//! store (the server stopped): it checks every line first — repository known, names valid, every
//! object present in the repository's packs — and changes nothing if any line fails; then it
//! sets the listed refs, one atomic transaction per repository and namespace. Refs not listed
//! are left as they are. [`adopt_packs`] first catalogs packs that a lost or cut-back journal
//! no longer names, so that refs can point into them again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::journal::Journal;
use crate::record::RepoRecord;
use crate::refs::{Expect, Namespace, RefUpdate, RefValue, valid_ref_name};
use crate::repo::Transaction;
use crate::state::RepoState;

/// Longest import file accepted.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

/// The refs of the data directory `root` (of repository `only`, if given), one line each,
/// sorted by repository, namespace and ref.
pub fn export(root: &Path, only: Option<&str>) -> Result<String> {
    // A newer format's journals may hold entries this binary cannot read.
    crate::format::check_readable(root)?;
    let repos_dir = root.join("repos");
    let mut repos: BTreeMap<String, RepoState> = BTreeMap::new();
    let entries = std::fs::read_dir(&repos_dir).map_err(StoreError::io("read", &repos_dir))?;
    for e in entries {
        let dir = e.map_err(StoreError::io("read", &repos_dir))?.path();
        let record_path = dir.join("record.json");
        let Ok(bytes) = std::fs::read(&record_path) else {
            continue;
        };
        let record: RepoRecord = serde_json::from_slice(&bytes)
            .map_err(|err| StoreError::Invalid(format!("{}: {err}", record_path.display())))?;
        if only.is_some_and(|n| n != record.name) {
            continue;
        }
        let journal = dir.join("refs.journal");
        let mut state = RepoState::default();
        if journal.is_file() {
            for (tx, end) in Journal::read_only(&journal)?.records {
                state.apply(&tx, end);
            }
        }
        repos.insert(record.name, state);
    }
    if let Some(name) = only
        && !repos.contains_key(name)
    {
        return Err(StoreError::RepoNotFound(name.to_owned()));
    }
    Ok(render(
        repos
            .iter()
            .map(|(name, state)| (name.as_str(), state.refs.clone())),
    ))
}

/// The listing of `repos` (name and ref tables), in the order given.
pub fn render<'a>(
    repos: impl Iterator<Item = (&'a str, BTreeMap<Namespace, crate::refs::RefTable>)>,
) -> String {
    let mut out = String::from("# codestorage refs: <repo>\t<namespace>\t<ref>\t<value>\n");
    for (name, refs) in repos {
        for (ns, table) in &refs {
            for (r, v) in table {
                let _ = writeln!(out, "{name}\t{}\t{r}\t{}", ns.as_str(), v.encode());
            }
        }
    }
    out
}

/// The listing of the open `store` (of repository `only`, if given), from its current views.
pub fn export_store(store: &Store, only: Option<&str>) -> Result<String> {
    let mut repos: Vec<(String, BTreeMap<Namespace, crate::refs::RefTable>)> = Vec::new();
    for repo in store.repos() {
        let name = repo.record().name;
        if only.is_some_and(|n| n != name) {
            continue;
        }
        let view = repo.view();
        let refs = view
            .refs
            .iter()
            .map(|(ns, t)| (*ns, t.as_ref().clone()))
            .collect();
        repos.push((name, refs));
    }
    if let Some(name) = only
        && repos.is_empty()
    {
        return Err(StoreError::RepoNotFound(name.to_owned()));
    }
    repos.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(render(repos.iter().map(|(n, r)| (n.as_str(), r.clone()))))
}

/// Catalog, in every repository of `store`, the packs the journals do not name (see
/// [`crate::Repo::adopt_packs`]): what makes their objects usable by [`import`] after a journal
/// was lost or cut back. Returns `(repository, pack)` pairs.
pub fn adopt_packs(store: &Store) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for repo in store.repos() {
        let name = repo.record().name;
        for pack in repo.adopt_packs()? {
            out.push((name.clone(), pack));
        }
    }
    Ok(out)
}

/// What [`import`] did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Refs set (changed or already equal).
    pub refs: usize,
    /// Transactions committed.
    pub transactions: usize,
}

/// Set the refs listed in `text` in `store`. Checks every line before changing anything.
pub fn import(store: &Store, text: &str) -> Result<ImportReport> {
    if text.len() > MAX_IMPORT_BYTES {
        return Err(StoreError::Invalid(format!(
            "refs listing larger than {MAX_IMPORT_BYTES} bytes"
        )));
    }
    let mut plan: BTreeMap<(String, Namespace), Vec<RefUpdate>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: String| StoreError::Invalid(format!("line {}: {why}", i + 1));
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [repo_name, ns, name, value] = fields[..] else {
            return Err(bad(
                "expected <repo>\\t<namespace>\\t<ref>\\t<value>".to_owned()
            ));
        };
        let repo = store
            .repo(repo_name)
            .ok_or_else(|| bad(format!("no repository {repo_name:?}")))?;
        let ns = Namespace::parse(ns).ok_or_else(|| bad(format!("unknown namespace {ns:?}")))?;
        if !valid_ref_name(name) {
            return Err(bad(format!("invalid ref name {name:?}")));
        }
        let value =
            RefValue::decode(value).ok_or_else(|| bad(format!("invalid ref value {value:?}")))?;
        if let RefValue::Direct(id) = &value
            && !repo.view().packs.contains(id)
        {
            return Err(bad(format!(
                "object {id} (for {name}) is not in {repo_name}; nothing was imported"
            )));
        }
        let updates = plan.entry((repo_name.to_owned(), ns)).or_default();
        if updates.iter().any(|u| u.name == name) {
            return Err(bad(format!("{name} listed twice for {repo_name}")));
        }
        updates.push(RefUpdate {
            name: name.to_owned(),
            expect: Expect::Any,
            new: Some(value),
        });
    }
    let mut report = ImportReport::default();
    for ((repo_name, ns), updates) in plan {
        let repo = store
            .repo(&repo_name)
            .ok_or_else(|| StoreError::RepoNotFound(repo_name.clone()))?;
        let count = updates.len();
        let outcome = repo.commit(Transaction {
            ns,
            updates,
            who: "import-refs".into(),
            atomic: true,
            quarantine: None,
        })?;
        if let Some(Err(e)) = outcome.results.iter().find(|r| r.is_err()) {
            return Err(StoreError::Invalid(format!(
                "{repo_name} ({}): {e}",
                ns.as_str()
            )));
        }
        report.refs += count;
        report.transactions += usize::from(outcome.seq.is_some());
    }
    Ok(report)
}
