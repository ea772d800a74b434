//! Git's commit-graph, kept as an incremental chain of layers under `<objects>/info/commit-graphs`.
//!
//! This module owns that directory: the `commit-graph-chain` file (one layer checksum per line, oldest
//! first), the `graph-<checksum>.graph` layers it names, and the `commit-graph-chain.lock` that
//! serializes writers (the same lock git takes, so git and codestorage never write at once).
//! The on-disk format is gitformat-commit-graph(5): OIDF, OIDL, CDAT, GDA2/GDO2 (corrected commit
//! dates), EDGE (octopus parents) and BASE (the layers below). Bloom filters are not written.
//!
//! [`append_layer`] adds the commits of one ingested pack; [`CommitGraph`] answers parents,
//! generation, commit time and root tree of a commit without touching the object database.
//! Parsing commits is the caller's job: this module never reads objects.
//!
//! Like `git commit-graph write --split`, appending merges the top layers into the new one while
//! the top layer holds at most twice as many commits as the new one. The chain therefore stays
//! logarithmic in the number of commits (git and gix both refuse chains longer than 256 files),
//! at the cost of rewriting a small layer now and then.
//!
//! Durability: a layer is written to a temporary file, fsynced and renamed; only then is the chain
//! rewritten (the lock file, fsynced and renamed over it) and the directory fsynced. A crash leaves
//! the old chain or the new one; unreferenced files it leaves are swept by the next append. A crash
//! mid-append also leaves the lock behind, failing later appends with [`Error::Locked`] until
//! [`remove_stale_lock`] or [`remove_all`] clears it.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use gix_commitgraph::file::Position as LexPosition;
use gix_hash::{ObjectId, oid};

const GRAPHS_DIR: &str = "info/commit-graphs";
const CHAIN_FILE: &str = "commit-graph-chain";
const LOCK_FILE: &str = "commit-graph-chain.lock";
const HASH_KIND: gix_hash::Kind = gix_hash::Kind::Sha1;
const HASH_LEN: usize = 20;
/// CDAT parent value for "no parent in this slot".
const NO_PARENT: u32 = 0x7000_0000;
/// Set on CDAT's second parent (index into EDGE), on EDGE's last entry, and on GDA2 overflow entries.
const HIGH_BIT: u32 = 0x8000_0000;
/// Topological levels are capped here (30 bits in CDAT).
const GENERATION_V1_MAX: u32 = 0x3fff_ffff;
/// Commit times are stored in 34 bits; times outside `0..=MAX_TIME` are clamped.
const MAX_TIME: u64 = (1 << 34) - 1;
/// Merge the top layer into a new one while it holds at most this many times the new commits (git's default).
const SPLIT_SIZE_FACTOR: u64 = 2;
/// Merge regardless of sizes beyond this many layers (the header counts base layers in one byte).
const MAX_LAYERS: usize = 64;

/// A commit to be added to the graph, as parsed from its object by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphCommit {
    /// The commit's id.
    pub id: ObjectId,
    /// Its root tree.
    pub tree: ObjectId,
    /// Its parents in header order; each must be in the same layer or already in the graph.
    pub parents: Vec<ObjectId>,
    /// Committer time in seconds since the epoch; clamped to `0..2^34` as the format requires.
    pub commit_time: i64,
}

/// What the graph knows about one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphEntry {
    /// Parents in header order.
    pub parents: Vec<ObjectId>,
    /// Topological level (generation number v1): 1 for roots, capped at `0x3fff_ffff`.
    pub generation: u32,
    /// Committer time in seconds (as stored: clamped to `0..2^34`).
    pub commit_time: i64,
    /// Root tree.
    pub tree: ObjectId,
}

impl GraphEntry {
    fn into_commit(self, id: ObjectId) -> GraphCommit {
        let Self {
            parents,
            commit_time,
            tree,
            ..
        } = self;
        GraphCommit {
            id,
            tree,
            parents,
            commit_time,
        }
    }
}

