//! Backup and restore of a data directory: the backup stream the server writes
//! (`GET /api/v1/admin/backup`), the backup directory the CLI unpacks it into, its verification
//! and `restore` into a new data directory.
//!
//! # The stream
//!
//! ```text
//! codestorage-backup 1\n
//! file <size> <path>\n<size bytes>       one per file, in any order
//! manifest <size>\n<size bytes of JSON>  the Manifest, with every file's size and SHA-256
//! end\n
//! ```
//!
//! A stream that stops before `end` (the server failed mid-way) is refused by the reader.
//!
//! # The backup directory
//!
//! ```text
//! DIR/MANIFEST.json     formats, time, repositories, every file with its size and SHA-256
//! DIR/README.txt        what this is, and that secrets/ must be protected
//! DIR/data/…            the durable files of the data directory, at their paths in it
//! DIR/secrets/keys/…    the signing keys and secrets.key (which seals upstream credentials)
//! DIR/secrets/tls/…     the self-signed TLS CA and key, if any
//! ```
//!
//! Per repository the copy is consistent (see `codestorage_store::repo::backup`): the journal up
//! to one position and every pack it names. Not copied: the sled `index/` (rebuilt from the
//! journals at open), commit graphs (rebuilt at open), quarantines, temp files and the trash.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use aws_lc_rs::digest::{Context, SHA256};
use codestorage_store::{FORMAT, Store, fsutil};
use serde::{Deserialize, Serialize};

/// The version of the stream and directory layout.
pub const BACKUP_FORMAT: u32 = 1;
const MAGIC: &str = "codestorage-backup";
/// Longest header line of the stream.
const MAX_LINE: usize = 4096;
/// Largest manifest accepted (about a million files).
const MAX_MANIFEST: u64 = 256 << 20;
/// Deepest directory nesting copied from the data directory.
const MAX_DEPTH: usize = 16;
/// Top-level entries of the data directory that hold secrets (copied under `secrets/`).
const SECRET_DIRS: &[&str] = &["keys", "tls"];

/// The backup's table of contents, `DIR/MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of the backup ([`BACKUP_FORMAT`]).
    pub backup_format: u32,
    /// Format of the data directory the files belong to (`<data>/FORMAT`).
    pub data_format: u32,
    /// The codestorage that wrote it.
    pub codestorage_version: String,
    /// When the backup was taken (RFC 3339).
    pub created_at: String,
    /// Every repository, with the journal position its copy is consistent at.
    pub repos: Vec<ManifestRepo>,
    /// Every file, with its path in the backup directory.
    pub files: Vec<ManifestFile>,
}

/// A repository in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRepo {
    /// Directory name under `repos/`.
    pub id: String,
    /// Repository name.
    pub name: String,
    /// Bytes of the ref journal copied.
    pub journal_len: u64,
    /// The packs the copied journal names.
    pub packs: Vec<String>,
}

/// A file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path in the backup directory (`data/…` or `secrets/…`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A filesystem or stream error.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The store could not take a snapshot.
    #[error(transparent)]
    Store(#[from] codestorage_store::StoreError),
    /// The stream is not a complete, well-formed backup stream.
    #[error("bad backup stream: {0}")]
    Stream(String),
    /// The backup directory does not match its manifest.
    #[error("backup {dir} is damaged: {reason}")]
    Damaged {
        /// The backup directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The target already holds something.
    #[error("{0} is not empty; choose a new directory")]
    NotEmpty(PathBuf),
    /// The backup is of a data format this binary does not read.
    #[error(
        "the backup holds data directory format {found}, newer than this codestorage reads \
         ({supported}); restore it with a newer codestorage"
    )]
    TooNew {
        /// Format in the backup.
        found: u32,
        /// Newest format this binary reads.
        supported: u32,
    },
}

fn io_err(
    context: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.into();
    move |source| BackupError::Io {
        context,
        path,
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copy exactly `len` bytes from `from` to `to`, returning their SHA-256 (hex); fewer bytes is an
/// `UnexpectedEof` error.
fn copy_hashed(from: &mut dyn Read, to: &mut dyn Write, len: u64) -> io::Result<String> {
    let mut ctx = Context::new(&SHA256);
    let mut left = len;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{left} of {len} bytes missing"),
            ));
        }
        ctx.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Where a data-directory path goes in the backup: secrets under `secrets/`, the rest under
