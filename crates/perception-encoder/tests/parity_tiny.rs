//! Float32 parity with the reference on the fixtures' tiny models, loaded from every
//! checkpoint layout the fixtures hold: every expected tensor in the manifests is checked.

mod common;

use std::path::Path;

use common::{assert_close, fixture, fixtures, load_tensors};
use perception_encoder::candle_core::{DType, Tensor};
use perception_encoder::weights::{Checkpoint, CheckpointFormat, CheckpointLayout};
use perception_encoder::{Clip, ClipConfig, LoadOptions};

/// Compute the tensor the manifest calls `name` from the model and the stored inputs.
fn compute(model: &Clip, name: &str, inputs: &std::collections::HashMap<String, Tensor>) -> Tensor {
    let input = |k: &str| inputs.get(k).unwrap_or_else(|| panic!("input {k} missing")).clone();
    let v = model.visual().expect("the vision tower is built");
    let image = |variant: &str| input(&format!("pixels_{variant}"));
    let grid = |variant: &str| {
        let d = image(variant).dims().to_vec();
        v.config().grid(d[2], d[3])
    };
    let text = || input("text_ids");
    let r = |x: perception_encoder::Result<Tensor>| x.unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(rest) = name.strip_prefix("features_") {
        // features_{variant}_layer{L}_norm{0,1}_strip{0,1}
        let (variant, spec) = rest.split_once("_layer").unwrap();
        let mut parts = spec.split('_');
        let layer: isize = parts.next().unwrap().parse().unwrap();
        let norm = parts.next().unwrap() == "norm1";
        let strip = parts.next().unwrap() == "strip1";
        return r(model.forward_features(&image(variant), layer, norm, strip));
    }
    for (prefix, what) in [
        ("image_embed_norm_", 0),
        ("image_embed_", 1),
        ("image_pooled_", 2),
        ("vision_tokens_in_", 3),
        ("vision_tokens_ln_pre_", 4),
        ("posemb_", 5),
        ("rope_freq_", 6),
    ] {
        if let Some(variant) = name.strip_prefix(prefix) {
            let x = image(variant);
            return match what {
                0 => r(model.encode_image(&x, true)),
                1 => r(model.encode_image(&x, false)),
                2 => r(v.forward_features(&x, -1, true, false).and_then(|f| v.pool(&f))),
                3 => r(v.tokens_in(&x).map(|t| t.0)),
                4 => r(v.tokens_ln_pre(&x).map(|t| t.0)),
                5 => {
                    let (gh, gw) = grid(variant);
                    r(v.posemb(gh, gw).map(|p| p.unwrap()))
                }
                _ => {
                    let (gh, gw) = grid(variant);
                    r(v.rope_angles(gh, gw).map(|p| p.unwrap()))
                }
            };
        }
    }
    match name {
        "text_embed" => r(model.encode_text(&text(), false)),
        "text_embed_norm" => r(model.encode_text(&text(), true)),
        "text_tokens_in" => r(model.text().unwrap().tokens_in(&text())),
        "text_tokens_final" => r(model.text().unwrap().forward_tokens(&text())),
        "text_embed_short" => r(model.encode_text(&input("text_ids_short"), false)),
        "logit_scale_exp" => {
            Tensor::new(model.logit_scale().unwrap(), &perception_encoder::candle_core::Device::Cpu).unwrap()
        }
        "logits_per_image" => {
            let out = model.forward(Some(&image("native")), Some(&text())).unwrap();
            let logits = out.image_features.unwrap().matmul(&out.text_features.unwrap().t().unwrap()).unwrap();
            (logits * out.logit_scale as f64).unwrap()
        }
        "video_embed" => r(model.encode_video(&input("video"), false)),
        "video_embed_framenorm" => r(model.encode_video(&input("video"), true)),
        other => panic!("the manifest lists `{other}`, which this test does not know how to compute"),
    }
}

fn check_model(dir: &Path, model_name: &str, checkpoint: &str) {
    check_model_in(dir, model_name, checkpoint, DType::F32)
}