/// Errors of reading and writing the commit-graph chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation (`action`, e.g. "read") on `path` failed.
    #[error("could not {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// gix-commitgraph rejected the layer file at `path`, or hashing it failed.
    #[error("commit-graph file {path} could not be read")]
    Graph {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A layer or the chain file at `path` is inconsistent in the way `reason` says.
    #[error("commit-graph file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: &'static str },
    /// `parent` of `commit` is neither among the new commits nor in the graph.
    #[error("commit {commit} has parent {parent}, which is in neither the new layer nor the graph")]
    MissingParent { commit: ObjectId, parent: ObjectId },
    /// The commit `id` was passed twice.
    #[error("commit {id} is listed twice in the new layer")]
    DuplicateCommit { id: ObjectId },
    /// The commit `id` is already in the graph.
    #[error("commit {id} is already in the commit-graph")]
    AlreadyPresent { id: ObjectId },
    /// Parent links among the new commits form a cycle through `id` (impossible for real commits).
    #[error("commit {id} is its own ancestor")]
    Cycle { id: ObjectId },
    /// `id` is not SHA-1, the only hash this store writes.
    #[error("object id {id} is not SHA-1")]
    UnsupportedHash { id: ObjectId },
    /// The graph would hold `count` of `what` ("commits", "octopus edges"), beyond the format's limits.
    #[error("commit-graph would hold {count} {what}, more than the format allows")]
    TooLarge { what: &'static str, count: u64 },
    /// The lock file at `path` exists: another writer is running, or one crashed (see [`remove_all`]).
    #[error("commit-graph chain is locked by {path} (another writer is running, or one crashed)")]
    Locked { path: PathBuf },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn gix_err<E: std::error::Error + Send + Sync + 'static>(
    path: &Path,
) -> impl FnOnce(E) -> Error + '_ {
    move |source| Error::Graph {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

fn corrupt(path: &Path, reason: &'static str) -> Error {
    let path = path.to_owned();
    Error::Corrupt { path, reason }
}

/// Read access to the chain: one memory-mapped gix-commitgraph file per layer.
#[derive(Debug)]
pub struct CommitGraph {
    layers: Vec<Layer>,
}

#[derive(Debug)]
struct Layer {
    file: gix_commitgraph::File,
    /// Graph position of this layer's first commit: the number of commits in the layers below.
    start: u32,
    /// Where GDA2 and GDO2 (generation v2) are. Only appends read them, with positional reads, so
    /// lookups stay in the mmap.
    v2: Option<GenerationData>,
}

#[derive(Debug)]
struct GenerationData {
    file: fs::File,
    gda2: u64,
    gdo2: Option<Range<u64>>,
}

impl CommitGraph {
    /// Open the chain under `objects_dir`; `None` if there is none.
    ///
    /// An [`append_layer`] may delete layers it merged away between our reading the chain and opening
    /// them; the chain is then read again (a few times) instead of failing.
    pub fn open(objects_dir: &Path) -> Result<Option<Self>, Error> {
        let dir = objects_dir.join(GRAPHS_DIR);
        let mut attempts = 0;
        loop {
            let Some(hashes) = read_chain(&dir)? else {
                return Ok(None);
            };
            match Self::open_layers(&dir, &hashes) {
                Err(Error::Io { source, .. })
                    if source.kind() == ErrorKind::NotFound && attempts < 5 =>
                {
                    attempts += 1
                }
                other => return other.map(|graph| (!graph.layers.is_empty()).then_some(graph)),
            }
        }
    }

    fn open_layers(dir: &Path, hashes: &[ObjectId]) -> Result<Self, Error> {
        let mut layers: Vec<Layer> = Vec::with_capacity(hashes.len());
        for (index, hash) in hashes.iter().enumerate() {
            let path = dir.join(format!("graph-{hash}.graph"));
            let handle = fs::File::open(&path).map_err(io_err("open", &path))?;
            let chunks = read_chunk_table(&handle, &path)?;
            let file = gix_commitgraph::File::at(&path).map_err(gix_err(&path))?;
            // What git checks when loading a chain: the name is the checksum, BASE lists the layers below.
            let bases = hashes[..index].iter().map(|h| h.as_ref());
            if file.object_hash() != HASH_KIND || file.checksum() != hash.as_ref() {
                return Err(corrupt(&path, "not a SHA-1 layer named after its checksum"));
            } else if usize::from(file.base_graph_count()) != index
                || !file.iter_base_graph_ids().eq(bases)
            {
                return Err(corrupt(&path, "BASE chunk does not match the chain"));
            }
            let start = layers.last().map_or(0, Layer::end);
            let end = u64::from(start) + u64::from(file.num_commits());
            if end > u64::from(gix_commitgraph::MAX_COMMITS) {
                return Err(corrupt(&path, "more commits than the format allows"));
            }
            let v2 = match chunks.get(b"GDA2") {
                None => None,
                Some(r) if r.end - r.start == 4 * u64::from(file.num_commits()) => {
                    let (file, gda2, gdo2) = (handle, r.start, chunks.get(b"GDO2").cloned());
                    Some(GenerationData { file, gda2, gdo2 })
                }
                Some(_) => return Err(corrupt(&path, "GDA2 chunk has the wrong size")),
            };
            layers.push(Layer { file, start, v2 });
        }
        Ok(Self { layers })
    }

    /// Number of commits in all layers.
    pub fn num_commits(&self) -> u32 {
        self.layers.last().map_or(0, Layer::end)
    }

    /// Number of layers in the chain.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Verify every layer's trailing checksum (fsck).
    pub fn verify(&self) -> Result<(), Error> {
        for layer in &self.layers {
            let path = layer.file.path().to_owned();
            layer.file.verify_checksum().map_err(gix_err(&path))?;
        }
        Ok(())
    }

    /// Whether `id` is in the graph: a binary search per layer, no allocation.
    pub fn contains(&self, id: &oid) -> bool {
        find(&self.layers, id).is_some()
    }

    /// Look `id` up; `None` if absent, or if its entry is corrupt (see [`Self::try_lookup`]).
    pub fn lookup(&self, id: &oid) -> Option<GraphEntry> {
        self.try_lookup(id).ok().flatten()
    }

    /// Look `id` up, reporting corrupt entries (such as parent positions out of range) as errors.
    pub fn try_lookup(&self, id: &oid) -> Result<Option<GraphEntry>, Error> {
        let found = find(&self.layers, id);
        found.map(|(layer, lex)| self.entry(layer, lex)).transpose()
    }

    fn entry(&self, layer: usize, lex: LexPosition) -> Result<GraphEntry, Error> {
        let file = &self.layers[layer].file;
        let commit = file.commit_at(lex);
        let mut parents = Vec::with_capacity(2);
        for pos in commit.iter_parents() {
            let pos = pos.map_err(gix_err(file.path()))?.0;
            // Parents live in this layer or below; a position beyond is corruption, not a panic.
            let owner = self.layers[..=layer].iter().find(|l| pos < l.end());
            let owner =
                owner.ok_or_else(|| corrupt(file.path(), "parent position out of range"))?;
            parents.push(owner.file.id_at(LexPosition(pos - owner.start)).to_owned());
        }
        let commit_time = i64::try_from(commit.committer_timestamp()).unwrap_or(i64::MAX);
        let tree = commit.root_tree_id().to_owned();
        Ok(GraphEntry {
            parents,
            generation: commit.generation(),
            commit_time,
            tree,
        })
    }

    /// Corrected commit date (generation v2) of a commit, or `None` if its layer has no GDA2 chunk.
    fn corrected_date(&self, layer: usize, lex: LexPosition) -> Result<Option<u64>, Error> {
        let (layer, path) = (&self.layers[layer], self.layers[layer].file.path());
        let Some(data) = &layer.v2 else {
            return Ok(None);
        };
        let raw = u32::from_be_bytes(read_at(&data.file, data.gda2 + 4 * u64::from(lex.0), path)?);
        let offset = match (&data.gdo2, u64::from(raw & !HIGH_BIT) * 8) {
            _ if raw & HIGH_BIT == 0 => u64::from(raw),
            // The offset did not fit 31 bits; the low bits index 8-byte offsets in GDO2.
            (Some(gdo2), at) if gdo2.start + at + 8 <= gdo2.end => {
                u64::from_be_bytes(read_at(&data.file, gdo2.start + at, path)?)
            }
            _ => return Err(corrupt(path, "GDA2 overflow index out of range")),
        };
        let time = layer.file.commit_at(lex).committer_timestamp();
        let corrected = time.checked_add(offset);
        corrected
            .map(Some)
            .ok_or_else(|| corrupt(path, "corrected commit date overflows"))
    }
}

impl Layer {
    /// Graph position one past this layer's last commit.
    fn end(&self) -> u32 {
        self.start + self.file.num_commits()
    }
}

/// The layer and position of `id`, searching the newest layers first.
fn find(layers: &[Layer], id: &oid) -> Option<(usize, LexPosition)> {
    let mut layers = layers.iter().enumerate().rev();
    layers.find_map(|(i, layer)| Some((i, layer.file.lookup(id)?)))
}

/// The layer checksums listed in the chain file, oldest first; `None` if there is no chain file.
fn read_chain(dir: &Path) -> Result<Option<Vec<ObjectId>>, Error> {
    let path = dir.join(CHAIN_FILE);
    let text = match fs::read(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        other => other.map_err(io_err("read", &path))?,
    };
    let lines = text
        .strip_suffix(b"\n")
        .unwrap_or(&text)
        .split(|&b| b == b'\n');
    let hex = |line| {
        ObjectId::from_hex(line)
            .ok()
            .filter(|id| id.kind() == HASH_KIND)
    };
    let hashes = lines.map(hex);
    match hashes.collect::<Option<Vec<_>>>() {
        _ if text.is_empty() => Ok(Some(Vec::new())),
        Some(hashes) if hashes.len() <= 256 => Ok(Some(hashes)),
        _ => Err(corrupt(&path, "not at most 256 lines of SHA-1 hex ids")),
    }
}

/// The chunk table of a layer, as id -> byte range. gix validates the rest of the file.
fn read_chunk_table(file: &fs::File, path: &Path) -> Result<HashMap<[u8; 4], Range<u64>>, Error> {
    let header: [u8; 8] = read_at(file, 0, path)?;
    let mut table = vec![0u8; (usize::from(header[6]) + 1) * 12];
    let mut reader = file;
    reader
        .read_exact(&mut table)
        .map_err(io_err("read", path))?;
    let (entries, _) = table.as_chunks::<12>();
    let mut chunks = HashMap::new();
    for pair in entries.windows(2) {
        let offset = |e: &[u8; 12]| e[4..].try_into().map(u64::from_be_bytes).unwrap_or(0);
        let (start, end) = (offset(&pair[0]), offset(&pair[1]));
        if start > end {
            return Err(corrupt(path, "chunk offsets are not ascending"));
        }
        chunks.insert(pair[0][..4].try_into().unwrap_or_default(), start..end);
    }
    Ok(chunks)
}

fn read_at<const N: usize>(
    mut file: &fs::File,
    offset: u64,
    path: &Path,
) -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    let seek = file.seek(SeekFrom::Start(offset));
    let read = seek.and_then(|_| file.read_exact(&mut buf));
    read.map(|()| buf).map_err(io_err("read", path))
}

/// Append a layer holding `commits` to the chain under `objects_dir/info/commit-graphs`.
///
/// Every parent must be among `commits` or already in the graph, and no commit may be in the graph
/// yet. Topological levels (CDAT) and corrected commit dates (GDA2/GDO2) are computed across layers;
/// GDA2 is written only if every layer below has it, since git ignores it otherwise. Small top layers
/// are merged into the new one (see the module docs). Returns the path of the new top layer, or `None`
/// (writing nothing) if `commits` is empty. On error, the chain is unchanged.
pub fn append_layer(
    objects_dir: &Path,
    mut commits: Vec<GraphCommit>,
) -> Result<Option<PathBuf>, Error> {
    if commits.is_empty() {
        return Ok(None);
    }
    let dir = objects_dir.join(GRAPHS_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        sync_dir(objects_dir)?;
        sync_dir(&objects_dir.join("info"))?;
    }
    let lock = Lock::acquire(&dir)?;
    let graph = CommitGraph::open(objects_dir)?.unwrap_or(CommitGraph { layers: Vec::new() });

    commits.sort_unstable_by_key(|c| c.id);
    for (i, c) in commits.iter().enumerate() {
        let mut ids = std::iter::once(&c.id).chain([&c.tree]).chain(&c.parents);
        if let Some(id) = ids.find(|id| id.kind() != HASH_KIND) {
            return Err(Error::UnsupportedHash { id: *id });
        } else if i > 0 && commits[i - 1].id == c.id {
            return Err(Error::DuplicateCommit { id: c.id });
        } else if graph.contains(&c.id) {
            return Err(Error::AlreadyPresent { id: c.id });
        }
    }

    // As `git commit-graph write --split`: merge the top layer while it is small next to the new one.
    let mut keep = graph.layers.len();
    while let Some(top) = keep.checked_sub(1).map(|i| &graph.layers[i]) {
        let top_count = u64::from(top.file.num_commits());
        if top_count > SPLIT_SIZE_FACTOR * commits.len() as u64 && keep < MAX_LAYERS {
            break;
        }
        for lex in (0..top.file.num_commits()).map(LexPosition) {
            let (id, entry) = (top.file.id_at(lex).to_owned(), graph.entry(keep - 1, lex)?);
            commits.push(entry.into_commit(id));
        }
        keep -= 1;
    }
    commits.sort_unstable_by_key(|c| c.id);
    let base = &graph.layers[..keep];
    let base_commits = base.last().map_or(0, Layer::end);
    let total = u64::from(base_commits) + commits.len() as u64;
    if total > u64::from(gix_commitgraph::MAX_COMMITS) {
        let (what, count) = ("commits", total);
        return Err(Error::TooLarge { what, count });
    }

    let write_v2 = base.iter().all(|l| l.v2.is_some());
    let nodes = resolve_parents(&graph, keep, commits)?;
    let generations = compute_generations(&nodes)?;
    let base_hashes: Vec<ObjectId> = base.iter().map(|l| l.file.checksum().to_owned()).collect();
    let mut bytes = encode_layer(
        (&nodes, &generations),
        (&base_hashes, base_commits),
        write_v2,
    )?;
    let mut hasher = gix_hash::hasher(HASH_KIND);
    hasher.update(&bytes);
    let checksum = hasher.try_finalize().map_err(gix_err(&dir))?;
    bytes.extend_from_slice(checksum.as_bytes());

    let (tmp, path) = (
        dir.join(format!("tmp_graph_{checksum}")),
        dir.join(format!("graph-{checksum}.graph")),
    );
    let written = write_synced(&tmp, &bytes)
        .and_then(|()| fs::rename(&tmp, &path).map_err(io_err("rename", &tmp)));
    written.inspect_err(|_| drop(fs::remove_file(&tmp)))?;
    // The layer's directory entry must be durable before a chain naming it can be.
    sync_dir(&dir)?;
    crate::fault::point("graph-layer-written");
    let chain: String = base_hashes
        .iter()
        .chain([&checksum])
        .map(|h| format!("{h}\n"))
        .collect();
    lock.commit(chain.as_bytes())?;
    sync_dir(&dir)?;

    sweep(&dir, &chain);
    Ok(Some(path))
}

/// Remove the chain and the whole `objects_dir/info/commit-graphs` directory.
///
/// Must not run concurrently with [`append_layer`]; it also clears a lock left behind by a crashed
/// writer. The chain goes first, so a crash midway never leaves a chain naming missing layers.
pub fn remove_all(objects_dir: &Path) -> Result<(), Error> {
    let dir = objects_dir.join(GRAPHS_DIR);
    if !dir.exists() {
        return Ok(());
    }
    let chain = dir.join(CHAIN_FILE);
    match fs::remove_file(&chain) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io_err("remove", &chain)(e)),
        _ => sync_dir(&dir)?,
    }
    fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
    sync_dir(&objects_dir.join("info"))
}