/// `data/`.
pub fn backup_path(data_relative: &str) -> String {
    let top = data_relative.split('/').next().unwrap_or_default();
    if SECRET_DIRS.contains(&top) {
        format!("secrets/{data_relative}")
    } else {
        format!("data/{data_relative}")
    }
}

/// The data-directory path of a backup path, if it is a safe relative path under `data/` or
/// `secrets/` (no `..`, no absolute paths, no control characters).
pub fn data_path(backup: &str) -> Option<PathBuf> {
    let rest = backup
        .strip_prefix("data/")
        .or_else(|| backup.strip_prefix("secrets/"))?;
    if backup.starts_with("secrets/")
        && !SECRET_DIRS.contains(&rest.split('/').next().unwrap_or_default())
    {
        return None;
    }
    if backup.len() > 1024 || rest.is_empty() || backup.chars().any(|c| c.is_control() || c == '\\')
    {
        return None;
    }
    let path = PathBuf::from(rest);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(path)
}

/// The durable files of the data directory other than repositories: keys, secrets, webhook
/// subscriptions and queue, revocations, config. Paths relative to `data`, sorted.
fn other_files(data: &Path) -> Result<Vec<String>, BackupError> {
    fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<String>) -> Result<(), BackupError> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", dir)(e)),
        };
        for e in entries {
            let e = e.map_err(io_err("read", dir))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(".tmp-") || name.starts_with("tmp_") {
                continue;
            }
            if name.chars().any(char::is_control) {
                // Not representable in the stream's header lines; nothing of ours is named so.
                tracing::warn!(dir = %dir.display(), "skipping a file with a control character in its name");
                continue;
            }
            if rel.is_empty()
                && (name == "index"
                    || name.starts_with("index.")
                    || name == "repos"
                    || name == "trash")
            {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                walk(&e.path(), &child, depth + 1, out)?;
            } else if kind.is_file() {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(data, "", 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes the stream, hashing as it goes.
struct StreamWriter<'a> {
    out: &'a mut dyn Write,
    files: Vec<ManifestFile>,
}

impl StreamWriter<'_> {
    fn file(&mut self, path: String, len: u64, from: &mut dyn Read) -> Result<(), BackupError> {
        let stream = PathBuf::from("<backup stream>");
        writeln!(self.out, "file {len} {path}").map_err(io_err("write", &stream))?;
        let sha256 = copy_hashed(from, self.out, len).map_err(io_err("copy", &path))?;
        self.files.push(ManifestFile {
            path,
            size: len,
            sha256,
        });
        Ok(())
    }
}

/// Write a backup of the data directory `data` (whose store is `store`, open and serving) to
/// `out`. Blocking; the stream is never held in memory. Stops (an error, so the stream lacks its
/// `end` line) when `interrupt` is set (shutdown).
pub fn write_backup(
    store: &Store,
    data: &Path,
    out: &mut dyn Write,
    interrupt: &AtomicBool,
) -> Result<Manifest, BackupError> {
    let check = || {
        if interrupt.load(Ordering::Relaxed) {
            Err(BackupError::Stream("interrupted by shutdown".into()))
        } else {
            Ok(())
        }
    };
    let stream = PathBuf::from("<backup stream>");
    writeln!(out, "{MAGIC} {BACKUP_FORMAT}").map_err(io_err("write", &stream))?;
    let mut w = StreamWriter {
        out,
        files: Vec::new(),
    };
    let mut repos = Vec::new();
    for repo in store.repos() {
        check()?;
        let snap = match repo.snapshot() {
            Ok(s) => s,
            // Deleted while the backup ran: it is not part of it.
            Err(_) if store.repo(&repo.record().name).is_none() => continue,
            Err(e) => return Err(e.into()),
        };
        for mut f in snap.files {
            w.file(backup_path(&f.path), f.len, &mut f.file)?;
        }
        repos.push(ManifestRepo {
            id: snap.id,
            name: snap.name,
            journal_len: snap.journal_len,
            packs: snap.packs,
        });
    }
    for rel in other_files(data)? {
        check()?;
        let path = data.join(&rel);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            // Replaced or removed since listed (a delivered webhook): not part of the backup.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        w.file(backup_path(&rel), len, &mut file)?;
    }
    let manifest = Manifest {
        backup_format: BACKUP_FORMAT,
        data_format: FORMAT,
        codestorage_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: crate::time::rfc3339(crate::time::now_unix()),
        repos,
        files: w.files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Stream(format!("encode manifest: {e}")))?;
    writeln!(out, "manifest {}", json.len()).map_err(io_err("write", &stream))?;
    out.write_all(&json).map_err(io_err("write", &stream))?;
    out.write_all(b"end\n").map_err(io_err("write", &stream))?;
    out.flush().map_err(io_err("write", &stream))?;
    Ok(manifest)
}

/// Read one header line (at most [`MAX_LINE`] bytes); `None` at a clean end of input.
fn read_line(input: &mut dyn BufRead) -> Result<Option<String>, BackupError> {
    let mut buf = Vec::new();
    let n = input
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(io_err("read", "<backup stream>"))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.pop() != Some(b'\n') {
        return Err(BackupError::Stream(
            "the stream ends mid-line or has an overlong line (interrupted?)".into(),
        ));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| BackupError::Stream("a header line is not UTF-8".into()))
}

/// Whether `dir` is absent or an empty directory.
fn absent_or_empty(dir: &Path) -> Result<bool, BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err("read", dir)(e)),
    }
}

