//! Pack ingest into a real (temporary) store with small limits: indexing, thin-delta
//! completion and the connectivity check must fail cleanly on any bytes.
//!
//! Input: one mode byte, then the pack stream. An odd mode byte replaces the last 20 bytes with
//! the SHA-1 of the rest, so mutated packs get past the trailer check and reach the object
//! decoder.
#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use codestorage::protocol::receive_pack::local::LimitedReader;
use codestorage_store::{IngestOptions, Namespace, ObjectId, Repo, RepoName, Store};
use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};

/// Largest pack stream read (bytes); larger input fails like an over-limit push.
const MAX_PACK_BYTES: u64 = 1 << 20;
/// Largest single object or delta (bytes).
const MAX_OBJECT_BYTES: usize = 256 << 10;

struct Fixture {
    _dir: tempfile::TempDir,
    _store: Store,
    repo: Arc<Repo>,
}

/// The store every input is ingested into (set-up failures abort the run loudly).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let name = RepoName::new("fuzz/ingest").expect("repo name");
        let repo = store
            .create_repo(&name, "main", None, None)
            .expect("create repo");
        Fixture {
            _dir: dir,
            _store: store,
            repo,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, pack)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut pack = pack.to_vec();
    if mode & 1 == 1 && pack.len() >= 32 {
        let body = pack.len() - 20;
        let sum = Sha1::digest(&pack[..body]);
        pack[body..].copy_from_slice(&sum);
    }
    // As a push: the pack through the push size limit.
    let limited = LimitedReader::new(std::io::Cursor::new(pack), MAX_PACK_BYTES);
    let mut input = std::io::BufReader::new(limited);
    let opts = IngestOptions {
        max_object_bytes: Some(MAX_OBJECT_BYTES),
        threads: 1,
    };
    let interrupt = AtomicBool::new(false);
    let Ok(Some(mut q)) = f.repo.receive_pack(&mut input, opts, &interrupt) else {
        return;
    };
    let tips: Vec<ObjectId> = (0..q.pack().num_objects().min(4))
        .map(|i| q.pack().oid_at(i))
        .collect();
    let _ = q.verify(f.repo.view().packs.clone(), Namespace::Default, &tips);
    // Dropping the quarantine deletes it; nothing reaches the store.
});
