//! Ref policies carried in the token (compat.md §3) with real `git push`es, against a local
//! repository, the ephemeral namespace of a mirror, and a mirror.
//!
//! The `refs` claim is ordered and the first matching pattern wins; an entry without ops allows
//! explicitly; short names mean `refs/heads/<name>`; `*` matches everything and a trailing `/*`
//! matches at any depth. `no-push` refuses any update, creation or deletion; `no-force-push`
//! refuses non-fast-forward updates and deletions, while a forced push that is a fast-forward
//! succeeds. The legacy `ops` claim folds into a trailing `*` rule; unknown ops refuse with a
//! reason naming them.
//!
//! A refused ref gets `ng <ref> <reason>`, which git shows as `[remote rejected] … (reason)`;
//! the other refs of the push proceed, unless `--atomic`. After every push the refs served must
//! be exactly the accepted changes; for a mirror the upstream too (a refused ref never reaches
//! it); for the ephemeral namespace the default namespace and the upstream must not change at
//! all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::auth::{commit_detached, ls_remote_map};
use crate::support::jwt::Signer;
use crate::support::{Git, World, assert_maps_eq, seed_repo};

/// How long an aborted upstream request may take to wind down before the upstream is checked.
const SETTLE: Duration = Duration::from_millis(500);

/// What a test expects of one ref of a push.
#[derive(Debug, Clone, Copy)]
enum Want {
    Accepted,
    /// Refused, with this text in git's `[remote rejected] (…)` line.
    Refused(&'static str),
}
use Want::{Accepted, Refused};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Local,
    Mirror,
    Ephemeral,
}

/// The repository (or namespace) under test.
struct Target {
    w: World,
    kind: Kind,
    /// The repository the tokens are for.
    repo: String,
    /// What the git URL names: `repo` or `repo+ephemeral`.
    name: String,
    /// A working repo with the history (it pushes by commit id; no branch of it moves).
    work: PathBuf,
    /// The upstream's bare repo (mirror and ephemeral targets).
    upstream: Option<PathBuf>,
    /// For the ephemeral target: the default namespace, which must never change.
    default_ns: BTreeMap<String, String>,
}

/// Heads and tags of an `ls-remote` map (no `HEAD`, no peeled entries).
fn refs_only(m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter()
        .filter(|(k, _)| k.starts_with("refs/") && !k.ends_with("^{}"))
        .collect()
}

impl Target {
    fn local() -> Target {
        let w = World::new();
        let work = crate::auth::local_repo(&w, "r");
        Target {
            w,
            kind: Kind::Local,
            repo: "r".into(),
            name: "r".into(),
            work,
            upstream: None,
            default_ns: BTreeMap::new(),
        }
    }

    fn mirror() -> Target {
        let (w, seed) = World::seeded_mirror("m");
        Target {
            kind: Kind::Mirror,
            repo: "m".into(),
            name: "m".into(),
            work: seed.work.clone(),
            upstream: Some(seed.bare.clone()),
            default_ns: BTreeMap::new(),
            w,
        }
    }

    /// `m+ephemeral` of a mirror `m`, with `main` pushed there by the admin.
    fn ephemeral() -> Target {
        let (w, seed) = World::seeded_mirror("m");
        let url = w.server.git_url("m+ephemeral");
        w.git
            .push(&seed.work, &["-q", &url, "main:refs/heads/main"]);
        let default_ns = refs_only(ls_remote_map(&w.git, &w.server.git_url("m")));
        Target {
            kind: Kind::Ephemeral,
            repo: "m".into(),
            name: "m+ephemeral".into(),
            work: seed.work.clone(),
            upstream: Some(seed.bare.clone()),
            default_ns,
            w,
        }
    }

    fn git(&self) -> &Git {
        &self.w.git
    }

    /// Heads and tags served for this target (admin token).
    fn refs(&self) -> BTreeMap<String, String> {
        refs_only(ls_remote_map(
            &self.w.git,
            &self.w.server.git_url(&self.name),
        ))
    }

    /// The upstream's heads and tags.
    fn upstream_refs(&self) -> Option<BTreeMap<String, String>> {
        self.upstream.as_ref().map(|bare| {
            self.w
                .git
                .refs(bare)
                .into_iter()
                .filter(|(k, _)| k.starts_with("refs/"))
                .collect()
        })
    }

