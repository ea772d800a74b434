//! Ref updates of public-mode GitHub mirrors, whose pushes stay here: a sync brings the
//! upstream's changes in without ever overwriting what was pushed locally.
//!
//! How "moved here" is told from "moved upstream": for every followed ref, the soft state keeps
//! its *base* — the upstream value the local ref was last brought to or found in line with.
//! With `L` the local value, `R` the upstream's and `S` the base, one sync does per ref:
//!
//! | case                                   | action                        | new base |
//! |----------------------------------------|-------------------------------|----------|
//! | `L == R`                               | nothing                       | `R`      |
//! | upstream only (`L` absent, no `S`)     | create                        | `R`      |
//! | `L == S` (not moved here)              | follow upstream (even forced) | `R`      |
//! | `R` descends from `L`                  | fast-forward                  | `R`      |
//! | `R == S` (upstream did not move)       | keep ours                     | `R`      |
//! | `L` descends from `R` (we are ahead)   | keep ours                     | `R`      |
//! | local only (`R` absent, no `S`)        | keep (created here)           | none     |
//! | deleted upstream, `L == S`             | delete                        | none     |
//! | deleted here, `R == S`                 | keep deleted                  | `S`      |
//! | anything else                          | **diverged**: keep ours       | `S`      |
//!
//! Diverged refs stay diverged (their base does not move) until a push resolves them (a merge
//! of the upstream's value, or a reset to it). The run applies every other update, records the
//! diverged refs in the soft state (shown as `sync.diverged_refs`) and fails with a message
//! naming them, so `sync.last_error` and a failed-sync webhook report them.
//!
//! The bases are soft state: if they are lost, refs that differ and are not fast-forwards
//! either way are reported as diverged (never overwritten), and a branch deleted here that
//! still exists upstream is created again.

use std::collections::{BTreeMap, BTreeSet};

use codestorage_store::{
    Expect, Namespace, ObjectId, ObjectReader, Quarantine, RefUpdate, RefValue, Repo, Transaction,
    View, repo::is_ancestor,
};
use serde::{Deserialize, Serialize};

use super::fetch::{Fetched, SyncError};

/// The soft state of a public-mode mirror.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    /// Ref → its base (hex object id).
    #[serde(default)]
    bases: BTreeMap<String, String>,
    /// The refs the last run left alone as diverged.
    #[serde(default)]
    diverged: Vec<Diverged>,
}

/// A ref that moved both here and upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Diverged {
    /// The ref.
    #[serde(rename = "ref")]
    pub name: String,
    /// Our value (absent: deleted here).
    pub local: Option<String>,
    /// The upstream's value (absent: deleted upstream).
    pub upstream: Option<String>,
}

fn state_key(rid: &str) -> String {
    format!("public-sync/{rid}")
}

fn load(repo: &Repo) -> State {
    repo.index()
        .soft_get(&state_key(&repo.record().id))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The refs the last sync of `repo` left alone as diverged (empty for other mirrors).
pub fn diverged(repo: &Repo) -> Vec<Diverged> {
    load(repo).diverged
}

/// What to do with one ref.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Keep,
    Set(ObjectId),
    Delete,
    Diverged,
}

/// Decide one ref (see the module table); `ancestor(a, b)` says whether `a` is reachable from
/// `b`. Returns the action and the new base.
fn decide(
    local: Option<ObjectId>,
    remote: Option<ObjectId>,
    base: Option<ObjectId>,
    ancestor: &mut dyn FnMut(ObjectId, ObjectId) -> bool,
) -> (Action, Option<ObjectId>) {
    match (local, remote) {
        (None, None) => (Action::Keep, None),
        (Some(l), Some(r)) if l == r => (Action::Keep, Some(r)),
        (None, Some(r)) => match base {
            None => (Action::Set(r), Some(r)),
            Some(s) if s == r => (Action::Keep, Some(s)),
            Some(s) => (Action::Diverged, Some(s)),
        },
        (Some(l), None) => match base {
            None => (Action::Keep, None),
            Some(s) if s == l => (Action::Delete, None),
            Some(s) => (Action::Diverged, Some(s)),
        },
        (Some(l), Some(r)) => {
            if base == Some(l) || ancestor(l, r) {
                (Action::Set(r), Some(r))
            } else if base == Some(r) || ancestor(r, l) {
                (Action::Keep, Some(r))
            } else {
                (Action::Diverged, base)
            }
        }
    }
}

