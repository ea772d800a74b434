//! Open packs and object lookup across them.
//!
//! A [`PackSet`] is the catalog of a repository turned into open, memory-mapped packs, in catalog
//! order. Each pack is self-contained (thin packs are completed at ingest), so any object can be
//! decoded from the first pack that holds it: that copy is the object's *owner*, the one pack
//! generation sends. [`ObjectReader`] is a per-thread cursor with its own inflate state and delta
//! cache; readers are cheap and never shared between threads.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use gix_hash::{ObjectId, oid};
use gix_object::Kind;
use gix_pack::cache::lru::StaticLinkedList;

use crate::error::{Result, StoreError};
use crate::refs::Namespace;

/// One open pack (`.pack` + `.idx`).
pub struct Pack {
    name: String,
    bundle: gix_pack::Bundle,
    by_offset: OnceLock<Vec<(u64, u32)>>,
}

impl std::fmt::Debug for Pack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pack").field("name", &self.name).finish()
    }
}

/// Where an object's owning copy lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Position of the pack in the set.
    pub pack: usize,
    /// Byte offset of the entry in the pack.
    pub offset: u64,
}

impl Pack {
    /// Open `dir/<name>.idx` and `dir/<name>.pack`.
    pub fn open(dir: &Path, name: &str) -> Result<Pack> {
        let idx = dir.join(format!("{name}.idx"));
        let bundle = gix_pack::Bundle::at(&idx, gix_hash::Kind::Sha1)
            .map_err(StoreError::git(format!("open pack {}", idx.display())))?;
        Ok(Pack {
            name: name.to_owned(),
            bundle,
            by_offset: OnceLock::new(),
        })
    }

    /// Open the pack gix just wrote into `dir` (`data_path`: the `.pack` it reports).
    pub(crate) fn open_written(dir: &Path, data_path: Option<PathBuf>) -> Result<Pack> {
        let data_path = data_path
            .ok_or_else(|| StoreError::Invalid("indexing produced no pack file".into()))?;
        let name = data_path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| StoreError::Invalid("pack file has no name".into()))?;
        Pack::open(dir, name)
    }

    /// The file stem, `pack-<hex>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the `.pack` file.
    pub fn data_path(&self) -> PathBuf {
        self.bundle.pack.path().to_owned()
    }

    /// Path of the `.idx` file.
    pub fn index_path(&self) -> PathBuf {
        self.bundle.index.path().to_owned()
    }

    /// The pack index.
    pub fn index(&self) -> &gix_pack::index::File {
        &self.bundle.index
    }

    /// The pack data.
    pub fn data(&self) -> &gix_pack::data::File {
        &self.bundle.pack
    }

    /// Number of objects.
    pub fn num_objects(&self) -> u32 {
        self.bundle.index.num_objects()
    }

    /// Index position of `id`, if this pack holds it.
    pub fn lookup(&self, id: &oid) -> Option<u32> {
        self.bundle.index.lookup(id)
    }

    /// Entries as `(offset, index position)`, sorted by offset; built once, on first use.
    pub fn by_offset(&self) -> &[(u64, u32)] {
        self.by_offset.get_or_init(|| {
            let idx = &self.bundle.index;
            let mut v: Vec<(u64, u32)> = (0..idx.num_objects())
                .map(|i| (idx.pack_offset_at_index(i), i))
                .collect();
            v.sort_unstable();
            v
        })
    }

    /// Position in [`Pack::by_offset`] of the entry starting at `offset`.
    pub fn position_of_offset(&self, offset: u64) -> Option<usize> {
        self.by_offset()
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
    }

    /// The byte just past the entry at `position` of [`Pack::by_offset`].
    pub fn entry_end(&self, position: usize) -> u64 {
        self.by_offset()
            .get(position + 1)
            .map(|(o, _)| *o)
            .unwrap_or(self.bundle.pack.pack_end() as u64)
    }

    /// The object id at index position `index`.
    pub fn oid_at(&self, index: u32) -> ObjectId {
        self.bundle.index.oid_at_index(index).to_owned()
    }
}

