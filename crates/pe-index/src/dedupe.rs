//! Duplicates in an index: exact ones (the same content under several paths, from the catalog)
//! and near ones (embeddings whose cosine reaches a threshold, grouped transitively).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::Result;
use crate::matrix::{dot, Matrix};

/// A group of duplicate files.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Exact (same content) or near (similar embeddings).
    pub exact: bool,
    /// The files, in path order.
    pub paths: Vec<PathBuf>,
    /// The lowest cosine of a pair that linked the group (1 for exact groups).
    pub min_score: f32,
}

/// Groups of rows with the same content (by path: the matrix holds a row per file), given each
/// row's content hash.
pub fn exact_groups(matrix: &Matrix, hashes: &[String]) -> Result<Vec<Group>> {
    let mut by_hash: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, h) in hashes.iter().enumerate() {
        by_hash.entry(h.as_str()).or_default().push(i);
    }
    let mut groups = Vec::new();
    for rows in by_hash.values().filter(|r| r.len() > 1) {
        let paths = rows.iter().map(|&i| matrix.path_of(i)).collect::<Result<Vec<_>>>()?;
        groups.push(Group { exact: true, paths, min_score: 1.0 });
    }
    groups.sort_by(|a, b| a.paths.cmp(&b.paths));
    Ok(groups)
}

/// Groups of rows linked by a cosine of at least `threshold` (transitively), leaving out links
/// between identical contents (those are exact groups). Scores every pair: O(rows^2 dim) time;
/// the links are joined a block of rows at a time, so memory stays bounded whatever the
/// threshold (at -1 every pair links).
pub fn near_groups(matrix: &Matrix, hashes: &[String], threshold: f32) -> Result<Vec<Group>> {
    let n = matrix.rows();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    // The lowest cosine of a link from each row to a later one (NaN: no link).
    let mut lowest = vec![f32::NAN; n];
    // At most ~4M links (32 MB) held at once.
    let block = ((1usize << 22) / n.max(1)).clamp(1, 4096);
    for start in (0..n).step_by(block) {
        let links: Vec<(usize, usize, f32)> = (start..(start + block).min(n))
            .into_par_iter()
            .flat_map_iter(|i| {
                let a = matrix.row(i);
                (i + 1..n).filter_map(move |j| {
                    let s = dot(a, matrix.row(j));
                    (s >= threshold && hashes[i] != hashes[j]).then_some((i, j, s))
                })
            })
            .collect();
        for (i, j, s) in links {
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
            // f32::min takes the number over NaN.
            lowest[i] = lowest[i].min(s);
        }
    }
    let mut min_link: BTreeMap<usize, f32> = BTreeMap::new();
    for (i, &s) in lowest.iter().enumerate().filter(|(_, s)| !s.is_nan()) {
        let r = root(&mut parent, i);
        let m = min_link.entry(r).or_insert(s);
        *m = m.min(s);
    }
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = root(&mut parent, i);
        if min_link.contains_key(&r) {
            members.entry(r).or_default().push(i);
        }
    }
    members
        .into_iter()
        .map(|(r, rows)| {
            let paths = rows.iter().map(|&i| matrix.path_of(i)).collect::<Result<Vec<_>>>()?;
            Ok(Group { exact: false, paths, min_score: min_link[&r] })
        })
        .collect()
}
