//! The image transform against the reference's `preprocess.safetensors` (every 8-bit value) and
//! our decoders against Pillow's decoded pixels.

mod common;

use std::collections::HashMap;

use common::{fixture, fixtures, load_tensors};
use perception_encoder::candle_core::{DType, Tensor};
use perception_encoder::preprocess::{decode, DecodedImage, ImageTransform, Pixels, Resample, ResizeMode};

/// 8-bit values `k` of a reference tensor stored as `k / 127.5 - 1` in float16, CHW.
fn steps(t: &Tensor) -> Vec<i32> {
    let v: Vec<f32> = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|x| ((x + 1.0) * 127.5).round() as i32).collect()
}

fn ours_steps(t: &Tensor) -> Vec<i32> {
    steps(t)
}

/// `(image, size, mode)` of every reference tensor.
fn cases(expected: &HashMap<String, Tensor>) -> Vec<(String, String, usize, ResizeMode)> {
    let mut out: Vec<_> = expected
        .keys()
        .map(|k| {
            let parts: Vec<&str> = k.rsplitn(3, '/').collect();
            let mode = if parts[0] == "squash" { ResizeMode::Squash } else { ResizeMode::CenterCrop };
            (k.clone(), parts[2].to_string(), parts[1].parse().unwrap(), mode)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn max_step_diff(a: &[i32], b: &[i32]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).max().unwrap_or(0)
}

#[test]
fn resize_is_pillow_exact_on_pillow_decoded_pixels() {
    let Some(dir) = fixtures() else { return };
    let expected = load_tensors(&fixture(&dir, "preprocess.safetensors"));
    let decoded = load_tensors(&fixture(&dir, "decoded_pixels.safetensors"));
    let mut checked = 0;
    for (key, image, size, mode) in cases(&expected) {
        let Some(px) = decoded.get(&format!("decoded/{image}")) else { continue };
        let (h, w, _) = px.dims3().unwrap();
        let data: Vec<u8> = px.flatten_all().unwrap().to_vec1().unwrap();
        let img = DecodedImage {
            pixels: Pixels { width: w, height: h, channels: 3, data },
            resample: Resample::Bilinear,
            cmyk: false,
            gray16: None,
        };
        let ours = ImageTransform::new(size).with_mode(mode).apply(&img).unwrap();
        assert_eq!(max_step_diff(&ours_steps(&ours), &steps(&expected[&key])), 0, "{key}");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} cases had Pillow-decoded pixels");
}

#[test]
fn whole_transform_from_files() {
    let Some(dir) = fixtures() else { return };
    let expected = load_tensors(&fixture(&dir, "preprocess.safetensors"));
    let mut report = Vec::new();
    for (key, image, size, mode) in cases(&expected) {
        let path = fixture(&dir, &format!("images/{image}"));
        let ours = ImageTransform::new(size).with_mode(mode).load_path(&path).unwrap();
        assert_eq!(ours.dims(), &[3, size, size]);
        let d = max_step_diff(&ours_steps(&ours), &steps(&expected[&key]));
        // PNG, WebP and JPEG (libjpeg-turbo, as Pillow) decode exactly as the reference does.
        assert_eq!(d, 0, "{key}: {d} 8-bit steps from the reference");
        report.push(format!("{key}: {d}"));
    }
    eprintln!("max 8-bit step difference per tensor:\n{}", report.join("\n"));
}

#[test]
fn decoders_against_pillow() {
    let Some(dir) = fixtures() else { return };
    let decoded = load_tensors(&fixture(&dir, "decoded_pixels.safetensors"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&dir, "preprocess.json")).unwrap()).unwrap();
    for (name, px) in &decoded {
        let (kind, image) = name.split_once('/').unwrap();
        let bytes = std::fs::read(fixture(&dir, &format!("images/{image}"))).unwrap();
        let img = decode(&bytes, u64::MAX).unwrap();
        let src = &manifest["sources"][image];
        assert_eq!(img.pixels.width as u64, src["width"].as_u64().unwrap(), "{image}");
        assert_eq!(img.pixels.height as u64, src["height"].as_u64().unwrap(), "{image}");
        let (h, w, _) = px.dims3().unwrap();
        let (y0, x0) = if kind == "decoded" {
            (0, 0)
        } else {
            let o = src["center64_origin_yx"].as_array().unwrap();
            (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize)
        };
        let want: Vec<u8> = px.flatten_all().unwrap().to_vec1().unwrap();
        let ch = img.pixels.channels;
        let mut worst = 0i32;
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let ours = img.pixels.data[((y0 + y) * img.pixels.width + x0 + x) * ch + c] as i32;
                    worst = worst.max((ours - want[(y * w + x) * 3 + c] as i32).abs());
                }
            }
        }
        assert_eq!(worst, 0, "{name}: decoded pixels differ from Pillow's by {worst}");
        eprintln!("{name}: max difference from Pillow's decode {worst}");
    }
}

