//! Finding and re-linking graph nodes no search reaches.
//!
//! USearch 2.26's concurrent `add` can leave a node stored but linked from nowhere
//! (unum-cloud/USearch#735, fix proposed in #772 and not released): no search ever returns it,
//! so that photo could never be found approximately. Measured here on 1,000 clustered 64-dim
//! vectors: a graph built on one thread found every vector by its own vector; built on two, 2-3
//! of 1,000 were missed. Inserting on one thread only would halve build speed on two cores (and
//! more on larger machines), so the build stays parallel and is checked afterwards: every newly
//! added content searches for its own (stored) vector, and those not found are removed and added
//! again on one thread, where the race cannot happen.

use rayon::prelude::*;
use usearch::Index;

/// The self-searches' ef. An unlinked node is missed at any ef, so this only trades the
/// check's time against needless re-links of nodes a narrow search misses: at 100,000 x 1,024
/// (docs/search.md) ef 16 re-linked 4,325 in 17.7 s of checking, ef 40 270 in 24.2 s, ef 96 16
/// in 37.0 s, where the parallel build itself took ~55 s.
const CHECK_EF: usize = 40;
/// Neighbours a self-search looks at; a content missing from its own top [`CHECK_K`] is
/// re-linked (one found lower than first is not: a near-identical vector may rank above it).
const CHECK_K: usize = 10;
/// Rounds of check and re-link before giving up on a node (logged, not an error: it is still
/// found by exact search).
const ROUNDS: usize = 3;

/// Re-link every key of `keys` that a search with its own stored vector does not find; returns
/// how many were re-linked.
pub fn relink_unreachable(index: &Index, keys: &[u64]) -> Result<usize, String> {
    let restore = index.expansion_search();
    index.change_expansion_search(CHECK_EF);
    let result = relink_rounds(index, keys);
    index.change_expansion_search(restore);
    result
}

fn relink_rounds(index: &Index, keys: &[u64]) -> Result<usize, String> {
    let mut missing = unreachable(index, keys)?;
    // Later rounds re-link some of these again, never others.
    let relinked = missing.len();
    for _ in 0..ROUNDS {
        if missing.is_empty() {
            return Ok(relinked);
        }
        let mut v = vec![0f32; index.dimensions()];
        for &key in &missing {
            index.get(key, &mut v).map_err(|e| format!("USearch get: {e}"))?;
            index.remove(key).map_err(|e| format!("USearch remove: {e}"))?;
            index.add(key, &v).map_err(|e| format!("USearch add: {e}"))?;
        }
        missing = unreachable(index, &missing)?;
    }
    if !missing.is_empty() {
        tracing::warn!("{} contents stay unreachable in the approximate index; --exact finds them", missing.len());
    }
    Ok(relinked)
}

/// The keys of `keys` their own vector's search does not return, searched on rayon's threads
/// (the index reserved a search slot for each when it was built).
fn unreachable(index: &Index, keys: &[u64]) -> Result<Vec<u64>, String> {
    let missing: Result<Vec<Option<u64>>, String> = keys
        .par_iter()
        .map_init(
            || vec![0f32; index.dimensions()],
            |v, &key| {
                index.get(key, v).map_err(|e| format!("USearch get: {e}"))?;
                let m = index.search(v, CHECK_K).map_err(|e| format!("USearch search: {e}"))?;
                Ok((!m.keys.contains(&key)).then_some(key))
            },
        )
        .collect();
    Ok(missing?.into_iter().flatten().collect())
}
