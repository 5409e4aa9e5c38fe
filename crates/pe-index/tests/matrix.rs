//! The vector matrix without a model: exact search equals a brute force over the catalog's
//! vectors, and a damaged or stale `vectors.f32` is rebuilt from the catalog, never trusted.

mod common;

use std::path::PathBuf;

use common::manifest;
use pe_index::{Catalog, FileRow, Index, SearchOptions, VectorRow};

const DIM: usize = 16;

fn unit(seed: &mut u32) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 17;
            *seed ^= *seed << 5;
            (*seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[test]
fn exact_search_equals_brute_force_and_a_damaged_matrix_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    drop(Index::open_or_create(&dir, &manifest(DIM)).unwrap());
    let mut seed = 0x1234_5678u32;
    let mut vectors = Vec::new();
    let mut files = Vec::new();
    for i in 0..1000 {
        let hash = format!("{i:064x}");
        let embedding = unit(&mut seed);
        vectors.push(VectorRow { hash: hash.clone(), width: 1, height: 1, embedding });
        files.push(FileRow {
            path: PathBuf::from(format!("/photos/{i:04}.png")),
            size: 1,
            mtime_ns: 0,
            hash: Some(hash),
            error: None,
        });
    }
    // A file that could not be read is never a result.
    files.push(FileRow {
        path: "/photos/bad.png".into(),
        size: 1,
        mtime_ns: 0,
        hash: None,
        error: Some("corrupt".into()),
    });
    Catalog::open(&dir).unwrap().commit(&vectors, &files).unwrap();

    let index = Index::open(&dir).unwrap();
    let q = unit(&mut seed);
    let mut want: Vec<(f32, PathBuf)> =
        vectors.iter().zip(&files).map(|(v, f)| (pe_index::dot(&v.embedding, &q), f.path.clone())).collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let got = index.search(&q, &SearchOptions::top(25)).unwrap();
    assert_eq!(got.len(), 25);
    for (g, (score, path)) in got.iter().zip(&want) {
        assert_eq!(&g.path, path);
        assert_eq!(g.score, *score, "the same dot product, summed in the same order");
    }
    let above = index.search(&q, &SearchOptions { threshold: want[9].0, ..SearchOptions::top(1000) }).unwrap();
    assert_eq!(above.len(), 10, "--threshold keeps exactly the scores at or above it");

    // Truncated, then garbage, then stale: each time rebuilt from the catalog.
    let file = pe_index::Matrix::path(&dir);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    assert_eq!(index.search(&q, &SearchOptions::top(25)).unwrap(), got);
    std::fs::write(&file, b"PEVECS01 and then nothing sensible at all").unwrap();
    assert_eq!(index.search(&q, &SearchOptions::top(25)).unwrap(), got);
    Catalog::open(&dir).unwrap().remove(&[want[0].1.clone()]).unwrap();
    let after = index.search(&q, &SearchOptions::top(1)).unwrap();
    assert_eq!(after[0].path, want[1].1, "a removed file is gone from results at once");
}

/// Near duplicates equal a brute force over every pair, across the blocks the library joins
/// links in, and a threshold that links every pair stays in bounded memory (one group).
#[test]
fn near_duplicates_equal_a_brute_force_grouping() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    drop(Index::open_or_create(&dir, &manifest(DIM)).unwrap());
    let mut seed = 0x9e37_79b9u32;
    let n = 3000;
    let (mut vectors, mut files) = (Vec::new(), Vec::new());
    for i in 0..n {
        let hash = format!("{i:064x}");
        // Runs of up to four near copies (each the one before plus a little noise), so groups
        // form by transitivity.
        let mut embedding = unit(&mut seed);
        if i % 7 != 0 && i % 7 < 4 {
            let prev: &VectorRow = vectors.last().unwrap();
            let mut v: Vec<f32> = prev.embedding.iter().zip(&embedding).map(|(p, e)| p + 0.25 * e).collect();
            common::normalize(&mut v);
            embedding = v;
        }
        vectors.push(VectorRow { hash: hash.clone(), width: 1, height: 1, embedding });
        let path = PathBuf::from(format!("/photos/{i:04}.png"));
        files.push(FileRow { path, size: 1, mtime_ns: 0, hash: Some(hash), error: None });
    }
    Catalog::open(&dir).unwrap().commit(&vectors, &files).unwrap();
    let index = Index::open(&dir).unwrap();

    let threshold = 0.93;
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(p: &mut [usize], i: usize) -> usize {
        if p[i] == i {
            i
        } else {
            let r = root(p, p[i]);
            p[i] = r;
            r
        }
    }
    let mut all_min = f32::INFINITY;
    let mut links = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let s = pe_index::dot(&vectors[i].embedding, &vectors[j].embedding);
            all_min = all_min.min(s);
            if s >= threshold {
                links.push((i, j, s));
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let mut want: std::collections::BTreeMap<usize, (Vec<PathBuf>, f32)> = Default::default();
    for &(i, j, s) in &links {
        let r = root(&mut parent, i);
        let e = want.entry(r).or_insert((Vec::new(), f32::INFINITY));
        e.0.extend([files[i].path.clone(), files[j].path.clone()]);
        e.1 = e.1.min(s);
    }
    let mut want: Vec<(Vec<PathBuf>, f32)> = want
        .into_values()
        .map(|(mut p, s)| {
            p.sort();
            p.dedup();
            (p, s)
        })
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(want.len() >= 3 && want.iter().any(|g| g.0.len() > 2), "the data has groups to find: {want:?}");
    let mut got: Vec<(Vec<PathBuf>, f32)> =
        index.duplicates(threshold).unwrap().into_iter().map(|g| (g.paths, g.min_score)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);

    let everything = index.duplicates(-1.0).unwrap();
    assert_eq!(everything.len(), 1);
    assert_eq!(everything[0].paths.len(), n);
    assert_eq!(everything[0].min_score, all_min);
}
