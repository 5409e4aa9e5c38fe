//! The approximate index without a model: its results are exactly scored and recall the exact
//! top 10, it follows the catalog incrementally (removed contents never come back, new ones
//! are found), a stale or damaged graph is never trusted, and `--under` searches one folder.

mod common;

use std::path::PathBuf;

use common::{manifest, normalize, Rng};
use pe_index::{AnnMode, AnnStorage, Catalog, FileRow, Index, SearchOptions, VectorRow};

const DIM: usize = 64;

/// `n` random unit vectors for [`clustered`] to scatter around.
fn centres(rng: &mut Rng, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let mut c: Vec<f32> = (0..DIM).map(|_| rng.next()).collect();
            normalize(&mut c);
            c
        })
        .collect()
}

/// Vectors around random centres, like embeddings of a photo collection.
fn clustered(rng: &mut Rng, centres: &[Vec<f32>]) -> Vec<f32> {
    let c = &centres[((rng.next() + 1.0) * 0.5 * centres.len() as f32) as usize % centres.len()];
    let mut v: Vec<f32> = c.iter().map(|x| x + 0.25 * rng.next()).collect();
    normalize(&mut v);
    v
}

fn row(i: usize, embedding: Vec<f32>, folder: &str) -> (VectorRow, FileRow) {
    let hash = blake3::hash(format!("content {i}").as_bytes()).to_hex().to_string();
    let v = VectorRow { hash: hash.clone(), width: 1, height: 1, embedding };
    let f = FileRow {
        path: format!("/photos/{folder}/{i:05}.jpg").into(),
        size: 1,
        mtime_ns: 0,
        hash: Some(hash),
        error: None,
    };
    (v, f)
}

fn brute_force(rows: &[(VectorRow, FileRow)], q: &[f32], k: usize) -> Vec<(f32, PathBuf)> {
    let mut all: Vec<(f32, PathBuf)> =
        rows.iter().map(|(v, f)| (pe_index::dot(&v.embedding, q), f.path.clone())).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all
}

