//! Shared pack generation for identical concurrent fetches ("CI herds").
//!
//! When many clients ask for the same thing at once (a CI fleet cloning the same commit), the
//! pack is generated once. Requests are keyed by everything the pack depends on: the repository,
//! the journal position of the snapshot served (which fixes its refs and packs), the namespace,
//! the wants, the common commits, the shallow plan, the filter and the pack options. The first
//! request of a key starts a generator thread that writes the raw pack (before sideband framing)
//! into an unnamed spool file under the data directory; every request of that key, the first
//! included, tails the spool through its own sideband writer at its own pace. Memory stays
//! bounded by one chunk per reader whatever the clients' speeds; the file disappears when the
//! last reader lets go (it is unnamed, so a crash leaves nothing behind either). When every
//! reader has gone, the generator stops.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use codestorage_store::packout::PackStats;
use sha1::{Digest, Sha1};

use crate::protocol::pktline::SidebandWriter;

/// Bytes read from the spool per write to a client, and buffered by the generator per write.
const CHUNK: usize = 64 << 10;

/// How often a waiting reader looks at the interrupt flag.
const POLL: Duration = Duration::from_millis(200);

/// The identity of a pack: a digest of everything that determines its bytes.
pub type Key = [u8; 20];

/// Builds a [`Key`] from the parts of a request.
#[derive(Default)]
pub struct KeyBuilder(Sha1);

impl KeyBuilder {
    /// Add one field (length-prefixed, so fields cannot run into each other).
    pub fn field(mut self, bytes: impl AsRef<[u8]>) -> Self {
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// The key.
    pub fn finish(self) -> Key {
        self.0.finalize().into()
    }
}

/// The registry of spools being generated or read, under one directory.
#[derive(Debug)]
pub struct Herd {
    dir: PathBuf,
    spools: Mutex<HashMap<Key, Weak<Spool>>>,
}

/// How the generator ended.
#[derive(Debug, Clone)]
enum Outcome {
    Done(PackStats),
    Failed(String),
}

#[derive(Debug, Default)]
struct Progress {
    /// Bytes of the pack in the file so far.
    len: u64,
    /// Objects the pack will hold, once known (for the `Enumerating` line).
    total: Option<u64>,
    outcome: Option<Outcome>,
    /// Requests reading this spool.
    readers: usize,
}

/// One pack being (or having been) generated into an unnamed file.
#[derive(Debug)]
pub struct Spool {
    file: File,
    progress: Mutex<Progress>,
    grew: Condvar,
    /// Set when no reader is left: the generator stops.
    cancel: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Herd::join`] gives a request.
pub enum Joined {
    /// This request created the spool: it must start the generator with the [`Generator`].
    Leader(Reader, Generator),
    /// Another request is generating this pack already.
    Follower(Reader),
}

impl Herd {
    /// A registry whose spool files go in `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Herd {
        Herd {
            dir,
            spools: Mutex::new(HashMap::new()),
        }
    }

    /// Join the spool of `key`, or create it. `None` when no spool file can be made (the caller
    /// then generates the pack for itself).
    pub fn join(self: &Arc<Self>, key: Key) -> Option<Joined> {
        let mut spools = lock(&self.spools);
        if let Some(spool) = spools.get(&key).and_then(Weak::upgrade)
            && !spool.cancel.load(Ordering::Acquire)
        {
            lock(&spool.progress).readers += 1;
            return Some(Joined::Follower(Reader::new(self.clone(), key, spool)));
        }
        let file = match std::fs::create_dir_all(&self.dir)
            .and_then(|()| tempfile::tempfile_in(&self.dir))
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "no pack spool; generating unshared");
                return None;
            }
        };
        let spool = Arc::new(Spool {
            file,
            progress: Mutex::new(Progress {
                readers: 1,
                ..Progress::default()
            }),
            grew: Condvar::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        });
        spools.retain(|_, w| w.strong_count() > 0);
        spools.insert(key, Arc::downgrade(&spool));
        let generator = Generator {
            spool: spool.clone(),
            buf: Vec::with_capacity(CHUNK),
            pos: 0,
        };
        Some(Joined::Leader(
            Reader::new(self.clone(), key, spool),
            generator,
        ))
    }

    /// Spools alive now.
    #[cfg(test)]
    fn live(&self) -> usize {
        lock(&self.spools)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// The writing side of a spool: the pack goes in through `Write`, then [`Generator::finish`].
pub struct Generator {
    spool: Arc<Spool>,
    buf: Vec<u8>,
    pos: u64,
}

impl Generator {
    /// Set once every reader has gone: generation may stop.
    pub fn cancelled(&self) -> Arc<AtomicBool> {
        self.spool.cancel.clone()
    }

    /// Announce the number of objects the pack will hold.
    pub fn set_total(&self, total: u64) {
        lock(&self.spool.progress).total = Some(total);
        self.spool.grew.notify_all();
    }

    fn publish(&mut self) -> io::Result<()> {
        if self.spool.cancel.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "every reader of the pack has gone",
            ));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.spool.file.write_all_at(&self.buf, self.pos)?;
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        lock(&self.spool.progress).len = self.pos;
        self.spool.grew.notify_all();
        Ok(())
    }

    /// End generation: readers get the rest of the pack and the outcome.
    pub fn finish(mut self, result: Result<PackStats, String>) {
        let outcome = match result.and_then(|stats| {
            self.publish().map_err(|e| e.to_string())?;
            Ok(stats)
        }) {
            Ok(stats) => Outcome::Done(stats),
            Err(e) => Outcome::Failed(e),
        };
        lock(&self.spool.progress).outcome = Some(outcome);
        self.spool.grew.notify_all();
    }
}

