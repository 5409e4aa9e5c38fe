//! Indexing speed against the model alone, side by side in one process: `pe bench`'s loop
//! (`perception_encoder::bench::run`, random inputs, no decoding) and `Index::update` over a
//! folder of generated JPEG photos (hashing, decoding and resizing on the pipeline's decode
//! stage while the model embeds), at the same batch size and precision. Random weights.
//!
//! `cargo bench -p pe-index --bench throughput -- [PRESET] [IMAGES] [BATCH] [f32|bf16|int8]`
//! (default PE-Core-B16-224, 192, 32, f32). Numbers for docs/search.md; never a timed test.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use pe_index::{Index, Manifest, TransformSpec, UpdateOptions};
use perception_encoder::bench::{self, Tower};
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::weights::random_state_dict;
use perception_encoder::{Clip, ClipConfig, LoadOptions, Precision};

/// A 1024x768 JPEG with smooth gradients and noise, about the cost of a phone photo to decode.
fn photo(seed: u32) -> Vec<u8> {
    let (w, h) = (1024u32, 768u32);
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let n = (s & 31) as u8;
        image::Rgb([
            ((x * 255 / w) as u8).wrapping_add(n),
            ((y * 255 / h) as u8).wrapping_add(n),
            (seed as u8).wrapping_mul(37) ^ n,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap_or_default();
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let preset = args.first().cloned().unwrap_or_else(|| "PE-Core-B16-224".into());
    let images: usize = args.get(1).map_or(Ok(192), |a| a.parse())?;
    let batch: usize = args.get(2).map_or(Ok(32), |a| a.parse())?;
    let precision: Precision = args.get(3).map_or(Ok(Precision::F32), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let cfg = ClipConfig::preset(&preset)?;

    // Random weights in a checkpoint file, as the index's manifest names one.
    let weights = tmp.path().join("weights.safetensors");
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        random_state_dict(&cfg, 0, DType::F32, &Device::Cpu)?.into_iter().collect();
    candle_core::safetensors::save(&tensors, &weights)?;
    drop(tensors);
    let opts = LoadOptions { precision, ..LoadOptions::default() };
    let model = Clip::load(&cfg, &weights, &opts)?;

    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos)?;
    for i in 0..images {
        std::fs::write(photos.join(format!("{i:05}.jpg")), photo(i as u32))?;
    }

    let threads = rayon::current_num_threads();
    let iters = images.div_ceil(batch).max(2);
    let report = bench::run(&model, Tower::Image, batch, iters, threads)?;
    let alone = report.items_per_s;

    let transform = ImageTransform::for_config(&cfg.vision);
    let manifest = Manifest {
        format_version: pe_index::FORMAT_VERSION,
        model: Manifest::weights_spec(&cfg.name, None, &weights)?,
        precision,
        layer: -1,
        transform: TransformSpec::of(&transform),
        dim: cfg.vision.output_dim.ok_or("not a CLIP preset")?,
    };
    let dir = tmp.path().join("idx");
    let mut index = Index::open_or_create(&dir, &manifest)?;
    let started = Instant::now();
    let up = UpdateOptions { batch_size: batch, ..UpdateOptions::default() };
    let r = index.update(&pe_index::LazyModel::of(&model), &[PathBuf::from(&photos)], &up, &mut |_| {})?;
    let indexing = r.embedded as f64 / started.elapsed().as_secs_f64();

    println!("| model | dtype | batch | threads | images | pe bench (img/s) | pe index (img/s) | index / bench |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {preset} | {precision} | {batch} | {threads} | {} | {alone:.2} | {indexing:.2} | {:.2} |",
        r.embedded,
        indexing / alone
    );
    Ok(())
}
