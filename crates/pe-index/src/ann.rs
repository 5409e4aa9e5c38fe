//! The approximate index (`ann.bin`): USearch's HNSW graph over one vector per distinct
//! content, for collections too large to score every row at each query. It is kept beside the
//! exact matrix, never instead of it: results are re-scored with the stored float32 embeddings,
//! so scores are exact and only recall is approximate.
//!
//! The file is ours around USearch's own serialization: a header (generation of the catalog it
//! was built from, storage, sizes, a BLAKE3 of everything after the header), a table of keys
//! (64-bit prefixes of the content hashes, sorted, each with its full hash), then the graph.
//! It is written to a temporary name and renamed, so readers see a whole file or the previous
//! one; the hash is checked before USearch is given the bytes, so a damaged file is an error,
//! not undefined behaviour. Updates are incremental: contents that are gone are removed and new
//! ones added to the previous graph; the graph is rebuilt whole once removals reach a quarter
//! of it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use usearch::{IndexOptions, MetricKind, ScalarKind};

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::matrix::u64_at;

const MAGIC: &[u8; 8] = b"PEANN002";
const HEADER: usize = 128;
/// A key table entry: the key (u64), the content hash (32 bytes) and the first row of the
/// matrix holding it (u64; `u64::MAX` if none), so hits are re-scored from the matrix.
const ENTRY: usize = 48;
/// Below this many contents, `auto` leaves the collection to exact search (a few ms a query).
pub const ANN_MIN_ROWS: usize = 20_000;
/// Links per node: USearch's default, enough for recall >= 0.99 at 1024 dims (docs/search.md).
const CONNECTIVITY: usize = 16;
const EXPANSION_ADD: usize = 128;
/// Candidates kept while searching (HNSW's `ef`) in graphs of up to [`EF_GROWS_FROM`]
/// contents; see [`default_ef`].
pub const EXPANSION_SEARCH: usize = 96;
/// The size from which the default ef grows.
pub const EF_GROWS_FROM: usize = 250_000;

/// The ef searches use by default in a graph of `len` contents: [`EXPANSION_SEARCH`] up to
/// [`EF_GROWS_FROM`], then 16 more each time the graph doubles (128 at a million). Recall at a
/// fixed ef falls as the graph grows (f16 at ef 96: 1.00 at 100,000, 0.977 at 1,000,000, where
/// ef 128 recalls 0.987; docs/search.md), and a wider search costs speed that small
/// collections need not pay (-28% at 100,000).
pub fn default_ef(len: usize) -> usize {
    if len <= EF_GROWS_FROM {
        return EXPANSION_SEARCH;
    }
    let doublings = (len as f64 / EF_GROWS_FROM as f64).log2();
    EXPANSION_SEARCH + (16.0 * doublings).round() as usize
}

/// When `pe index` keeps an approximate index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnMode {
    /// From [`ANN_MIN_ROWS`] distinct contents on.
    #[default]
    Auto,
    /// Always (tests, or small collections searched very often).
    Always,
    /// Never: exact search only (and any existing approximate index is deleted).
    Never,
}

/// How the graph stores its vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnStorage {
    /// Half precision: recall as float32 at half the memory.
    #[default]
    F16,
    /// 8-bit: a quarter of the memory, lower recall (measured in docs/search.md).
    I8,
    /// bfloat16: the memory of f16, distances from CPUs' bf16 dot-product instructions
    /// (AVX-512 BF16, AMX, Arm BF16) where they have them (measured in docs/search.md).
    Bf16,
}

impl AnnStorage {
    fn code(self) -> u64 {
        match self {
            AnnStorage::F16 => 0,
            AnnStorage::I8 => 1,
            AnnStorage::Bf16 => 2,
        }
    }

    fn from_code(c: u64) -> Option<Self> {
        match c {
            0 => Some(AnnStorage::F16),
            1 => Some(AnnStorage::I8),
            2 => Some(AnnStorage::Bf16),
            _ => None,
        }
    }

    fn scalar(self) -> ScalarKind {
        match self {
            AnnStorage::F16 => ScalarKind::F16,
            AnnStorage::I8 => ScalarKind::I8,
            AnnStorage::Bf16 => ScalarKind::BF16,
        }
    }
}

