//! Server limits: each one exceeded gives a clear error (git `ERR`/`ng`, or HTTP 413/431/429/408
//! with JSON `{"error": …}` on REST) and changes nothing; connection and pack-generation slots
//! queue rather than fail; 64 concurrent clones from one loopback address pass with the
//! defaults; a full disk fails a push cleanly and leaves the store consistent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::git::{Git, pseudo_random_bytes};
use crate::support::http::HttpResponse;
use crate::support::pkt::{self, UPLOAD_PACK_REQUEST};
use crate::support::{Server, World, tail};

fn ls_remote_map(git: &Git, url: &str) -> BTreeMap<String, String> {
    git.run(git.scratch(), &["ls-remote", url])
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (name.to_owned(), id.to_owned()))
        .collect()
}

#[track_caller]
fn assert_json_error(resp: &HttpResponse, status: u16, needle: &str) {
    assert_eq!(resp.status, status, "{}", resp.describe());
    let body = resp.json();
    let msg = body["error"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(msg.contains(needle), "error mentions {needle:?}: {body}");
}

/// A local repo `name` with one pushed commit, and the working clone that pushed it.
fn local_repo(w: &World, name: &str) -> PathBuf {
    w.server.create_local(name);
    let work = w.git.init(&format!("work-{name}"));
    w.git
        .run(&work, &["remote", "add", "cs", &w.server.git_url(name)]);
    w.git.commit_file(&work, "README.md", "hello\n", "first");
    w.git.push(&work, &["-q", "cs", "main"]);
    work
}

fn upload_pack(server: &Server, repo: &str, body: &[u8], extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![
        ("Content-Type", UPLOAD_PACK_REQUEST),
        ("Git-Protocol", "version=2"),
    ];
    headers.extend_from_slice(extra);
    server.request(
        "POST",
        &format!("/{repo}.git/git-upload-pack"),
        Some(body),
        &headers,
    )
}

/// Raw TCP to the server's plain-HTTP listener.
fn connect(server: &Server) -> TcpStream {
    let addr = server.base().trim_start_matches("http://").to_owned();
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    s
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn rest_body_over_max_json_bytes_is_413_and_creates_nothing() {
    let w = World::with_server(Server::builder().arg("--max-json-bytes").arg("4096"));
    let before = w.server.list_repos();
    let resp = w.server.request_json(
        "POST",
        "/api/repos",
        &json!({ "name": "big", "padding": "x".repeat(10_000) }),
    );
    assert_json_error(&resp, 413, "larger than 4096");
    assert_eq!(w.server.list_repos(), before, "nothing created");
    // A small body still works.
    w.server.create_local("small");
}

#[test]
fn upload_pack_limits_refuse_cleanly_and_serve_good_requests() {
    let w = World::with_server(
        Server::builder()
            .arg("--max-request-bytes")
            .arg("4000000")
            .arg("--max-pktlines")
            .arg("50"),
    );
    let work = local_repo(&w, "r");
    let tip = w.git.rev_parse(&work, "HEAD");
    // Too many pkt-lines: a git ERR line, no pack.
    let haves: Vec<String> = (0..60).map(|i| format!("have {:040x}\n", i + 1)).collect();
    let mut parts: Vec<Vec<u8>> = vec![
        pkt::pkt("command=fetch\n"),
        pkt::DELIM.to_vec(),
        pkt::pkt(format!("want {tip}\n")),
    ];
    parts.extend(haves.iter().map(pkt::pkt));
    parts.push(pkt::pkt("done\n"));
    parts.push(pkt::FLUSH.to_vec());
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let resp = upload_pack(&w.server, "r", &pkt::body(&refs), &[]);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(pkt::has_err(&resp.body) && !pkt::has_pack(&resp.body));
    assert!(
        resp.text().contains("more than 50 pkt-lines"),
        "{}",
        resp.describe()
    );
    // Over --max-request-bytes: 413.
    let big = vec![b'0'; 5_000_000];
    let resp = upload_pack(&w.server, "r", &big, &[]);
    assert_eq!(resp.status, 413, "{}", resp.describe());
    // A gzip bomb: 20 MiB of zeros in ~20 KB, refused by the ratio bound (not inflated past
    // 100 x its size).
    let bomb = pkt::gzip(&vec![0u8; 20 << 20]);
    assert!(bomb.len() < 200_000, "bomb is {} bytes", bomb.len());
    let started = Instant::now();
    let resp = upload_pack(&w.server, "r", &bomb, &[("Content-Encoding", "gzip")]);
    assert_eq!(resp.status, 413, "{}", resp.describe());
    assert!(
        resp.text().contains("expands more than"),
        "{}",
        resp.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A good gzip request still gets its pack, and git clones.
    let good = pkt::gzip(&pkt::v2_fetch(&[&tip]));
    let resp = upload_pack(&w.server, "r", &good, &[("Content-Encoding", "gzip")]);
    assert!(
        resp.status == 200 && pkt::has_pack(&resp.body),
        "{}",
        resp.describe()
    );
    let dest = w.git.unique_path("clone");
    w.git.clone(&w.server.git_url("r"), &dest, &["-q"]);
    w.git.fsck_strict(&dest);
}

#[test]
fn push_over_max_push_refs_is_refused_and_changes_nothing() {
    let w = World::with_server(Server::builder().arg("--max-push-refs").arg("2"));
    let work = local_repo(&w, "r");
    let url = w.server.git_url("r");
    let before = ls_remote_map(&w.git, &url);
    for b in ["a", "b", "c"] {
        w.git.run(&work, &["branch", b]);
    }
    let out = w.git.run_fail(&work, &["push", "cs", "a", "b", "c"]);
    assert!(
        out.stderr
            .contains("too many ref updates in one push (at most 2)"),
        "{}",
        tail(&out.stderr, 3000)
    );
    assert_eq!(ls_remote_map(&w.git, &url), before, "no ref moved");
    w.git.push(&work, &["-q", "cs", "a", "b"]);
    assert_eq!(ls_remote_map(&w.git, &url).len(), before.len() + 2);
}

#[test]
fn push_with_an_object_over_max_object_bytes_is_refused_and_changes_nothing() {
    let mut w = World::with_server(Server::builder().arg("--max-object-bytes").arg("100000"));
    let work = local_repo(&w, "r");
    let url = w.server.git_url("r");
    let before = ls_remote_map(&w.git, &url);
    w.git
        .commit_file(&work, "big.bin", pseudo_random_bytes(400_000, 5), "big");
    let out = w.git.run_fail(&work, &["push", "cs", "main"]);
    assert!(
        out.stderr
            .contains("an object in the pack is larger than the limit of 100000 bytes"),
        "the server says why: {}",
        tail(&out.stderr, 3000)
    );
    assert_eq!(ls_remote_map(&w.git, &url), before, "no ref moved");
    w.git.run(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    w.git.commit_file(&work, "small.txt", "small\n", "small");
    w.git.push(&work, &["-q", "cs", "main"]);
    w.server.stop();
    let fsck = w.server.fsck();
    assert!(fsck.success(), "{}", fsck.describe());
}

#[test]
fn oversized_headers_are_431_and_the_server_stays_healthy() {
    let w = World::new();
    let mut s = connect(&w.server);
    let head = format!(
        "GET /api/repos HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 << 10)
    );
    // The server may answer and close before reading everything.
    let _ = s.write_all(head.as_bytes());
    let answer = read_all(s);
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", tail(&answer, 300));
    // Still healthy: a normal request works.
    w.server.create_local("after");
}

#[test]
fn slow_bodies_get_408_and_stalled_headers_are_closed() {
    let w = World::with_server(
        Server::builder()
            .arg("--body-idle-timeout")
            .arg("1")
            .arg("--header-read-timeout")
            .arg("2"),
    );
    let before = w.server.list_repos();
    let mut s = connect(&w.server);
    let head = format!(
        "POST /api/repos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"name\"",
        w.server.token()
    );
    s.write_all(head.as_bytes()).expect("send");
    let started = Instant::now();
    let answer = read_all(s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{}", tail(&answer, 500));
    assert!(
        answer.contains("{\"error\":\"request body timed out"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(w.server.list_repos(), before, "nothing created");

    // Half a request head, then silence: the connection is closed.
    let mut s = connect(&w.server);
    s.write_all(b"GET /api/repos HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    let started = Instant::now();
    let answer = read_all(s);
    assert!(!answer.contains("200 OK"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "closed after the header-read timeout: {took:?}"
    );
}

#[test]
fn per_token_rate_limit_is_429_with_retry_after() {
    let w = World::with_server(Server::builder().arg("--rate-limit").arg("3"));
    let token = w.server.token();
    let bearer = format!("Bearer {token}");
    for i in 0..3 {
        let r = w
            .server
            .request("GET", "/api/repos", None, &[("Authorization", &bearer)]);
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
    }
    let r = w
        .server
        .request("GET", "/api/repos", None, &[("Authorization", &bearer)]);
    assert_json_error(&r, 429, "rate limit");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {}", r.describe()));
    assert!((1..=20).contains(&retry), "{retry}");
    // git gets the same refusal.
    let out = w
        .git
        .run_fail(w.git.scratch(), &["ls-remote", &w.server.git_url("x")]);
    assert!(out.stderr.contains("429"), "{}", out.stderr);
    // Another subject has its own budget.
    let other = w.server.mint(&[
        "--repo", "org", "--scopes", "admin", "--ttl", "600", "--sub", "other",
    ]);
    let r = w.server.request(
        "GET",
        "/api/repos",
        None,
        &[("Authorization", &format!("Bearer {other}"))],
    );
    assert_eq!(r.status, 200, "{}", r.describe());
}

/// Run `n` copies of `job` at once; all must succeed.
fn concurrently(n: usize, job: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        let job = &job;
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || job(i))).collect();
        for h in handles {
            h.join().expect("job succeeded");
        }
    });
}

#[test]
fn connections_and_pack_generations_queue_rather_than_fail() {
    let w = World::with_server(
        Server::builder()
            .arg("--max-connections")
            .arg("2")
            .arg("--max-pack-generations")
            .arg("1"),
    );
    local_repo(&w, "r");
    let url = w.server.git_url("r");
    // Hold both connection slots for a moment with idle connections.
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(&w.server)).collect();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(idle);
    });
    concurrently(6, |_| {
        let out = w.git.try_run(w.git.scratch(), &["ls-remote", &url]);
        assert!(out.success(), "{}", out.describe());
        assert!(out.stdout.contains("refs/heads/main"));
    });
    release.join().expect("release");
    concurrently(6, |i| {
        let dest = w.git.unique_path(&format!("c{i}"));
        let out = w.git.try_run(
            w.git.scratch(),
            &["clone", "-q", &url, dest.to_str().expect("utf-8")],
        );
        assert!(out.success(), "{}", out.describe());
    });
}

#[test]
fn sixty_four_concurrent_clones_pass_with_the_default_limits() {
    let (w, seed) = World::seeded_mirror("repo");
    let url = w.server.git_url("repo");
    let main = w.git.rev_parse(&seed.bare, "refs/heads/main");
    let started = Instant::now();
    concurrently(64, |i| {
        let dest = w.git.unique_path(&format!("c{i}"));
        let out = w.git.try_run(
            w.git.scratch(),
            &["clone", "-q", "--bare", &url, dest.to_str().expect("utf-8")],
        );
        assert!(out.success(), "clone {i}: {}", out.describe());
        assert_eq!(w.git.rev_parse(&dest, "refs/heads/main"), main);
    });
    eprintln!("64 concurrent clones in {:?}", started.elapsed());
    let one = w.git.unique_path("check");
    w.git.clone(&url, &one, &["-q", "--bare"]);
    w.git.fsck_strict(&one);
}

/// A tmpfs mounted over a directory while it lives (root only).
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Move the server's data dir onto a `size` tmpfs (stopped server; restarted after).
fn data_dir_on_tmpfs(server: &mut Server, size: &str) -> Option<Tmpfs> {
    server.stop();
    let data = server.data_dir().to_owned();
    let saved = data.with_extension("saved");
    std::fs::rename(&data, &saved).expect("move data dir");
    std::fs::create_dir(&data).expect("mount point");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        std::fs::remove_dir(&data).expect("remove mount point");
        std::fs::rename(&saved, &data).expect("restore data dir");
        server.restart();
        return None;
    }
    let guard = Tmpfs(data.clone());
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&data)
        .status()
        .expect("cp");
    assert!(cp.success(), "copy data dir into the tmpfs");
    server.restart();
    Some(guard)
}

fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .expect("df");
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df avail");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    let mut left = avail.saturating_sub(leave);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    filler
}

#[test]
fn a_full_disk_fails_the_push_cleanly_and_the_store_stays_consistent() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let mut w = World::new();
    let work = local_repo(&w, "r");
    let Some(_tmpfs) = data_dir_on_tmpfs(&mut w.server, "40m") else {
        eprintln!("skipped: mount -t tmpfs failed");
        return;
    };
    let url = w.server.git_url("r");
    let before = ls_remote_map(&w.git, &url);
    let filler = fill(w.server.data_dir(), 512 << 10);
    w.git
        .commit_file(&work, "big.bin", pseudo_random_bytes(3 << 20, 9), "big");
    let out = w.git.try_run(&work, &["push", &url, "main"]);
    assert!(
        !out.success(),
        "push onto a full disk fails: {}",
        out.describe()
    );
    assert_eq!(ls_remote_map(&w.git, &url), before, "no ref moved");
    assert!(w.server.is_running(), "the server survives a full disk");
    // Reads need no disk: with not a byte left (so no pack spool can be written), clones work.
    let brim_dir = w.server.data_dir().join("brim");
    std::fs::create_dir(&brim_dir).expect("mkdir");
    let brim = fill(&brim_dir, 0);
    for (i, extra) in [&["-q"][..], &["-q", "--depth", "1"][..]]
        .iter()
        .enumerate()
    {
        let dest = w.git.unique_path(&format!("full-{i}"));
        w.git.clone(&url, &dest, extra);
        w.git.fsck_strict(&dest);
    }
    eprintln!(
        "shared generation fell back to unshared on the full disk: {}",
        w.server.logs().contains("generating unshared")
    );
    std::fs::remove_file(&brim).expect("free the disk");
    std::fs::remove_dir(&brim_dir).expect("rmdir");
    std::fs::remove_file(&filler).expect("free the disk");
    w.git.push(&work, &["-q", &url, "main"]);
    let dest = w.git.unique_path("after");
    w.git.clone(&url, &dest, &["-q"]);
    w.git.fsck_strict(&dest);
    w.server.stop();
    let fsck = w.server.fsck();
    assert!(fsck.success(), "{}", fsck.describe());
}