/// A fresh sibling of `target` to build in, so that `target` appears complete or not at all.
fn staging_dir(target: &Path, what: &str) -> Result<PathBuf, BackupError> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BackupError::Stream(format!("{} has no file name", target.display())))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fsutil::create_dir_all_durable(&parent).map_err(io_err("create", &parent))?;
    let staging = parent.join(format!(".{name}.{what}-{:08x}", rand::random::<u32>()));
    fs::create_dir(&staging).map_err(io_err("create", &staging))?;
    Ok(staging)
}

/// fsync every directory under (and including) `dir`.
fn fsync_tree(dir: &Path) -> Result<(), BackupError> {
    for e in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let e = e.map_err(io_err("read", dir))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fsync_tree(&e.path())?;
        }
    }
    fsutil::fsync_dir(dir).map_err(io_err("fsync", dir))
}

/// Move the finished `staging` into place at `target` (absent or an empty directory).
fn publish(staging: &Path, target: &Path) -> Result<(), BackupError> {
    fsync_tree(staging)?;
    if target.is_dir() {
        // Replaced by the rename only if empty; checked again here against races.
        fs::remove_dir(target).map_err(|_| BackupError::NotEmpty(target.to_owned()))?;
    }
    fs::rename(staging, target).map_err(io_err("rename into place", target))?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsutil::fsync_dir(parent).map_err(io_err("fsync", parent))?;
    }
    Ok(())
}

fn create_file(path: &Path, secret: bool) -> Result<File, BackupError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    opts.open(path).map_err(io_err("create", path))
}

const README: &str = "\
This is a codestorage backup (`codestorage backup`). Restore it with
  codestorage restore --from <this directory> --data-dir <new, empty data directory>
with the server stopped, then start `codestorage serve` on the new data directory.

MANIFEST.json  lists every file with its size and SHA-256; restore checks them all.
data/          the data directory's durable files: repositories (records, ref journals,
               packs), webhook subscriptions and queue, revocations, configuration.
secrets/       THE SIGNING KEYS (anyone holding them can mint tokens for this server) AND
               secrets.key (it decrypts the upstream credentials stored in data/).
               Protect this directory like the server itself: keep it encrypted at rest
               and readable only by the operator.
";