/// What [`refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnnReport {
    /// Contents in the graph afterwards (0: no approximate index).
    pub size: usize,
    /// Contents added.
    pub added: usize,
    /// Contents removed.
    pub removed: usize,
    /// Whether the graph was built from scratch.
    pub rebuilt: bool,
    /// Contents left to exact search because their 64-bit key collided with another's.
    pub collisions: usize,
    /// Added contents a search for their own vector did not find, added again on one thread
    /// (a race in USearch's parallel insertion; see `relink.rs`).
    pub relinked: usize,
}

/// An approximate index, viewed in place from its memory map.
pub struct Ann {
    // Declared before `map`: the view must be dropped before the bytes it points into.
    index: usearch::Index,
    map: Mmap,
    generation: i64,
    count: usize,
    dim: usize,
    storage: AnnStorage,
    removed: u64,
}

/// The key of a content: the first 16 hex digits of its BLAKE3 hash.
fn key_of(hash: &str) -> Option<u64> {
    hash.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok())
}

fn hash_bytes(hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hash.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hash.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// BLAKE3 on every core: checking a 1M-vector graph (~2 GB) takes a fraction of a second.
fn checksum(b: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_rayon(b);
    h.finalize()
}

fn options(dim: usize, storage: AnnStorage) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: storage.scalar(),
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        multi: false,
    }
}

fn usearch_err(file: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::corrupt(file, format!("{what}: {e}"))
}

impl Ann {
    /// `ann.bin` in the index directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("ann.bin")
    }

    /// Map and check the approximate index of `dir`; `Ok(None)` when there is none.
    pub fn open(dir: &Path) -> Result<Option<Self>> {
        let file = Self::path(dir);
        let f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&file, e)),
        };
        // SAFETY: read-only map of a file replaced only by rename, never written in place.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&file, e))?;
        let bad = |r: &str| Error::corrupt(&file, r.to_string());
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not an approximate index"));
        }
        let generation = u64_at(&map, 8) as i64;
        let count = u64_at(&map, 16) as usize;
        let dim = u64_at(&map, 24) as usize;
        let storage = AnnStorage::from_code(u64_at(&map, 32)).ok_or_else(|| bad("unknown vector storage"))?;
        let removed = u64_at(&map, 40);
        let (blob_at, blob_len) = (u64_at(&map, 48) as usize, u64_at(&map, 56) as usize);
        let keys_end = count.checked_mul(ENTRY).and_then(|n| n.checked_add(HEADER));
        if dim == 0 || keys_end.is_none_or(|e| e > blob_at) || blob_at.checked_add(blob_len) != Some(map.len()) {
            return Err(bad("its header does not match its size"));
        }
        if checksum(&map[HEADER..]).as_bytes() != &map[64..96] {
            return Err(bad("its checksum does not match (a damaged file; `pe index` rebuilds it)"));
        }
        let index = usearch::Index::new(&options(dim, storage)).map_err(|e| usearch_err(&file, "USearch", e))?;
        // SAFETY: `map` lives in the same struct and is dropped after `index`; the bytes were
        // written by `write` below and match their checksum.
        unsafe { index.view_from_buffer(&map[blob_at..]) }.map_err(|e| usearch_err(&file, "USearch view", e))?;
        if index.size() != count || index.dimensions() != dim {
            return Err(bad("its graph does not match its key table"));
        }
        Ok(Some(Ann { index, map, generation, count, dim, storage, removed }))
    }

    /// The catalog generation the graph was built from.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Contents in the graph.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How the graph stores its vectors.
    pub fn storage(&self) -> AnnStorage {
        self.storage
    }

    fn entry(&self, i: usize) -> (u64, &[u8], u64) {
        let at = HEADER + i * ENTRY;
        (u64_at(&self.map, at), &self.map[at + 8..at + 40], u64_at(&self.map, at + 40))
    }

    /// The matrix row of a key (`u64::MAX` when no readable file holds its content), by binary
    /// search in the sorted key table.
    fn row_of(&self, key: u64) -> Option<u64> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, _, row) = self.entry(mid);
            match k.cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(row),
            }
        }
        None
    }

    /// The (about) `k` contents nearest `query`: the first matrix row holding each (contents
    /// no readable file holds are left out) and its approximate score.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<(usize, f32)>> {
        if self.index.expansion_search() != ef.max(1) {
            // Shared by concurrent searches: one asking for another width only changes how
            // widely the others look, never what they return (they are re-scored exactly).
            self.index.change_expansion_search(ef.max(1));
        }
        if query.len() != self.dim {
            return Err(Error::Query(format!("a query of {} dims for an index of {}", query.len(), self.dim)));
        }
        if self.count == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let m = self.index.search(query, k).map_err(|e| Error::Query(format!("approximate search: {e}")))?;
        Ok(m.keys
            .iter()
            .zip(&m.distances)
            .filter_map(|(&key, &d)| Some((usize::try_from(self.row_of(key)?).ok()?, 1.0 - d)))
            .collect())
    }

    fn keys(&self) -> HashMap<u64, String> {
        (0..self.count).map(|i| (self.entry(i).0, hex(self.entry(i).1))).collect()
    }
}