    /// Receive-pack requests (advertisements and POSTs) that reached the upstream.
    fn upstream_receive_pack_requests(&self) -> usize {
        self.w
            .upstream
            .request_log()
            .iter()
            .filter(|r| r.contains("receive-pack"))
            .count()
    }

    /// A token for this target's repository with `scopes` git:read,git:write and `refs`
    /// entries (`PATTERN=OP[,OP]`).
    fn token(&self, refs: &[&str]) -> String {
        let mut args = vec!["--repo", &self.repo, "--scopes", "git:read,git:write"];
        for r in refs {
            args.push("--refs");
            args.push(r);
        }
        self.w.server.mint(&args)
    }

    /// The admin moves each of `branches` to `main`'s tip here (force); returns the tip.
    #[track_caller]
    fn setup(&self, branches: &[&str]) -> String {
        let tip = self.refs()["refs/heads/main"].clone();
        let url = self.w.server.git_url(&self.name);
        let mut args = vec!["-q".to_owned(), "--force".to_owned(), url];
        args.extend(branches.iter().map(|b| format!("{tip}:refs/heads/{b}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.git().push(&self.work, &args);
        tip
    }

    /// A new commit on `on` (no branch of the working repo moves).
    fn commit_on(&self, on: &str, label: &str) -> String {
        commit_detached(self.git(), &self.work, on, label)
    }

    /// `git rev-parse REV` in the working repo.
    fn rev(&self, rev: &str) -> String {
        self.git().rev_parse(&self.work, rev)
    }

    /// `git push --porcelain [extra] URL SPECS` with `token`; checks each ref's outcome against
    /// `specs`, then that the target (and a mirror's upstream) holds exactly the accepted
    /// changes, and that an ephemeral push touched neither the default namespace nor the
    /// upstream.
    #[track_caller]
    fn push(&self, token: &str, extra: &[&str], specs: &[(&str, Want)], what: &str) {
        let before = self.refs();
        let upstream_before = self.upstream_refs();
        let rp_before = self.upstream_receive_pack_requests();
        let url = self.w.server.git_url_with(&self.name, token);
        let mut args = vec!["push", "--porcelain"];
        args.extend_from_slice(extra);
        args.push(&url);
        args.extend(specs.iter().map(|(s, _)| *s));
        let out = self.git().try_run(&self.work, &args);
        let context = format!("{:?} target, {what}", self.kind);

        // dst -> (flag, summary), from the porcelain lines `<flag>\t<src>:<dst>\t<summary>`.
        let lines: BTreeMap<String, (char, String)> = out
            .stdout
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, '\t');
                let flag = parts.next()?.chars().next()?;
                let (_, dst) = parts.next()?.split_once(':')?;
                Some((dst.to_owned(), (flag, parts.next()?.to_owned())))
            })
            .collect();
        let mut expected = before.clone();
        let mut all_ok = true;
        for (spec, want) in specs {
            let (src, dst) = spec
                .trim_start_matches('+')
                .split_once(':')
                .expect("SRC:DST");
            let Some((flag, summary)) = lines.get(dst) else {
                panic!(
                    "{context}: git reported nothing for {dst}\n{}",
                    out.describe()
                );
            };
            match want {
                Accepted => {
                    assert!(
                        matches!(flag, ' ' | '+' | '-' | '*'),
                        "{context}: {spec} should be accepted, git says {flag} {summary}\n{}\n{}",
                        out.describe(),
                        self.w.server.logs()
                    );
                    if src.is_empty() {
                        expected.remove(dst);
                    } else {
                        expected.insert(dst.to_owned(), self.rev(src));
                    }
                }
                Refused(needle) => {
                    all_ok = false;
                    assert_eq!(
                        *flag,
                        '!',
                        "{context}: {spec} should be refused\n{}",
                        out.describe()
                    );
                    assert!(
                        summary.starts_with("[remote rejected] (") && summary.contains(needle),
                        "{context}: {spec}: expected `[remote rejected] (…{needle}…)`, got \
                         {summary:?}\n{}",
                        out.describe()
                    );
                }
            }
        }
        assert_eq!(
            out.success(),
            all_ok,
            "{context}: git's exit status\n{}",
            out.describe()
        );
        assert_maps_eq(
            &self.refs(),
            &expected,
            &format!("{context}: refs served afterwards"),
        );
        match self.kind {
            Kind::Local => {}
            Kind::Mirror => {
                if !all_ok {
                    // An upstream request aborted because of a refusal may still be winding
                    // down in the upstream's receive-pack: give it the time to (not) apply.
                    std::thread::sleep(SETTLE);
                }
                assert_maps_eq(
                    &self.upstream_refs().expect("upstream"),
                    &expected,
                    &format!("{context}: the upstream's refs afterwards"),
                );
            }
            Kind::Ephemeral => {
                assert_maps_eq(
                    &self.upstream_refs().expect("upstream"),
                    &upstream_before.expect("upstream"),
                    &format!("{context}: the upstream is untouched by ephemeral pushes"),
                );
                assert_eq!(
                    self.upstream_receive_pack_requests(),
                    rp_before,
                    "{context}: an ephemeral push contacted the upstream"
                );
                assert_maps_eq(
                    &refs_only(ls_remote_map(
                        &self.w.git,
                        &self.w.server.git_url(&self.repo),
                    )),
                    &self.default_ns,
                    &format!("{context}: the default namespace is untouched"),
                );
            }
        }
    }
}