#[test]
fn approximate_search_recalls_the_exact_top_10_and_follows_the_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    let mut index = Index::open_or_create(&dir, &manifest(DIM)).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let centres = centres(&mut rng, 40);
    let folders = ["a", "a-b", "ab"];
    let mut rows: Vec<(VectorRow, FileRow)> =
        (0..3000).map(|i| row(i, clustered(&mut rng, &centres), folders[i % 3])).collect();
    let (v, f): (Vec<_>, Vec<_>) = rows.iter().cloned().unzip();
    Catalog::open(&dir).unwrap().commit(&v, &f).unwrap();
    let mut none = |_| {};

    assert_eq!(index.method().unwrap(), "exact", "no graph below the threshold in auto mode");
    let report = index.refresh_ann(AnnMode::Auto, AnnStorage::F16, &mut none).unwrap();
    assert_eq!(report.size, 0);
    let report = index.refresh_ann(AnnMode::Always, AnnStorage::F16, &mut none).unwrap();
    assert_eq!((report.size, report.added, report.rebuilt), (3000, 3000, true));
    assert_eq!(index.method().unwrap(), "approximate (3000 contents)");

    let recall = |index: &Index, rows: &[(VectorRow, FileRow)], rng: &mut Rng| {
        let (mut found, mut asked) = (0, 0);
        for _ in 0..50 {
            let q = clustered(rng, &centres);
            let want = brute_force(rows, &q, 10);
            let got = index.search(&q, &SearchOptions::top(10)).unwrap();
            assert_eq!(got.len(), 10);
            for (i, h) in got.iter().enumerate() {
                let (v, _) = rows.iter().find(|(_, f)| f.path == h.path).expect("a result is an indexed file");
                assert_eq!(h.score, pe_index::dot(&v.embedding, &q), "scores are exact cosines");
                if i > 0 {
                    assert!(got[i - 1].score >= h.score, "best first");
                }
            }
            found += got.iter().filter(|h| want.iter().any(|w| w.1 == h.path)).count();
            asked += 10;
            let exact = index.search(&q, &SearchOptions { exact: true, ..SearchOptions::top(10) }).unwrap();
            assert_eq!(exact.iter().map(|h| (h.score, h.path.clone())).collect::<Vec<_>>(), want);
        }
        found as f64 / asked as f64
    };
    let r = recall(&index, &rows, &mut rng);
    assert!(r >= 0.97, "recall@10 {r}");

    // Remove 300 files, add 200: an incremental update, not a rebuild.
    let gone: Vec<PathBuf> = rows.iter().step_by(10).map(|(_, f)| f.path.clone()).collect();
    let mut catalog = Catalog::open(&dir).unwrap();
    catalog.remove(&gone).unwrap();
    catalog.collect_garbage().unwrap();
    let added: Vec<(VectorRow, FileRow)> =
        (3000..3200).map(|i| row(i, clustered(&mut rng, &centres), folders[i % 3])).collect();
    let (v, f): (Vec<_>, Vec<_>) = added.iter().cloned().unzip();
    catalog.commit(&v, &f).unwrap();
    assert_eq!(index.method().unwrap(), "exact", "a graph older than the catalog is not used");
    let report = index.refresh_ann(AnnMode::Always, AnnStorage::F16, &mut none).unwrap();
    assert_eq!((report.size, report.added, report.removed, report.rebuilt), (2900, 200, 300, false));
    rows.retain(|(_, f)| !gone.contains(&f.path));
    rows.extend(added.iter().cloned());
    let r = recall(&index, &rows, &mut rng);
    assert!(r >= 0.97, "recall@10 after an update {r}");
    for (v, f) in added.iter().take(20) {
        let top = index.search(&v.embedding, &SearchOptions::top(1)).unwrap();
        assert_eq!(top[0].path, f.path, "a new content is found by its own vector");
    }
    let q = clustered(&mut rng, &centres);
    let many = index.search(&q, &SearchOptions::top(2900)).unwrap();
    assert!(many.iter().all(|h| !gone.contains(&h.path)), "removed files never come back");

    // Under a folder: exactly the rows under /photos/a, not /photos/a-b or /photos/ab.
    let under = SearchOptions { under: Some("/photos/a".into()), ..SearchOptions::top(5000) };
    let hits = index.search(&q, &under).unwrap();
    let want: Vec<_> = rows.iter().filter(|(_, f)| f.path.starts_with("/photos/a")).collect();
    assert_eq!(hits.len(), want.len());
    assert!(hits.iter().all(|h| h.path.starts_with("/photos/a")));
    let file = SearchOptions { under: Some(rows[1].1.path.clone()), ..SearchOptions::top(5) };
    assert_eq!(index.search(&q, &file).unwrap().len(), 1, "a file's own row");

    // A damaged graph: searches fall back to exact; the next refresh rebuilds it.
    let bin = pe_index::Ann::path(&dir);
    let mut bytes = std::fs::read(&bin).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x5a;
    std::fs::write(&bin, &bytes).unwrap();
    assert!(Index::open(&dir).unwrap().ann().is_err(), "a bad checksum is an error");
    let fresh = Index::open(&dir).unwrap();
    assert_eq!(fresh.method().unwrap(), "exact");
    let exact = fresh.search(&q, &SearchOptions { exact: true, ..SearchOptions::top(10) }).unwrap();
    assert_eq!(fresh.search(&q, &SearchOptions::top(10)).unwrap(), exact);
    std::fs::write(&bin, b"PEANN001").unwrap();
    assert!(Index::open(&dir).unwrap().ann().is_err(), "a truncated graph is an error");
    let report = index.refresh_ann(AnnMode::Always, AnnStorage::I8, &mut none).unwrap();
    assert_eq!((report.size, report.rebuilt), (2900, true));
    let r = recall(&index, &rows, &mut rng);
    assert!(r >= 0.9, "recall@10 with i8 storage {r}");
    // Another storage is another graph: rebuilt, and as good as f16's.
    let report = index.refresh_ann(AnnMode::Always, AnnStorage::Bf16, &mut none).unwrap();
    assert_eq!((report.size, report.rebuilt), (2900, true));
    assert_eq!(Index::open(&dir).unwrap().ann().unwrap().unwrap().storage(), AnnStorage::Bf16);
    let r = recall(&index, &rows, &mut rng);
    assert!(r >= 0.98, "recall@10 with bf16 storage {r}");

    index.refresh_ann(AnnMode::Never, AnnStorage::F16, &mut none).unwrap();
    assert!(!bin.exists(), "--ann never deletes the graph");
}