fn check_model_in(dir: &Path, model_name: &str, checkpoint: &str, dtype: DType) {
    let cfg = ClipConfig::from_json_file(fixture(dir, &format!("{model_name}.json"))).unwrap();
    // Float32 is LoadOptions' default; other dtypes (F64: candle's generic operations) are
    // built from a VarBuilder in that dtype.
    let model = if dtype == DType::F32 {
        Clip::load(&cfg, fixture(dir, checkpoint), &LoadOptions::default())
    } else {
        perception_encoder::weights::Checkpoint::open(fixture(dir, checkpoint))
            .and_then(|ck| Clip::new(&cfg, ck.into_var_builder(dtype, &candle_core::Device::Cpu)))
    }
    .unwrap_or_else(|e| panic!("loading {checkpoint}: {e}"));
    let tensors = load_tensors(&fixture(dir, &format!("{model_name}.expected.safetensors")));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(dir, &format!("{model_name}.expected.json"))).unwrap())
            .unwrap();
    let mut checked = 0;
    let mut worst = (0f32, String::new());
    for (name, meta) in manifest["tensors"].as_object().unwrap() {
        if meta["kind"] == "input" {
            continue;
        }
        let expected = tensors.get(name).unwrap_or_else(|| panic!("{name} listed but not stored"));
        let inputs: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), if t.dtype() == DType::F32 { t.to_dtype(dtype).unwrap() } else { t.clone() }))
            .collect();
        let ours = compute(&model, name, &inputs).to_dtype(DType::F32).unwrap();
        let label = format!("{model_name} [{checkpoint}, {dtype:?}] {name}");
        assert_close(&label, &ours, expected);
        let (d, tol) = common::diff(&ours, expected);
        if d / tol > worst.0 {
            worst = (d / tol, name.clone());
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} outputs checked");
    eprintln!(
        "{model_name} [{checkpoint}]: {checked} tensors within tolerance; worst {} at {:.3} of the tolerance",
        worst.1, worst.0
    );
}

#[test]
fn tiny_cls_pt() {
    let Some(dir) = fixtures() else { return };
    check_model(&dir, "tiny-cls", "tiny-cls.pt");
}

#[test]
fn tiny_cls_safetensors() {
    let Some(dir) = fixtures() else { return };
    check_model(&dir, "tiny-cls", "tiny-cls.safetensors");
}

#[test]
fn tiny_cls_openclip_safetensors() {
    let Some(dir) = fixtures() else { return };
    let ckpt = Checkpoint::open(fixture(&dir, "tiny-cls.openclip.safetensors")).unwrap();
    assert_eq!((ckpt.format(), ckpt.layout()), (CheckpointFormat::Safetensors, CheckpointLayout::OpenClip));
    check_model(&dir, "tiny-cls", "tiny-cls.openclip.safetensors");
}

#[test]
fn tiny_nocls_pt() {
    let Some(dir) = fixtures() else { return };
    check_model(&dir, "tiny-nocls", "tiny-nocls.pt");
}

#[test]
fn tiny_nocls_nested_pt() {
    let Some(dir) = fixtures() else { return };
    let ckpt = Checkpoint::open(fixture(&dir, "tiny-nocls.nested.pt")).unwrap();
    assert_eq!((ckpt.format(), ckpt.layout()), (CheckpointFormat::PyTorch, CheckpointLayout::Official));
    check_model(&dir, "tiny-nocls", "tiny-nocls.nested.pt");
}

#[test]
fn tiny_nocls_safetensors() {
    let Some(dir) = fixtures() else { return };
    check_model(&dir, "tiny-nocls", "tiny-nocls.safetensors");
}

/// Float64 runs candle's generic operations instead of the float32 CPU kernels, so both paths
/// are held to the reference.
#[test]
fn generic_path_in_f64() {
    let Some(dir) = fixtures() else { return };
    check_model_in(&dir, "tiny-cls", "tiny-cls.safetensors", DType::F64);
    check_model_in(&dir, "tiny-nocls", "tiny-nocls.safetensors", DType::F64);
}

/// `PE_SIMD` in a child process (it is read once per process).
const SIMD_CHILD: &str = "PE_PARITY_SIMD_CHILD";

/// The parity tests again with the kernels an older CPU would run: `PE_SIMD=avx2` (no AVX-512,
/// so no AVX512-BF16, VNNI or AMX either) and `PE_SIMD=baseline` (SSE2), each in a child process
/// of this test binary. The fixtures' requirement (`PE_REQUIRE_FIXTURES`) passes to the children.
#[test]
fn parity_holds_with_the_kernels_of_older_cpus() {
    if std::env::var_os(SIMD_CHILD).is_some() || fixtures().is_none() {
        return;
    }
    for level in ["avx2", "baseline"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["tiny_", "reports_simd_level", "--nocapture", "--test-threads", "2"])
            .env("PE_SIMD", level)
            .env(SIMD_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "PE_SIMD={level}: parity failed\n{stdout}\n{stderr}");
        let ran = stdout.lines().find(|l| l.starts_with("test result:")).unwrap_or_default();
        assert!(
            ran.contains(" 7 passed"),
            "PE_SIMD={level}: expected the six tiny_ tests and the level check, got {ran:?}"
        );
        // A CPU without AVX2 falls back to baseline (with a warning); then that is what ran.
        let used = stdout.lines().find_map(|l| l.strip_prefix("SIMD_LEVEL ")).unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        if level == "baseline" || std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(used, level, "PE_SIMD={level} was not applied");
        }
        eprintln!("PE_SIMD={level}: {ran} (kernels: {used})");
    }
}

#[test]
fn reports_simd_level() {
    if std::env::var_os(SIMD_CHILD).is_some() {
        println!("SIMD_LEVEL {}", perception_encoder::bench::simd_level());
    }
}