/// A repository's packs, in catalog order, with the namespaces each serves.
#[derive(Debug, Default, Clone)]
pub struct PackSet {
    packs: Vec<Arc<Pack>>,
    namespaces: Vec<Vec<Namespace>>,
    /// Bumped by each compaction that replaced packs (adding packs keeps it).
    generation: u64,
}

impl PackSet {
    /// Build from already opened packs.
    pub fn new(packs: Vec<(Arc<Pack>, Vec<Namespace>)>) -> PackSet {
        let (packs, namespaces) = packs.into_iter().unzip();
        PackSet {
            packs,
            namespaces,
            generation: 0,
        }
    }

    /// This set as generation `generation` (see [`PackSet::generation`]).
    pub(crate) fn with_generation(mut self, generation: u64) -> PackSet {
        self.generation = generation;
        self
    }

    /// How many compactions replaced packs of this repository's sets since it was opened: a
    /// verification done against an older generation may have relied on pruned objects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A copy with `pack` appended (serving `ns`), or with `ns` added to it if present.
    pub fn with_pack(&self, pack: Arc<Pack>, ns: Namespace) -> PackSet {
        let mut next = self.clone();
        match next.packs.iter().position(|p| p.name == pack.name) {
            Some(i) => {
                if !next.namespaces[i].contains(&ns) {
                    next.namespaces[i].push(ns);
                }
            }
            None => {
                next.packs.push(pack);
                next.namespaces.push(vec![ns]);
            }
        }
        next
    }

    /// The packs.
    pub fn packs(&self) -> &[Arc<Pack>] {
        &self.packs
    }

    /// Whether pack `i` was ingested for namespace `ns`.
    pub fn serves(&self, i: usize, ns: Namespace) -> bool {
        self.namespaces.get(i).is_some_and(|v| v.contains(&ns))
    }

    /// Find the owning copy of `id`: the first pack holding it.
    pub fn locate(&self, id: &oid) -> Option<Location> {
        self.packs.iter().enumerate().find_map(|(i, p)| {
            p.lookup(id).map(|idx| Location {
                pack: i,
                offset: p.index().pack_offset_at_index(idx),
            })
        })
    }

    /// Whether any pack holds `id`.
    pub fn contains(&self, id: &oid) -> bool {
        self.packs.iter().any(|p| p.lookup(id).is_some())
    }

    /// Whether a pack serving `ns` holds `id`.
    pub fn contains_in(&self, id: &oid, ns: Namespace) -> bool {
        self.packs
            .iter()
            .enumerate()
            .any(|(i, p)| self.serves(i, ns) && p.lookup(id).is_some())
    }

    /// Total number of entries across packs (duplicates counted).
    pub fn num_entries(&self) -> u64 {
        self.packs.iter().map(|p| u64::from(p.num_objects())).sum()
    }
}

/// A per-thread object reader over a pack set, optionally with a quarantined pack in front.
pub struct ObjectReader {
    set: Arc<PackSet>,
    extra: Option<Arc<Pack>>,
    graph: Option<Arc<crate::graph::CommitGraph>>,
    inflate: gix_zlib::Inflate,
    cache: Box<dyn gix_pack::cache::DecodeEntry + Send>,
}

impl ObjectReader {
    /// A reader over `set`.
    pub fn new(set: Arc<PackSet>) -> ObjectReader {
        ObjectReader {
            set,
            extra: None,
            graph: None,
            inflate: Default::default(),
            cache: Box::new(StaticLinkedList::<64>::new(32 << 20)),
        }
    }

    /// A reader over `set` that also sees `extra` (a quarantined pack), which is searched first.
    pub fn with_extra(set: Arc<PackSet>, extra: Arc<Pack>) -> ObjectReader {
        let mut r = ObjectReader::new(set);
        r.extra = Some(extra);
        r
    }