// ---- the scenarios ----

/// `no-push`: updates, forced updates, deletions and creations of matched refs are refused;
/// the rest of the push proceeds.
fn no_push(t: &Target) {
    let tip = t.setup(&["locked", "free"]);
    let n = t.commit_on(&tip, "np-1");
    let old = t.rev(&format!("{tip}~1"));
    let token = t.token(&["refs/heads/locked=no-push", "refs/tags/*=no-push"]);
    let locked = format!("{n}:refs/heads/locked");
    let free = format!("{n}:refs/heads/free");
    t.push(
        &token,
        &[],
        &[(&locked, Refused("no-push")), (&free, Accepted)],
        "no-push: a fast-forward of the locked ref, and of a free one",
    );
    t.push(
        &token,
        &[],
        &[(&format!("+{old}:refs/heads/locked"), Refused("no-push"))],
        "no-push: a forced update",
    );
    t.push(
        &token,
        &["--force"],
        &[(&locked, Refused("no-push"))],
        "no-push: a forced fast-forward",
    );
    t.push(
        &token,
        &[],
        &[(":refs/heads/locked", Refused("no-push"))],
        "no-push: a deletion",
    );
    t.push(
        &token,
        &[],
        &[
            (&format!("{n}:refs/tags/np-tag"), Refused("no-push")),
            (&format!("{n}:refs/heads/np-new"), Accepted),
        ],
        "no-push: creating a matched tag, and an unmatched branch",
    );

    // What a person sees: git's own report names the ref and the reason.
    let url = t.w.server.git_url_with(&t.name, &token);
    let out = t.git().try_run(&t.work, &["push", &url, &locked]);
    assert!(!out.success(), "refused push\n{}", out.describe());
    assert!(
        out.stderr.contains("! [remote rejected]")
            && out.stderr.contains("-> locked (")
            && out.stderr.contains("no-push"),
        "{:?}: git shows `! [remote rejected] … -> locked (reason)`\n{}",
        t.kind,
        out.describe()
    );
}

