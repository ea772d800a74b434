//! CI herds: identical concurrent fetches share one pack generation. A slow reader holds a
//! spool open while fast identical requests join it and finish at their own pace, with the
//! server's anonymous memory staying flat; a request that differs gets its own generation;
//! concurrent real `git clone`s (shallow ones shared, full ones streamed from the stored packs)
//! are complete and fsck-clean.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::git::pseudo_random_bytes;
use crate::support::pkt::{self, UPLOAD_PACK_REQUEST};
use crate::support::{Server, World, http};

/// `codestorage_packs_generated_total` by path.
fn packs_by_path(server: &Server) -> BTreeMap<String, f64> {
    let resp = http::request(server.base(), "GET", "/metrics", &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    resp.text()
        .lines()
        .filter_map(|l| l.strip_prefix("codestorage_packs_generated_total{path=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(path, n)| (path.to_owned(), n.trim().parse().unwrap_or(f64::NAN)))
        .collect()
}

fn count(m: &BTreeMap<String, f64>, path: &str) -> f64 {
    m.get(path).copied().unwrap_or(0.0)
}

/// The server's anonymous resident memory in KiB (heap, not page cache or mapped packs).
fn rss_anon_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/<pid>/status")
}

/// The pack carried in a v2 fetch response's sideband (band 1), after `packfile`.
fn pack_of(body: &[u8]) -> Vec<u8> {
    let mut pack = Vec::new();
    let mut rest = body;
    let mut in_pack = false;
    while rest.len() >= 4 {
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..4]).expect("hex"), 16)
            .expect("pkt length");
        if len < 4 {
            rest = &rest[4..];
            continue;
        }
        let payload = &rest[4..len];
        if in_pack {
            match payload.first() {
                Some(1) => pack.extend_from_slice(&payload[1..]),
                Some(3) => panic!("server error: {}", String::from_utf8_lossy(&payload[1..])),
                _ => {}
            }
        } else if payload == b"packfile\n" {
            in_pack = true;
        }
        rest = &rest[len..];
    }
    assert!(pack.starts_with(b"PACK"), "a pack in the response");
    pack
}

/// An upload-pack POST on a raw connection, of which only the first `first` bytes are read now.
struct SlowReader {
    stream: TcpStream,
    got: Vec<u8>,
}