/// Bring the approximate index of `dir` up to date with `catalog` under `mode`: build, update
/// incrementally, delete, or leave alone. `progress(done, total)` follows the additions.
pub fn refresh(
    dir: &Path,
    catalog: &Catalog,
    dim: usize,
    mode: AnnMode,
    storage: AnnStorage,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AnnReport> {
    let file = Ann::path(dir);
    let generation = catalog.generation()?;
    let current = catalog.known_hashes()?;
    if mode == AnnMode::Never || (mode == AnnMode::Auto && current.len() < ANN_MIN_ROWS) {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&file, e)),
            _ => return Ok(AnnReport::default()),
        }
    }
    // A damaged or differently stored graph is rebuilt rather than trusted.
    let old = match Ann::open(dir) {
        Ok(Some(a)) if a.dim == dim && a.storage == storage => Some(a),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("{e}; rebuilding it");
            None
        }
    };
    if let Some(a) = old.as_ref().filter(|a| a.generation == generation) {
        return Ok(AnnReport { size: a.count, ..Default::default() });
    }
    let old_keys = old.as_ref().map(Ann::keys).unwrap_or_default();
    let gone: Vec<u64> = old_keys.iter().filter(|(_, h)| !current.contains(*h)).map(|(k, _)| *k).collect();
    let previously_removed = old.as_ref().map_or(0, |a| a.removed);
    let rebuild = old.is_none() || (gone.len() as u64 + previously_removed) * 4 > old_keys.len() as u64;

    let index = usearch::Index::new(&options(dim, storage)).map_err(|e| usearch_err(&file, "USearch", e))?;
    let mut keys: HashMap<u64, String> = HashMap::new();
    if let (false, Some(a)) = (rebuild, old.as_ref()) {
        index
            .load_from_buffer(&a.map[u64_at(&a.map, 48) as usize..])
            .map_err(|e| usearch_err(&file, "USearch load", e))?;
        for k in &gone {
            index.remove(*k).map_err(|e| usearch_err(&file, "USearch remove", e))?;
        }
        keys = old_keys.into_iter().filter(|(_, h)| current.contains(h)).collect();
    }
    drop(old);
    let have: HashSet<&str> = keys.values().map(String::as_str).collect();
    let new: HashSet<String> = current.iter().filter(|h| !have.contains(h.as_str())).cloned().collect();
    drop(have);
    let threads = rayon::current_num_threads().max(1);
    index
        .reserve_capacity_and_threads(keys.len() + new.len(), threads)
        .map_err(|e| usearch_err(&file, "USearch reserve", e))?;

    let mut report = AnnReport { removed: gone.len(), rebuilt: rebuild, ..Default::default() };
    let total = new.len();
    let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(4096);
    let mut added: Vec<u64> = Vec::with_capacity(total);
    let mut flush = |batch: &mut Vec<(u64, Vec<f32>)>, report: &mut AnnReport| -> Result<()> {
        let failed = std::sync::Mutex::new(None);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (index, batch, failed) = (&index, &*batch, &failed);
                s.spawn(move || {
                    for (key, v) in batch.iter().skip(t).step_by(threads) {
                        if let Err(e) = index.add(*key, v) {
                            if let Ok(mut f) = failed.lock() {
                                *f = Some(e.to_string());
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(Error::corrupt(&file, format!("USearch add: {e}")));
        }
        report.added += batch.len();
        progress(report.added, total);
        batch.clear();
        Ok(())
    };
    catalog.for_each_embedding(dim, |hash, v| {
        if !new.contains(hash) {
            return Ok(());
        }
        let Some(key) = key_of(hash) else { return Ok(()) };
        if keys.contains_key(&key) {
            report.collisions += 1;
            return Ok(());
        }
        keys.insert(key, hash.to_string());
        added.push(key);
        batch.push((key, v.to_vec()));
        if batch.len() == batch.capacity() {
            flush(&mut batch, &mut report)?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        flush(&mut batch, &mut report)?;
    }
    report.relinked = crate::relink::relink_unreachable(&index, &added).map_err(|e| Error::corrupt(&file, e))?;
    tracing::debug!(
        "{} of {} added contents linked again after a self-search missed them",
        report.relinked,
        added.len()
    );
    let removed = if rebuild { 0 } else { previously_removed + gone.len() as u64 };
    let mut rows: HashMap<String, u64> = HashMap::with_capacity(keys.len());
    for (i, h) in catalog.searchable_hashes()?.into_iter().enumerate() {
        rows.entry(h).or_insert(i as u64);
    }
    write(&file, &index, &keys, &rows, generation, dim, storage, removed)?;
    report.size = keys.len();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn write(
    file: &Path,
    index: &usearch::Index,
    keys: &HashMap<u64, String>,
    rows: &HashMap<String, u64>,
    generation: i64,
    dim: usize,
    storage: AnnStorage,
    removed: u64,
) -> Result<()> {
    let tmp = file.with_extension("bin.tmp");
    let io = |e| Error::io(&tmp, e);
    let mut sorted: Vec<(u64, [u8; 32], u64)> = keys
        .iter()
        .filter_map(|(k, h)| hash_bytes(h).map(|b| (*k, b, rows.get(h).copied().unwrap_or(u64::MAX))))
        .collect();
    sorted.sort_unstable_by_key(|e| e.0);
    let blob_at = (HEADER + sorted.len() * ENTRY).next_multiple_of(64);
    let blob_len = index.serialized_length();
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
    f.set_len((blob_at + blob_len) as u64).map_err(io)?;
    // SAFETY: a private temporary file, mapped once, renamed only after the map is flushed.
    let mut map = unsafe { MmapMut::map_mut(&f) }.map_err(io)?;
    for (i, (k, h, row)) in sorted.iter().enumerate() {
        let at = HEADER + i * ENTRY;
        map[at..at + 8].copy_from_slice(&k.to_le_bytes());
        map[at + 8..at + 40].copy_from_slice(h);
        map[at + 40..at + ENTRY].copy_from_slice(&row.to_le_bytes());
    }
    index.save_to_buffer(&mut map[blob_at..]).map_err(|e| usearch_err(file, "USearch save", e))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    for v in [generation as u64, sorted.len() as u64, dim as u64, storage.code(), removed, blob_at as u64] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    header.extend_from_slice(&(blob_len as u64).to_le_bytes());
    header.extend_from_slice(checksum(&map[HEADER..]).as_bytes());
    header.resize(HEADER, 0);
    map[..HEADER].copy_from_slice(&header);
    map.flush().map_err(io)?;
    drop(map);
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, file).map_err(|e| Error::io(file, e))
}

#[cfg(test)]
mod tests {
    use super::default_ef;

    #[test]
    fn the_default_ef_grows_with_the_graph() {
        assert_eq!(default_ef(0), 96);
        assert_eq!(default_ef(250_000), 96);
        assert_eq!(default_ef(500_000), 112);
        assert_eq!(default_ef(1_000_000), 128);
        assert_eq!(default_ef(4_000_000), 160);
        assert!(default_ef(usize::MAX) < 2_000);
    }
}