/// Remove a lock left behind by a crashed [`append_layer`]; true if there was one. Only for when no
/// append can be running, such as while the store opens (one process owns it).
pub fn remove_stale_lock(objects_dir: &Path) -> Result<bool, Error> {
    let lock = objects_dir.join(GRAPHS_DIR).join(LOCK_FILE);
    match fs::remove_file(&lock) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", &lock)(e)),
    }
}

/// A commit of the layer being written, with parents resolved.
struct Node {
    commit: GraphCommit,
    parents: Vec<Parent>,
}

impl Node {
    /// Commit time clamped to the 34 bits CDAT has for it.
    fn time(&self) -> u64 {
        u64::try_from(self.commit.commit_time)
            .unwrap_or(0)
            .min(MAX_TIME)
    }
}

/// `Local(index into the sorted new commits)` or `Base(graph position, generations)`.
#[derive(Clone, Copy)]
enum Parent {
    Local(usize),
    Base(u32, Generations),
}

/// Topological level and corrected commit date; a corrected date of 0 in a base layer means it has
/// no GDA2, and then the new layer gets none either.
#[derive(Clone, Copy, Default)]
struct Generations {
    level: u32,
    corrected: u64,
}

fn resolve_parents(
    graph: &CommitGraph,
    keep: usize,
    commits: Vec<GraphCommit>,
) -> Result<Vec<Node>, Error> {
    let index: HashMap<ObjectId, usize> =
        commits.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let mut nodes = Vec::with_capacity(commits.len());
    for commit in commits {
        let mut parents = Vec::with_capacity(commit.parents.len());
        for &parent in &commit.parents {
            if let Some(&i) = index.get(&parent) {
                parents.push(Parent::Local(i));
                continue;
            }
            let missing = Error::MissingParent {
                commit: commit.id,
                parent,
            };
            let (layer, lex) = find(&graph.layers[..keep], &parent).ok_or(missing)?;
            let level = graph.layers[layer].file.commit_at(lex).generation();
            let corrected = graph.corrected_date(layer, lex)?.unwrap_or(0);
            let pos = graph.layers[layer].start + lex.0;
            parents.push(Parent::Base(pos, Generations { level, corrected }));
        }
        nodes.push(Node { commit, parents });
    }
    Ok(nodes)
}

