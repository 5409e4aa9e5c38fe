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
