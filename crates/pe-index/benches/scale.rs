//! How an index scales, without a model: synthetic clustered unit vectors at PE's dimensions,
//! written through the catalog like `pe index` writes them, then the matrix and the
//! approximate index built, and searches measured. Prints one Markdown table row per figure.
//!
//! `cargo bench -p pe-index --bench scale -- [ROWS] [DIM] [DIR] [f16|i8|bf16|both]` (default 100000,
//! 1024, a temporary directory, both storages). `PE_EF` sets the search's ef, `PE_QUERIES` the
//! queries timed, `PE_RECALL_QUERIES` those recall is measured on. Numbers for docs/search.md;
//! never a timed test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{manifest, normalize, Rng};
use pe_index::{AnnMode, AnnStorage, Catalog, FileRow, Index, SearchOptions, VectorRow};
use rayon::prelude::*;

/// A vector near one of `centres` (cosine ~0.8 to it, as photos of one subject are).
fn clustered(rng: &mut Rng, centres: &[Vec<f32>]) -> Vec<f32> {
    let c = &centres[((rng.next() + 1.0) * 0.5 * centres.len() as f32) as usize % centres.len()];
    let spread = 1.2 / (c.len() as f32).sqrt();
    let mut v: Vec<f32> = c.iter().map(|x| x + spread * rng.next()).collect();
    normalize(&mut v);
    v
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Reset the peak RSS to the current RSS (Linux's clear_refs); returns the current RSS.
fn reset_peak_rss() -> f64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak_rss_mib()
}

fn size_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
}

