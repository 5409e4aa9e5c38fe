//! Shared by pe-index's model-free tests and its scale bench: a manifest for synthetic
//! vectors and a seeded generator of them.

#![allow(dead_code)]

use std::path::PathBuf;

use pe_index::{Manifest, ModelSpec, TransformSpec};
use perception_encoder::Precision;

/// A manifest for `dim`-dimensional synthetic vectors (no model behind it).
pub fn manifest(dim: usize) -> Manifest {
    Manifest {
        format_version: pe_index::FORMAT_VERSION,
        model: ModelSpec {
            name: "synthetic".into(),
            config: None,
            weights: PathBuf::from("/nonexistent"),
            weights_size: 0,
            weights_mtime_ns: 0,
            weights_blake3: "0".repeat(64),
        },
        precision: Precision::F32,
        layer: -1,
        transform: TransformSpec { size: 32, center_crop: false, gray16_pillow: true, max_pixels: 1 << 20 },
        dim,
    }
}

/// xorshift64: uniform in [-1, 1).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Scale `v` to unit length.
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}