/// `no-force-push`, decided before the pack is read (the commits are known to the server): a
/// real force push (back to an ancestor) is refused, with `+` and with `--force`; a forced
/// fast-forward succeeds; a deletion is refused; a creation succeeds; a refused and an accepted
/// ref in one push.
fn no_force_push(t: &Target) {
    let tip = t.setup(&["nf", "nf-del", "nf-ff"]);
    let parent = t.rev(&format!("{tip}~1"));
    let token = t.token(&["*=no-force-push"]);
    t.push(
        &token,
        &[],
        &[(
            &format!("+{parent}:refs/heads/nf"),
            Refused("no-force-push"),
        )],
        "no-force-push: a force push (+) back to an ancestor",
    );
    t.push(
        &token,
        &["--force"],
        &[(&format!("{parent}:refs/heads/nf"), Refused("no-force-push"))],
        "no-force-push: a force push (--force) back to an ancestor",
    );
    let n = t.commit_on(&tip, "nf-ff-1");
    t.push(
        &token,
        &["--force"],
        &[(&format!("{n}:refs/heads/nf-ff"), Accepted)],
        "no-force-push: a forced fast-forward",
    );
    t.push(
        &token,
        &[],
        &[(":refs/heads/nf-del", Refused("no-force-push"))],
        "no-force-push: a deletion",
    );
    t.push(
        &token,
        &[],
        &[(&format!("{parent}:refs/heads/nf-created"), Accepted)],
        "no-force-push: a creation",
    );
    let n2 = t.commit_on(&n, "nf-ff-2");
    t.push(
        &token,
        &[],
        &[
            (
                &format!("+{parent}:refs/heads/nf"),
                Refused("no-force-push"),
            ),
            (&format!("{n2}:refs/heads/nf-ff"), Accepted),
        ],
        "no-force-push: a refused force push and an accepted fast-forward together",
    );
}

/// `no-force-push` where the new commit arrives in the push's own pack, so the server can tell
/// a force push only once it has the pack (on a mirror: after the pack went to the upstream,
/// whose request must then be abandoned): alone, next to an accepted fast-forward, and with
/// `--atomic`.
fn no_force_push_commits_in_the_pack(t: &Target) {
    let tip = t.setup(&["nfp", "nfp-ff"]);
    let parent = t.rev(&format!("{tip}~1"));
    let token = t.token(&["*=no-force-push"]);
    let side = t.commit_on(&parent, "nfp-side-1");
    t.push(
        &token,
        &[],
        &[(&format!("+{side}:refs/heads/nfp"), Refused("no-force-push"))],
        "no-force-push: a force push to a commit only in the pack",
    );
    let side2 = t.commit_on(&parent, "nfp-side-2");
    let n = t.commit_on(&tip, "nfp-ff-1");
    t.push(
        &token,
        &[],
        &[
            (
                &format!("+{side2}:refs/heads/nfp"),
                Refused("no-force-push"),
            ),
            (&format!("{n}:refs/heads/nfp-ff"), Accepted),
        ],
        "no-force-push: a refused force push and an accepted fast-forward, both new commits",
    );
    let side3 = t.commit_on(&parent, "nfp-side-3");
    let n2 = t.commit_on(&n, "nfp-ff-2");
    t.push(
        &token,
        &["--atomic"],
        &[
            (
                &format!("+{side3}:refs/heads/nfp"),
                Refused("no-force-push"),
            ),
            (&format!("{n2}:refs/heads/nfp-ff"), Refused("")),
        ],
        "--atomic: a force push to a commit only in the pack and a fast-forward",
    );
}

/// `--atomic` with one ref refused by name: nothing moves; without it all move.
fn atomic(t: &Target) {
    let tip = t.setup(&["at-locked", "at-free"]);
    let n = t.commit_on(&tip, "at-1");
    let token = t.token(&["at-locked=no-push"]);
    t.push(
        &token,
        &["--atomic"],
        &[
            (&format!("{n}:refs/heads/at-locked"), Refused("no-push")),
            (&format!("{n}:refs/heads/at-free"), Refused("")),
            (&format!("{n}:refs/heads/at-new"), Refused("")),
        ],
        "--atomic with a no-push ref",
    );
    let token = t.token(&["at-locked=no-push", "*=no-force-push"]);
    t.push(
        &token,
        &["--atomic"],
        &[
            (&format!("{n}:refs/heads/at-free"), Accepted),
            (&format!("{n}:refs/heads/at-new"), Accepted),
        ],
        "--atomic, all allowed",
    );
}