#[test]
fn bad_images_are_errors() {
    let Some(dir) = fixtures() else { return };
    let t = ImageTransform::new(32);
    let png = std::fs::read(fixture(&dir, "images/synthetic_card.png")).unwrap();
    let jpg = std::fs::read(fixture(&dir, "images/Rock-climbing-Canada-1920x1147.jpg")).unwrap();
    let selfie = std::fs::read(fixture(&dir, "images/selfie_cathedral_peak.jpg")).unwrap();
    let webp = std::fs::read(fixture(&dir, "images/cat.png")).unwrap();
    for (what, bytes) in [("png", &png), ("progressive jpg", &jpg), ("jpg", &selfie), ("webp", &webp)] {
        // Losing the last bytes loses JPEG scan data; a PNG or WebP missing only its trailer
        // still holds every pixel (Pillow reads it too).
        let tail = if what.contains("jpg") { bytes.len() - 2 } else { bytes.len() * 9 / 10 };
        for keep in [0, 10, 100, bytes.len() / 2, tail] {
            assert!(t.load_bytes(&bytes[..keep]).is_err(), "{what} cut to {keep} bytes decoded");
        }
    }
    assert!(t.load_bytes(b"not an image at all").is_err());
    let small_limit = ImageTransform { max_pixels: 1000, ..t };
    let err = small_limit.load_bytes(&png).unwrap_err().to_string();
    assert!(err.contains("301x211") && err.contains("1000"), "{err}");
    let err = t.load_path(dir.join("images/absent.png")).unwrap_err().to_string();
    assert!(err.contains("absent.png"), "{err}");
}

#[test]
fn alpha_and_palette_follow_pillow() {
    // A 2x1 RGBA image: a transparent red pixel and an opaque blue one. Pillow resizes
    // premultiplied, so the transparent red does not bleed into the result.
    let img = DecodedImage {
        pixels: Pixels { width: 2, height: 1, channels: 4, data: vec![255, 0, 0, 0, 0, 0, 255, 255] },
        resample: Resample::Bilinear,
        cmyk: false,
        gray16: None,
    };
    let rgb = ImageTransform::new(1).resize_rgb8(&img).unwrap();
    // premultiplied mean: (0,0,0,0) and (0,0,255,255) -> (0,0,128,128) -> unpremultiplied (0,0,255)
    assert_eq!(rgb.data, vec![0, 0, 255]);
    // Palette images are resized with NEAREST.
    let img = DecodedImage {
        pixels: Pixels { width: 2, height: 1, channels: 3, data: vec![0, 0, 0, 200, 200, 200] },
        resample: Resample::Nearest,
        cmyk: false,
        gray16: None,
    };
    let rgb = ImageTransform::new(1).resize_rgb8(&img).unwrap();
    assert_eq!(rgb.data, vec![200, 200, 200]);
}