impl Write for Generator {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > CHUNK {
            self.publish()?;
        }
        if data.len() >= CHUNK {
            self.buf.extend_from_slice(data);
            self.publish()?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.publish()
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // A generator that panicked or returned early must not leave readers waiting forever.
        let mut p = lock(&self.spool.progress);
        if p.outcome.is_none() {
            p.outcome = Some(Outcome::Failed("pack generation stopped".into()));
            drop(p);
            self.spool.grew.notify_all();
        }
    }
}

/// The reading side: one per request.
pub struct Reader {
    herd: Arc<Herd>,
    key: Key,
    spool: Arc<Spool>,
}

/// Why reading the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The generator failed; the message says why.
    #[error("pack generation failed: {message}")]
    Generation {
        /// Why.
        message: String,
        /// Whether any of the pack had reached this reader's client (if not, the reader may
        /// still generate the pack itself: the spool may have failed for want of disk).
        sent: bool,
    },
    /// The spool file could not be read, or the server is shutting down.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Reader {
    fn new(herd: Arc<Herd>, key: Key, spool: Arc<Spool>) -> Reader {
        Reader { herd, key, spool }
    }

    /// Copy the pack to `out` as it grows, with an `Enumerating objects` progress line once the
    /// object count is known (before any data). Stops early when `interrupt` is set.
    pub fn copy_to<W: Write>(
        &self,
        out: &mut SidebandWriter<W>,
        interrupt: &AtomicBool,
    ) -> Result<PackStats, ReadError> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        let mut told_total = false;
        loop {
            let (len, total, outcome) = {
                let mut p = lock(&self.spool.progress);
                while p.len <= pos && p.outcome.is_none() && (told_total || p.total.is_none()) {
                    if interrupt.load(Ordering::Relaxed) {
                        return Err(ReadError::Io(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "server shutting down",
                        )));
                    }
                    p = self
                        .spool
                        .grew
                        .wait_timeout(p, POLL)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                (p.len, p.total, p.outcome.clone())
            };
            if !told_total && let Some(t) = total {
                told_total = true;
                out.progress(&format!("Enumerating objects: {t}, done.\n"))?;
            }
            while pos < len {
                let want = usize::try_from(len - pos).unwrap_or(CHUNK).min(CHUNK);
                let n = self.spool.file.read_at(&mut buf[..want], pos)?;
                if n == 0 {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "pack spool shorter than announced",
                    )));
                }
                out.write_all(&buf[..n])?;
                pos += n as u64;
            }
            match outcome {
                Some(Outcome::Done(stats)) if pos >= len => return Ok(stats),
                Some(Outcome::Failed(message)) => {
                    return Err(ReadError::Generation {
                        message,
                        sent: pos > 0,
                    });
                }
                _ => {}
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut spools = lock(&self.herd.spools);
        let mut p = lock(&self.spool.progress);
        p.readers = p.readers.saturating_sub(1);
        if p.readers == 0 {
            if p.outcome.is_none() {
                // Nobody wants this pack any more: stop generating it, and let a later request
                // start afresh rather than join a cancelled spool.
                self.spool.cancel.store(true, Ordering::Release);
            }
            let ours = spools
                .get(&self.key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.spool)));
            if ours {
                spools.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn herd() -> (tempfile::TempDir, Arc<Herd>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let herd = Arc::new(Herd::new(dir.path().join("spool")));
        (dir, herd)
    }

    #[test]
    fn followers_share_one_generation_and_read_everything() {
        let (_d, herd) = herd();
        let key = KeyBuilder::default().field("a").finish();
        let Some(Joined::Leader(leader, mut generator)) = herd.join(key) else {
            panic!("first join leads");
        };
        let Some(Joined::Follower(follower)) = herd.join(key) else {
            panic!("second join follows");
        };
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            generator.set_total(7);
            for chunk in data.chunks(10_000) {
                generator.write_all(chunk).expect("write");
            }
            generator.finish(Ok(PackStats {
                objects: 7,
                ..PackStats::default()
            }));
        });
        let stop = AtomicBool::new(false);
        for reader in [leader, follower] {
            let mut out = SidebandWriter::new(Vec::new(), None, false);
            let stats = reader.copy_to(&mut out, &stop).expect("read");
            assert_eq!(stats.objects, 7);
            assert_eq!(out.finish().expect("finish"), expected);
        }
        writer.join().expect("writer");
        assert_eq!(herd.live(), 0, "the spool goes with its last reader");
    }

    #[test]
    fn different_keys_do_not_share() {
        let (_d, herd) = herd();
        let a = KeyBuilder::default().field("a").field("b").finish();
        let b = KeyBuilder::default().field("ab").finish();
        assert_ne!(a, b, "fields are length-prefixed");
        let ja = herd.join(a);
        let jb = herd.join(b);
        assert!(matches!(ja, Some(Joined::Leader(..))));
        assert!(matches!(jb, Some(Joined::Leader(..))));
    }

    #[test]
    fn last_reader_leaving_cancels_generation_and_failure_reaches_readers() {
        let (_d, herd) = herd();
        let key = KeyBuilder::default().field("c").finish();
        let Some(Joined::Leader(reader, mut generator)) = herd.join(key) else {
            panic!("leads");
        };
        drop(reader);
        assert!(generator.cancelled().load(Ordering::Acquire));
        assert!(generator.write_all(&vec![0u8; CHUNK * 2]).is_err());
        // A new request starts afresh instead of joining the cancelled spool.
        let Some(Joined::Leader(reader2, generator2)) = herd.join(key) else {
            panic!("a cancelled spool is not joined");
        };
        generator2.finish(Err("boom".into()));
        let mut out = SidebandWriter::new(Vec::new(), None, false);
        let err = reader2
            .copy_to(&mut out, &AtomicBool::new(false))
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("pack generation failed: boom"));
    }
}