fn short(id: Option<&String>) -> String {
    id.map_or_else(|| "deleted".to_owned(), |h| h.chars().take(12).collect())
}

/// Apply a public-mode sync's ref changes: `remote` are the upstream's followed refs, `head`
/// its `HEAD` target, `quarantine` the pack fetched for them.
pub(super) fn apply(
    repo: &Repo,
    view: &View,
    remote: &BTreeMap<String, ObjectId>,
    head: Option<&str>,
    quarantine: Option<Quarantine>,
    objects: u32,
) -> Result<Fetched, SyncError> {
    let local = view.refs(Namespace::Default);
    let mut state = load(repo);
    let bases: BTreeMap<String, ObjectId> = state
        .bases
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), ObjectId::from_hex(v.as_bytes()).ok()?)))
        .collect();
    let mut reader = match &quarantine {
        Some(q) => ObjectReader::with_extra(view.packs.clone(), q.pack().clone()),
        None => view.reader(),
    };
    let mut ancestor = |a: ObjectId, b: ObjectId| -> bool {
        is_ancestor(&mut reader, a, b).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ancestry check failed; treating as unrelated");
            false
        })
    };
    let names: BTreeSet<&String> = remote
        .keys()
        .chain(bases.keys())
        .chain(local.keys().filter(|n| super::fetch::followed(n)))
        .collect();

    let mut updates = Vec::new();
    let mut new_bases: BTreeMap<String, Option<ObjectId>> = BTreeMap::new();
    let mut diverged = Vec::new();
    let (mut set, mut deleted) = (0usize, 0usize);
    for name in names {
        let l = local.get(name).and_then(RefValue::id);
        let r = remote.get(name).copied();
        let s = bases.get(name).copied();
        let (action, base) = decide(l, r, s, &mut ancestor);
        new_bases.insert(name.clone(), base);
        let expect = local
            .get(name)
            .cloned()
            .map_or(Expect::Absent, Expect::Value);
        match action {
            Action::Keep => {}
            Action::Set(id) => {
                set += 1;
                updates.push(RefUpdate {
                    name: name.clone(),
                    expect,
                    new: Some(RefValue::Direct(id)),
                });
            }
            Action::Delete => {
                deleted += 1;
                updates.push(RefUpdate {
                    name: name.clone(),
                    expect,
                    new: None,
                });
            }
            Action::Diverged => diverged.push(Diverged {
                name: name.clone(),
                local: l.map(|id| id.to_hex().to_string()),
                upstream: r.map(|id| id.to_hex().to_string()),
            }),
        }
    }
    if let Some(head) = head {
        let want = RefValue::Symbolic(head.to_owned());
        let current = local.get("HEAD");
        if current != Some(&want) {
            updates.push(RefUpdate {
                name: "HEAD".into(),
                expect: current.cloned().map_or(Expect::Absent, Expect::Value),
                new: Some(want),
            });
        }
    }

    let mut failed: usize = 0;
    if !updates.is_empty() {
        let names: Vec<String> = updates.iter().map(|u| u.name.clone()).collect();
        let outcome = repo.commit(Transaction {
            ns: Namespace::Default,
            updates,
            who: "sync".into(),
            atomic: false,
            quarantine,
        })?;
        for (name, result) in names.iter().zip(&outcome.results) {
            if let Err(e) = result {
                // Lost a race with a push: keep the old base; the retry decides again.
                tracing::debug!(error = %e, "sync ref update not applied");
                failed += 1;
                new_bases.insert(name.clone(), bases.get(name).copied());
            }
        }
    }
    state.bases = new_bases
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?.to_hex().to_string())))
        .collect();
    state.diverged = diverged;
    match serde_json::to_vec(&state) {
        Ok(json) => {
            if let Err(e) = repo.index().soft_put(&state_key(&repo.record().id), &json) {
                tracing::warn!(error = %e, "could not record the public-mode sync bases");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not encode the public-mode sync bases"),
    }
    if !state.diverged.is_empty() {
        let list: Vec<String> = state
            .diverged
            .iter()
            .map(|d| {
                format!(
                    "{} (here {}, upstream {})",
                    d.name,
                    short(d.local.as_ref()),
                    short(d.upstream.as_ref())
                )
            })
            .collect();
        return Err(SyncError::Diverged(list.join(", ")));
    }
    Ok(Fetched {
        updated: set.saturating_sub(failed),
        deleted,
        objects,
        retry: failed > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    /// History: 1 <- 2 <- 3 (a line), and 4 on its own.
    fn line(a: ObjectId, b: ObjectId) -> bool {
        let rank = |x: ObjectId| [id(1), id(2), id(3)].iter().position(|y| *y == x);
        match (rank(a), rank(b)) {
            (Some(a), Some(b)) => a <= b,
            _ => a == b,
        }
    }

    fn d(l: Option<u8>, r: Option<u8>, s: Option<u8>) -> (Action, Option<ObjectId>) {
        decide(l.map(id), r.map(id), s.map(id), &mut line)
    }

    #[test]
    fn upstream_moves_are_followed_when_we_did_not_move() {
        assert_eq!(
            d(None, Some(1), None),
            (Action::Set(id(1)), Some(id(1))),
            "new upstream ref"
        );
        assert_eq!(
            d(Some(1), Some(2), Some(1)),
            (Action::Set(id(2)), Some(id(2))),
            "fast-forward"
        );
        assert_eq!(
            d(Some(2), Some(4), Some(2)),
            (Action::Set(id(4)), Some(id(4))),
            "forced upstream"
        );
        assert_eq!(
            d(Some(1), None, Some(1)),
            (Action::Delete, None),
            "deleted upstream"
        );
        assert_eq!(
            d(Some(2), Some(2), None),
            (Action::Keep, Some(id(2))),
            "in step"
        );
    }

    #[test]
    fn local_moves_are_kept() {
        assert_eq!(
            d(Some(3), Some(1), Some(1)),
            (Action::Keep, Some(id(1))),
            "ahead, upstream still"
        );
        assert_eq!(
            d(Some(4), Some(1), Some(1)),
            (Action::Keep, Some(id(1))),
            "rewritten here"
        );
        assert_eq!(
            d(Some(3), Some(2), Some(1)),
            (Action::Keep, Some(id(2))),
            "ahead of a moved upstream"
        );
        assert_eq!(
            d(Some(2), Some(3), Some(1)),
            (Action::Set(id(3)), Some(id(3))),
            "upstream ahead of ours"
        );
        assert_eq!(d(Some(4), None, None), (Action::Keep, None), "created here");
        assert_eq!(
            d(None, Some(1), Some(1)),
            (Action::Keep, Some(id(1))),
            "deleted here"
        );
    }

    #[test]
    fn moves_on_both_sides_diverge_and_keep_their_base() {
        assert_eq!(
            d(Some(4), Some(2), Some(1)),
            (Action::Diverged, Some(id(1)))
        );
        assert_eq!(
            d(Some(2), None, Some(1)),
            (Action::Diverged, Some(id(1))),
            "moved here, deleted upstream"
        );
        assert_eq!(
            d(None, Some(2), Some(1)),
            (Action::Diverged, Some(id(1))),
            "deleted here, moved upstream"
        );
        assert_eq!(
            d(Some(4), Some(2), None),
            (Action::Diverged, None),
            "no base: never overwritten"
        );
    }
}