fn row(table: &str, what: &str, value: String) {
    println!("| {table} | {what} | {value} |");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rows: usize = args.first().map_or(Ok(100_000), |a| a.parse())?;
    let dim: usize = args.get(1).map_or(Ok(1024), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let dir = args.get(2).map_or_else(|| tmp.path().join("idx"), PathBuf::from);
    let t = format!("{rows} x {dim}");
    println!("| rows x dim | figure | value |\n|---|---|---|");
    row(&t, "threads", rayon::current_num_threads().to_string());

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let centres: Vec<Vec<f32>> = (0..rows.div_ceil(100).max(1))
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.next()).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let mut index = Index::open_or_create(&dir, &manifest(dim))?;
    let fresh = index.catalog().counts()?.3 == 0;
    let started = Instant::now();
    if fresh {
        let mut catalog = Catalog::open(&dir)?;
        for start in (0..rows).step_by(10_000) {
            let (mut v, mut f) = (Vec::new(), Vec::new());
            for i in start..(start + 10_000).min(rows) {
                let hash = blake3::hash(&(i as u64).to_le_bytes()).to_hex().to_string();
                f.push(FileRow {
                    path: format!("/corpus/{:03}/{i:08}.jpg", i % 1000).into(),
                    size: 1,
                    mtime_ns: 0,
                    hash: Some(hash.clone()),
                    error: None,
                });
                v.push(VectorRow { hash, width: 1, height: 1, embedding: clustered(&mut rng, &centres) });
            }
            catalog.commit(&v, &f)?;
        }
        row(&t, "catalog written (s)", format!("{:.1}", started.elapsed().as_secs_f64()));
    }
    let started = Instant::now();
    let generation = index.catalog().generation()?;
    if pe_index::Matrix::open(&dir).map_or(true, |m| m.generation() != generation) {
        pe_index::Matrix::build(&dir, index.catalog(), dim)?;
        row(&t, "matrix built (s)", format!("{:.1}", started.elapsed().as_secs_f64()));
    }
    // PE_EF: the approximate search's candidate count (default the library's).
    let ef: Option<usize> = std::env::var("PE_EF").ok().and_then(|v| v.parse().ok());
    row(&t, "ef", ef.unwrap_or(pe_index::default_ef(rows)).to_string());

    // Exact search, and a plain streaming read of the same bytes on the same threads.
    // PE_RECALL_QUERIES: queries whose exact answers the recall is measured against (50).
    let n_recall: usize = std::env::var("PE_RECALL_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let queries: Vec<Vec<f32>> = (0..n_recall.max(2)).map(|_| clustered(&mut rng, &centres)).collect();
    let exact = SearchOptions { exact: true, ..SearchOptions::top(10) };
    let started = Instant::now();
    Index::open(&dir)?.search(&queries[0], &exact)?;
    row(&t, "exact: open + first search (ms)", format!("{:.0}", started.elapsed().as_secs_f64() * 1e3));
    index.search(&queries[0], &exact)?;
    let started = Instant::now();
    let truth: Vec<Vec<PathBuf>> = queries
        .iter()
        .map(|q| Ok(index.search(q, &exact)?.into_iter().map(|h| h.path).collect()))
        .collect::<Result<_, pe_index::Error>>()?;
    let per_query = started.elapsed().as_secs_f64() / queries.len() as f64;
    let bytes = (rows * dim * 4) as f64;
    row(&t, "exact search (ms/query)", format!("{:.1}", per_query * 1e3));
    row(&t, "exact search (GB/s)", format!("{:.1}", bytes / per_query / 1e9));
    let matrix = pe_index::Matrix::open(&dir)?;
    let mut sink = 0f32;
    let mut started = Instant::now();
    for pass in 0..6 {
        // The first pass maps the pages in (as the first search of a process does).
        if pass == 1 {
            started = Instant::now();
        }
        sink += (0..rows).into_par_iter().with_min_len(4096).map(|i| matrix.row(i).iter().sum::<f32>()).sum::<f32>();
    }
    let stream = started.elapsed().as_secs_f64() / 5.0;
    row(&t, "streaming read (GB/s)", format!("{:.1} (checksum {sink:.1})", bytes / stream / 1e9));
    drop(matrix);

    let storages: Vec<AnnStorage> = match args.get(3).map(String::as_str) {
        Some("f16") => vec![AnnStorage::F16],
        Some("i8") => vec![AnnStorage::I8],
        Some("bf16") => vec![AnnStorage::Bf16],
        _ => vec![AnnStorage::F16, AnnStorage::I8],
    };
    for storage in storages {
        let name = format!("{storage:?}").to_lowercase();
        let started = Instant::now();
        let before = reset_peak_rss();
        index.refresh_ann(AnnMode::Always, storage, &mut |_| {})?;
        let s = started.elapsed().as_secs_f64();
        row(&t, &format!("{name} graph built (s)"), format!("{s:.1} ({:.0} vectors/s)", rows as f64 / s));
        row(
            &t,
            &format!("{name} peak RSS during the build (MiB)"),
            format!("{:.0} (before the build {before:.0})", peak_rss_mib()),
        );
        row(&t, &format!("{name} ann.bin (MiB)"), format!("{:.0}", size_mib(&pe_index::Ann::path(&dir))));
        let started = Instant::now();
        let ann = index.ann()?.ok_or("no graph after a build")?;
        row(&t, &format!("{name} open + checksum (ms)"), format!("{:.0}", started.elapsed().as_secs_f64() * 1e3));
        drop(ann);
        // A new process's first search: open, map, check the graph, search (no model).
        let started = Instant::now();
        let cold = Index::open(&dir)?;
        cold.search(&queries[1], &SearchOptions::top(10))?;
        row(&t, &format!("{name} open + first search (ms)"), format!("{:.0}", started.elapsed().as_secs_f64() * 1e3));
        drop(cold);
        let mut found = 0;
        for (q, want) in queries.iter().zip(&truth) {
            let got = index.search(q, &SearchOptions { ef, ..SearchOptions::top(10) })?;
            found += got.iter().filter(|h| want.contains(&h.path)).count();
        }
        row(&t, &format!("{name} recall@10"), format!("{:.4}", found as f64 / (10 * queries.len()) as f64));
        // Queries per second on every thread, each with its own open index (as server workers).
        let threads = rayon::current_num_threads();
        let n_queries: usize = std::env::var("PE_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
        let many: Vec<Vec<f32>> = (0..n_queries).map(|_| clustered(&mut rng, &centres)).collect();
        let ready = std::sync::Barrier::new(threads + 1);
        let mut started = Instant::now();
        std::thread::scope(|sc| -> Result<(), pe_index::Error> {
            let handles: Vec<_> = (0..threads)
                .map(|th| {
                    let (dir, many, ready) = (&dir, &many, &ready);
                    sc.spawn(move || -> Result<(), pe_index::Error> {
                        // Opened and warmed before the clock starts (a server's steady state).
                        let index = Index::open(dir);
                        let warm = index.as_ref().ok().map(|i| i.search(&many[0], &SearchOptions::top(10)));
                        ready.wait();
                        let index = index?;
                        warm.transpose()?;
                        for q in many.iter().skip(th).step_by(threads) {
                            index.search(q, &SearchOptions { ef, ..SearchOptions::top(10) })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            ready.wait();
            started = Instant::now();
            for h in handles {
                h.join().map_err(|_| pe_index::Error::Query("a search thread panicked".into()))??;
            }
            Ok(())
        })?;
        let qps = many.len() as f64 / started.elapsed().as_secs_f64();
        row(&t, &format!("{name} queries/s ({threads} threads, top 10, re-scored)"), format!("{qps:.0}"));
    }
    row(&t, "catalog.sqlite (MiB)", format!("{:.0}", size_mib(&dir.join("catalog.sqlite"))));
    row(&t, "vectors.f32 (MiB)", format!("{:.0}", size_mib(&pe_index::Matrix::path(&dir))));
    row(&t, "peak RSS (MiB)", format!("{:.0}", peak_rss_mib()));
    Ok(())
}
