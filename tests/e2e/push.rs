//! Pushes through codestorage (issue 3): write-through to a mirror's upstream, and direct pushes to
//! repositories without an upstream.
//!
//! Real `git push` wherever git can produce the request; hand-made receive-pack requests for what
//! git never sends (corrupt packs, invalid ref names, stale old ids). The oracles:
//! - for mirrors, the upstream itself (`git http-backend`): after every push its refs must be
//!   exactly what codestorage serves (ls-remote and a mirror clone), both passing
//!   `git fsck --strict`;
//! - for local repos, a plain bare repo that receives the very same pushes from the same client
//!   over the file transport.
//!
//! Races (the upstream moving between the client's ref advertisement and its push) are staged
//! with a client-side `pre-push` hook that parks the push until the test lets it go.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::git::{lib_rs, pseudo_random_bytes};
use crate::support::http::HttpResponse;
use crate::support::pkt::{FLUSH, pkt};
use crate::support::server::ServerBuilder;
use crate::support::{
    COMMAND_TIMEOUT, Git, Out, Seed, Server, Upstream, World, assert_maps_eq, seed_repo, tail,
    wait_until,
};

const ZERO_ID: &str = "0000000000000000000000000000000000000000";
const RECEIVE_PACK_REQUEST: &str = "application/x-git-receive-pack-request";
/// The capabilities of the hand-made push requests.
const RAW_CAPS: &str = "report-status side-band-64k agent=e2e-raw";
/// How long the upstream may take to finish with an aborted request before we look at it.
const SETTLE: Duration = Duration::from_millis(500);

// ---- worlds and clients ----

/// A world whose server starts with `builder`, mirroring the seeded upstream repo `repo`.
fn mirror_world(builder: ServerBuilder) -> (World, Seed) {
    let w = World::with_server(builder);
    let seed = seed_repo(&w.git, &w.upstream, "repo");
    w.server.mirror("repo", &seed.url);
    (w, seed)
}

/// A working clone of `name` through codestorage (`origin` is codestorage).
#[track_caller]
fn clone_through(w: &World, name: &str, label: &str) -> PathBuf {
    let work = w.git.unique_path(label);
    w.git.clone(&w.server.git_url(name), &work, &["-q"]);
    work
}

/// A working clone of the upstream's bare repo over the file transport: "someone pushing to the
/// forge directly", behind codestorage's back.
#[track_caller]
fn direct_clone(w: &World, seed: &Seed) -> PathBuf {
    let work = w.git.unique_path("direct");
    w.git
        .clone(seed.bare.to_str().expect("utf-8 path"), &work, &["-q"]);
    work
}

/// Commits a new version of `moved.txt` in `work` on main and pushes it straight to the upstream's
/// bare repo. Returns the new main.
#[track_caller]
fn move_upstream_main(w: &World, direct: &Path, what: &str) -> String {
    w.git.run(direct, &["switch", "-q", "main"]);
    w.git
        .run(direct, &["pull", "-q", "--ff-only", "origin", "main"]);
    let tip = w
        .git
        .commit_file(direct, "moved.txt", format!("{what}\n"), what);
    w.git.push(direct, &["-q", "origin", "main"]);
    tip
}

/// `git ls-remote URL` as `refname -> id` (peeled `^{}` entries and `HEAD` included).
#[track_caller]
fn ls_remote_map(git: &Git, url: &str) -> BTreeMap<String, String> {
    git.run(git.scratch(), &["ls-remote", url])
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (name.to_owned(), id.to_owned()))
        .collect()
}

/// After a push to a mirror: the upstream passes fsck, and what codestorage serves (ls-remote and
/// a `--mirror` clone, which must pass fsck too) equals the upstream. Returns the upstream's refs.
#[track_caller]
fn assert_mirror_consistent(w: &World, seed: &Seed, context: &str) -> BTreeMap<String, String> {
    let upstream = w.git.served_refs(&seed.bare);
    w.git.fsck_strict(&seed.bare);
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url(&seed.name)),
        &ls_remote_map(&w.git, &seed.url),
        &format!("{context}: ls-remote through codestorage vs the upstream's"),
    );
    let clone = w.git.unique_path("check");
    w.git
        .clone(&w.server.git_url(&seed.name), &clone, &["-q", "--mirror"]);
    assert_maps_eq(
        &w.git.served_refs(&clone),
        &upstream,
        &format!("{context}: mirror clone through codestorage vs the upstream"),
    );
    w.git.fsck_strict(&clone);
    upstream
}

/// What must not change on the upstream when a push is refused: every ref, and the object
/// database (`count-objects -v`: loose and packed counts and sizes, garbage).
#[derive(Debug, PartialEq)]
struct UpstreamState {
    refs: BTreeMap<String, String>,
    objects: String,
}

#[track_caller]
fn upstream_state(git: &Git, bare: &Path) -> UpstreamState {
    UpstreamState {
        refs: git.refs(bare),
        objects: git.run(bare, &["count-objects", "-v"]).stdout,
    }
}

#[track_caller]
fn assert_upstream_unchanged(git: &Git, bare: &Path, before: &UpstreamState, context: &str) {
    // An aborted request may still be winding down in the upstream's receive-pack.
    std::thread::sleep(SETTLE);
    let after = upstream_state(git, bare);
    assert_maps_eq(
        &after.refs,
        &before.refs,
        &format!("{context}: upstream refs"),
    );
    assert_eq!(
        after.objects, before.objects,
        "{context}: the upstream's object database changed (count-objects -v)"
    );
    git.fsck_strict(bare);
}

/// How many receive-pack POSTs reached the upstream so far.
fn receive_pack_posts(w: &World) -> usize {
    w.upstream
        .request_log()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("git-receive-pack"))
        .count()
}

/// Whether object `id` exists in `repo`.
fn has_object(git: &Git, repo: &Path, id: &str) -> bool {
    git.try_run(repo, &["cat-file", "-e", id]).success()
}

/// Every file or dir left in a `repos/<id>/tmp/` of the data dir (quarantines of pushes).
fn quarantine_leftovers(server: &Server) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let Ok(repos) = std::fs::read_dir(server.data_dir().join("repos")) else {
        return left;
    };
    for repo in repos.flatten() {
        if let Ok(entries) = std::fs::read_dir(repo.path().join("tmp")) {
            left.extend(entries.flatten().map(|e| e.path()));
        }
    }
    left
}

/// No push quarantine stays behind (waits up to 10 s for a clean-up under way).
#[track_caller]
fn assert_no_quarantine_left(server: &Server, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = quarantine_leftovers(server);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{context}: push quarantines left in the data dir: {left:?}\n{}",
                server.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the server and runs `codestorage fsck` on its data dir.
#[track_caller]
fn stop_and_fsck(server: &mut Server) {
    server.stop();
    let out = server.fsck();
    assert!(
        out.success(),
        "codestorage fsck after the pushes failed\n{}",
        out.describe()
    );
}

/// `git push` failed and said so; returns its stderr.
#[track_caller]
fn push_fails(git: &Git, work: &Path, args: &[&str]) -> String {
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    git.run_fail(work, &all).stderr
}

#[track_caller]
fn assert_mentions(out: &str, needles: &[&str], context: &str) {
    let lower = out.to_ascii_lowercase();
    assert!(
        needles
            .iter()
            .any(|n| lower.contains(&n.to_ascii_lowercase())),
        "{context}: expected one of {needles:?} in the client's output:\n{}",
        tail(out, 6000)
    );
}

/// What the server told the client: its output without git's own `fatal: unable to access ...:
/// The requested URL returned error: N` line (which names codestorage's status, not the
/// upstream's).
fn server_said(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with("fatal: unable to access"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes an executable hook `name` into the git dir `git_dir`.
fn write_hook(git_dir: &Path, name: &str, body: &str) {
    let hooks = git_dir.join("hooks");
    std::fs::create_dir_all(&hooks).expect("create hooks dir");
    let path = hooks.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
}

// ---- a pre-push gate: park a push between the ref advertisement and the request ----

/// A client-side `pre-push` hook in a working repo that creates `reached` and waits for `go`
/// (at most 2 minutes). Dropping the gate opens it.
struct Gate {
    reached: PathBuf,
    go: PathBuf,
}

impl Gate {
    fn install(git: &Git, work: &Path) -> Gate {
        let dir = git.unique_path("gate");
        std::fs::create_dir_all(&dir).expect("create gate dir");
        let reached = dir.join("reached");
        let go = dir.join("go");
        write_hook(
            &work.join(".git"),
            "pre-push",
            &format!(
                "cat >/dev/null\n: > '{}'\nn=0\nwhile [ ! -e '{}' ]; do\n  n=$((n+1))\n  if [ \"$n\" -gt 2400 ]; then echo 'pre-push gate: timed out' >&2; exit 1; fi\n  sleep 0.05\ndone\nexit 0\n",
                reached.display(),
                go.display()
            ),
        );
        Gate { reached, go }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.go, "");
    }
}

/// Runs `git push ARGS` in `work`, parked by a pre-push gate while `during` runs (the client has
/// read the ref advertisement and not sent its request yet). The hook is removed afterwards.
#[track_caller]
fn gated_push(git: &Git, work: &Path, args: &[&str], during: impl FnOnce()) -> Out {
    let gate = Gate::install(git, work);
    let runner = Clone::clone(git);
    let dir = work.to_owned();
    let mut all = vec!["push".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let handle = std::thread::spawn(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        runner.try_run(&dir, &args)
    });
    let reached = wait_until(
        COMMAND_TIMEOUT,
        "the push to reach its pre-push hook",
        || {
            if gate.reached.exists() {
                Some(true)
            } else if handle.is_finished() {
                Some(false)
            } else {
                None
            }
        },
    );
    if !reached {
        let out = handle.join().expect("push thread");
        panic!(
            "the push ended before its pre-push hook ran\n{}",
            out.describe()
        );
    }
    during();
    drop(gate);
    let out = handle.join().expect("push thread");
    let _ = std::fs::remove_file(work.join(".git/hooks/pre-push"));
    out
}

// ---- hand-made receive-pack requests ----

/// `POST /<repo>.git/git-receive-pack`: the commands (`old new ref`, capabilities on the first),
/// a flush, then `pack`.
fn raw_push(
    server: &Server,
    repo: &str,
    commands: &[(&str, &str, &str)],
    caps: &str,
    pack: &[u8],
) -> Reply {
    let mut body = Vec::new();
    for (i, (old, new, name)) in commands.iter().enumerate() {
        let line = if i == 0 {
            format!("{old} {new} {name}\0{caps}\n")
        } else {
            format!("{old} {new} {name}\n")
        };
        body.extend(pkt(line));
    }
    body.extend_from_slice(FLUSH);
    body.extend_from_slice(pack);
    let resp = server.request(
        "POST",
        &format!("/{repo}.git/git-receive-pack"),
        Some(&body),
        &[
            ("Content-Type", RECEIVE_PACK_REQUEST),
            ("Accept", "application/x-git-receive-pack-result"),
        ],
    );
    Reply::decode(&resp)
}

/// A receive-pack answer, decoded: the report-status (from side-band 1, or plain), progress
/// (band 2) and errors (band 3, `ERR` lines, or a non-200 body).
#[derive(Debug, Default)]
struct Reply {
    http_status: u16,
    /// `unpack <this>`: `ok` or the error.
    unpack: Option<String>,
    /// `ref -> "ok"` or `ref -> "ng <reason>"`.
    refs: BTreeMap<String, String>,
    progress: String,
    errors: String,
    raw: String,
}

/// Splits pkt-lines: `Some(payload)` for data, `None` for flush/delim/response-end.
fn pkt_lines(mut data: &[u8]) -> Result<Vec<Option<&[u8]>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(format!("{} stray bytes at the end", data.len()));
        }
        let len = std::str::from_utf8(&data[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                format!(
                    "bad pkt-line length {:?}",
                    String::from_utf8_lossy(&data[..4])
                )
            })?;
        if len < 4 {
            out.push(None);
            data = &data[4..];
            continue;
        }
        if len > data.len() {
            return Err(format!("pkt-line of {len} bytes, {} left", data.len()));
        }
        out.push(Some(&data[4..len]));
        data = &data[len..];
    }
    Ok(out)
}