    /// Use a delta-base cache of up to `bytes` (LRU): for walks that decode most of a pack.
    pub fn with_cache_bytes(mut self, bytes: usize) -> ObjectReader {
        self.cache = Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(bytes.max(1)));
        self
    }

    /// The pack set read from.
    pub fn set(&self) -> &Arc<PackSet> {
        &self.set
    }

    /// Use `graph` for commit lookups ([`crate::walk::Commits`]).
    pub fn set_graph(&mut self, graph: Option<Arc<crate::graph::CommitGraph>>) {
        self.graph = graph;
    }

    /// The commit graph, if any.
    pub fn graph(&self) -> Option<&crate::graph::CommitGraph> {
        self.graph.as_deref()
    }

    /// Whether the object exists.
    pub fn contains(&self, id: &oid) -> bool {
        pack_for_split(&self.set, &self.extra, id).is_some()
    }

    /// Decode object `id` into `buf`. `Ok(None)` if no pack holds it.
    pub fn find<'b>(&mut self, id: &oid, buf: &'b mut Vec<u8>) -> Result<Option<(Kind, &'b [u8])>> {
        let Some((pack, index)) = pack_for_split(&self.set, &self.extra, id) else {
            return Ok(None);
        };
        let (data, _) = pack
            .bundle
            .get_object_by_index(index, buf, &mut self.inflate, &mut self.cache)
            .map_err(StoreError::git(format!("decode object {id}")))?;
        Ok(Some((data.kind, data.data)))
    }

    /// Decode object `id`, failing if it is missing.
    pub fn must_find<'b>(&mut self, id: &oid, buf: &'b mut Vec<u8>) -> Result<(Kind, &'b [u8])> {
        self.find(id, buf)?
            .ok_or_else(|| StoreError::MissingObject(id.to_owned()))
    }

    /// Kind and size of object `id` without decoding its data.
    pub fn header(&mut self, id: &oid) -> Result<Option<(Kind, u64)>> {
        let Some((pack, index)) = pack_for_split(&self.set, &self.extra, id) else {
            return Ok(None);
        };
        let data = &pack.bundle.pack;
        let entry = data
            .entry(pack.bundle.index.pack_offset_at_index(index))
            .map_err(StoreError::git(format!("read entry of {id}")))?;
        let resolve = |base: &oid| -> gix_error::Result<
            Option<gix_pack::data::decode::header::ResolvedBase>,
        > {
            match pack.bundle.index.lookup(base) {
                Some(i) => data
                    .entry(pack.bundle.index.pack_offset_at_index(i))
                    .map(|e| Some(gix_pack::data::decode::header::ResolvedBase::InPack(e))),
                None => Ok(None),
            }
        };
        let outcome = data
            .decode_header(entry, &mut self.inflate, &resolve)
            .map_err(StoreError::git(format!("read header of {id}")))?;
        Ok(Some((outcome.kind, outcome.object_size)))
    }
}

fn pack_for_split<'a>(
    set: &'a PackSet,
    extra: &'a Option<Arc<Pack>>,
    id: &oid,
) -> Option<(&'a Pack, u32)> {
    if let Some(extra) = extra
        && let Some(i) = extra.lookup(id)
    {
        return Some((extra, i));
    }
    set.packs
        .iter()
        .find_map(|p| p.lookup(id).map(|i| (p.as_ref(), i)))
}

/// Adapts an [`ObjectReader`] to gix's object lookup trait (thin-pack completion at ingest).
pub struct FindAdapter(pub RefCell<ObjectReader>);

impl gix_object::Find for FindAdapter {
    fn try_find<'a>(
        &self,
        id: &oid,
        buffer: &'a mut Vec<u8>,
    ) -> gix_error::Result<Option<gix_object::Data<'a>>> {
        let mut reader = self
            .0
            .try_borrow_mut()
            .map_err(|_| gix_error::message("object reader is busy"))?;
        match reader.find(id, buffer) {
            Ok(Some((kind, _))) => Ok(Some(gix_object::Data {
                kind,
                data: buffer.as_slice(),
                object_hash: gix_hash::Kind::Sha1,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(gix_error::Error::from_error(e)),
        }
    }
}