impl SlowReader {
    fn start(server: &Server, repo: &str, body: &[u8], first: usize) -> SlowReader {
        let addr = server.base().trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let head = format!(
            "POST /{repo}.git/git-upload-pack HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {}\r\nContent-Type: {UPLOAD_PACK_REQUEST}\r\n\
             Git-Protocol: version=2\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            server.token(),
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send head");
        stream.write_all(body).expect("send body");
        let mut got = vec![0u8; first];
        stream.read_exact(&mut got).expect("first bytes");
        SlowReader { stream, got }
    }

    /// Read the rest and return the de-chunked HTTP body.
    fn finish(mut self) -> Vec<u8> {
        self.stream.read_to_end(&mut self.got).expect("rest");
        let raw = self.got;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let mut body = &raw[split + 4..];
        if !head.contains("transfer-encoding: chunked") {
            return body.to_vec();
        }
        let mut out = Vec::new();
        loop {
            let line_end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(
                std::str::from_utf8(&body[..line_end])
                    .expect("utf-8")
                    .trim(),
                16,
            )
            .expect("hex chunk size");
            body = &body[line_end + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&body[..size]);
            body = &body[size + 2..];
        }
    }
}

/// A local repository with a 24 MiB incompressible blob, and the id of its `main`.
fn big_repo(w: &World, name: &str) -> String {
    w.server.create_local(name);
    let work = w.git.init(&format!("work-{name}"));
    w.git
        .run(&work, &["remote", "add", "cs", &w.server.git_url(name)]);
    std::fs::write(work.join("big.bin"), pseudo_random_bytes(24 << 20, 7)).expect("write blob");
    w.git.run(&work, &["add", "big.bin"]);
    w.git.commit_file(&work, "README.md", "herd\n", "big");
    w.git.push(&work, &["-q", "cs", "main"]);
    w.git.rev_parse(&work, "HEAD")
}

fn write_pack(w: &World, pack: &[u8], name: &str) -> PathBuf {
    let path = w.git.unique_path(name);
    std::fs::write(&path, pack).expect("write pack");
    path
}

#[test]
fn identical_concurrent_fetches_share_one_generation_read_at_their_own_pace() {
    let w = World::new();
    let main = big_repo(&w, "herd");
    // A shallow fetch: its pack is generated by a walk (a full one streams the stored packs,
    // which is never spooled).
    let fetch = |ofs_delta: bool| {
        let mut parts = vec![
            pkt::pkt("command=fetch\n"),
            pkt::DELIM.to_vec(),
            pkt::pkt("no-progress\n"),
        ];
        if ofs_delta {
            parts.push(pkt::pkt("ofs-delta\n"));
        }
        parts.push(pkt::pkt(format!("want {main}\n")));
        parts.push(pkt::pkt("deepen 1\n"));
        parts.push(pkt::pkt("done\n"));
        parts.push(pkt::FLUSH.to_vec());
        parts.concat()
    };
    let body = fetch(true);
    // Warm up (and settle the allocator) with one unshared fetch.
    let warm = w.server.request(
        "POST",
        "/herd.git/git-upload-pack",
        Some(&body),
        &[
            ("Content-Type", UPLOAD_PACK_REQUEST),
            ("Git-Protocol", "version=2"),
        ],
    );
    assert_eq!(warm.status, 200, "{}", warm.describe());
    let reference = pack_of(&warm.body);

    let before = packs_by_path(&w.server);
    let rss_before = rss_anon_kib(&w.server);
    // The slow reader leads: it takes 64 KiB of a 24 MiB pack and stops reading.
    let slow = SlowReader::start(&w.server, "herd", &body, 64 << 10);
    let fast: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let resp = w.server.request(
                        "POST",
                        "/herd.git/git-upload-pack",
                        Some(&body),
                        &[
                            ("Content-Type", UPLOAD_PACK_REQUEST),
                            ("Git-Protocol", "version=2"),
                        ],
                    );
                    assert_eq!(resp.status, 200, "{}", resp.describe());
                    pack_of(&resp.body)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fast reader"))
            .collect()
    });
    // The fast readers finished while the slow one still holds its connection.
    let rss_during = rss_anon_kib(&w.server);
    let during = packs_by_path(&w.server);
    let generated = count(&during, "fast") + count(&during, "walk")
        - count(&before, "fast")
        - count(&before, "walk");
    let shared = count(&during, "shared") - count(&before, "shared");
    assert_eq!(
        generated, 1.0,
        "one generation for seven identical requests"
    );
    assert_eq!(shared, 6.0, "six requests read the leader's spool");
    for pack in &fast {
        assert!(pack == &reference, "every reader gets the same pack");
    }
    assert!(
        rss_during < rss_before + 16 * 1024,
        "anonymous RSS grew by {} KiB while a reader of a 24 MiB pack stalled",
        rss_during.saturating_sub(rss_before)
    );

    // A request that differs (no ofs-delta) does not join the spool the slow reader holds.
    let other_body = fetch(false);
    let other = w.server.request(
        "POST",
        "/herd.git/git-upload-pack",
        Some(&other_body),
        &[
            ("Content-Type", UPLOAD_PACK_REQUEST),
            ("Git-Protocol", "version=2"),
        ],
    );
    assert_eq!(other.status, 200, "{}", other.describe());
    let after_other = packs_by_path(&w.server);
    assert_eq!(
        count(&after_other, "shared"),
        count(&during, "shared"),
        "a different request is not shared"
    );

    // The slow reader resumes and gets the same complete pack.
    let slow_pack = pack_of(&slow.finish());
    assert!(slow_pack == reference, "the slow reader's pack is complete");
    let repo = w.git.init("verify");
    let path = write_pack(&w, &slow_pack, "slow.pack");
    // index-pack accepts it with nothing to complete: a whole, self-contained pack.
    let (objects, appended) = w.git.received_pack(&path, &repo);
    assert_eq!(appended, 0, "no thin deltas in a full fetch");
    assert_eq!(objects.len(), 4, "commit, tree and two blobs");
    assert!(objects.contains(&main));
    // The spool is gone with its last reader: nothing is left under the data dir.
    let spool = w.server.data_dir().join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spool files left: {left:?}");
}

#[test]
fn concurrent_git_clones_through_shared_generations_are_complete() {
    let (w, seed) = World::seeded_mirror("repo");
    let url = w.server.git_url("repo");
    let before = packs_by_path(&w.server);
    let clones: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (w, url) = (&w, &url);
                s.spawn(move || {
                    let dest = w.git.unique_path(&format!("c{i}"));
                    let extra: &[&str] = if i % 2 == 0 {
                        &["-q", "--bare"]
                    } else {
                        &["-q", "--bare", "--depth", "1"]
                    };
                    let out = w.git.try_run(
                        w.git.scratch(),
                        &[
                            &["clone"],
                            extra,
                            &[url.as_str(), dest.to_str().expect("utf-8")],
                        ]
                        .concat(),
                    );
                    assert!(out.success(), "clone {i}: {}", out.describe());
                    dest
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("clone"))
            .collect()
    });
    let upstream = w.git.refs(&seed.bare);
    for (i, dest) in clones.iter().enumerate() {
        w.git.fsck_strict(dest);
        let got = w.git.refs(dest);
        for (name, id) in &upstream {
            // A `--depth` clone is single-branch.
            let expected =
                name == "refs/heads/main" || (i % 2 == 0 && name.starts_with("refs/heads/"));
            if expected {
                assert_eq!(got.get(name), Some(id), "clone {i}: {name}");
            }
        }
    }
    let after = packs_by_path(&w.server);
    let sent = ["fast", "walk", "shared"]
        .iter()
        .map(|p| count(&after, p) - count(&before, p))
        .sum::<f64>();
    assert_eq!(sent, 8.0, "each clone got one pack, generated or shared");
}