impl Reply {
    fn decode(resp: &HttpResponse) -> Reply {
        let mut reply = Reply {
            http_status: resp.status,
            raw: tail(&String::from_utf8_lossy(&resp.body), 4000),
            ..Reply::default()
        };
        if resp.status != 200 {
            reply.errors = resp.text();
            return reply;
        }
        let outer = match pkt_lines(&resp.body) {
            Ok(lines) => lines,
            Err(e) => {
                reply.errors = format!("malformed response: {e}");
                return reply;
            }
        };
        let mut report = Vec::new();
        for payload in outer.into_iter().flatten() {
            if payload.starts_with(b"ERR ") {
                reply.errors.push_str(&String::from_utf8_lossy(payload));
                continue;
            }
            match payload.first() {
                Some(1) => report.extend_from_slice(&payload[1..]),
                Some(2) => reply
                    .progress
                    .push_str(&String::from_utf8_lossy(&payload[1..])),
                Some(3) => reply
                    .errors
                    .push_str(&String::from_utf8_lossy(&payload[1..])),
                // Not side-band framed: the report itself.
                _ => report.extend(pkt(payload)),
            }
        }
        let inner = match pkt_lines(&report) {
            Ok(lines) => lines,
            Err(e) => {
                reply.errors.push_str(&format!("malformed report: {e}"));
                return reply;
            }
        };
        for line in inner.into_iter().flatten() {
            let line = String::from_utf8_lossy(line);
            let line = line.trim_end_matches('\n');
            if let Some(rest) = line.strip_prefix("unpack ") {
                reply.unpack = Some(rest.to_owned());
            } else if let Some(name) = line.strip_prefix("ok ") {
                reply.refs.insert(name.to_owned(), "ok".to_owned());
            } else if let Some(rest) = line.strip_prefix("ng ") {
                let (name, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                reply.refs.insert(name.to_owned(), format!("ng {reason}"));
            } else if line.starts_with("ERR ") {
                reply.errors.push_str(line);
            }
        }
        reply
    }

    fn is_ok(&self, name: &str) -> bool {
        self.refs.get(name).is_some_and(|s| s == "ok")
    }

    fn ng(&self, name: &str) -> Option<&str> {
        self.refs.get(name).and_then(|s| s.strip_prefix("ng "))
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {}; unpack: {:?}; refs: {:?}; errors: {:?}; progress: {:?}\nraw: {:?}",
            self.http_status, self.unpack, self.refs, self.errors, self.progress, self.raw
        )
    }
}

/// The pack a client would send for `revs` (`git pack-objects --revs` input: `new` ids and
/// `^old` exclusions), `--thin` if asked.
#[track_caller]
fn pack_of(git: &Git, repo: &Path, revs: &[&str], thin: bool) -> Vec<u8> {
    let input = git.unique_path("pack-revs");
    std::fs::write(&input, format!("{}\n", revs.join("\n"))).expect("write pack-objects input");
    let mut args = vec!["pack-objects", "--stdout", "--revs", "-q"];
    if thin {
        args.push("--thin");
    }
    let pack = git.run_with_stdin(repo, &args, &input).stdout_bytes;
    assert!(pack.starts_with(b"PACK"), "pack-objects made a pack");
    pack
}

// ---- the bad-input scenarios, for a mirror and for a local repo ----

/// A repo under test for hand-made pushes: its name on the server, a working repo holding its
/// history (for building packs) and, for mirrors, the upstream.
struct Target<'a> {
    w: &'a World,
    name: &'a str,
    work: &'a Path,
    upstream: Option<&'a Seed>,
}

/// What a refused push must leave alone.
struct Before {
    served: BTreeMap<String, String>,
    upstream: Option<UpstreamState>,
    upstream_posts: usize,
}

impl Target<'_> {
    fn url(&self) -> String {
        self.w.server.git_url(self.name)
    }

    fn receive_pack_posts(&self) -> usize {
        receive_pack_posts(self.w)
    }

    #[track_caller]
    fn before(&self) -> Before {
        Before {
            served: ls_remote_map(&self.w.git, &self.url()),
            upstream: self
                .upstream
                .map(|seed| upstream_state(&self.w.git, &seed.bare)),
            upstream_posts: self.receive_pack_posts(),
        }
    }

    /// Nothing changed: what codestorage serves, the upstream's refs and objects, no quarantine
    /// left behind.
    #[track_caller]
    fn assert_unchanged(&self, before: &Before, context: &str) {
        if let (Some(seed), Some(state)) = (self.upstream, &before.upstream) {
            assert_upstream_unchanged(&self.w.git, &seed.bare, state, context);
        }
        assert_maps_eq(
            &ls_remote_map(&self.w.git, &self.url()),
            &before.served,
            &format!("{context}: refs served by codestorage"),
        );
        assert_no_quarantine_left(&self.w.server, context);
    }

    /// Whether the upstream got a receive-pack POST since `before`.
    fn upstream_contacted(&self, before: &Before) -> bool {
        self.receive_pack_posts() > before.upstream_posts
    }

    /// Commits a 64 KiB incompressible file on top of `parent` in the working repo (on a
    /// detached HEAD, no branch moves), returns the commit.
    #[track_caller]
    fn commit_on(&self, parent: &str, file: &str, seed: u64) -> String {
        let git = &self.w.git;
        git.run(self.work, &["switch", "-q", "--detach", parent]);
        let id = git.commit_file(self.work, file, pseudo_random_bytes(64 << 10, seed), file);
        git.run(self.work, &["switch", "-q", "main"]);
        id
    }
}

/// Truncated packs, a bad trailer checksum, a corrupt object and a garbage "pack": each refused
/// with an unpack error, nothing changes; for a mirror the upstream applies nothing although it
/// was sent everything but the held-back trailer.
fn check_bad_packs(t: &Target) {
    let git = &t.w.git;
    let main = ls_remote_map(git, &t.url())["refs/heads/main"].clone();
    let new = t.commit_on(&main, "bad-pack.bin", 11);
    let pack = pack_of(git, t.work, &[&new, &format!("^{main}")], false);
    assert!(pack.len() > 60_000, "the pack carries the 64 KiB blob");

    let mut bad_trailer = pack.clone();
    let last = bad_trailer.len() - 1;
    bad_trailer[last] ^= 0xff;
    let mut corrupt_object = pack.clone();
    // Inside the zlib stream of the big blob: inflating fails or the object hashes differently.
    let mid = corrupt_object.len() / 2;
    for b in &mut corrupt_object[mid..mid + 16] {
        *b ^= 0x55;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated-half", pack[..pack.len() / 2].to_vec()),
        ("truncated-trailer", pack[..pack.len() - 10].to_vec()),
        ("bad-checksum", bad_trailer),
        ("corrupt-object", corrupt_object),
        ("no-pack-at-all", Vec::new()),
        ("garbage", b"this is not a pack at all".repeat(100)),
    ];
    for (kind, bytes) in cases {
        let name = format!("refs/heads/bad-{kind}");
        let before = t.before();
        let reply = raw_push(
            &t.w.server,
            t.name,
            &[(ZERO_ID, &new, &name)],
            RAW_CAPS,
            &bytes,
        );
        let context = format!("{} pack ({} of {} bytes)", kind, bytes.len(), pack.len());
        assert!(
            !reply.is_ok(&name),
            "{context}: the ref was accepted!\n{}",
            reply.describe()
        );
        assert_eq!(reply.http_status, 200, "{context}: {}", reply.describe());
        assert!(
            reply.unpack.as_deref().is_some_and(|u| u != "ok") || !reply.errors.is_empty(),
            "{context}: expected an unpack error\n{}",
            reply.describe()
        );
        t.assert_unchanged(&before, &context);
        if let Some(seed) = t.upstream {
            if kind == "bad-checksum" {
                assert!(
                    t.upstream_contacted(&before),
                    "{context}: the pack (all but its held-back trailer) was being streamed to \
                     the upstream, so the hold-back is what kept it out"
                );
            }
            assert!(
                !has_object(git, &seed.bare, &new),
                "{context}: the pushed commit reached the upstream's object store"
            );
        }
    }
}

