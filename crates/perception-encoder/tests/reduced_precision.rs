//! `Precision::Bf16` (`--dtype bf16`): bfloat16 linear weights and inputs with float32 accumulation,
//! float32 elsewhere. Its embeddings must stay within cosine 0.999 of the float32 model's, on
//! the fixture images and prompts, for the fixtures' tiny models and a full-size random B16.
//! `Precision::Int8` (`--dtype int8`): int8 linear layers; its cosines are printed and held to
//! [`MIN_COSINE_INT8`].

use candle_core::{DType, Device, Tensor};
use pe_testutil::{fixtures, FIXTURE_IMAGES as IMAGES};
use perception_encoder::candle_core;
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::weights::random_state_dict;
use perception_encoder::{Clip, ClipConfig, LoadOptions, Precision};

const MIN_COSINE: f32 = 0.999;
/// int8 with per-channel weights and per-row activations.
const MIN_COSINE_INT8: f32 = 0.998;

fn opts(precision: Precision) -> LoadOptions {
    LoadOptions { precision, ..LoadOptions::default() }
}

fn bound(precision: Precision) -> f32 {
    if precision == Precision::Int8 {
        MIN_COSINE_INT8
    } else {
        MIN_COSINE
    }
}

fn cosines(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let a: Vec<Vec<f32>> = a.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    let b: Vec<Vec<f32>> = b.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let ny = y.iter().map(|v| v * v).sum::<f32>().sqrt();
            dot / (nx * ny)
        })
        .collect()
}

fn images(dir: &std::path::Path, model: &Clip) -> Tensor {
    let t = ImageTransform::for_config(&model.config().vision);
    let xs: Vec<Tensor> = IMAGES.iter().map(|f| t.load_path(dir.join("images").join(f)).unwrap()).collect();
    Tensor::stack(&xs, 0).unwrap()
}

fn prompts() -> Vec<String> {
    let mut p = perception_encoder::bench::realistic_prompts(8);
    p.push("a long caption: a red double-decker bus crossing a bridge over the river at dusk, with lights".into());
    p
}

/// Image and text cosines between `f32` and `low` on the fixture inputs; asserts the bound.
fn compare(label: &str, dir: &std::path::Path, f32m: &Clip, low: &Clip) {
    let min = bound(low.precision());
    let x = images(dir, f32m);
    let img = cosines(&f32m.encode_image(&x, true).unwrap(), &low.encode_image(&x, true).unwrap());
    let mut worst = img.iter().copied().fold(1f32, f32::min);
    if let Some(text) = f32m.text() {
        let ids = ClipTokenizer::new(text.config().context_length).tokenize_batch(&prompts(), &Device::Cpu).unwrap();
        let txt = cosines(&f32m.encode_text(&ids, true).unwrap(), &low.encode_text(&ids, true).unwrap());
        eprintln!("{label}: image cosines {img:?}, text cosines {txt:?}");
        worst = txt.iter().copied().fold(worst, f32::min);
    } else {
        eprintln!("{label}: image cosines {img:?}");
    }
    eprintln!("{label}: worst cosine {worst}");
    assert!(worst >= min, "{label}: cosine {worst} below {min}");
}

#[test]
fn tiny_models_in_bf16_and_int8_stay_close_to_float32() {
    let Some(dir) = fixtures() else { return };
    for (name, ckpt) in [("tiny-cls", "tiny-cls.pt"), ("tiny-nocls", "tiny-nocls.safetensors")] {
        let cfg = ClipConfig::from_json_file(dir.join(format!("{name}.json"))).unwrap();
        let f32m = Clip::load(&cfg, dir.join(ckpt), &LoadOptions::default()).unwrap();
        for precision in [Precision::Bf16, Precision::Int8] {
            let low = Clip::load(&cfg, dir.join(ckpt), &opts(precision)).unwrap();
            assert_eq!(low.precision(), precision);
            compare(&format!("{name} {precision}"), &dir, &f32m, &low);
        }
    }
}

#[test]
fn b16_in_bf16_and_int8_stays_close_to_float32() {
    let Some(dir) = fixtures() else { return };
    let cfg = ClipConfig::preset("PE-Core-B16-224").unwrap();
    let tensors = random_state_dict(&cfg, 11, DType::F32, &Device::Cpu).unwrap();
    // Tensors share their storage: both models are built from the same float32 weights.
    let f32m = Clip::from_tensors(&cfg, tensors.clone(), &LoadOptions::default()).unwrap();
    for precision in [Precision::Bf16, Precision::Int8] {
        let low = Clip::from_tensors(&cfg, tensors.clone(), &opts(precision)).unwrap();
        compare(&format!("PE-Core-B16-224 (random) {precision}"), &dir, &f32m, &low);
    }
}