/// The first matching entry wins, whatever follows; an entry without ops allows.
fn first_match(t: &Target) {
    let tip = t.setup(&["fm-a", "fm-b"]);
    let side = t.commit_on(&t.rev(&format!("{tip}~1")), "fm-side");
    let n = t.commit_on(&tip, "fm-1");
    let allow_a = t.token(&["fm-a=", "*=no-push"]);
    t.push(
        &allow_a,
        &[],
        &[
            (&format!("+{side}:refs/heads/fm-a"), Accepted),
            (&format!("{n}:refs/heads/fm-b"), Refused("no-push")),
            (&format!("{n}:refs/tags/fm-t"), Refused("no-push")),
        ],
        "[fm-a allow, * no-push]",
    );
    let star_first = t.token(&["*=no-push", "fm-a="]);
    t.push(
        &star_first,
        &[],
        &[(&format!("+{n}:refs/heads/fm-a"), Refused("no-push"))],
        "[* no-push, fm-a allow]: the star matches first",
    );
    let lenient_first = t.token(&["fm-b=no-force-push", "fm-b=no-push"]);
    t.push(
        &lenient_first,
        &[],
        &[(&format!("{n}:refs/heads/fm-b"), Accepted)],
        "[fm-b no-force-push, fm-b no-push]: the first fm-b entry decides",
    );
}

/// A trailing `/*` matches at any depth, and only under that prefix.
fn nested(t: &Target) {
    let tip = t.setup(&["nest/x", "nestx"]);
    let n = t.commit_on(&tip, "nest-1");
    let token = t.token(&["refs/heads/nest/*=no-push"]);
    t.push(
        &token,
        &[],
        &[
            (&format!("{n}:refs/heads/nest/x"), Refused("no-push")),
            (&format!("{n}:refs/heads/nest/a/b/c"), Refused("no-push")),
            (&format!("{n}:refs/heads/nestx"), Accepted),
            (&format!("{n}:refs/tags/nest/t"), Accepted),
        ],
        "refs/heads/nest/* no-push",
    );
    t.push(
        &token,
        &[],
        &[(":refs/heads/nest/x", Refused("no-push"))],
        "refs/heads/nest/* no-push: deleting nest/x",
    );
}

/// A pattern without `refs/` names a branch: `short` is `refs/heads/short` only.
fn short_names(t: &Target) {
    let tip = t.setup(&["short", "x/short"]);
    let n = t.commit_on(&tip, "short-1");
    let token = t.token(&["short=no-push"]);
    t.push(
        &token,
        &[],
        &[
            (&format!("{n}:refs/heads/short"), Refused("no-push")),
            (&format!("{n}:refs/tags/short"), Accepted),
            (&format!("{n}:refs/heads/x/short"), Accepted),
        ],
        "short=no-push",
    );
}

/// The legacy `ops` claim: a trailing `*` rule after the `refs` entries (so an explicit allow
/// before it still wins), or merged into an existing `*` entry.
fn legacy_ops(t: &Target) {
    let tip = t.setup(&["lg-main", "lg-other", "lg-ff"]);
    let parent = t.rev(&format!("{tip}~1"));
    let side = t.commit_on(&parent, "lg-side");
    let n = t.commit_on(&tip, "lg-1");
    let key = Signer::from_data_dir(t.w.server.data_dir());
    let scopes = ["git:read", "git:write"];
    let token = key.token_with(Some(&t.repo), &scopes, |c| {
        c["refs"] = json!([["lg-main", []]]);
        c["ops"] = json!(["no-force-push"]);
    });
    t.push(
        &token,
        &[],
        &[
            (&format!("+{side}:refs/heads/lg-main"), Accepted),
            (
                &format!("+{parent}:refs/heads/lg-other"),
                Refused("no-force-push"),
            ),
            (&format!("{n}:refs/heads/lg-ff"), Accepted),
        ],
        "refs [lg-main allow] + ops [no-force-push]",
    );
    t.push(
        &token,
        &[],
        &[(":refs/heads/lg-other", Refused("no-force-push"))],
        "ops [no-force-push]: a deletion",
    );
    let only_ops = key.token_with(Some(&t.repo), &scopes, |c| {
        c["ops"] = json!(["no-push"]);
    });
    t.push(
        &only_ops,
        &[],
        &[(&format!("{n}:refs/heads/lg-other"), Refused("no-push"))],
        "ops [no-push] alone",
    );
    let merged = key.token_with(Some(&t.repo), &scopes, |c| {
        c["refs"] = json!([["lg-main", []], ["*", []], ["lg-ff", ["no-push"]]]);
        c["ops"] = json!(["no-force-push"]);
    });
    t.push(
        &merged,
        &[],
        &[
            (&format!("+{tip}:refs/heads/lg-main"), Accepted),
            (
                &format!("+{parent}:refs/heads/lg-ff"),
                Refused("no-force-push"),
            ),
        ],
        "ops merged into an existing `*` entry (which comes before lg-ff's)",
    );
}