/// A thin pack whose delta base is nowhere (neither here nor upstream): refused, nothing changes.
fn check_missing_base(t: &Target) {
    let git = &t.w.git;
    let main = ls_remote_map(git, &t.url())["refs/heads/main"].clone();
    // `base` is never pushed; `tip` changes one line of its big text file, so the thin pack
    // carries that blob as a delta against a blob only `base` has.
    git.run(t.work, &["switch", "-q", "--detach", &main]);
    let base = git.commit_file(t.work, "thin.txt", lib_rs(12), "never pushed");
    let mut text = lib_rs(12);
    text.push_str("one more line\n");
    let tip = git.commit_file(t.work, "thin.txt", text, "on top of the unpushed commit");
    git.run(t.work, &["switch", "-q", "main"]);
    let pack = pack_of(git, t.work, &[&tip, &format!("^{base}")], true);
    let objects = u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]]);
    assert!(objects >= 3, "thin pack has commit, tree, blob: {objects}");

    let name = "refs/heads/thin";
    let before = t.before();
    let reply = raw_push(
        &t.w.server,
        t.name,
        &[(ZERO_ID, &tip, name)],
        RAW_CAPS,
        &pack,
    );
    assert!(
        !reply.is_ok(name),
        "a thin pack with a missing base was accepted!\n{}",
        reply.describe()
    );
    assert!(
        reply.unpack.as_deref().is_some_and(|u| u != "ok")
            || reply.ng(name).is_some()
            || !reply.errors.is_empty(),
        "missing base: expected a refusal\n{}",
        reply.describe()
    );
    t.assert_unchanged(&before, "thin pack with a missing base");
    if let Some(seed) = t.upstream {
        assert!(
            !has_object(git, &seed.bare, &tip),
            "the thin pack's commit reached the upstream"
        );
    }
}

/// Invalid ref names get `ng` (and, for a mirror, never reach the upstream); a valid ref in the
/// same non-atomic push still lands.
fn check_invalid_ref_names(t: &Target) {
    let git = &t.w.git;
    let main = ls_remote_map(git, &t.url())["refs/heads/main"].clone();
    let new = t.commit_on(&main, "names.bin", 12);
    let pack = pack_of(git, t.work, &[&new, &format!("^{main}")], false);
    for name in [
        "refs/heads/a..b",
        "refs/heads/x.lock",
        "refs/heads/a~b",
        "refs/heads//double",
        "refs/heads/trailing/",
        "HEAD",
        "main",
    ] {
        let before = t.before();
        let reply = raw_push(
            &t.w.server,
            t.name,
            &[(ZERO_ID, &new, name)],
            RAW_CAPS,
            &pack,
        );
        assert!(
            reply.ng(name).is_some(),
            "invalid ref name {name:?}: expected `ng {name} ...`\n{}",
            reply.describe()
        );
        t.assert_unchanged(&before, &format!("invalid ref name {name:?}"));
        assert!(
            !t.upstream_contacted(&before),
            "invalid ref name {name:?}: the push was forwarded to the upstream"
        );
    }

    // Mixed, non-atomic: the valid ref lands, the invalid one is refused in the same report.
    let good = "refs/heads/valid-next-to-invalid";
    let reply = raw_push(
        &t.w.server,
        t.name,
        &[(ZERO_ID, &new, "refs/heads/a..b"), (ZERO_ID, &new, good)],
        RAW_CAPS,
        &pack,
    );
    assert!(
        reply.ng("refs/heads/a..b").is_some() && reply.is_ok(good),
        "mixed push: expected ng for the invalid name and ok for {good}\n{}",
        reply.describe()
    );
    let served = ls_remote_map(git, &t.url());
    assert_eq!(
        served.get(good),
        Some(&new),
        "the valid ref of the mixed push is served at once"
    );
    assert!(!served.contains_key("refs/heads/a..b"), "{served:?}");
    if let Some(seed) = t.upstream {
        assert_mirror_consistent(t.w, seed, "after the mixed push");
    }
}

/// An old id that is not the ref's current value: `ng ... stale info`, nothing moves (for a
/// mirror: refused before the upstream is contacted); with `atomic`, the other ref fails too.
fn check_old_id_mismatch(t: &Target) {
    let git = &t.w.git;
    let served = ls_remote_map(git, &t.url());
    let main = served["refs/heads/main"].clone();
    let parent = git.rev_parse(t.work, &format!("{main}^"));
    let new = t.commit_on(&main, "stale.bin", 13);
    let pack = pack_of(git, t.work, &[&new, &format!("^{main}")], false);

    // Old = main's parent; and old = "absent" for an existing ref; and old = an existing id for
    // an absent ref.
    let cases: [(&str, &str, &str); 3] = [
        (&parent, &new, "refs/heads/main"),
        (ZERO_ID, &new, "refs/heads/main"),
        (&main, &new, "refs/heads/does-not-exist"),
    ];
    for (old, new_id, name) in cases {
        let before = t.before();
        let reply = raw_push(&t.w.server, t.name, &[(old, new_id, name)], RAW_CAPS, &pack);
        let context = format!("old {old} for {name}");
        let ng = reply
            .ng(name)
            .unwrap_or_else(|| panic!("{context}: expected `ng {name} ...`\n{}", reply.describe()));
        assert!(
            ng.contains("stale info") || ng.contains("fetch first") || ng.contains("lock"),
            "{context}: unexpected reason {ng:?}"
        );
        t.assert_unchanged(&before, &context);
        assert!(
            !t.upstream_contacted(&before),
            "{context}: the push was forwarded to the upstream although we refuse it"
        );
    }

    // A stale delete.
    let before = t.before();
    let reply = raw_push(
        &t.w.server,
        t.name,
        &[(&parent, ZERO_ID, "refs/heads/main")],
        RAW_CAPS,
        &[],
    );
    assert!(
        reply.ng("refs/heads/main").is_some(),
        "stale delete: expected ng\n{}",
        reply.describe()
    );
    t.assert_unchanged(&before, "stale delete");

    // Atomic: one stale command sinks the valid one.
    let before = t.before();
    let good = "refs/heads/atomic-partner";
    let reply = raw_push(
        &t.w.server,
        t.name,
        &[(&parent, &new, "refs/heads/main"), (ZERO_ID, &new, good)],
        &format!("{RAW_CAPS} atomic"),
        &pack,
    );
    assert!(
        reply.ng("refs/heads/main").is_some() && reply.ng(good).is_some(),
        "atomic push with a stale ref: both refs must be ng\n{}",
        reply.describe()
    );
    t.assert_unchanged(&before, "atomic push with a stale ref");
}

/// A well-formed hand-made push with the same framing is accepted: the requests above were
/// refused for what they carry, not for their framing.
fn check_good_raw_push(t: &Target) {
    let git = &t.w.git;
    let main = ls_remote_map(git, &t.url())["refs/heads/main"].clone();
    let new = t.commit_on(&main, "good.bin", 14);
    let pack = pack_of(git, t.work, &[&new, &format!("^{main}")], false);
    let reply = raw_push(
        &t.w.server,
        t.name,
        &[
            (&main, &new, "refs/heads/main"),
            (ZERO_ID, &main, "refs/heads/raw-good"),
        ],
        RAW_CAPS,
        &pack,
    );
    assert!(
        reply.unpack.as_deref() == Some("ok")
            && reply.is_ok("refs/heads/main")
            && reply.is_ok("refs/heads/raw-good"),
        "a good hand-made push is accepted\n{}",
        reply.describe()
    );
    let served = ls_remote_map(git, &t.url());
    assert_eq!(served.get("refs/heads/main"), Some(&new), "main moved");
    assert_eq!(
        served.get("refs/heads/raw-good"),
        Some(&main),
        "raw-good created"
    );
    if let Some(seed) = t.upstream {
        assert_mirror_consistent(t.w, seed, "after a good hand-made push");
    }
    assert_no_quarantine_left(&t.w.server, "after a good hand-made push");
}

// ---- local repositories: the oracle is a plain bare repo receiving the same pushes ----

/// A repo without upstream on the server, a working repo with remotes `cs` (codestorage) and
/// `oracle` (a plain bare repo over the file transport).
struct Local {
    work: PathBuf,
    oracle: PathBuf,
}

#[track_caller]
fn local_setup(w: &World, name: &str) -> Local {
    w.server.create_local(name);
    let work = w
        .git
        .init(&format!("local-work-{}", name.replace('/', "_")));
    let oracle = w.git.unique_path("oracle");
    let o = oracle.to_str().expect("utf-8 path");
    w.git
        .run(w.git.scratch(), &["init", "-q", "--bare", "-b", "main", o]);
    w.git
        .run(&work, &["remote", "add", "cs", &w.server.git_url(name)]);
    w.git.run(&work, &["remote", "add", "oracle", o]);
    Local { work, oracle }
}

