//! Throughput measurement behind `pe bench`: one warm-up batch, then timed batches on random
//! pixels (image tower) or realistic prompts (text tower), with the process's peak memory.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::tokenizer::ClipTokenizer;
use crate::zero_shot::imagenet_classes;

/// Which tower is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tower {
    /// `encode_image` at the model's native resolution.
    Image,
    /// `encode_text` on prompts "a photo of a {ImageNet class}." (about 8-12 tokens).
    Text,
}

/// Timing results of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model name.
    pub model: String,
    /// Timed tower.
    pub tower: Tower,
    /// Precision (serialized as `f32`, `bf16` or `int8`, as before).
    pub dtype: Precision,
    /// Items per batch.
    pub batch_size: usize,
    /// Worker threads.
    pub threads: usize,
    /// Timed batches.
    pub iters: usize,
    /// `batch_size / median batch time`.
    pub items_per_s: f64,
    /// Median batch time in milliseconds.
    pub ms_per_batch_median: f64,
    /// Fastest batch.
    pub ms_per_batch_min: f64,
    /// Slowest batch.
    pub ms_per_batch_max: f64,
    /// Peak resident memory of the process so far, in MiB.
    pub peak_rss_mb: f64,
}

/// The vector unit of the element-wise kernels in this process: `"avx512"`,
/// `"avx2"` or `"baseline"` (see `PE_SIMD` in docs/performance.md).
pub fn simd_level() -> &'static str {
    match crate::kernels::cpu::simd() {
        crate::kernels::cpu::Simd::Avx512 => "avx512",
        crate::kernels::cpu::Simd::Avx2 => "avx2",
        crate::kernels::cpu::Simd::Baseline => "baseline",
    }
}

/// The process's peak resident set size in MiB (`VmHWM`), or NaN where unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `n` prompts "a photo of a {class}." cycling through the ImageNet classes.
pub fn realistic_prompts(n: usize) -> Vec<String> {
    let classes = imagenet_classes();
    (0..n).map(|i| format!("a photo of a {}.", classes[(i * 37) % classes.len()])).collect()
}

/// Time `iters` batches of `batch_size` through `tower` after one warm-up batch.
pub fn run(model: &Clip, tower: Tower, batch_size: usize, iters: usize, threads: usize) -> Result<BenchReport> {
    if batch_size == 0 || iters == 0 {
        return Err(Error::InvalidInput("batch size and iterations must be positive".into()));
    }
    let device = model.device().clone();
    let input = match tower {
        Tower::Image => {
            let s = model.config().vision.image_size;
            Tensor::rand(-1f32, 1f32, (batch_size, 3, s, s), &Device::Cpu)?.to_device(&device)?
        }
        Tower::Text => {
            let ctx = model
                .config()
                .text
                .as_ref()
                .ok_or_else(|| Error::MissingPart { model: model.config().name.clone(), part: "text tower" })?
                .context_length;
            ClipTokenizer::new(ctx).tokenize_batch(&realistic_prompts(batch_size), &device)?
        }
    };
    let step = |x: &Tensor| -> Result<()> {
        let out = match tower {
            Tower::Image => model.encode_image(x, true)?,
            Tower::Text => model.encode_text(x, true)?,
        };
        // Force completion (a no-op on CPU, a sync on accelerators).
        out.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    step(&input)?;
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        step(&input)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(BenchReport {
        model: model.config().name.clone(),
        tower,
        dtype: model.precision(),
        batch_size,
        threads,
        iters,
        items_per_s: batch_size as f64 / (median / 1e3),
        ms_per_batch_median: median,
        ms_per_batch_min: sorted[0],
        ms_per_batch_max: sorted[sorted.len() - 1],
        peak_rss_mb: peak_rss_mb(),
    })
}
