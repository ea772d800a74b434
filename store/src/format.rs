//! Data directory format versions and the in-place migrations between them.
//!
//! `<data>/FORMAT` holds the version (a decimal number) the directory is written in. A new
//! directory gets [`FORMAT`]. An older one is migrated in place, one step at a time
//! (`vN -> vN+1`, in [`STEPS`]); a newer one is refused with a message naming both versions.
//!
//! Each step is crash-safe: it is idempotent, its changes are durable before `FORMAT` is
//! rewritten (atomically) to the next version, and it never changes the directory in a way
//! that the binary of the version it starts from cannot read. A crash mid-step therefore
//! leaves a directory that still says (and is) the old version: the old binary opens it, and
//! the new one runs the step again.
//!
//! # Versions
//!
//! - 1: the first format (ref journals of refs and pack catalog lines).
//! - 2: ref journals may hold lines that replace packs (compaction). A version-1 binary would
//!   misread them, so a version-2 directory must be refused by it. The step `1 -> 2` changes no
//!   file: it checks that every ref journal reads (so that a damaged directory is reported
//!   before it is declared version 2), then bumps `FORMAT`.

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::journal::Journal;

/// The data directory format this binary writes and reads.
pub const FORMAT: u32 = 2;

/// The oldest format this binary migrates from.
pub const OLDEST: u32 = 1;

/// One migration step, from `from` to `from + 1`.
pub struct Step {
    /// The version this step starts from.
    pub from: u32,
    /// What the step does, for logs.
    pub what: &'static str,
    /// The step itself; idempotent, durable before it returns.
    pub run: fn(&Path) -> Result<()>,
}

/// Every step, in order: `STEPS[i].from == OLDEST + i`.
pub const STEPS: &[Step] = &[Step {
    from: 1,
    what: "check that every ref journal reads (version 2 journals may replace packs)",
    run: v1_to_v2,
}];

/// The format `root` says it is in, or `None` when it has no `FORMAT` file (a new directory).
pub fn read(root: &Path) -> Result<Option<u32>> {
    let path = root.join("FORMAT");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            StoreError::Invalid(format!(
                "{} does not hold a format version (a decimal number): {:?}",
                path.display(),
                s.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", &path)(e)),
    }
}

/// Write `version` to `root/FORMAT` atomically.
pub fn write(root: &Path, version: u32) -> Result<()> {
    let path = root.join("FORMAT");
    fsutil::atomic_write(&path, format!("{version}\n").as_bytes())
        .map_err(StoreError::io("write", &path))
}

/// Refuse a directory newer than this binary; `Ok(found)` otherwise (`None`: no `FORMAT`).
pub fn check_readable(root: &Path) -> Result<Option<u32>> {
    let found = read(root)?;
    if let Some(found) = found
        && found > FORMAT
    {
        return Err(StoreError::FormatTooNew {
            found,
            supported: FORMAT,
        });
    }
    Ok(found)
}

/// Make `root` a directory of [`FORMAT`]: write it for a new directory, migrate an older one
/// in place, refuse a newer one.
pub fn prepare(root: &Path) -> Result<()> {
    match check_readable(root)? {
        None => write(root, FORMAT),
        Some(found) if found == FORMAT => Ok(()),
        Some(found) => migrate(root, found),
    }
}

/// Run every step from `found` up to [`FORMAT`].
fn migrate(root: &Path, found: u32) -> Result<()> {
    if found < OLDEST {
        return Err(StoreError::Invalid(format!(
            "data directory format {found} is older than any this codestorage migrates from \
             ({OLDEST}); upgrade through an older codestorage release first"
        )));
    }
    let mut version = found;
    for step in STEPS.iter().filter(|s| s.from >= found) {
        if step.from != version {
            return Err(StoreError::Invalid(format!(
                "no migration from data directory format {version}"
            )));
        }
        tracing::info!(
            from = step.from,
            to = step.from + 1,
            what = step.what,
            "migrating the data directory"
        );
        (step.run)(root)?;
        crate::fault::point("migrate-step-done");
        write(root, step.from + 1)?;
        version = step.from + 1;
        tracing::info!(format = version, "data directory migrated");
    }
    if version != FORMAT {
        return Err(StoreError::Invalid(format!(
            "migrations end at format {version}, not {FORMAT}"
        )));
    }
    Ok(())
}

/// `1 -> 2`: every ref journal must read (a torn last line is fine: it is cut at open).
fn v1_to_v2(root: &Path) -> Result<()> {
    let repos = root.join("repos");
    let entries = match std::fs::read_dir(&repos) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("read", &repos)(e)),
    };
    for e in entries {
        let e = e.map_err(StoreError::io("read", &repos))?;
        let journal = e.path().join("refs.journal");
        if !journal.is_file() {
            continue;
        }
        Journal::read_only(&journal).map_err(|err| {
            StoreError::Invalid(format!(
                "cannot migrate the data directory to format 2: {err}; it stays at format 1 \
                 (run `codestorage fsck` with the previous release)"
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_contiguous_and_end_at_the_current_format() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.from, OLDEST + i as u32);
        }
        assert_eq!(OLDEST + STEPS.len() as u32, FORMAT);
    }

    #[test]
    fn new_dirs_get_the_current_format_old_ones_migrate_new_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path()).expect("new dir");
        assert_eq!(read(dir.path()).expect("read"), Some(FORMAT));

        write(dir.path(), 1).expect("write");
        std::fs::create_dir_all(dir.path().join("repos/r1")).expect("mkdir");
        std::fs::write(dir.path().join("repos/r1/refs.journal"), b"").expect("journal");
        prepare(dir.path()).expect("migrate");
        assert_eq!(read(dir.path()).expect("read"), Some(FORMAT));

        write(dir.path(), FORMAT + 1).expect("write");
        let err = prepare(dir.path()).expect_err("newer");
        assert!(matches!(err, StoreError::FormatTooNew { found, supported }
            if found == FORMAT + 1 && supported == FORMAT));
        assert_eq!(read(dir.path()).expect("read"), Some(FORMAT + 1));

        std::fs::write(dir.path().join("FORMAT"), b"two\n").expect("write");
        assert!(matches!(prepare(dir.path()), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn a_damaged_journal_stops_the_migration_and_the_dir_stays_at_version_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), 1).expect("write");
        std::fs::create_dir_all(dir.path().join("repos/r1")).expect("mkdir");
        std::fs::write(
            dir.path().join("repos/r1/refs.journal"),
            b"00000000 {}\n00000000 {}\n",
        )
        .expect("journal");
        let err = prepare(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains("stays at format 1"), "{err}");
        assert_eq!(read(dir.path()).expect("read"), Some(1));
    }
}