impl Local {
    /// The same `git push REMOTE ARGS` to codestorage and to the oracle; both must succeed.
    #[track_caller]
    fn push_both(&self, git: &Git, args: &[&str]) -> Out {
        let mut cs = vec!["cs"];
        cs.extend_from_slice(args);
        let out = git.push(&self.work, &cs);
        let mut oracle = vec!["oracle"];
        oracle.extend_from_slice(args);
        git.push(&self.work, &oracle);
        out
    }

    /// What codestorage serves of `name` (mirror clone, fsck'd, and ls-remote) equals the
    /// oracle.
    #[track_caller]
    fn assert_matches(&self, w: &World, name: &str, context: &str) -> BTreeMap<String, String> {
        let expected = w.git.served_refs(&self.oracle);
        w.git.fsck_strict(&self.oracle);
        let clone = w.git.unique_path("local-check");
        w.git
            .clone(&w.server.git_url(name), &clone, &["-q", "--mirror"]);
        let served = w.git.served_refs(&clone);
        // An empty oracle has an unborn HEAD a clone cannot see; compare refs only then.
        let cmp = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .filter(|(k, _)| *k != "HEAD" || expected.len() > 1)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_maps_eq(
            &cmp(&served),
            &cmp(&expected),
            &format!("{context}: codestorage vs a plain git repo given the same pushes"),
        );
        w.git.fsck_strict(&clone);
        let mut oracle_ls = ls_remote_map(&w.git, self.oracle.to_str().expect("utf-8 path"));
        let mut served_ls = ls_remote_map(&w.git, &w.server.git_url(name));
        oracle_ls.remove("HEAD");
        served_ls.remove("HEAD");
        assert_maps_eq(
            &served_ls,
            &oracle_ls,
            &format!("{context}: ls-remote of codestorage vs the plain git repo"),
        );
        expected
    }
}

// =====================================================================================
// 1. Mirrors: the basics, write-through
// =====================================================================================

#[test]
fn mirror_push_new_branch_fast_forward_force_delete_and_tags_write_through() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");

    // A new branch.
    w.git.run(&work, &["switch", "-q", "-c", "topic"]);
    let t1 = w
        .git
        .commit_file(&work, "topic.txt", "topic\n", "t1: topic");
    w.git.push(&work, &["-q", "origin", "topic"]);
    let refs = assert_mirror_consistent(&w, &seed, "new branch");
    assert_eq!(
        refs.get("refs/heads/topic"),
        Some(&t1),
        "topic on the upstream"
    );

    // A fast-forward of main.
    w.git.run(&work, &["switch", "-q", "main"]);
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    w.git.push(&work, &["-q", "origin", "main"]);
    let refs = assert_mirror_consistent(&w, &seed, "fast-forward");
    assert_eq!(
        refs.get("refs/heads/main"),
        Some(&c4),
        "main fast-forwarded"
    );

    // A force push: main rewritten on top of c1.
    w.git.run(&work, &["reset", "-q", "--hard", &seed.c1]);
    let c5 = w
        .git
        .commit_file(&work, "rewritten.txt", "rewritten\n", "c5: rewrite");
    let out = push_fails(&w.git, &work, &["origin", "main"]);
    assert_mentions(
        &out,
        &["non-fast-forward", "rejected"],
        "push without --force",
    );
    w.git.push(&work, &["-q", "--force", "origin", "main"]);
    let refs = assert_mirror_consistent(&w, &seed, "force push");
    assert_eq!(refs.get("refs/heads/main"), Some(&c5), "main force-pushed");

    // A branch deletion.
    w.git
        .push(&work, &["-q", "origin", "--delete", "feature/x"]);
    let refs = assert_mirror_consistent(&w, &seed, "branch deletion");
    assert!(
        !refs.contains_key("refs/heads/feature/x"),
        "feature/x deleted: {refs:?}"
    );

    // Tags: annotated and lightweight, then a tag deletion.
    w.git
        .run(&work, &["tag", "-a", "v2.0", "-m", "release 2.0", &c5]);
    w.git.run(&work, &["tag", "light2", &t1]);
    w.git.push(&work, &["-q", "origin", "v2.0", "light2"]);
    let refs = assert_mirror_consistent(&w, &seed, "tag push");
    assert_eq!(
        refs.get("refs/tags/v2.0"),
        Some(&w.git.rev_parse(&work, "refs/tags/v2.0")),
        "annotated tag (the tag object) on the upstream"
    );
    assert_ne!(refs["refs/tags/v2.0"], c5, "v2.0 is a tag object");
    assert_eq!(refs.get("refs/tags/light2"), Some(&t1), "lightweight tag");
    w.git.push(&work, &["-q", "origin", "--delete", "light"]);
    let refs = assert_mirror_consistent(&w, &seed, "tag deletion");
    assert!(!refs.contains_key("refs/tags/light"), "light deleted");

    // Several refs in one push, atomically: create, update and delete at once.
    w.git.run(&work, &["switch", "-q", "-c", "second"]);
    let s1 = w.git.commit_file(&work, "second.txt", "second\n", "s1");
    w.git.run(&work, &["switch", "-q", "main"]);
    let c6 = w.git.commit_file(&work, "src/lib.rs", lib_rs(6), "c6");
    w.git.push(
        &work,
        &["-q", "--atomic", "origin", "main", "second", ":topic"],
    );
    let refs = assert_mirror_consistent(&w, &seed, "atomic multi-ref push");
    assert_eq!(refs.get("refs/heads/main"), Some(&c6), "main");
    assert_eq!(refs.get("refs/heads/second"), Some(&s1), "second");
    assert!(!refs.contains_key("refs/heads/topic"), "topic deleted");

    // The client's own view agrees after a fetch through codestorage.
    w.git
        .run(&work, &["fetch", "-q", "--prune", "--prune-tags", "origin"]);
    assert_maps_eq(
        &w.git.remote_view(&work),
        &w.git.served_refs(&seed.bare),
        "the pusher's remote-tracking refs vs the upstream",
    );
    assert_no_quarantine_left(&w.server, "after the pushes");
}

// =====================================================================================
// 2. --atomic with one ref refused by an upstream hook; 3. hook messages reach the client
// =====================================================================================

#[test]
fn mirror_atomic_push_with_one_ref_refused_by_an_upstream_hook_moves_nothing() {
    let (w, seed) = World::seeded_mirror("repo");
    write_hook(
        &seed.bare,
        "update",
        "case \"$1\" in\n  refs/heads/refuse-*) echo \"update hook: refusing $1\" >&2; exit 1;;\nesac\nexit 0\n",
    );
    let work = clone_through(&w, "repo", "pusher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    w.git.run(&work, &["branch", "refuse-me", &c4]);
    w.git.run(&work, &["branch", "accept-me", &c4]);

    let before_upstream = w.git.refs(&seed.bare);
    let before_served = ls_remote_map(&w.git, &w.server.git_url("repo"));
    let out = push_fails(
        &w.git,
        &work,
        &["--atomic", "origin", "main", "refuse-me", "accept-me"],
    );
    let atomic_out = out.clone();
    assert_mentions(&out, &["[remote rejected]"], "the rejection");
    assert_maps_eq(
        &w.git.refs(&seed.bare),
        &before_upstream,
        "upstream refs after the refused atomic push",
    );
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("repo")),
        &before_served,
        "codestorage refs after the refused atomic push",
    );
    assert_mirror_consistent(&w, &seed, "refused atomic push");

    // The same push without --atomic: the accepted refs land (upstream and here), the refused
    // one does not.
    let out = push_fails(&w.git, &work, &["origin", "main", "refuse-me", "accept-me"]);
    assert_mentions(
        &out,
        &["[remote rejected] refuse-me"],
        "non-atomic rejection",
    );
    let refs = assert_mirror_consistent(&w, &seed, "partly refused push");
    assert_eq!(refs.get("refs/heads/main"), Some(&c4), "main landed");
    assert_eq!(
        refs.get("refs/heads/accept-me"),
        Some(&c4),
        "accept-me landed"
    );
    assert!(
        !refs.contains_key("refs/heads/refuse-me"),
        "refuse-me refused: {refs:?}"
    );
    assert_no_quarantine_left(&w.server, "after the pushes");

    // Last, as it fails for a reason of its own (see `mirror_upstream_hook_output_reaches_the_client`):
    // the refusing hook's message reaches the client.
    assert_mentions(
        &atomic_out,
        &["remote: update hook: refusing refs/heads/refuse-me"],
        "the refusing hook's message (atomic push)",
    );
    assert_mentions(
        &out,
        &["remote: update hook: refusing refs/heads/refuse-me"],
        "the refusing hook's message (non-atomic push)",
    );
}