/// The generations of every node, computed parents first. Iterative, as histories are far deeper
/// than the stack.
fn compute_generations(nodes: &[Node]) -> Result<Vec<Generations>, Error> {
    let (new, on_stack, done) = (0u8, 1u8, 2u8);
    let mut state = vec![new; nodes.len()];
    let mut generations = vec![Generations::default(); nodes.len()];
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..nodes.len() {
        if state[root] == new {
            state[root] = on_stack;
            stack.push((root, 0));
        }
        while let Some(top) = stack.last_mut() {
            let (i, next) = *top;
            if let Some(&parent) = nodes[i].parents.get(next) {
                top.1 += 1;
                match parent {
                    Parent::Local(p) if state[p] == new => {
                        state[p] = on_stack;
                        stack.push((p, 0));
                    }
                    Parent::Local(p) if state[p] == on_stack => {
                        let id = nodes[p].commit.id;
                        return Err(Error::Cycle { id });
                    }
                    _ => {}
                }
                continue;
            }
            let mut max = Generations::default();
            for parent in &nodes[i].parents {
                let g = match *parent {
                    Parent::Local(p) => generations[p],
                    Parent::Base(_, g) => g,
                };
                max.level = max.level.max(g.level);
                max.corrected = max.corrected.max(g.corrected);
            }
            // As git: level = 1 + max parent level (capped); corrected = max(date, 1 + max parent
            // corrected), so even a root dated 0 gets 1, which `git commit-graph verify` insists on.
            generations[i].level = max.level.min(GENERATION_V1_MAX - 1) + 1;
            generations[i].corrected = nodes[i].time().max(max.corrected + 1);
            state[i] = done;
            stack.pop();
        }
    }
    Ok(generations)
}

