//! Fuzz targets: each takes arbitrary bytes and runs one reader of untrusted input the way `pe`
//! does, checking only that it returns (an error is fine; a panic, abort or hang is the bug).
//! The AFL++ binaries in `src/bin` call these; `tests/replay.rs` runs every committed corpus
//! file through them in `cargo test`.
//!
//! Run one (see docs/reliability.md for the numbers of the last runs):
//! `cargo afl build --release -p pe-fuzz --features afl --bin fuzz_pt &&
//!  cargo afl fuzz -i crates/pe-fuzz/corpora/pt -o /tmp/afl-pt target/release/fuzz_pt`

use std::path::PathBuf;

use perception_encoder::candle_core::{DType, Device};
use perception_encoder::preprocess::{decode, ImageTransform};
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::weights::Checkpoint;
use perception_encoder::ClipConfig;

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets by name, as the corpus folders are named.
pub const TARGETS: &[(&str, Target)] =
    &[("pt", checkpoint), ("safetensors", checkpoint), ("config", config), ("image", image), ("tokenizer", tokenizer)];

/// A scratch file per process in memory (checkpoints are read from paths, memory-mapped).
fn scratch() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("pe-fuzz-{}", std::process::id()))
}

/// A checkpoint file (`.pt` zip + pickle, or safetensors): open it, list its shapes, and read
/// every tensor small enough to be a plausible weight.
pub fn checkpoint(data: &[u8]) {
    let path = scratch();
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(ck) = Checkpoint::open(&path) {
        for (key, shape) in ck.shapes() {
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n.is_some_and(|n| n <= 1 << 20) {
                let _ = ck.tensor(&key, DType::F32, &Device::Cpu);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A model config as JSON: parse and validate, then list the tensors it would need.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = ClipConfig::from_json_str(text) {
            let _ = perception_encoder::weights::official_shapes(&cfg);
            let _ = perception_encoder::weights::num_parameters(&cfg);
        }
    }
}

/// An image file: decode under a 4 Mpx limit, then the 32 px squash and centre-crop transforms.
pub fn image(data: &[u8]) {
    if let Ok(img) = decode(data, 1 << 22) {
        let t = ImageTransform { max_pixels: 1 << 22, ..ImageTransform::new(32) };
        let _ = t.apply(&img);
        let _ = t.with_mode(perception_encoder::preprocess::ResizeMode::CenterCrop).apply(&img);
    }
}

/// Text: tokenize (lossy UTF-8) at context 32, and decode the ids back.
pub fn tokenizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tok = ClipTokenizer::new(32);
    let ids = tok.tokenize(&text);
    let _ = tok.decode(&ids);
}