#[test]
fn mirror_upstream_hook_output_reaches_the_client() {
    let (w, seed) = World::seeded_mirror("repo");
    write_hook(
        &seed.bare,
        "pre-receive",
        "cat >/dev/null\necho 'pre-receive: hello from the upstream' >&2\necho 'pre-receive: and on stdout'\nexit 0\n",
    );
    write_hook(
        &seed.bare,
        "post-receive",
        "cat >/dev/null\necho 'post-receive: all done' >&2\nexit 0\n",
    );
    let hook_lines = [
        "remote: pre-receive: hello from the upstream",
        "remote: pre-receive: and on stdout",
        "remote: post-receive: all done",
    ];
    let assert_hook_lines = |out: &Out, context: &str| {
        for line in hook_lines {
            assert!(
                out.stderr.contains(line),
                "{context}: expected {line:?} on the client's stderr\n{}",
                out.describe()
            );
        }
    };
    let work = clone_through(&w, "repo", "pusher");

    // The oracle: the same client pushing to the upstream directly shows the hook output (git
    // asks for `quiet` when its stderr is not a terminal; hook output is not progress).
    w.git.run(&work, &["switch", "-q", "-c", "direct"]);
    w.git.commit_file(&work, "direct.txt", "direct\n", "d1");
    let out = w.git.push(&work, &[&seed.url, "direct"]);
    assert_hook_lines(&out, "push straight to the upstream");
    w.git.run(&work, &["switch", "-q", "main"]);

    // Through codestorage with --progress (no `quiet` capability).
    w.git.run(&work, &["switch", "-q", "-c", "with-progress"]);
    w.git.commit_file(&work, "progress.txt", "progress\n", "p1");
    let out = w
        .git
        .push(&work, &["--progress", "origin", "with-progress"]);
    assert_hook_lines(&out, "push through codestorage with --progress");
    w.git.run(&work, &["switch", "-q", "main"]);

    // Through codestorage, a plain `git push` (the client asks for `quiet`).
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    let out = w.git.push(&work, &["origin", "main"]);
    assert_hook_lines(&out, "plain push through codestorage");
    let refs = assert_mirror_consistent(&w, &seed, "push with hook output");
    assert_eq!(refs.get("refs/heads/main"), Some(&c4), "main");

    // A refusing pre-receive hook: its message reaches the client and nothing moves.
    write_hook(
        &seed.bare,
        "pre-receive",
        "cat >/dev/null\necho 'pre-receive: pushes are closed today' >&2\nexit 1\n",
    );
    let c5 = w.git.commit_file(&work, "src/lib.rs", lib_rs(5), "c5");
    let out = push_fails(&w.git, &work, &["origin", "main"]);
    assert_mentions(
        &out,
        &["remote: pre-receive: pushes are closed today"],
        "refusing hook's message",
    );
    assert_mentions(&out, &["pre-receive hook declined"], "the rejection reason");
    let refs = assert_mirror_consistent(&w, &seed, "push refused by pre-receive");
    assert_eq!(refs.get("refs/heads/main"), Some(&c4), "main did not move");
    assert!(
        !has_object(&w.git, &seed.bare, &c5),
        "c5 not on the upstream"
    );
}

// =====================================================================================
// 4. "fetch first": the upstream moved behind the client's back
// =====================================================================================

#[test]
fn mirror_push_after_the_upstream_moved_is_rejected_as_fetch_first() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let direct = direct_clone(&w, &seed);
    let moved = move_upstream_main(&w, &direct, "pushed directly to the upstream");

    let mine = w
        .git
        .commit_file(&work, "src/lib.rs", lib_rs(4), "c4: mine");
    let out = push_fails(&w.git, &work, &["origin", "main"]);
    assert_mentions(
        &out,
        &["fetch first", "non-fast-forward", "stale info"],
        "push behind the upstream",
    );
    let refs = assert_mirror_consistent(&w, &seed, "rejected push");
    assert_eq!(
        refs.get("refs/heads/main"),
        Some(&moved),
        "upstream main kept"
    );
    assert!(
        !has_object(&w.git, &seed.bare, &mine),
        "nothing of the push upstream"
    );

    // After fetching and rebasing the push goes through.
    w.git
        .run(&work, &["pull", "-q", "--rebase", "origin", "main"]);
    let rebased = w.git.rev_parse(&work, "HEAD");
    w.git.push(&work, &["-q", "origin", "main"]);
    let refs = assert_mirror_consistent(&w, &seed, "push after pull --rebase");
    assert_eq!(refs.get("refs/heads/main"), Some(&rebased), "main");
}

/// The upstream moves after the client read the advertisement and before its request: the
/// upstream refuses the stale update (codestorage has not seen the move yet), nothing moves
/// anywhere, and the next sync brings codestorage up to date.
#[test]
fn mirror_push_racing_a_direct_upstream_push_is_refused_by_the_upstream() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let direct = direct_clone(&w, &seed);
    let mine = w
        .git
        .commit_file(&work, "src/lib.rs", lib_rs(4), "c4: mine");
    let served_before = ls_remote_map(&w.git, &w.server.git_url("repo"));
    let mut moved = String::new();
    let out = gated_push(&w.git, &work, &["origin", "main"], || {
        moved = move_upstream_main(&w, &direct, "raced in directly");
    });
    assert!(
        !out.success(),
        "the racing push must fail\n{}",
        out.describe()
    );
    assert_mentions(
        &out.stderr,
        &["[remote rejected]", "stale info", "fetch first", "failed"],
        "raced push",
    );
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        moved,
        "the upstream keeps the direct push"
    );
    let served = ls_remote_map(&w.git, &w.server.git_url("repo"));
    assert_ne!(
        served.get("refs/heads/main"),
        Some(&mine),
        "codestorage must not move main to the refused commit"
    );
    assert!(
        served["refs/heads/main"] == served_before["refs/heads/main"]
            || served["refs/heads/main"] == moved,
        "codestorage serves either the old main or the upstream's: {served:?}"
    );
    w.server.sync_now("repo");
    assert_mirror_consistent(&w, &seed, "after the next sync");
}

/// Same race, but codestorage has synced the move: it refuses with `stale info` itself, without
/// contacting the upstream.
#[test]
fn mirror_push_with_an_old_id_codestorage_knows_is_stale_is_refused_before_the_upstream() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let direct = direct_clone(&w, &seed);
    let mine = w
        .git
        .commit_file(&work, "src/lib.rs", lib_rs(4), "c4: mine");
    let mut moved = String::new();
    let mut posts_before = 0;
    let out = gated_push(&w.git, &work, &["origin", "main"], || {
        moved = move_upstream_main(&w, &direct, "raced in directly");
        w.server.sync_now("repo");
        posts_before = receive_pack_posts(&w);
    });
    assert!(
        !out.success(),
        "the stale push must fail\n{}",
        out.describe()
    );
    assert_mentions(&out.stderr, &["stale info"], "stale push");
    assert_eq!(
        receive_pack_posts(&w),
        posts_before,
        "the stale push was forwarded to the upstream"
    );
    let refs = assert_mirror_consistent(&w, &seed, "stale push");
    assert_eq!(refs.get("refs/heads/main"), Some(&moved), "upstream main");
    assert!(
        !has_object(&w.git, &seed.bare, &mine),
        "nothing of the push upstream"
    );
    assert_no_quarantine_left(&w.server, "after the stale push");
}

// =====================================================================================
// 5. --force-with-lease
// =====================================================================================

#[test]
fn mirror_force_with_lease_succeeds_on_a_current_lease_and_is_refused_on_a_stale_one() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");

    // The lease holds: main is still c3 upstream.
    w.git.run(&work, &["reset", "-q", "--hard", &seed.c2]);
    let rewritten = w
        .git
        .commit_file(&work, "lease.txt", "first rewrite\n", "r1");
    w.git.push(
        &work,
        &[
            "-q",
            &format!("--force-with-lease=main:{}", seed.c3),
            "origin",
            "main",
        ],
    );
    let refs = assert_mirror_consistent(&w, &seed, "force-with-lease, lease held");
    assert_eq!(
        refs.get("refs/heads/main"),
        Some(&rewritten),
        "main rewritten"
    );

    // Implicit lease (the remote-tracking ref) after someone else moved main: refused.
    let direct = direct_clone(&w, &seed);
    let moved = move_upstream_main(&w, &direct, "someone else's work");
    w.git.run(&work, &["reset", "-q", "--hard", &seed.c1]);
    let second = w
        .git
        .commit_file(&work, "lease.txt", "second rewrite\n", "r2");
    let out = push_fails(&w.git, &work, &["--force-with-lease", "origin", "main"]);
    assert_mentions(&out, &["stale info"], "implicit stale lease");
    let refs = assert_mirror_consistent(&w, &seed, "stale implicit lease");
    assert_eq!(refs.get("refs/heads/main"), Some(&moved), "main kept");

    // Explicit stale lease.
    let out = push_fails(
        &w.git,
        &work,
        &[
            &format!("--force-with-lease=main:{rewritten}"),
            "origin",
            "main",
        ],
    );
    assert_mentions(&out, &["stale info"], "explicit stale lease");
    let refs = assert_mirror_consistent(&w, &seed, "stale explicit lease");
    assert_eq!(refs.get("refs/heads/main"), Some(&moved), "main kept");
    assert!(!has_object(&w.git, &seed.bare, &second), "r2 not upstream");

    // After a fetch the implicit lease is current again.
    w.git.run(&work, &["fetch", "-q", "origin"]);
    w.git
        .push(&work, &["-q", "--force-with-lease", "origin", "main"]);
    let refs = assert_mirror_consistent(&w, &seed, "fresh lease");
    assert_eq!(
        refs.get("refs/heads/main"),
        Some(&second),
        "main rewritten again"
    );
}

// =====================================================================================
// 6. Push options reach the upstream's hooks
// =====================================================================================

#[test]
fn mirror_push_options_reach_the_upstream_hook() {
    let (w, seed) = World::seeded_mirror("repo");
    w.git.run(
        &seed.bare,
        &["config", "receive.advertisePushOptions", "true"],
    );
    let record = w.git.unique_path("push-options");
    write_hook(
        &seed.bare,
        "pre-receive",
        &format!(
            "cat >/dev/null\n{{ echo \"count=${{GIT_PUSH_OPTION_COUNT:-unset}}\"; echo \"0=${{GIT_PUSH_OPTION_0:-}}\"; echo \"1=${{GIT_PUSH_OPTION_1:-}}\"; }} > '{}'\nexit 0\n",
            record.display()
        ),
    );
    let work = clone_through(&w, "repo", "pusher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    w.git.push(
        &work,
        &["-q", "-o", "foo=bar", "-o", "ci.skip", "origin", "main"],
    );
    let seen = std::fs::read_to_string(&record).unwrap_or_else(|e| {
        panic!(
            "the upstream's pre-receive hook did not run ({e})\n{}",
            w.server.logs()
        )
    });
    assert_eq!(
        seen, "count=2\n0=foo=bar\n1=ci.skip\n",
        "push options as the upstream hook saw them"
    );
    let refs = assert_mirror_consistent(&w, &seed, "push with options");
    assert_eq!(refs.get("refs/heads/main"), Some(&c4), "main");
}

