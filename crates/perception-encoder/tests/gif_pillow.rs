//! GIF first frames equal Pillow's `convert("RGB")`, byte for byte, on GIFs made by
//! `scripts/make_gif_cases.py`: transparency (its palette colour kept, as Pillow does),
//! animation, grayscale palettes, interlacing. Pillow opens them all as palette images, so the
//! transform resizes them with NEAREST.

use std::path::PathBuf;

use perception_encoder::preprocess::{decode, Resample};
use sha2::{Digest, Sha256};

#[test]
fn first_frames_equal_pillows_convert_rgb() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gif");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut failed = Vec::new();
    for (name, want) in expected["cases"].as_object().unwrap() {
        let img = decode(&std::fs::read(dir.join(name)).unwrap(), u64::MAX).unwrap();
        assert_eq!(want["mode"], "P", "{name}");
        assert_eq!(img.resample, Resample::Nearest, "{name}");
        assert_eq!(want["size"], serde_json::json!([img.pixels.width, img.pixels.height]), "{name}");
        let hash: String = Sha256::digest(&img.to_rgb8().data).iter().map(|b| format!("{b:02x}")).collect();
        if hash != want["rgb_sha256"].as_str().unwrap() {
            failed.push(name.clone());
        }
    }
    assert!(failed.is_empty(), "differ from Pillow: {failed:?}");
}