/// An op the server does not implement refuses the matched refs with a reason naming it.
fn unknown_op(t: &Target) {
    let tip = t.setup(&["uo", "uo-free"]);
    let n = t.commit_on(&tip, "uo-1");
    let token = t.token(&["uo=verify-sig"]);
    t.push(
        &token,
        &[],
        &[
            (&format!("{n}:refs/heads/uo"), Refused("verify-sig")),
            (&format!("{n}:refs/heads/uo-free"), Accepted),
        ],
        "uo=verify-sig",
    );
}

// ---- the tests: each target, the scenarios in three groups ----

/// Decisions the server can make before the pack: by ref name, and by kind of change when the
/// commits are known.
fn decided_early(t: &Target) {
    no_push(t);
    no_force_push(t);
    atomic(t);
}

fn matching(t: &Target) {
    first_match(t);
    nested(t);
    short_names(t);
    legacy_ops(t);
    unknown_op(t);
}

#[test]
fn local_repo_no_push_no_force_push_and_atomic() {
    decided_early(&Target::local());
}

#[test]
fn local_repo_no_force_push_with_commits_only_in_the_pushed_pack() {
    no_force_push_commits_in_the_pack(&Target::local());
}

#[test]
fn local_repo_first_match_nested_short_names_legacy_ops_and_unknown_ops() {
    matching(&Target::local());
}

#[test]
fn ephemeral_namespace_no_push_no_force_push_and_atomic() {
    decided_early(&Target::ephemeral());
}

#[test]
fn ephemeral_namespace_no_force_push_with_commits_only_in_the_pushed_pack() {
    no_force_push_commits_in_the_pack(&Target::ephemeral());
}

#[test]
fn ephemeral_namespace_first_match_nested_short_names_legacy_ops_and_unknown_ops() {
    matching(&Target::ephemeral());
}

#[test]
fn mirror_no_push_no_force_push_and_atomic_refused_refs_never_reach_the_upstream() {
    decided_early(&Target::mirror());
}

#[test]
fn mirror_no_force_push_with_commits_only_in_the_pushed_pack_never_reach_the_upstream() {
    no_force_push_commits_in_the_pack(&Target::mirror());
}

#[test]
fn mirror_first_match_nested_short_names_legacy_ops_and_unknown_ops() {
    matching(&Target::mirror());
}

/// A policy refusing every ref of a mirror push answers without contacting the upstream.
#[test]
fn mirror_push_refused_entirely_by_the_policy_never_posts_to_the_upstream() {
    let w = World::new();
    let seed = seed_repo(&w.git, &w.upstream, "m");
    w.server.mirror("m", &seed.url);
    let posts = || {
        w.upstream
            .request_log()
            .iter()
            .filter(|r| r.starts_with("POST") && r.contains("git-receive-pack"))
            .count()
    };
    let before = posts();
    let upstream_before = w.git.refs(&seed.bare);
    let n = commit_detached(&w.git, &seed.work, &seed.c3, "never.txt");
    let token = w.server.mint(&[
        "--repo",
        "m",
        "--scopes",
        "git:write",
        "--refs",
        "*=no-push",
    ]);
    let url = w.server.git_url_with("m", &token);
    let out = w.git.try_run(
        &seed.work,
        &[
            "push",
            &url,
            &format!("{n}:refs/heads/main"),
            &format!("{n}:refs/heads/other"),
            ":refs/heads/feature/x",
        ],
    );
    assert!(!out.success(), "refused\n{}", out.describe());
    assert_eq!(
        out.stderr.matches("[remote rejected]").count(),
        3,
        "three refs refused\n{}",
        out.describe()
    );
    assert_eq!(posts(), before, "no receive-pack POST reached the upstream");
    assert_eq!(
        w.git.refs(&seed.bare),
        upstream_before,
        "the upstream is unchanged"
    );
    assert!(
        !w.git.try_run(&seed.bare, &["cat-file", "-e", &n]).success(),
        "the refused commit never reached the upstream"
    );
}