// =====================================================================================
// 7. Concurrent pushes to different refs
// =====================================================================================

/// `clients` clones of `url`, each pushing its own new branch at the same moment; returns the
/// expected `refs/heads/client-<i> -> commit`.
#[track_caller]
fn concurrent_pushes(
    git: &Git,
    url: &str,
    remote_args: &[&str],
    clients: usize,
) -> BTreeMap<String, String> {
    let mut works = Vec::new();
    for i in 0..clients {
        let work = git.unique_path(&format!("client-{i}"));
        git.clone(url, &work, &["-q"]);
        git.run(&work, &["switch", "-q", "-c", &format!("client-{i}")]);
        let id = git.commit_file(
            &work,
            &format!("client-{i}.bin"),
            pseudo_random_bytes(32 << 10, 100 + i as u64),
            &format!("client {i}"),
        );
        works.push((work, format!("refs/heads/client-{i}"), id));
    }
    let barrier = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = works
        .iter()
        .map(|(work, branch, _)| {
            let (git, work, branch, barrier) = (
                Clone::clone(git),
                work.clone(),
                branch.clone(),
                barrier.clone(),
            );
            let remote_args: Vec<String> = remote_args.iter().map(|s| (*s).to_owned()).collect();
            std::thread::spawn(move || {
                barrier.wait();
                let mut args = vec!["push", "-q"];
                args.extend(remote_args.iter().map(String::as_str));
                args.push(&branch);
                git.try_run(&work, &args)
            })
        })
        .collect();
    for (h, (_, branch, _)) in handles.into_iter().zip(&works) {
        let out = h.join().expect("push thread");
        assert!(
            out.success(),
            "concurrent push of {branch} failed\n{}",
            out.describe()
        );
    }
    works
        .into_iter()
        .map(|(_, branch, id)| (branch, id))
        .collect()
}

#[test]
fn mirror_concurrent_pushes_to_different_refs_all_land() {
    let (w, seed) = World::seeded_mirror("repo");
    let expected = concurrent_pushes(&w.git, &w.server.git_url("repo"), &["origin"], 4);
    let refs = assert_mirror_consistent(&w, &seed, "concurrent pushes");
    for (branch, id) in &expected {
        assert_eq!(refs.get(branch), Some(id), "{branch} on the upstream");
    }
    assert_no_quarantine_left(&w.server, "after the concurrent pushes");
}

#[test]
fn local_concurrent_pushes_to_different_refs_all_land() {
    let w = World::new();
    let local = local_setup(&w, "local");
    w.git.commit_file(&local.work, "README.md", "local\n", "l1");
    local.push_both(&w.git, &["-q", "main"]);
    let expected = concurrent_pushes(&w.git, &w.server.git_url("local"), &["origin"], 4);
    let served = ls_remote_map(&w.git, &w.server.git_url("local"));
    for (branch, id) in &expected {
        assert_eq!(served.get(branch), Some(id), "{branch} served");
    }
    let clone = w.git.unique_path("check");
    w.git
        .clone(&w.server.git_url("local"), &clone, &["-q", "--mirror"]);
    w.git.fsck_strict(&clone);
    assert_no_quarantine_left(&w.server, "after the concurrent pushes");
}

// =====================================================================================
// 8. A 50 MB push (with git's probe request), memory bounded
// =====================================================================================

/// The pid of the `codestorage serve` process using `server`'s data dir.
fn server_pid(server: &Server) -> String {
    let data = server.data_dir().to_str().expect("utf-8 path").to_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == &data) && args.iter().any(|a| a == "serve") {
            found.push(pid);
        }
    }
    assert_eq!(
        found.len(),
        1,
        "exactly one `codestorage serve` on {data}: {found:?}"
    );
    found.remove(0)
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls `RssAnon` and `RssFile` of a process every 20 ms until stopped: their peaks (what
/// `VmHWM` lumps together: heap versus mapped pack files, which the kernel can drop).
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(u64, u64)>,
}

impl RssSampler {
    fn start(pid: &str) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let pid = pid.to_owned();
        let handle = std::thread::spawn(move || {
            let (mut anon, mut file) = (0, 0);
            loop {
                let done = flag.load(std::sync::atomic::Ordering::SeqCst);
                anon = anon.max(status_kb(&pid, "RssAnon"));
                file = file.max(status_kb(&pid, "RssFile"));
                if done {
                    return (anon, file);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { stop, handle }
    }

    /// `(RssAnon peak, RssFile peak)` in kB.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("RSS sampler thread")
    }
}

#[test]
fn mirror_50_mb_push_lands_upstream_with_bounded_server_memory() {
    const SIZE: usize = 50 << 20;
    /// Peak RSS (`VmHWM`), mapped pack files included.
    const LIMIT_KB: u64 = 200 << 10;
    /// Peak anonymous memory: the single 50 MB blob is inflated in memory once (as `git
    /// index-pack` does below `core.bigFileThreshold`); nothing may scale beyond that.
    const ANON_LIMIT_KB: u64 = 150 << 10;
    let (w, seed) = World::seeded_mirror("repo");
    let pid = server_pid(&w.server);
    let before_kb = status_kb(&pid, "VmHWM");
    let work = clone_through(&w, "repo", "pusher");
    let big = w.git.commit_file(
        &work,
        "huge.bin",
        pseudo_random_bytes(SIZE, 50),
        "50 MB of noise",
    );
    let trace = w.git.unique_path("curl-trace");
    let posts_before = receive_pack_posts(&w);
    let started = Instant::now();
    let sampler = RssSampler::start(&pid);
    let out = w
        .git
        .env("GIT_TRACE_CURL", &trace)
        .env("GIT_TRACE_CURL_NO_DATA", "1")
        .push(&work, &["origin", "main"]);
    let push_time = started.elapsed();
    let (anon_peak_kb, file_peak_kb) = sampler.stop();
    let after_push_kb = status_kb(&pid, "VmHWM");
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        big,
        "main on the upstream\n{}",
        out.describe()
    );
    // git probed with a flush-only POST before streaming the big body (chunked); the probe is
    // answered here and not forwarded.
    let trace = std::fs::read_to_string(&trace).expect("curl trace written");
    let client_posts = trace
        .lines()
        .filter(|l| l.contains("Send header: POST") && l.contains("git-receive-pack"))
        .count();
    assert_eq!(
        client_posts,
        2,
        "git sends a probe, then the pack (curl trace headers):\n{}",
        tail(
            &trace
                .lines()
                .filter(|l| l.contains("header"))
                .collect::<Vec<_>>()
                .join("\n"),
            4000
        )
    );
    assert!(
        trace.contains("Transfer-Encoding: chunked"),
        "the pack went out chunked"
    );
    assert_eq!(
        receive_pack_posts(&w) - posts_before,
        1,
        "one receive-pack POST reached the upstream (the probe is not forwarded)"
    );
    let refs = assert_mirror_consistent(&w, &seed, "50 MB push");
    assert_eq!(refs.get("refs/heads/main"), Some(&big), "main");
    let after_clone_kb = status_kb(&pid, "VmHWM");
    eprintln!(
        "50 MB push: took {push_time:?}; codestorage VmHWM {before_kb} kB before, {after_push_kb} kB after the push, {after_clone_kb} kB after serving it back; sampled during the push: RssAnon peak {anon_peak_kb} kB, RssFile peak {file_peak_kb} kB"
    );
    assert!(
        anon_peak_kb <= ANON_LIMIT_KB,
        "codestorage's heap (RssAnon) reached {anon_peak_kb} kB during a 50 MB push (limit {ANON_LIMIT_KB} kB)"
    );
    assert!(
        after_push_kb <= LIMIT_KB,
        "codestorage's peak RSS reached {after_push_kb} kB during a 50 MB push (limit {LIMIT_KB} kB)"
    );
    assert!(
        after_clone_kb <= LIMIT_KB,
        "codestorage's peak RSS reached {after_clone_kb} kB serving the 50 MB pack (limit {LIMIT_KB} kB)"
    );
    assert_no_quarantine_left(&w.server, "after the 50 MB push");
}

// =====================================================================================
// 9. The upstream is down
// =====================================================================================

/// The upstream answers `status` to everything from before the push: the pre-push sync fails,
/// the client hears why, nothing moves; once the upstream is back the same push goes through.
fn check_upstream_fails_before_the_advertisement(status: u16, needles: &[&str]) {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    let before_upstream = upstream_state(&w.git, &seed.bare);
    let before_served = ls_remote_map(&w.git, &w.server.git_url("repo"));
    w.upstream.set_fail(Some(status));
    let out = push_fails(&w.git, &work, &["origin", "main"]);
    let context = format!("push while the upstream answers {status}");
    assert_mentions(&out, &["upstream"], &context);
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("repo")),
        &before_served,
        &format!("{context}: codestorage refs"),
    );
    w.upstream.set_fail(None);
    assert_upstream_unchanged(&w.git, &seed.bare, &before_upstream, &context);
    assert!(!has_object(&w.git, &seed.bare, &c4), "c4 not upstream");

    // Back up: the same push goes through.
    w.git.push(&work, &["-q", "origin", "main"]);
    let refs = assert_mirror_consistent(&w, &seed, "after the upstream recovered");
    assert_eq!(refs.get("refs/heads/main"), Some(&c4), "main");

    // Last: the message says why.
    assert_mentions(&server_said(&out), needles, &context);
}

