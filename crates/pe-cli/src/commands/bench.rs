//! `pe bench`: throughput of one tower with random (or given) weights.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use perception_encoder::bench::{self, Tower};
use perception_encoder::{Clip, ClipConfig, LoadOptions, Precision, Towers};

/// Which tower to time.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TowerArg {
    Image,
    Text,
}

/// Arguments of `pe bench`.
#[derive(Debug, clap::Args)]
pub struct BenchCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    /// A preset name (see `pe models`).
    #[arg(long, short = 'm', required_unless_present_any = ["config", "peak"], conflicts_with = "config")]
    model: Option<String>,
    /// A model config in the reference's JSON format.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// A checkpoint; random weights when absent (no download needed).
    #[arg(long, short = 'w')]
    weights: Option<std::path::PathBuf>,
    /// The tower to time.
    #[arg(long, value_enum, default_value = "image")]
    tower: TowerArg,
    /// Items per batch.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch_size: usize,
    /// Timed batches (after one warm-up batch).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Precision: f32, bf16 or int8 (as the embedding commands' --dtype).
    #[arg(long, default_value = "f32", env = "PE_DTYPE", value_parser = crate::args::PrecisionParser)]
    dtype: Precision,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Measure this CPU's peak arithmetic rates instead of a model (float32 FMA, bf16 and int8
    /// dot products, int16 multiply-adds, AMX tile products where present, on --threads threads), the limits that
    /// model throughput is a share of.
    #[arg(long, conflicts_with_all = ["model", "config", "weights"])]
    peak: bool,
}

/// `pe bench --peak`.
fn peak(json: bool) -> anyhow::Result<ExitCode> {
    let p = perception_encoder::peak::measure();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_value(p)?)?;
    } else {
        let or_none =
            |v: Option<f64>, unit: &str| v.map_or("not on this CPU".to_string(), |v| format!("{v:.0} {unit}"));
        writeln!(
            out,
            "{} thread(s): float32 FMA ({}) {:.0} GFLOP/s; bf16 dot {}; int8 dot {}; int16 multiply-add {}; int8 AVX2 pairs {}; AMX bf16 {}; AMX int8 {}",
            p.threads,
            p.simd,
            p.f32_gflops,
            or_none(p.bf16_gflops, "GFLOP/s"),
            or_none(p.int8_gops, "GOP/s"),
            or_none(p.int16_gops, "GOP/s"),
            or_none(p.int8_avx2_gops, "GOP/s"),
            or_none(p.amx_bf16_gflops, "GFLOP/s"),
            or_none(p.amx_int8_gops, "GOP/s")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(cmd: BenchCmd, threads: usize) -> anyhow::Result<ExitCode> {
    if cmd.peak {
        return peak(cmd.json);
    }
    let cfg = match (&cmd.model, &cmd.config) {
        (Some(name), _) => ClipConfig::preset(name)?,
        (None, Some(path)) => ClipConfig::from_json_file(path)?,
        (None, None) => anyhow::bail!("give --model or --config"),
    };
    let (tower, towers) = match cmd.tower {
        TowerArg::Image => (Tower::Image, Towers::Image),
        TowerArg::Text => (Tower::Text, Towers::Text),
    };
    // The tower measured alone: its load time and memory, not the other one's.
    let opts = LoadOptions { precision: cmd.dtype, towers, ..LoadOptions::default() };
    let started = Instant::now();
    let model = match &cmd.weights {
        Some(w) => Clip::load(&cfg, w, &opts)?,
        None => Clip::random(&cfg, 0, &opts)?,
    };
    let load_s = started.elapsed().as_secs_f64();
    let report = bench::run(&model, tower, cmd.batch_size, cmd.iters, threads)?;
    let mut out = std::io::stdout().lock();
    if cmd.json {
        let mut v = serde_json::to_value(&report)?;
        v["load_s"] = serde_json::json!(load_s);
        v["weights"] = serde_json::json!(if cmd.weights.is_some() { "file" } else { "random" });
        writeln!(out, "{v}")?;
    } else {
        let unit = if tower == Tower::Image { "images" } else { "texts" };
        writeln!(
            out,
            "{} {:?} tower, {}, batch {}, {} thread(s): {:.2} {unit}/s; ms per batch median {:.1}, min {:.1}, max {:.1}; peak RSS {:.0} MB; model ready in {:.2}s",
            report.model,
            report.tower,
            report.dtype,
            report.batch_size,
            report.threads,
            report.items_per_s,
            report.ms_per_batch_median,
            report.ms_per_batch_min,
            report.ms_per_batch_max,
            report.peak_rss_mb,
            load_s
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