/// Serialize a layer, all but the trailing checksum; `nodes` are sorted by id.
fn encode_layer(
    (nodes, generations): (&[Node], &[Generations]),
    (base, base_commits): (&[ObjectId], u32),
    write_v2: bool,
) -> Result<Vec<u8>, Error> {
    let position = |p: &Parent| match *p {
        Parent::Local(i) => base_commits + i as u32,
        Parent::Base(pos, _) => pos,
    };
    let be32 = |out: &mut Vec<u8>, value: u32| out.extend_from_slice(&value.to_be_bytes());
    let mut fanout = Vec::with_capacity(256 * 4);
    for byte in 0..=255u8 {
        let count = nodes.partition_point(|n| n.commit.id.first_byte() <= byte);
        be32(&mut fanout, count as u32);
    }
    let (mut oids, mut data) = (Vec::with_capacity(nodes.len() * HASH_LEN), Vec::new());
    let (mut gda2, mut gdo2, mut edges) = (Vec::new(), Vec::new(), Vec::new());
    for (node, g) in nodes.iter().zip(generations) {
        oids.extend_from_slice(node.commit.id.as_bytes());
        data.extend_from_slice(node.commit.tree.as_bytes());
        be32(&mut data, node.parents.first().map_or(NO_PARENT, position));
        let second = match node.parents.as_slice() {
            [] | [_] => NO_PARENT,
            [_, second] => position(second),
            [_, rest @ ..] => {
                // Octopus: parents 2..n go to EDGE, the last one flagged; CDAT points at the first.
                let (index, count) = (edges.len() / 4, (edges.len() / 4 + rest.len()) as u64);
                if count > u64::from(!HIGH_BIT) {
                    return Err(Error::TooLarge {
                        what: "octopus edges",
                        count,
                    });
                }
                for (k, parent) in rest.iter().enumerate() {
                    let last = if k + 1 == rest.len() { HIGH_BIT } else { 0 };
                    be32(&mut edges, position(parent) | last);
                }
                HIGH_BIT | index as u32
            }
        };
        let time = node.time();
        be32(&mut data, second);
        be32(&mut data, (g.level << 2) | (time >> 32) as u32);
        be32(&mut data, time as u32);
        let offset = g.corrected - time;
        if offset <= u64::from(!HIGH_BIT) {
            be32(&mut gda2, offset as u32);
        } else {
            be32(&mut gda2, HIGH_BIT | (gdo2.len() / 8) as u32);
            gdo2.extend_from_slice(&offset.to_be_bytes());
        }
    }
    let header = [b'C', b'G', b'P', b'H', 1, 1, 0, base.len() as u8]; // v1, SHA-1, chunks, bases
    let base: Vec<u8> = base.iter().flat_map(|h| h.as_bytes().to_vec()).collect();
    if !write_v2 {
        (gda2, gdo2) = Default::default();
    }
    // git's chunk order; optional chunks are left out when empty (GDA2 is empty only when not written).
    let chunks = [
        (b"OIDF", fanout),
        (b"OIDL", oids),
        (b"CDAT", data),
        (b"GDA2", gda2),
    ];
    let chunks = chunks
        .into_iter()
        .chain([(b"GDO2", gdo2), (b"EDGE", edges), (b"BASE", base)]);
    let chunks: Vec<_> = chunks.filter(|c| !c.1.is_empty()).collect();

    let mut out = header.to_vec();
    out[6] = chunks.len() as u8;
    let mut offset = (8 + 12 * (chunks.len() + 1)) as u64;
    let table = chunks.iter().map(|(id, c)| (**id, c.len()));
    for (id, len) in table.chain([([0; 4], 0)]) {
        out.extend_from_slice(&id);
        out.extend_from_slice(&offset.to_be_bytes());
        offset += len as u64;
    }
    chunks
        .iter()
        .for_each(|(_, chunk)| out.extend_from_slice(chunk));
    Ok(out)
}