#[test]
fn mirror_push_while_the_upstream_answers_502_fails_cleanly() {
    check_upstream_fails_before_the_advertisement(502, &["502", "bad gateway"]);
}

#[test]
fn mirror_push_while_the_upstream_answers_401_fails_cleanly() {
    check_upstream_fails_before_the_advertisement(401, &["401", "credential", "auth"]);
}

/// The upstream goes away (its port closes) between the advertisement and the request. The client hears that the upstream is unreachable; nothing
/// moves here.
#[test]
fn mirror_push_while_the_upstream_is_unreachable_fails_cleanly() {
    let (mut w, _seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    let before_served = ls_remote_map(&w.git, &w.server.git_url("repo"));

    let out = gated_push(&w.git, &work, &["origin", "main"], || {
        drop(std::mem::replace(&mut w.upstream, Upstream::start()));
    });
    assert!(
        !out.success(),
        "push to an unreachable upstream must fail\n{}",
        out.describe()
    );
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("repo")),
        &before_served,
        "codestorage refs after the upstream went away during a push",
    );
    assert_ne!(before_served["refs/heads/main"], c4, "main did not move");
    assert_no_quarantine_left(&w.server, "upstream gone during the push");
    assert_mentions(
        &server_said(&out.stderr),
        &["unreachable", "connect", "refused"],
        "upstream gone during the push",
    );
}

#[test]
fn mirror_push_while_the_upstream_is_gone_fails_cleanly() {
    let (mut w, _seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    let before_served = ls_remote_map(&w.git, &w.server.git_url("repo"));
    drop(std::mem::replace(&mut w.upstream, Upstream::start()));
    let out = push_fails(&w.git, &work, &["origin", "main"]);
    assert_mentions(&out, &["upstream"], "upstream gone before the push");
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("repo")),
        &before_served,
        "codestorage refs after a push to a gone upstream",
    );
    assert_ne!(before_served["refs/heads/main"], c4, "main did not move");
    assert_mentions(
        &server_said(&out),
        &["unreachable", "connect", "refused"],
        "upstream gone before the push",
    );
}

/// The upstream goes away between the advertisement and the push request: the forwarded POST
/// fails, the client hears why, nothing moves.
fn check_upstream_fails_during_the_push(status: u16, needles: &[&str]) {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    w.git.run(&work, &["branch", "newbranch", &c4]);
    let before_upstream = upstream_state(&w.git, &seed.bare);
    let before_served = ls_remote_map(&w.git, &w.server.git_url("repo"));
    let out = gated_push(&w.git, &work, &["origin", "main", "newbranch"], || {
        w.upstream.set_fail(Some(status));
    });
    assert!(
        !out.success(),
        "push with the upstream answering {status} must fail\n{}",
        out.describe()
    );
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("repo")),
        &before_served,
        &format!("codestorage refs after the upstream answered {status}"),
    );
    assert_no_quarantine_left(&w.server, "after the failed push");
    w.upstream.set_fail(None);
    assert_upstream_unchanged(&w.git, &seed.bare, &before_upstream, "upstream failing");

    w.git.push(&work, &["-q", "origin", "main", "newbranch"]);
    let refs = assert_mirror_consistent(&w, &seed, "after the upstream recovered");
    assert_eq!(refs.get("refs/heads/newbranch"), Some(&c4), "newbranch");
    // Last: the message says why.
    assert_mentions(
        &server_said(&out.stderr),
        needles,
        &format!("upstream answering {status}"),
    );
}

#[test]
fn mirror_push_when_the_upstream_answers_502_to_the_post_fails_cleanly() {
    check_upstream_fails_during_the_push(502, &["502", "bad gateway"]);
}

#[test]
fn mirror_push_when_the_upstream_answers_401_to_the_post_fails_cleanly() {
    check_upstream_fails_during_the_push(401, &["401", "credential", "auth"]);
}

// =====================================================================================
// 10. Read-your-writes
// =====================================================================================

/// After a push, fetches are served from codestorage's store: with the upstream's upload-pack
/// switched off right after the advertisement (so the post-push sync fails), a clone and a fetch
/// through codestorage still return what was pushed.
#[test]
fn mirror_pushed_refs_are_served_at_once_even_when_the_upstream_cannot_be_read() {
    let (w, seed) = World::seeded_mirror("repo");
    let work = clone_through(&w, "repo", "pusher");
    let fetcher = clone_through(&w, "repo", "fetcher");
    let c4 = w.git.commit_file(&work, "src/lib.rs", lib_rs(4), "c4");
    w.git
        .run(&work, &["tag", "-a", "v4", "-m", "pushed tag", &c4]);
    let runs_before = w.server.sync_state("repo").run_count;
    let out = gated_push(&w.git, &work, &["origin", "main", "v4"], || {
        w.git
            .run(&seed.bare, &["config", "http.uploadpack", "false"]);
    });
    assert!(out.success(), "push\n{}", out.describe());
    assert_eq!(
        w.git.rev_parse(&seed.bare, "refs/heads/main"),
        c4,
        "upstream main"
    );

    let check = |context: &str| {
        let clone = w.git.unique_path("ryw");
        w.git
            .clone(&w.server.git_url("repo"), &clone, &["-q", "--mirror"]);
        let served = w.git.served_refs(&clone);
        assert_eq!(served.get("refs/heads/main"), Some(&c4), "{context}: main");
        assert_eq!(
            served.get("refs/tags/v4"),
            Some(&w.git.rev_parse(&work, "refs/tags/v4")),
            "{context}: v4"
        );
        w.git.fsck_strict(&clone);
        w.git.run(&fetcher, &["fetch", "-q", "origin"]);
        assert_eq!(
            w.git.rev_parse(&fetcher, "refs/remotes/origin/main"),
            c4,
            "{context}: fetch"
        );
    };
    check("right after the push");

    // The post-push sync cannot read the upstream; the pushed state stays served.
    wait_until(Duration::from_secs(30), "the post-push sync to run", || {
        let sync = w.server.sync_state("repo");
        (sync.run_count > runs_before && !sync.in_progress).then_some(())
    });
    check("after the failed post-push sync");
    w.git
        .run(&seed.bare, &["config", "http.uploadpack", "true"]);
    assert_mirror_consistent(&w, &seed, "upload-pack back on");
}

// =====================================================================================
// 11. Hold-back: a pack over --max-pack-bytes never lands upstream
// =====================================================================================

#[test]
fn mirror_push_over_max_pack_bytes_fails_and_the_upstream_applies_nothing() {
    let (w, seed) = mirror_world(Server::builder().arg("--max-pack-bytes").arg("200000"));
    let work = clone_through(&w, "repo", "pusher");
    let big = w.git.commit_file(
        &work,
        "big.dat",
        pseudo_random_bytes(1_200_000, 77),
        "1.2 MB of noise",
    );
    let before_upstream = upstream_state(&w.git, &seed.bare);
    let before_served = ls_remote_map(&w.git, &w.server.git_url("repo"));
    let posts_before = receive_pack_posts(&w);
    let out = push_fails(&w.git, &work, &["origin", "main"]);
    assert!(
        receive_pack_posts(&w) > posts_before,
        "the pack was being streamed to the upstream (a POST reached it), so the hold-back is \
         what kept it out"
    );
    assert_upstream_unchanged(&w.git, &seed.bare, &before_upstream, "oversized pack");
    assert!(
        !has_object(&w.git, &seed.bare, &big),
        "the commit is not upstream"
    );
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("repo")),
        &before_served,
        "codestorage refs after the oversized pack",
    );
    assert_no_quarantine_left(&w.server, "after the oversized pack");

    // A small push still works.
    w.git.run(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    let small = w.git.commit_file(&work, "small.txt", "small\n", "small");
    w.git.push(&work, &["-q", "origin", "main"]);
    let refs = assert_mirror_consistent(&w, &seed, "small push after the refused one");
    assert_eq!(refs.get("refs/heads/main"), Some(&small), "main");
    // Last: the client is told the pack is over the limit.
    assert_mentions(&out, PACK_LIMIT_WORDS, "oversized pack");
}

/// Words that say a pack was refused for its size.
const PACK_LIMIT_WORDS: &[&str] = &["too large", "too big", "exceeds", "max-pack-bytes", "limit"];

#[test]
fn local_push_over_max_pack_bytes_is_refused_and_changes_nothing() {
    let w = World::with_server(Server::builder().arg("--max-pack-bytes").arg("200000"));
    let local = local_setup(&w, "local");
    w.git.commit_file(&local.work, "README.md", "local\n", "l1");
    local.push_both(&w.git, &["-q", "main"]);
    let before = ls_remote_map(&w.git, &w.server.git_url("local"));
    w.git.commit_file(
        &local.work,
        "big.dat",
        pseudo_random_bytes(1_200_000, 78),
        "1.2 MB of noise",
    );
    let out = push_fails(&w.git, &local.work, &["cs", "main"]);
    assert_maps_eq(
        &ls_remote_map(&w.git, &w.server.git_url("local")),
        &before,
        "codestorage refs after the oversized pack",
    );
    assert_no_quarantine_left(&w.server, "after the oversized pack");
    local.assert_matches(&w, "local", "after the oversized pack");
    assert_mentions(&out, PACK_LIMIT_WORDS, "oversized pack");
}

