//! The linear-layer kernels on PE-Core-B16's shapes, every implementation this CPU offers:
//! `cargo bench -p perception-encoder --bench kernels [-- --threads T --iters N --rows M,... --width W
//! --shapes NxK,...]`.
//! Prints GFLOP/s (2 m n k per product) per dtype, implementation and shape, of the fastest and
//! the median timed run (a model runs each product once, so the median is what it gets).
//! With `--attention`, the float32 attention instead, on each preset's shape at batch 1 (and
//! B16 at 8): GFLOP/s counted as `4 batch heads seq^2 head_dim` (both products).

use perception_encoder::kernel_bench::{attention, attention_implementations, implementations, matmul, prepare};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    // As `pe` does: reused output buffers, not fresh page faults in every timed call.
    perception_encoder::runtime::keep_freed_memory();
    let threads =
        arg("--threads").and_then(|v| v.parse().ok()).unwrap_or_else(perception_encoder::runtime::default_threads);
    let threads = perception_encoder::runtime::set_threads(threads);
    let iters: usize = arg("--iters").and_then(|v| v.parse().ok()).unwrap_or(5);
    // One B16 image is 197 tokens; a batch of 8 is 1576.
    let rows: Vec<usize> =
        arg("--rows").map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect()).unwrap_or_else(|| vec![197, 1576]);
    // (n, k): attention qkv, out_proj, mlp c_fc, mlp c_proj, at B16's width or --width's
    // (1024: L14; one L14-336 image is 577 tokens).
    let w: usize = arg("--width").and_then(|v| v.parse().ok()).unwrap_or(768);
    // Or any (n, k) list: `--shapes 4608x1536,8960x1536` (G14's qkv and MLP).
    let shapes: Vec<(usize, usize)> = arg("--shapes")
        .map(|v| {
            v.split(',')
                .filter_map(|s| s.split_once('x'))
                .filter_map(|(n, k)| Some((n.parse().ok()?, k.parse().ok()?)))
                .collect()
        })
        .unwrap_or_else(|| vec![(3 * w, w), (w, w), (4 * w, w), (w, 4 * w)]);
    println!("threads {threads}, {iters} timed runs each (fastest and median GFLOP/s)");
    if std::env::args().any(|a| a == "--attention") {
        attention_shapes(iters);
        return;
    }
    println!("{:<6} {:<11} {:>6} {:>6} {:>6} {:>9} {:>9}", "dtype", "impl", "m", "n", "k", "best", "median");
    let mut seed = 0x2545_f491u32;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
    };
    let dtypes: Vec<String> = arg("--dtypes")
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_else(|| vec!["f32".into(), "bf16".into(), "int8".into()]);
    for dtype in dtypes.iter().map(String::as_str) {
        for &(n, k) in &shapes {
            let w: Vec<f32> = (0..n * k).map(|_| rnd() * 0.05).collect();
            let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let prepared = prepare(dtype, &w, n, k, &bias);
            for &m in &rows {
                let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let only = arg("--impls");
                let impls: Vec<&str> = implementations(dtype)
                    .into_iter()
                    .filter(|w| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *w)))
                    .collect();
                // The implementations alternate within each timed round, so that a slow minute
                // of a shared machine hits them all.
                let mut times = vec![Vec::new(); impls.len()];
                for round in 0..=iters.max(1) {
                    for (which, times) in impls.iter().zip(&mut times) {
                        let t = Instant::now();
                        std::hint::black_box(matmul(&prepared, which, &x, m, &bias));
                        if round > 0 {
                            times.push(t.elapsed().as_secs_f64());
                        }
                    }
                }
                for (which, times) in impls.iter().zip(&mut times) {
                    times.sort_by(f64::total_cmp);
                    let rate = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
                    let (best, median) = (rate(times[0]), rate(times[times.len() / 2]));
                    println!("{dtype:<6} {which:<11} {m:>6} {n:>6} {k:>6} {best:>9.1} {median:>9.1}");
                }
            }
        }
    }
}

/// The float32 attention of each preset's image tower at batch 1 (and B16 at 8).
fn attention_shapes(iters: usize) {
    // (preset, batch, tokens, heads, head dim)
    let shapes = [
        ("T16-384", 1, 577, 3, 64),
        ("S16-384", 1, 577, 6, 64),
        ("B16-224", 1, 197, 12, 64),
        ("B16-224", 8, 197, 12, 64),
        ("L14-336", 1, 577, 16, 64),
        ("G14-448", 1, 1025, 16, 96),
    ];
    println!(
        "{:<8} {:>5} {:>5} {:>5} {:>4} {:<9} {:>9} {:>9}",
        "preset", "batch", "seq", "heads", "dim", "impl", "best", "median"
    );
    let only = arg("--impls");
    let impls: Vec<&str> = attention_implementations()
        .into_iter()
        .filter(|w| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *w)))
        .collect();
    let mut seed = 0x9e37_79b9u32;
    for (preset, batch, seq, heads, d) in shapes {
        let qkv: Vec<f32> = (0..batch * seq * 3 * heads * d)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect();
        for which in &impls {
            std::hint::black_box(attention(which, &qkv, batch, seq, heads, d));
        }
        // The implementations take turns, run by run, so a noisy spell on a shared machine
        // falls on all of them alike.
        let mut times = vec![Vec::with_capacity(iters); impls.len()];
        for _ in 0..iters.max(1) {
            for (which, times) in impls.iter().zip(&mut times) {
                let t = Instant::now();
                std::hint::black_box(attention(which, &qkv, batch, seq, heads, d));
                times.push(t.elapsed().as_secs_f64());
            }
        }
        for (which, times) in impls.iter().zip(&mut times) {
            times.sort_by(f64::total_cmp);
            let rate = |s: f64| 4.0 * (batch * heads * seq * seq * d) as f64 / s / 1e9;
            let (best, median) = (rate(times[0]), rate(times[times.len() / 2]));
            println!("{preset:<8} {batch:>5} {seq:>5} {heads:>5} {d:>4} {which:<9} {best:>9.1} {median:>9.1}");
        }
    }
}
