//! The per-repository ref journal: the durable truth of every ref and of the pack catalog.
//!
//! An append-only file of transactions, one line each: `<crc32 hex> <json>\n`. A transaction
//! names its namespace, the pack it introduced (if any), whether the namespace's packs are still
//! exactly the closure of its refs afterwards (`closed`), and its ref changes (old and new
//! values). A compaction writes a line of its own (`compact`: the packs it added, with the
//! namespaces each serves, the packs they replace, and every namespace's `closed` flag after
//! it); lines without that field read as before. A line is appended and fsynced before the change is visible to anyone, so a ref
//! update is acknowledged only once it is on disk. A torn last line (a crash mid-append) is
//! detected by its missing newline or bad checksum and cut off on open; damage anywhere else is
//! corruption and reported.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::refs::{Namespace, RefValue};

/// One committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRecord {
    /// Sequence number, increasing by one per transaction.
    pub seq: u64,
    /// Unix time of the commit.
    pub time: u64,
    /// Who made the change (`sync`, `push`, …); never a credential.
    pub who: String,
    /// The namespace whose refs changed.
    pub ns: Namespace,
    /// The pack this transaction made visible, by file stem (`pack-<hex>`).
    pub pack: Option<String>,
    /// Whether, after this transaction, the objects of the namespace's packs are exactly the
    /// closure of its refs (the precondition of the full-clone fast path).
    pub closed: bool,
    /// The changes: ref name, old value, new value (`None` = absent).
    pub updates: Vec<(String, Option<RefValue>, Option<RefValue>)>,
    /// For a compaction: the packs it swapped in and out (no ref changes then).
    pub compact: Option<CompactRecord>,
}

/// The catalog change of a compaction: `add` replaces `remove`, in one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRecord {
    /// The new packs, by file stem, with the namespaces each serves.
    pub add: Vec<(String, Vec<Namespace>)>,
    /// The packs they replace (deleted once this line is durable).
    pub remove: Vec<String>,
    /// Every namespace's `closed` flag afterwards.
    pub closed: Vec<(Namespace, bool)>,
}

#[derive(Serialize, Deserialize)]
struct CompactLine {
    add: Vec<(String, Vec<String>)>,
    remove: Vec<String>,
    closed: Vec<(String, bool)>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    time: u64,
    who: String,
    ns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pack: Option<String>,
    closed: bool,
    updates: Vec<(String, String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compact: Option<CompactLine>,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on the journal file.
    #[error("ref journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A complete line that does not decode: real corruption, not a torn write.
    #[error("ref journal {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the bad line starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

fn encode_value(v: &Option<RefValue>) -> String {
    v.as_ref().map(RefValue::encode).unwrap_or_default()
}

fn decode_value(s: &str) -> Result<Option<RefValue>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    RefValue::decode(s)
        .map(Some)
        .ok_or_else(|| format!("bad ref value {s:?}"))
}

impl TxRecord {
    fn to_line(&self) -> String {
        let line = Line {
            seq: self.seq,
            time: self.time,
            who: self.who.clone(),
            ns: self.ns.as_str().to_owned(),
            pack: self.pack.clone(),
            closed: self.closed,
            updates: self
                .updates
                .iter()
                .map(|(n, o, v)| (n.clone(), encode_value(o), encode_value(v)))
                .collect(),
            compact: self.compact.as_ref().map(|c| CompactLine {
                add: c
                    .add
                    .iter()
                    .map(|(name, nss)| {
                        (
                            name.clone(),
                            nss.iter().map(|ns| ns.as_str().to_owned()).collect(),
                        )
                    })
                    .collect(),
                remove: c.remove.clone(),
                closed: c
                    .closed
                    .iter()
                    .map(|(ns, closed)| (ns.as_str().to_owned(), *closed))
                    .collect(),
            }),
        };
        // Serializing plain strings and numbers cannot fail.
        let json = serde_json::to_string(&line).unwrap_or_default();
        format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
    }

    fn from_line(text: &str) -> Result<Self, String> {
        let (crc, json) = text.split_once(' ').ok_or("no checksum")?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
        if crc32fast::hash(json.as_bytes()) != crc {
            return Err("checksum mismatch".into());
        }
        let line: Line = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let ns =
            Namespace::parse(&line.ns).ok_or_else(|| format!("unknown namespace {}", line.ns))?;
        let mut updates = Vec::with_capacity(line.updates.len());
        for (name, old, new) in line.updates {
            updates.push((name, decode_value(&old)?, decode_value(&new)?));
        }
        let parse_ns =
            |s: &str| Namespace::parse(s).ok_or_else(|| format!("unknown namespace {s}"));
        let compact = match line.compact {
            None => None,
            Some(c) => {
                let mut add = Vec::with_capacity(c.add.len());
                for (name, nss) in c.add {
                    let nss = nss
                        .iter()
                        .map(|s| parse_ns(s))
                        .collect::<Result<Vec<_>, _>>()?;
                    add.push((name, nss));
                }
                let mut closed = Vec::with_capacity(c.closed.len());
                for (ns, flag) in c.closed {
                    closed.push((parse_ns(&ns)?, flag));
                }
                Some(CompactRecord {
                    add,
                    remove: c.remove,
                    closed,
                })
            }
        };
        Ok(TxRecord {
            seq: line.seq,
            time: line.time,
            who: line.who,
            ns,
            pack: line.pack,
            closed: line.closed,
            updates,
            compact,
        })
    }
}

/// An open journal, positioned for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
}

