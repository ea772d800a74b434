//! Pack generation by reuse: stream stored pack entries into a new pack, byte for byte where
//! possible.
//!
//! Objects are emitted in stored order (pack by pack, by offset), so bases precede their
//! `OFS_DELTA`s and reads are sequential. Each object is sent from its owning copy (the first
//! pack of the chosen set that holds it); other copies are skipped, which is the "already sent"
//! filter that makes concatenating packs valid. A stored delta is copied verbatim when its base
//! is sent too (as `OFS_DELTA` to the base's new offset once written, else `REF_DELTA`) or when
//! the client has the base and accepts thin packs (`REF_DELTA`); otherwise the object is inflated
//! and sent whole. Nothing is ever re-deltified. Memory: 8 bytes per entry of the chosen packs
//! (new offsets), plus the selection itself.

use std::io::Write;
use std::sync::Arc;

use gix_hash::{ObjectId, oid};
use gix_pack::data::entry::Header;
use sha1::{Digest, Sha1};

use crate::error::{Result, StoreError};
use crate::packs::{ObjectReader, Pack, PackSet};
use crate::refs::Namespace;

/// What to put in the pack.
#[derive(Debug)]
pub enum Selection {
    /// Every object of the packs serving this namespace (the full-clone fast path; valid only
    /// when those packs are exactly the closure of what was asked for).
    AllOf(Namespace),
    /// Exactly these objects (unique ids).
    Objects(Vec<ObjectId>),
}

/// How the client wants the pack.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// The client understands `OFS_DELTA`.
    pub ofs_delta: bool,
    /// The client accepts deltas against objects it has (`thin-pack`).
    pub thin: bool,
}

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    /// Objects in the pack.
    pub objects: u64,
    /// Entries copied verbatim (bases and deltas).
    pub reused: u64,
    /// Deltas sent against an object the client has.
    pub thin_deltas: u64,
    /// Deltas that had to be inflated and sent whole.
    pub inflated: u64,
    /// Bytes written, trailer included.
    pub bytes: u64,
}

/// Progress callback: objects written so far, of total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

