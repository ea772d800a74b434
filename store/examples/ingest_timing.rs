//! Times the phases of ingesting one pack file into a fresh store: indexing (receive),
//! connectivity verification and commit (promotion, journal, commit graph).
//!
//! `cargo run --release -p codestorage-store --example ingest_timing -- PACK TIP...`

use std::io::BufReader;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use codestorage_store::{
    Expect, IngestOptions, Namespace, ObjectId, RefUpdate, RefValue, RepoName, Store, Transaction,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pack = args.next().ok_or("usage: ingest_timing PACK TIP...")?;
    let tips: Vec<ObjectId> = args
        .map(|t| ObjectId::from_hex(t.as_bytes()))
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let repo = store.create_repo(&RepoName::new("r")?, "main", None, None)?;
    let interrupt = AtomicBool::new(false);
    let t = Instant::now();
    let mut input = BufReader::with_capacity(1 << 16, std::fs::File::open(&pack)?);
    let mut q = repo
        .receive_pack(&mut input, IngestOptions::default(), &interrupt)?
        .ok_or("empty pack")?;
    let received = t.elapsed();
    let t = Instant::now();
    q.verify(repo.view().packs.clone(), Namespace::Default, &tips)?;
    let verified = t.elapsed();
    let t = Instant::now();
    repo.commit(Transaction {
        ns: Namespace::Default,
        updates: tips
            .iter()
            .enumerate()
            .map(|(i, id)| RefUpdate {
                name: format!("refs/heads/b{i}"),
                expect: Expect::Absent,
                new: Some(RefValue::Direct(*id)),
            })
            .collect(),
        who: "timing".into(),
        atomic: true,
        quarantine: Some(q),
    })?;
    println!(
        "receive {:?}  verify {:?}  commit {:?}",
        received,
        verified,
        t.elapsed()
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("Rss"))
    {
        println!("{line}");
    }
    Ok(())
}
