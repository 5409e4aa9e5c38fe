//! JPEG decoding equals Pillow's (libjpeg-turbo) byte for byte, on JPEGs made by
//! `scripts/make_jpeg_cases.py`: every chroma subsampling, baseline and progressive, restart
//! intervals, odd sizes, grayscale, CMYK and YCCK (Adobe), EXIF orientations (ignored, as Pillow's
//! `Image.open` does). The expected SHA-256 of Pillow's pixels are committed beside the files.

use std::path::PathBuf;

use perception_encoder::preprocess::decode;
use sha2::{Digest, Sha256};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg")
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn decoded_pixels_equal_pillows() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("expected.json")).unwrap()).unwrap();
    let cases = expected["cases"].as_object().unwrap();
    assert!(cases.len() >= 20, "too few cases: {}", cases.len());
    let mut failed = Vec::new();
    for (name, want) in cases {
        let img = decode(&std::fs::read(data().join(name)).unwrap(), u64::MAX).unwrap();
        let channels = match want["mode"].as_str().unwrap() {
            "L" => 1,
            "RGB" => 3,
            "CMYK" => 4,
            other => panic!("{name}: unexpected mode {other}"),
        };
        assert_eq!(img.pixels.channels, channels, "{name}");
        assert_eq!(img.cmyk, channels == 4, "{name}");
        let size = [img.pixels.width as u64, img.pixels.height as u64];
        assert_eq!(want["size"], serde_json::json!(size), "{name}");
        if hex(&img.pixels.data) != want["sha256"].as_str().unwrap() {
            failed.push(format!("{name}: pixels as opened differ"));
        }
        if hex(&img.to_rgb8().data) != want["rgb_sha256"].as_str().unwrap() {
            failed.push(format!("{name}: convert(\"RGB\") differs"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn unsupported_and_damaged_jpegs_are_clear_errors() {
    let good = std::fs::read(data().join("s444.jpg")).unwrap();
    // 12-bit samples: libjpeg-turbo's 8-bit decoder (Pillow's) refuses them too.
    let mut twelve = good.clone();
    let sof = twelve.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    twelve[sof + 4] = 12;
    let err = decode(&twelve, u64::MAX).unwrap_err().to_string();
    assert!(err.contains("precision 12"), "{err}");
    // Damaged entropy-coded data and headers: an error or a picture, never a panic.
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    for at in [2, 20, sos - 8, sos + 2, sos + 20, good.len() / 2] {
        for byte in [0x00, 0xFF, 0x7F] {
            let mut bad = good.clone();
            bad[at] = byte;
            let _ = decode(&bad, u64::MAX);
        }
    }
    let err = decode(&good[..good.len() - 40], u64::MAX).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}