struct Out<'w> {
    inner: &'w mut dyn Write,
    hash: Sha1,
    pos: u64,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.inner
            .write_all(bytes)
            .map_err(|e| StoreError::io("write pack", "<client>")(e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// Write a pack of `selection` from `set` into `out`. `client_has` answers whether the client
/// holds an object (only asked for thin-pack bases).
pub fn write_pack(
    set: &Arc<PackSet>,
    selection: Selection,
    client_has: &dyn Fn(&oid) -> bool,
    opts: PackOptions,
    out: &mut dyn Write,
    progress: Progress<'_>,
) -> Result<PackStats> {
    let chosen: Arc<PackSet> = match &selection {
        Selection::AllOf(ns) => Arc::new(PackSet::new(
            set.packs()
                .iter()
                .enumerate()
                .filter(|(i, _)| set.serves(*i, *ns))
                .map(|(_, p)| (p.clone(), vec![*ns]))
                .collect(),
        )),
        Selection::Objects(_) => set.clone(),
    };
    let packs = chosen.packs();
    // plan[i] = positions (in offset order) of pack i's entries to send.
    let mut plan: Vec<Vec<u32>> = vec![Vec::new(); packs.len()];
    match selection {
        Selection::AllOf(_) => {
            for (i, pack) in packs.iter().enumerate() {
                let earlier = &packs[..i];
                plan[i] = pack
                    .by_offset()
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, idx))| {
                        let id = pack.index().oid_at_index(*idx);
                        !earlier.iter().any(|p| p.lookup(id).is_some())
                    })
                    .map(|(pos, _)| pos as u32)
                    .collect();
            }
        }
        Selection::Objects(ids) => {
            for id in &ids {
                let loc = chosen.locate(id).ok_or(StoreError::MissingObject(*id))?;
                let pos = packs[loc.pack]
                    .position_of_offset(loc.offset)
                    .ok_or_else(|| {
                        StoreError::Invalid(format!("no entry at offset {}", loc.offset))
                    })?;
                plan[loc.pack].push(pos as u32);
            }
            for p in &mut plan {
                p.sort_unstable();
                p.dedup();
            }
        }
    }
    let total: u64 = plan.iter().map(|p| p.len() as u64).sum();
    let count = u32::try_from(total)
        .map_err(|_| StoreError::Invalid(format!("{total} objects do not fit in one pack")))?;

    // Selected flags and new offsets, indexed like `by_offset` (0 = not written yet).
    let mut selected: Vec<Vec<bool>> = packs
        .iter()
        .map(|p| vec![false; p.num_objects() as usize])
        .collect();
    for (i, positions) in plan.iter().enumerate() {
        for pos in positions {
            selected[i][*pos as usize] = true;
        }
    }
    let mut new_offsets: Vec<Vec<u64>> = packs
        .iter()
        .map(|p| vec![0; p.num_objects() as usize])
        .collect();

    let mut out = Out {
        inner: out,
        hash: Sha1::new(),
        pos: 0,
    };
    out.put(&gix_pack::data::header::encode(
        gix_pack::data::Version::V2,
        count,
    ))?;
    let mut stats = PackStats {
        objects: total,
        ..Default::default()
    };
    let mut reader = ObjectReader::new(chosen.clone());
    let mut buf = Vec::new();
    let mut header_buf = Vec::with_capacity(64);
    let mut done = 0u64;
    for (i, positions) in plan.iter().enumerate() {
        let pack = &packs[i];
        for pos in positions {
            let pos = *pos as usize;
            let (offset, _) = pack.by_offset()[pos];
            let end = pack.entry_end(pos);
            let entry = pack.data().entry(offset).map_err(StoreError::git(format!(
                "read entry at {offset} of {}",
                pack.name()
            )))?;
            let body = slice(pack, entry.data_offset, end)?;
            let here = out.pos;
            // The base of a delta, if it is one: (id, where its copy in this pack was written).
            let base = match entry.header {
                Header::OfsDelta { base_distance } => {
                    let base_offset =
                        entry
                            .checked_base_pack_offset(base_distance)
                            .ok_or_else(|| {
                                StoreError::Invalid(format!("bad delta base in {}", pack.name()))
                            })?;
                    let base_pos = pack.position_of_offset(base_offset).ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "no entry at offset {base_offset} of {}",
                            pack.name()
                        ))
                    })?;
                    let written = new_offsets[i][base_pos];
                    if written != 0 && opts.ofs_delta {
                        // The common case: the base was just sent from this pack.
                        Some((None, Some(written)))
                    } else {
                        Some((Some(pack.oid_at(pack.by_offset()[base_pos].1)), None))
                    }
                }
                Header::RefDelta { base_id } => Some((Some(base_id), None)),
                _ => None,
            };
            match base {
                None => {
                    out.put(slice(pack, offset, end)?)?;
                    stats.reused += 1;
                }
                Some((base, written_here)) => {
                    let header = match (base, written_here) {
                        (_, Some(base_at)) => Some(Header::OfsDelta {
                            base_distance: here - base_at,
                        }),
                        (None, None) => None,
                        (Some(base), None) => {
                            let base_loc = chosen.locate(&base).and_then(|l| {
                                packs[l.pack]
                                    .position_of_offset(l.offset)
                                    .map(|p| (l.pack, p))
                            });
                            let base_selected = base_loc.is_some_and(|(bi, bp)| selected[bi][bp]);
                            let base_written = base_loc
                                .map(|(bi, bp)| new_offsets[bi][bp])
                                .filter(|o| *o != 0);
                            match (base_written, base_selected) {
                                (Some(base_at), _) if opts.ofs_delta => Some(Header::OfsDelta {
                                    base_distance: here - base_at,
                                }),
                                (_, true) => Some(Header::RefDelta { base_id: base }),
                                (_, false) if opts.thin && client_has(&base) => {
                                    stats.thin_deltas += 1;
                                    Some(Header::RefDelta { base_id: base })
                                }
                                _ => None,
                            }
                        }
                    };
                    match header {
                        Some(h) => {
                            header_buf.clear();
                            h.write_to(entry.decompressed_size, &mut header_buf)
                                .map_err(|e| {
                                    StoreError::io("encode entry header", "<memory>")(e)
                                })?;
                            out.put(&header_buf)?;
                            out.put(body)?;
                            stats.reused += 1;
                        }
                        None => {
                            let id = pack.oid_at(pack.by_offset()[pos].1);
                            write_whole(&mut out, &mut reader, &id, &mut buf, &mut header_buf)?;
                            stats.inflated += 1;
                        }
                    }
                }
            }
            new_offsets[i][pos] = here;
            done += 1;
            if done.is_multiple_of(1024) {
                progress(done, total);
            }
        }
    }
    progress(done, total);
    let digest = out.hash.clone().finalize();
    out.inner
        .write_all(&digest)
        .map_err(|e| StoreError::io("write pack", "<client>")(e))?;
    stats.bytes = out.pos + digest.len() as u64;
    Ok(stats)
}

fn slice(pack: &Pack, start: u64, end: u64) -> Result<&[u8]> {
    pack.data().entry_slice(start..end).ok_or_else(|| {
        StoreError::Invalid(format!(
            "entry {start}..{end} out of bounds in {}",
            pack.name()
        ))
    })
}

/// Inflate object `id` fully and write it as a base entry.
fn write_whole(
    out: &mut Out<'_>,
    reader: &mut ObjectReader,
    id: &oid,
    buf: &mut Vec<u8>,
    header_buf: &mut Vec<u8>,
) -> Result<()> {
    let (kind, data) = reader.must_find(id, buf)?;
    let header = match kind {
        gix_object::Kind::Commit => Header::Commit,
        gix_object::Kind::Tree => Header::Tree,
        gix_object::Kind::Blob => Header::Blob,
        gix_object::Kind::Tag => Header::Tag,
    };
    header_buf.clear();
    header
        .write_to(data.len() as u64, header_buf)
        .map_err(|e| StoreError::io("encode entry header", "<memory>")(e))?;
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::fast(),
    );
    z.write_all(data)
        .map_err(|e| StoreError::io("compress", "<memory>")(e))?;
    let compressed = z
        .finish()
        .map_err(|e| StoreError::io("compress", "<memory>")(e))?;
    out.put(header_buf)?;
    out.put(&compressed)
}
