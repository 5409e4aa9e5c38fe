//! The searchable vectors: one contiguous, memory-mapped float32 matrix (`vectors.f32`), a row
//! per searchable file in path order, then for each row the next row of the same content (so
//! that a content found by the approximate index expands to its files without a catalog
//! query), then the paths. Built from the catalog after an
//! update (or when it is older than the catalog), written to a temporary name and renamed, so a
//! reader sees the old matrix or the new one, never half of one. Search maps it and reads only
//! what it scores: nothing is parsed at start-up.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::catalog::{key_path, path_key, Catalog};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"PEVECS02";
/// Header: magic, generation, rows, dim, paths offset (all u64 little-endian), padded so that
/// the matrix starts 64-byte aligned. The same-content table sits between the matrix and the
/// paths. A matrix of another format is rebuilt from the catalog, as a stale one is.
const HEADER: usize = 64;

/// "No next row" in the same-content table.
const NONE: u64 = u64::MAX;

/// One scored file.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The file.
    pub path: PathBuf,
    /// Cosine of the query and the file's embedding.
    pub score: f32,
}

/// A memory-mapped vector matrix.
pub struct Matrix {
    map: Mmap,
    rows: usize,
    dim: usize,
    generation: i64,
    paths_at: usize,
    file: PathBuf,
}

/// The little-endian u64 at `at` (callers check the bounds first).
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Matrix {
    /// `vectors.f32` in the index directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("vectors.f32")
    }

    /// Write the matrix of `catalog` (at its current generation) into `dir`.
    pub fn build(dir: &Path, catalog: &Catalog, dim: usize) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join("vectors.f32.tmp");
        let generation = catalog.generation()?;
        let io = |e| Error::io(&tmp, e);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
        out.write_all(&[0u8; HEADER]).map_err(io)?;
        let mut paths: Vec<Vec<u8>> = Vec::new();
        let mut next = Vec::new();
        let mut last_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        catalog.for_each_vector(dim, |p, hash, v| {
            for x in v {
                out.write_all(&x.to_le_bytes()).map_err(io)?;
            }
            let row = paths.len();
            if let Some(prev) = last_of.insert(hash.to_string(), row) {
                next[prev] = row as u64;
            }
            next.push(NONE);
            paths.push(path_key(&p));
            Ok(())
        })?;
        for n in next {
            out.write_all(&n.to_le_bytes()).map_err(io)?;
        }
        let rows = paths.len();
        let paths_at = HEADER + rows * dim * 4 + rows * 8;
        // Path table: rows + 1 offsets (u64, relative to the table's byte area), then the bytes.
        let mut offset = 0u64;
        for p in std::iter::once(&Vec::new()).chain(paths.iter()) {
            offset += p.len() as u64;
            out.write_all(&offset.to_le_bytes()).map_err(io)?;
        }
        for p in &paths {
            out.write_all(p).map_err(io)?;
        }
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for v in [generation as u64, rows as u64, dim as u64, paths_at as u64] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.resize(HEADER, 0);
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Map the matrix of `dir`, checking its header against the file's size.
    pub fn open(dir: &Path) -> Result<Self> {
        let file = Self::path(dir);
        let f = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
        // SAFETY: read-only map of a file we replace only by rename (never write in place).
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&file, e))?;
        let bad = |r: &str| Error::corrupt(&file, r.to_string());
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not a vector matrix"));
        }
        let (generation, rows, dim, paths_at) =
            (u64_at(&map, 8) as i64, u64_at(&map, 16) as usize, u64_at(&map, 24) as usize, u64_at(&map, 32) as usize);
        // Each row: its float32 embedding and its same-content link (u64).
        let matrix_end = dim
            .checked_mul(4)
            .and_then(|w| w.checked_add(8))
            .and_then(|w| w.checked_mul(rows))
            .and_then(|n| n.checked_add(HEADER));
        let table_end = rows.checked_add(1).and_then(|n| n.checked_mul(8)).and_then(|n| n.checked_add(paths_at));
        if dim == 0 || matrix_end != Some(paths_at) || table_end.is_none_or(|e| e > map.len()) {
            return Err(bad("its header does not match its size"));
        }
        let last = u64_at(&map, paths_at + 8 * rows) as usize;
        if table_end.unwrap_or(0).checked_add(last).is_none_or(|e| e != map.len()) {
            return Err(bad("its path table does not match its size"));
        }
        Ok(Matrix { map, rows, dim, generation, paths_at, file })
    }

    fn offset(&self, i: usize) -> u64 {
        u64_at(&self.map, self.paths_at + 8 * i)
    }

    /// Searchable files.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The catalog generation the matrix was built from.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// The path of row `i`.
    pub fn path_of(&self, i: usize) -> Result<PathBuf> {
        Ok(key_path(self.path_bytes(i)?.to_vec()))
    }

    fn path_bytes(&self, i: usize) -> Result<&[u8]> {
        let base = self.paths_at + 8 * (self.rows + 1);
        let (a, b) = (self.offset(i) as usize, self.offset(i + 1) as usize);
        if a > b || base + b > self.map.len() {
            return Err(Error::corrupt(&self.file, format!("path {i} is out of bounds")));
        }
        Ok(&self.map[base + a..base + b])
    }

    /// The rows of the files under the folder `prefix` (or of the file itself): a contiguous
    /// range, since rows are in path order.
    pub fn rows_under(&self, prefix: &Path) -> Result<Range<usize>> {
        let mut dir = path_key(prefix);
        while dir.len() > 1 && dir.last() == Some(&b'/') {
            dir.pop();
        }
        if dir == b"/" {
            return Ok(0..self.rows);
        }
        // Bytes sort so that "dir/" <= "dir/..." < "dir0": everything under it lies between.
        let mut first_err = None;
        let mut at_least = |key: &[u8]| {
            let mut lo = 0;
            let mut hi = self.rows;
            while lo < hi {
                let mid = (lo + hi) / 2;
                match self.path_bytes(mid) {
                    Ok(p) if p < key => lo = mid + 1,
                    Ok(_) => hi = mid,
                    Err(e) => {
                        first_err.get_or_insert(e);
                        return 0;
                    }
                }
            }
            lo
        };
        let exact = at_least(&dir);
        let mut below = dir.clone();
        below.push(b'/');
        let start = at_least(&below);
        *below.last_mut().unwrap_or(&mut 0) = b'/' + 1;
        let end = at_least(&below);
        if let Some(e) = first_err {
            return Err(e);
        }
        // A file's own row: rows are files, so nothing lies under it.
        if exact < self.rows && self.path_bytes(exact)? == dir.as_slice() {
            return Ok(exact..exact + 1);
        }
        Ok(start..end.max(start))
    }

    /// The next row (in path order) holding the same content as row `i`, if any.
    pub fn next_same(&self, i: usize) -> Option<usize> {
        if i >= self.rows {
            return None;
        }
        let at = HEADER + self.rows * self.dim * 4 + 8 * i;
        let n = u64_at(&self.map, at);
        usize::try_from(n).ok().filter(|&n| n > i && n < self.rows)
    }

    /// Row `i` of the matrix.
    pub fn row(&self, i: usize) -> &[f32] {
        let bytes = &self.map[HEADER + i * self.dim * 4..HEADER + (i + 1) * self.dim * 4];
        // SAFETY: the map is page-aligned and HEADER is 64, so every row is 4-byte aligned;
        // any bit pattern is a valid f32; the length is checked at open.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), self.dim) }
    }

    /// The `k` rows of highest cosine with `query` (normalized, `dim` long), at least
    /// `threshold`, best first (ties in path order), by scoring every row.
    pub fn exact(&self, query: &[f32], k: usize, threshold: f32) -> Result<Vec<Hit>> {
        self.exact_in(query, k, threshold, 0..self.rows)
    }

    /// As [`Matrix::exact`], over the rows of `range` only.
    pub fn exact_in(&self, query: &[f32], k: usize, threshold: f32, range: Range<usize>) -> Result<Vec<Hit>> {
        let range = range.start.min(self.rows)..range.end.min(self.rows);
        if query.len() != self.dim {
            return Err(Error::Query(format!("a query of {} dims for an index of {}", query.len(), self.dim)));
        }
        const CHUNK: usize = 4096;
        let best: Vec<(f32, usize)> = (0..range.len().div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let mut top = TopK::new(k);
                for i in range.start + c * CHUNK..(range.start + (c + 1) * CHUNK).min(range.end) {
                    let s = dot(self.row(i), query);
                    if s >= threshold {
                        top.push(s, i);
                    }
                }
                top.into_vec()
            })
            .reduce(Vec::new, |a, b| {
                let mut top = TopK::new(k);
                for (s, i) in a.into_iter().chain(b) {
                    top.push(s, i);
                }
                top.into_vec()
            });
        let mut best = best;
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.into_iter().map(|(score, i)| Ok(Hit { path: self.path_of(i)?, score })).collect()
    }
}