/// Read a backup stream from `input` into the new directory `dest` (absent or empty), checking
/// every file against the manifest at the end of the stream. `dest` appears only when all of
/// it is verified.
pub fn unpack(input: &mut dyn BufRead, dest: &Path) -> Result<Manifest, BackupError> {
    if !absent_or_empty(dest)? {
        return Err(BackupError::NotEmpty(dest.to_owned()));
    }
    let staging = staging_dir(dest, "partial")?;
    let result = unpack_into(input, &staging);
    match result {
        Ok(m) => {
            publish(&staging, dest)?;
            Ok(m)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn unpack_into(input: &mut dyn BufRead, dir: &Path) -> Result<Manifest, BackupError> {
    let bad = |m: String| BackupError::Stream(m);
    let header = read_line(input)?.ok_or_else(|| bad("empty stream".into()))?;
    if header != format!("{MAGIC} {BACKUP_FORMAT}") {
        return Err(bad(format!(
            "not a codestorage backup stream of version {BACKUP_FORMAT}: {header:?}"
        )));
    }
    let mut received: BTreeMap<String, (u64, String)> = BTreeMap::new();
    loop {
        let line = read_line(input)?
            .ok_or_else(|| bad("the stream ends before its manifest (interrupted?)".into()))?;
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("file"), Some(size), Some(path)) => {
                let size: u64 = size
                    .parse()
                    .map_err(|_| bad(format!("bad file size {size:?}")))?;
                if data_path(path).is_none() {
                    return Err(bad(format!("unsafe path {path:?}")));
                }
                if received.contains_key(path) {
                    return Err(bad(format!("{path} sent twice")));
                }
                let target = dir.join(path);
                let mut file = create_file(&target, path.starts_with("secrets/"))?;
                let sha =
                    copy_hashed(input, &mut file, size).map_err(io_err("receive", &target))?;
                file.sync_all().map_err(io_err("fsync", &target))?;
                received.insert(path.to_owned(), (size, sha));
            }
            (Some("manifest"), Some(size), None) => {
                let size: u64 = size
                    .parse()
                    .ok()
                    .filter(|s| *s <= MAX_MANIFEST)
                    .ok_or_else(|| bad(format!("bad manifest size {size:?}")))?;
                let mut json = Vec::new();
                input
                    .take(size)
                    .read_to_end(&mut json)
                    .map_err(io_err("read", "<backup stream>"))?;
                if read_line(input)?.as_deref() != Some("end") {
                    return Err(bad("the stream does not end after its manifest".into()));
                }
                let manifest: Manifest =
                    serde_json::from_slice(&json).map_err(|e| bad(format!("bad manifest: {e}")))?;
                let listed: BTreeMap<String, (u64, String)> = manifest
                    .files
                    .iter()
                    .map(|f| (f.path.clone(), (f.size, f.sha256.clone())))
                    .collect();
                if listed != received {
                    return Err(bad("the files received do not match the manifest".into()));
                }
                let path = dir.join("MANIFEST.json");
                let mut f = create_file(&path, false)?;
                f.write_all(&json)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err("write", &path))?;
                let readme = dir.join("README.txt");
                fs::write(&readme, README).map_err(io_err("write", &readme))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt as _;
                    let secrets = dir.join("secrets");
                    if secrets.is_dir() {
                        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700))
                            .map_err(io_err("chmod", &secrets))?;
                    }
                }
                return Ok(manifest);
            }
            _ => return Err(bad(format!("unexpected line {line:?}"))),
        }
    }
}

/// Check the backup directory `dir` against its manifest: every listed file is there with its
/// size and SHA-256, and every path is safe.
pub fn verify(dir: &Path) -> Result<Manifest, BackupError> {
    let damaged = |reason: String| BackupError::Damaged {
        dir: dir.to_owned(),
        reason,
    };
    let path = dir.join("MANIFEST.json");
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let mut json = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut json)
        .map_err(io_err("read", &path))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| damaged(format!("MANIFEST.json: {e}")))?;
    if manifest.backup_format != BACKUP_FORMAT {
        return Err(damaged(format!(
            "backup format {} (this codestorage reads {BACKUP_FORMAT})",
            manifest.backup_format
        )));
    }
    for f in &manifest.files {
        if data_path(&f.path).is_none() {
            return Err(damaged(format!("unsafe path {:?} in the manifest", f.path)));
        }
        let p = dir.join(&f.path);
        let mut file = File::open(&p).map_err(|e| damaged(format!("{}: {e}", f.path)))?;
        let size = file.metadata().map_err(io_err("stat", &p))?.len();
        if size != f.size {
            return Err(damaged(format!(
                "{} has {size} bytes, the manifest says {}",
                f.path, f.size
            )));
        }
        let sha = copy_hashed(&mut file, &mut io::sink(), size).map_err(io_err("read", &p))?;
        if sha != f.sha256 {
            return Err(damaged(format!(
                "{} does not match its SHA-256 in the manifest",
                f.path
            )));
        }
    }
    Ok(manifest)
}