#[test]
fn files_sharing_a_content_are_all_found_in_path_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    let mut index = Index::open_or_create(&dir, &manifest(DIM)).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let centres = centres(&mut rng, 20);
    let rows: Vec<(VectorRow, FileRow)> =
        (0..1000).map(|i| row(i, clustered(&mut rng, &centres), ["a", "b"][i % 2])).collect();
    let (v, mut f): (Vec<_>, Vec<_>) = rows.iter().cloned().unzip();
    // Copies of every tenth content, named to sort before, between and after the originals.
    for (i, (_, file)) in rows.iter().enumerate().step_by(10) {
        for name in [format!("/photos/0/{i}.jpg"), format!("/photos/a0/{i}.jpg"), format!("/photos/z/{i}.jpg")] {
            f.push(FileRow { path: name.into(), ..file.clone() });
        }
    }
    Catalog::open(&dir).unwrap().commit(&v, &f).unwrap();
    index.refresh_ann(AnnMode::Always, AnnStorage::F16, &mut |_| {}).unwrap();
    assert_eq!(index.method().unwrap(), "approximate (1000 contents)");
    let score_of = |path: &PathBuf, q: &[f32]| {
        let hash = &f.iter().find(|x| &x.path == path).expect("a result is an indexed file").hash;
        let (v, _) = rows.iter().find(|(_, x)| &x.hash == hash).unwrap();
        pe_index::dot(&v.embedding, q)
    };
    let (mut found, mut asked) = (0, 0);
    for (i, (v, _)) in rows.iter().enumerate().step_by(25) {
        let exact = index.search(&v.embedding, &SearchOptions { exact: true, ..SearchOptions::top(12) }).unwrap();
        let approximate = index.search(&v.embedding, &SearchOptions::top(12)).unwrap();
        assert_eq!(approximate.len(), 12, "query {i}");
        for (j, h) in approximate.iter().enumerate() {
            assert_eq!(h.score, score_of(&h.path, &v.embedding), "query {i}: scores are exact cosines");
            assert!(j == 0 || approximate[j - 1].score >= h.score, "query {i}: best first");
        }
        let mut want: Vec<PathBuf> = f.iter().filter(|x| x.hash == f[i].hash).map(|x| x.path.clone()).collect();
        want.sort();
        assert_eq!(want.len(), if i % 10 == 0 { 4 } else { 1 });
        for hits in [&exact, &approximate] {
            let own: Vec<_> = hits.iter().take_while(|h| h.score == hits[0].score).map(|h| h.path.clone()).collect();
            assert_eq!(own, want, "query {i}: every file of the content first, in path order");
        }
        // Below the content's own files the graph may miss a neighbour now and then (HNSW is
        // approximate and built on several threads); it must find nearly all of them.
        found += approximate.iter().filter(|h| exact.iter().any(|e| e.path == h.path)).count();
        asked += exact.len();
    }
    let recall = found as f64 / asked as f64;
    assert!(recall >= 0.95, "recall@12 {recall}");
}

/// USearch's parallel insertion can leave a node no search reaches (unum-cloud/USearch#735):
/// before the check that re-links them, 2-3 of these 1,000 were missed in every two-thread
/// build. Each content must be the first hit for its own vector.
#[test]
fn every_content_is_found_by_its_own_vector_after_a_parallel_build() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for seed in [0x2545_f491_4f6c_dd1d, 0x9e37_79b9_7f4a_7c15] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("idx");
        let mut index = Index::open_or_create(&dir, &manifest(DIM)).unwrap();
        let mut rng = Rng(seed);
        let centres = centres(&mut rng, 20);
        let rows: Vec<(VectorRow, FileRow)> = (0..1000).map(|i| row(i, clustered(&mut rng, &centres), "a")).collect();
        let (v, f): (Vec<_>, Vec<_>) = rows.iter().cloned().unzip();
        Catalog::open(&dir).unwrap().commit(&v, &f).unwrap();
        let report = pool.install(|| index.refresh_ann(AnnMode::Always, AnnStorage::F16, &mut |_| {})).unwrap();
        assert_eq!((report.size, report.added), (1000, 1000));
        let missed: Vec<_> = rows
            .iter()
            .filter(|(v, f)| index.search(&v.embedding, &SearchOptions::top(1)).unwrap()[0].path != f.path)
            .map(|(_, f)| f.path.clone())
            .collect();
        assert!(missed.is_empty(), "{} contents not found by their own vector: {missed:?}", missed.len());
    }
}