// =====================================================================================
// 12. Bad input to a mirror, hand-made
// =====================================================================================

#[test]
fn mirror_bad_packs_are_refused_and_the_upstream_applies_nothing() {
    let (mut w, seed) = World::seeded_mirror("repo");
    let t = Target {
        w: &w,
        name: "repo",
        work: &seed.work,
        upstream: Some(&seed),
    };
    check_bad_packs(&t);
    check_missing_base(&t);
    check_good_raw_push(&t);
    stop_and_fsck(&mut w.server);
}

#[test]
fn mirror_invalid_ref_names_are_refused_before_the_upstream() {
    let (mut w, seed) = World::seeded_mirror("repo");
    let t = Target {
        w: &w,
        name: "repo",
        work: &seed.work,
        upstream: Some(&seed),
    };
    check_invalid_ref_names(&t);
    check_good_raw_push(&t);
    stop_and_fsck(&mut w.server);
}

#[test]
fn mirror_old_id_mismatch_is_refused_as_stale_info() {
    let (mut w, seed) = World::seeded_mirror("repo");
    let t = Target {
        w: &w,
        name: "repo",
        work: &seed.work,
        upstream: Some(&seed),
    };
    check_old_id_mismatch(&t);
    check_good_raw_push(&t);
    stop_and_fsck(&mut w.server);
}

// =====================================================================================
// 13. Local repositories
// =====================================================================================

#[test]
fn local_push_new_branch_fast_forward_force_delete_tags_atomic_and_options() {
    let w = World::new();
    let local = local_setup(&w, "local");
    let work = &local.work;

    // First push into the empty repo.
    let l1 = w.git.commit_file(work, "README.md", "local repo\n", "l1");
    let l2 = w.git.commit_file(work, "src/lib.rs", lib_rs(1), "l2");
    local.push_both(&w.git, &["-q", "main"]);
    let refs = local.assert_matches(&w, "local", "first push");
    assert_eq!(refs.get("refs/heads/main"), Some(&l2), "main");

    // A new branch.
    w.git.run(work, &["switch", "-q", "-c", "topic"]);
    let t1 = w.git.commit_file(work, "topic.txt", "topic\n", "t1");
    local.push_both(&w.git, &["-q", "topic"]);
    let refs = local.assert_matches(&w, "local", "new branch");
    assert_eq!(refs.get("refs/heads/topic"), Some(&t1), "topic");

    // Fast-forward.
    w.git.run(work, &["switch", "-q", "main"]);
    let l3 = w.git.commit_file(work, "src/lib.rs", lib_rs(2), "l3");
    local.push_both(&w.git, &["-q", "main"]);
    let refs = local.assert_matches(&w, "local", "fast-forward");
    assert_eq!(refs.get("refs/heads/main"), Some(&l3), "main");

    // Non-fast-forward without force is refused; with force it lands.
    w.git.run(work, &["reset", "-q", "--hard", &l1]);
    let l4 = w.git.commit_file(work, "other.txt", "rewritten\n", "l4");
    let out = push_fails(&w.git, work, &["cs", "main"]);
    assert_mentions(
        &out,
        &["non-fast-forward", "rejected"],
        "non-ff without force",
    );
    local.assert_matches(&w, "local", "refused non-fast-forward");
    local.push_both(&w.git, &["-q", "--force", "main"]);
    let refs = local.assert_matches(&w, "local", "force push");
    assert_eq!(refs.get("refs/heads/main"), Some(&l4), "main");

    // Tags: annotated and lightweight; deletion of a branch and of a tag.
    w.git.run(work, &["tag", "-a", "v1", "-m", "v1", &l4]);
    w.git.run(work, &["tag", "light", &t1]);
    local.push_both(&w.git, &["-q", "v1", "light"]);
    let refs = local.assert_matches(&w, "local", "tags");
    assert_eq!(
        refs.get("refs/tags/v1"),
        Some(&w.git.rev_parse(work, "refs/tags/v1")),
        "annotated tag"
    );
    assert_eq!(refs.get("refs/tags/light"), Some(&t1), "lightweight tag");
    local.push_both(&w.git, &["-q", "--delete", "topic", "light"]);
    let refs = local.assert_matches(&w, "local", "deletions");
    assert!(!refs.contains_key("refs/heads/topic"), "topic deleted");
    assert!(!refs.contains_key("refs/tags/light"), "light deleted");

    // Atomic multi-ref push and force-with-lease.
    w.git.run(work, &["switch", "-q", "-c", "a"]);
    let a1 = w.git.commit_file(work, "a.txt", "a\n", "a1");
    w.git.run(work, &["switch", "-q", "main"]);
    let l5 = w.git.commit_file(work, "src/lib.rs", lib_rs(3), "l5");
    local.push_both(
        &w.git,
        &["-q", "--atomic", "main", "a", "refs/heads/a:refs/heads/b"],
    );
    let refs = local.assert_matches(&w, "local", "atomic push");
    assert_eq!(refs.get("refs/heads/main"), Some(&l5), "main");
    assert_eq!(refs.get("refs/heads/b"), Some(&a1), "b");
    w.git.run(work, &["reset", "-q", "--hard", &l4]);
    let out = push_fails(
        &w.git,
        work,
        &[&format!("--force-with-lease=main:{l3}"), "cs", "main"],
    );
    assert_mentions(&out, &["stale info"], "stale lease");
    local.push_both(
        &w.git,
        &["-q", &format!("--force-with-lease=main:{l5}"), "main"],
    );
    let refs = local.assert_matches(&w, "local", "force-with-lease");
    assert_eq!(refs.get("refs/heads/main"), Some(&l4), "main");

    // Push options are accepted.
    let l6 = w.git.commit_file(work, "opt.txt", "opt\n", "l6");
    w.git.push(
        work,
        &["-q", "-o", "foo=bar", "-o", "ci.skip", "cs", "main"],
    );
    w.git.push(work, &["-q", "oracle", "main"]);
    let refs = local.assert_matches(&w, "local", "push with options");
    assert_eq!(refs.get("refs/heads/main"), Some(&l6), "main");

    // A fresh clone through codestorage sees it all.
    let clone = w.git.unique_path("clone");
    w.git.clone(&w.server.git_url("local"), &clone, &["-q"]);
    assert_eq!(w.git.rev_parse(&clone, "HEAD"), l6, "clone checks out main");
    w.git.fsck_strict(&clone);
    assert_no_quarantine_left(&w.server, "after the local pushes");
}

/// `--atomic` where the server refuses one ref (it moved after the client's advertisement):
/// nothing moves.
#[test]
fn local_atomic_push_with_one_stale_ref_moves_nothing() {
    let w = World::new();
    let local = local_setup(&w, "local");
    let work = &local.work;
    let base = w.git.commit_file(work, "README.md", "local\n", "l1");
    local.push_both(&w.git, &["-q", "main"]);

    let other = w.git.unique_path("other");
    w.git.clone(&w.server.git_url("local"), &other, &["-q"]);

    let mine = w.git.commit_file(work, "mine.txt", "mine\n", "mine");
    w.git.run(work, &["branch", "side", &mine]);
    let mut theirs = String::new();
    let out = gated_push(&w.git, work, &["--atomic", "cs", "main", "side"], || {
        theirs = w
            .git
            .commit_file(&other, "theirs.txt", "theirs\n", "theirs");
        w.git.push(&other, &["-q", "origin", "main"]);
        w.git.push(
            &other,
            &["-q", local.oracle.to_str().expect("utf-8 path"), "main"],
        );
    });
    assert!(
        !out.success(),
        "the atomic push must fail\n{}",
        out.describe()
    );
    assert_mentions(
        &out.stderr,
        &["[remote rejected]", "stale", "atomic"],
        "atomic push with a stale ref",
    );
    let refs = local.assert_matches(&w, "local", "refused atomic push");
    assert_eq!(refs.get("refs/heads/main"), Some(&theirs), "main is theirs");
    assert!(
        !refs.contains_key("refs/heads/side"),
        "side not created: {refs:?}"
    );
    assert_ne!(theirs, base, "the other push moved main");
    assert_no_quarantine_left(&w.server, "after the refused atomic push");
}

/// Local repo with some history for the hand-made requests: `main` (3 commits), pushed.
fn local_with_history(w: &World) -> Local {
    let local = local_setup(w, "local");
    w.git.commit_file(&local.work, "README.md", "local\n", "l1");
    w.git
        .commit_file(&local.work, "src/lib.rs", lib_rs(1), "l2");
    w.git
        .commit_file(&local.work, "src/lib.rs", lib_rs(2), "l3");
    local.push_both(&w.git, &["-q", "main"]);
    local
}

#[test]
fn local_bad_packs_are_refused_and_change_nothing() {
    let mut w = World::new();
    let local = local_with_history(&w);
    let t = Target {
        w: &w,
        name: "local",
        work: &local.work,
        upstream: None,
    };
    check_bad_packs(&t);
    check_missing_base(&t);
    check_good_raw_push(&t);
    stop_and_fsck(&mut w.server);
}

#[test]
fn local_invalid_ref_names_are_refused() {
    let mut w = World::new();
    let local = local_with_history(&w);
    let t = Target {
        w: &w,
        name: "local",
        work: &local.work,
        upstream: None,
    };
    check_invalid_ref_names(&t);
    check_good_raw_push(&t);
    stop_and_fsck(&mut w.server);
}

#[test]
fn local_old_id_mismatch_is_refused() {
    let mut w = World::new();
    let local = local_with_history(&w);
    let t = Target {
        w: &w,
        name: "local",
        work: &local.work,
        upstream: None,
    };
    check_old_id_mismatch(&t);
    check_good_raw_push(&t);
    stop_and_fsck(&mut w.server);
}