/// Rebuild a data directory at `data` (absent or empty; the server stopped) from the backup
/// directory `from`, after verifying all of it. The index is not restored: the server rebuilds
/// it from the journals when it opens the directory.
pub fn restore(from: &Path, data: &Path) -> Result<Manifest, BackupError> {
    let manifest = verify(from)?;
    if manifest.data_format > FORMAT {
        return Err(BackupError::TooNew {
            found: manifest.data_format,
            supported: FORMAT,
        });
    }
    if !absent_or_empty(data)? {
        return Err(BackupError::NotEmpty(data.to_owned()));
    }
    let staging = staging_dir(data, "restore")?;
    let result = (|| {
        for f in &manifest.files {
            let rel = data_path(&f.path).ok_or_else(|| BackupError::Damaged {
                dir: from.to_owned(),
                reason: format!("unsafe path {:?}", f.path),
            })?;
            let src = from.join(&f.path);
            let dst = staging.join(&rel);
            let mut input = File::open(&src).map_err(io_err("open", &src))?;
            let mut out = create_file(&dst, f.path.starts_with("secrets/"))?;
            let sha = copy_hashed(&mut input, &mut out, f.size).map_err(io_err("copy", &src))?;
            if sha != f.sha256 {
                return Err(BackupError::Damaged {
                    dir: from.to_owned(),
                    reason: format!("{} changed while being restored", f.path),
                });
            }
            out.sync_all().map_err(io_err("fsync", &dst))?;
        }
        let repos = staging.join("repos");
        fs::create_dir_all(&repos).map_err(io_err("create", &repos))?;
        #[cfg(unix)]
        for dir in SECRET_DIRS {
            use std::os::unix::fs::PermissionsExt as _;
            let dir = staging.join(dir);
            if dir.is_dir() {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("chmod", &dir))?;
            }
        }
        let format = staging.join("FORMAT");
        if !format.exists() {
            fs::write(&format, format!("{}\n", manifest.data_format))
                .map_err(io_err("write", &format))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            publish(&staging, data)?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_data_or_secrets_and_unsafe_ones_are_refused() {
        assert_eq!(backup_path("keys/signing.pem"), "secrets/keys/signing.pem");
        assert_eq!(backup_path("tls/key.pem"), "secrets/tls/key.pem");
        assert_eq!(
            backup_path("repos/r1/refs.journal"),
            "data/repos/r1/refs.journal"
        );
        assert_eq!(
            data_path("data/repos/r1/refs.journal"),
            Some(PathBuf::from("repos/r1/refs.journal"))
        );
        for bad in [
            "data/../x",
            "data//x",
            "/etc/passwd",
            "other/x",
            "secrets/repos/r1/record.json",
            "data/a\nb",
            "data/",
            "data/./x",
        ] {
            assert_eq!(data_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_stream_round_trips_and_a_truncated_or_altered_one_is_refused() {
        let src = tempfile::tempdir().expect("tempdir");
        let data = src.path().join("data");
        fs::create_dir_all(data.join("keys")).expect("mkdir");
        fs::write(data.join("keys/secrets.key"), b"k").expect("write");
        fs::write(data.join("FORMAT"), b"2\n").expect("write");
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(store_dir.path()).expect("store");
        let mut stream = Vec::new();
        let manifest =
            write_backup(&store, &data, &mut stream, &AtomicBool::new(false)).expect("backup");
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.path == "secrets/keys/secrets.key")
        );
        assert!(!manifest.files.iter().any(|f| f.path.contains("index")));

        let out = tempfile::tempdir().expect("tempdir");
        let dest = out.path().join("b");
        let got = unpack(&mut stream.as_slice(), &dest).expect("unpack");
        assert_eq!(got, manifest);
        assert_eq!(verify(&dest).expect("verify"), manifest);

        let cut = &stream[..stream.len() - 4];
        let dest2 = out.path().join("c");
        assert!(matches!(
            unpack(&mut &cut[..], &dest2),
            Err(BackupError::Stream(_))
        ));
        assert!(!dest2.exists());

        fs::write(dest.join("data/FORMAT"), b"3\n").expect("alter");
        assert!(matches!(verify(&dest), Err(BackupError::Damaged { .. })));
        let restored = out.path().join("restored");
        assert!(restore(&dest, &restored).is_err());
        assert!(!restored.exists());
    }
}
