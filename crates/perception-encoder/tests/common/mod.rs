//! Shared helpers for the fixture-backed tests: where the fixtures are, and the float32
//! parity rule `max|ours - expected| <= 1e-5 * max(1, max|expected|)`.
#![allow(dead_code)]

use std::collections::HashMap;

use perception_encoder::candle_core::{DType, Device, Tensor};

pub use pe_testutil::fixtures;

/// A fixture file that must exist when the fixtures directory does.
pub fn fixture(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    assert!(p.is_file(), "fixture {} is missing", p.display());
    p
}

/// Every tensor of a safetensors file, on the CPU.
pub fn load_tensors(path: &std::path::Path) -> HashMap<String, Tensor> {
    perception_encoder::candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Largest absolute difference, and the allowed one, between two tensors of equal shape.
pub fn diff(ours: &Tensor, expected: &Tensor) -> (f32, f32) {
    let a: Vec<f32> = ours.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = expected.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let max_abs = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d =
        a.iter().zip(&b).fold(0f32, |m, (x, y)| if (x - y).is_nan() { f32::INFINITY } else { m.max((x - y).abs()) });
    (d, 1e-5 * max_abs.max(1.0))
}

/// Assert float32 parity, naming the tensor and printing both sides' worst element on failure.
pub fn assert_close(name: &str, ours: &Tensor, expected: &Tensor) {
    assert_eq!(ours.dims(), expected.dims(), "{name}: shape differs");
    let (d, tol) = diff(ours, expected);
    assert!(d <= tol, "{name}: max |ours - expected| = {d:e} > {tol:e}");
}