/// `commit-graph-chain.lock`, created exclusively; [`Lock::commit`] renames it over the chain, and
/// dropping it unpublished removes it.
struct Lock {
    path: PathBuf,
    file: fs::File,
    published: bool,
}

impl Lock {
    fn acquire(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(LOCK_FILE);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => Ok(Self {
                path,
                file,
                published: false,
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::Locked { path }),
            Err(e) => Err(io_err("create", &path)(e)),
        }
    }

    fn commit(mut self, contents: &[u8]) -> Result<(), Error> {
        let written = self
            .file
            .write_all(contents)
            .and_then(|()| self.file.sync_all());
        written.map_err(io_err("write", &self.path))?;
        fs::rename(&self.path, self.path.with_file_name(CHAIN_FILE))
            .map_err(io_err("rename", &self.path))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.published {
            // Nothing was published: releasing the lock is all there is to undo.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Remove layers the new `chain` no longer names (merged away, or orphaned by a crash between the
/// layer and the chain rename) and temporary files. Called under the lock, so no writer (ours or
/// git's) is mid-way; a reader that read the old chain re-reads it. Best effort: garbage, not damage.
fn sweep(dir: &Path, chain: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|entry| Some(entry.ok()?.path())) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let hash = name
            .strip_prefix("graph-")
            .and_then(|n| n.strip_suffix(".graph"));
        let layer_gone = hash.is_some_and(|hash| !chain.lines().any(|line| line == hash));
        let stale = layer_gone || name.starts_with("tmp_graph_");
        if stale && let Err(err) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %err, "could not remove stale commit-graph file");
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::File::create(path).map_err(io_err("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", path))
}

/// Make renames and removals in `dir` durable (Unix only: elsewhere directories cannot be synced).
fn sync_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