/// What reading a journal found.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// The transactions at or after the requested offset, with the offset just past each.
    pub records: Vec<(TxRecord, u64)>,
    /// Bytes of a torn final line that were cut off (0 when the file ended cleanly).
    pub torn_bytes: u64,
}

impl Journal {
    /// Open (creating if needed) the journal at `path`, cutting off a torn final line.
    /// Returns the journal and the transactions starting at byte `from`.
    pub fn open(path: &Path, from: u64) -> Result<(Journal, ReadOutcome), JournalError> {
        let io_err = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        let outcome = read(path, &mut file, from)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let len = file_len - outcome.torn_bytes;
        if outcome.torn_bytes > 0 {
            file.set_len(len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                len,
            },
            outcome,
        ))
    }

    /// Read a journal without opening it for writes (fsck). Torn tails are reported, not cut.
    pub fn read_only(path: &Path) -> Result<ReadOutcome, JournalError> {
        let mut file = File::open(path).map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
        read(path, &mut file, 0)
    }

    /// The journal's length in bytes (the offset the next record will start at).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was ever committed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `tx` and fsync. Returns the offset just past it. On error the file is cut back,
    /// so a failed append leaves no partial line behind.
    pub fn append(&mut self, tx: &TxRecord) -> Result<u64, JournalError> {
        let line = tx.to_line();
        let result = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(self.len)
            }
            Err(source) => {
                let _ = self.file.set_len(self.len);
                Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

fn read(path: &Path, file: &mut File, from: u64) -> Result<ReadOutcome, JournalError> {
    let io_err = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    file.seek(SeekFrom::Start(from)).map_err(io_err)?;
    let mut reader = BufReader::new(&mut *file);
    let mut out = ReadOutcome::default();
    let mut offset = from;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        let complete = buf.last() == Some(&b'\n');
        let parsed = std::str::from_utf8(&buf[..buf.len() - usize::from(complete)])
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(TxRecord::from_line);
        match parsed {
            Ok(tx) if complete => {
                offset += n as u64;
                out.records.push((tx, offset));
            }
            Ok(_) | Err(_) => {
                // A bad line is a torn write only if nothing follows it.
                let mut rest = Vec::new();
                io::Read::read_to_end(&mut reader, &mut rest).map_err(io_err)?;
                if rest.is_empty() {
                    out.torn_bytes = n as u64;
                    break;
                }
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    offset,
                    reason: parsed
                        .err()
                        .unwrap_or_else(|| "line without newline".into()),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gix_hash::ObjectId;

    fn tx(seq: u64) -> TxRecord {
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").expect("hex");
        TxRecord {
            seq,
            time: 1,
            who: "test".into(),
            ns: Namespace::Default,
            pack: Some("pack-abc".into()),
            closed: true,
            updates: vec![
                ("refs/heads/main".into(), None, Some(RefValue::Direct(id))),
                (
                    "HEAD".into(),
                    None,
                    Some(RefValue::Symbolic("refs/heads/main".into())),
                ),
            ],
            compact: None,
        }
    }

    #[test]
    fn compaction_lines_round_trip_and_old_lines_read_without_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("refs.journal");
        let (mut j, _) = Journal::open(&path, 0).expect("open");
        j.append(&tx(1)).expect("append");
        let compact = TxRecord {
            seq: 2,
            time: 3,
            who: "maintain".into(),
            ns: Namespace::Default,
            pack: None,
            closed: true,
            updates: Vec::new(),
            compact: Some(CompactRecord {
                add: vec![(
                    "pack-new".into(),
                    vec![Namespace::Default, Namespace::Ephemeral],
                )],
                remove: vec!["pack-abc".into()],
                closed: vec![(Namespace::Default, true), (Namespace::Ephemeral, false)],
            }),
        };
        j.append(&compact).expect("append");
        drop(j);
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().expect("a line");
        assert!(!first.contains("compact"), "{first}");
        let (_, out) = Journal::open(&path, 0).expect("reopen");
        assert_eq!(out.records[0].0, tx(1));
        assert_eq!(out.records[1].0, compact);
    }

    #[test]
    fn records_round_trip_and_resume_from_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("refs.journal");
        let (mut j, out) = Journal::open(&path, 0).expect("open");
        assert!(out.records.is_empty());
        let first_end = j.append(&tx(1)).expect("append");
        j.append(&tx(2)).expect("append");
        drop(j);
        let (_, out) = Journal::open(&path, 0).expect("reopen");
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].0, tx(1));
        let (_, tail) = Journal::open(&path, first_end).expect("reopen at offset");
        assert_eq!(tail.records.len(), 1);
        assert_eq!(tail.records[0].0.seq, 2);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("refs.journal");
        let (mut j, _) = Journal::open(&path, 0).expect("open");
        let end = j.append(&tx(1)).expect("append");
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"deadbeef {\"seq\":2,").expect("write torn");
        drop(f);
        let (j, out) = Journal::open(&path, 0).expect("reopen");
        assert_eq!(out.records.len(), 1);
        assert!(out.torn_bytes > 0);
        assert_eq!(j.len(), end);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), end);
    }

    #[test]
    fn damage_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("refs.journal");
        let (mut j, _) = Journal::open(&path, 0).expect("open");
        j.append(&tx(1)).expect("append");
        j.append(&tx(2)).expect("append");
        drop(j);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[12] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
        assert!(matches!(
            Journal::read_only(&path),
            Err(JournalError::Corrupt { offset: 0, .. })
        ));
    }
}
