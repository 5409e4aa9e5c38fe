//! Load a checkpoint and print the process's memory at each step.
//!
//! `cargo run --release --example load_rss -- PE-Core-B16-224 weights.safetensors`
use perception_encoder::weights::Checkpoint;
use perception_encoder::{Clip, ClipConfig, LoadOptions};

fn mem() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .filter(|l| {
            l.starts_with("VmRSS") || l.starts_with("VmHWM") || l.starts_with("RssFile") || l.starts_with("RssAnon")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = ClipConfig::preset(&args[1])?;
    println!("start: {}", mem());
    let ckpt = Checkpoint::open(&args[2])?;
    println!("opened: {}", mem());
    ckpt.check(&cfg)?;
    println!("checked: {}", mem());
    drop(ckpt);
    let t = std::time::Instant::now();
    let model = Clip::load(&cfg, &args[2], &LoadOptions::default())?;
    println!("loaded in {:.2}s: {}", t.elapsed().as_secs_f64(), mem());
    drop(model);
    println!("dropped: {}", mem());
    Ok(())
}