/// The `k` largest `(score, row)` pairs seen (ties: the lower row).
struct TopK {
    k: usize,
    items: Vec<(f32, usize)>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK { k, items: Vec::with_capacity(k + 1) }
    }

    fn worse(a: (f32, usize), b: (f32, usize)) -> bool {
        a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
    }

    fn push(&mut self, s: f32, i: usize) {
        if self.k == 0 {
            return;
        }
        if self.items.len() == self.k {
            // The current worst sits at the end once the list is full and sorted.
            let worst = self.items[self.k - 1];
            if !Self::worse(worst, (s, i)) {
                return;
            }
            self.items.pop();
        }
        let at = self.items.partition_point(|&x| !Self::worse(x, (s, i)));
        self.items.insert(at, (s, i));
    }

    fn into_vec(self) -> Vec<(f32, usize)> {
        self.items
    }
}

/// Dot product with 16 independent sums (vectorized by the compiler; the order of additions
/// is fixed, so a score does not depend on the thread that computed it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::TopK;

    #[test]
    fn top_k_keeps_the_best_in_order() {
        let mut t = TopK::new(3);
        for (s, i) in [(0.1, 0), (0.9, 1), (0.5, 2), (0.9, 3), (0.2, 4), (0.95, 5)] {
            t.push(s, i);
        }
        assert_eq!(t.into_vec(), vec![(0.95, 5), (0.9, 1), (0.9, 3)]);
        let mut none = TopK::new(0);
        none.push(1.0, 0);
        assert!(none.into_vec().is_empty());
    }
}
