//! Every input kind the transform accepts, written at test time from the fixtures' test card:
//! lossless re-encodings must give the PNG's exact result, and each colour model must follow
//! Pillow's rule (gray replicated, alpha dropped after a premultiplied resize, 16-bit high
//! byte, palette images resized with NEAREST).

mod common;

use std::io::Cursor;

use common::{fixture, fixtures};
use image::{DynamicImage, ImageFormat};
use perception_encoder::preprocess::{decode, resize, DecodedImage, ImageTransform, Pixels, Resample};

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn rgb8(t: &ImageTransform, bytes: &[u8]) -> Vec<u8> {
    t.resize_rgb8(&decode(bytes, u64::MAX).unwrap()).unwrap().data
}

#[test]
fn formats_and_colour_models() {
    let Some(dir) = fixtures() else { return };
    let png = std::fs::read(fixture(&dir, "images/synthetic_card.png")).unwrap();
    let card = image::load_from_memory(&png).unwrap();
    let t = ImageTransform::new(224);
    let reference = rgb8(&t, &png);

    // Lossless containers of the same RGB pixels.
    for format in [ImageFormat::Bmp, ImageFormat::Tiff] {
        assert_eq!(rgb8(&t, &encode(&card, format)), reference, "{format:?}");
    }
    // 16-bit RGB with v * 257 keeps v as its high byte.
    let sixteen = DynamicImage::ImageRgb16(card.to_rgb16());
    assert_eq!(rgb8(&t, &encode(&sixteen, ImageFormat::Png)), reference, "16-bit PNG");
    // Opaque RGBA is resized premultiplied, which changes nothing at alpha 255.
    let rgba = DynamicImage::ImageRgba8(card.to_rgba8());
    assert_eq!(rgb8(&t, &encode(&rgba, ImageFormat::Png)), reference, "RGBA PNG");

    // Grayscale: resized as one channel, then replicated.
    let gray = card.to_luma8();
    let out = rgb8(&t, &encode(&DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png));
    let plane =
        Pixels { width: gray.width() as usize, height: gray.height() as usize, channels: 1, data: gray.into_raw() };
    let want = resize::resize_bilinear(&plane, 224, 224).data;
    assert_eq!(out, want.iter().flat_map(|&v| [v, v, v]).collect::<Vec<_>>(), "grayscale");

    // Palette PNG: Pillow opens it as "P" and resizes with NEAREST.
    let small = card.resize_exact(40, 30, image::imageops::FilterType::Nearest).to_rgb8();
    let mut palette = Vec::new();
    let mut index = Vec::new();
    for px in small.pixels() {
        let c = [px[0] & 0xC0, px[1] & 0xC0, px[2] & 0xC0];
        let i = match palette.chunks(3).position(|p: &[u8]| p == c) {
            Some(i) => i,
            None => {
                palette.extend_from_slice(&c);
                palette.len() / 3 - 1
            }
        };
        index.push(i as u8);
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 40, 30);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette.clone());
        enc.write_header().unwrap().write_image_data(&index).unwrap();
    }
    let decoded = decode(&bytes, u64::MAX).unwrap();
    assert_eq!(decoded.resample, Resample::Nearest);
    let expanded: Vec<u8> = index.iter().flat_map(|&i| palette[i as usize * 3..i as usize * 3 + 3].to_vec()).collect();
    let want = resize::resize_nearest(&Pixels { width: 40, height: 30, channels: 3, data: expanded }, 224, 224);
    assert_eq!(t.resize_rgb8(&decoded).unwrap().data, want.data, "palette PNG");

    // GIF (a palette format in Pillow): first frame, NEAREST.
    let gif = encode(&DynamicImage::ImageRgba8(card.to_rgba8()), ImageFormat::Gif);
    let g = decode(&gif, u64::MAX).unwrap();
    assert_eq!((g.pixels.width, g.pixels.height, g.resample), (301, 211, Resample::Nearest));
    assert_eq!(t.apply(&g).unwrap().dims(), &[3, 224, 224]);
}

#[test]
fn transparent_pixels_do_not_bleed() {
    // Half transparent white, half opaque black; premultiplied resizing keeps the edge dark
    // where a straight resize would mix in the invisible white.
    let mut data = Vec::new();
    for x in 0..8 {
        data.extend_from_slice(if x < 4 { &[255, 255, 255, 0] } else { &[0, 0, 0, 255] });
    }
    let img = DecodedImage {
        pixels: Pixels { width: 8, height: 1, channels: 4, data },
        resample: Resample::Bilinear,
        cmyk: false,
        gray16: None,
    };
    let out = ImageTransform::new(4).resize_rgb8(&img).unwrap();
    // Every visible pixel is black after unpremultiplying.
    assert!(out.data.iter().all(|&v| v == 0), "{:?}", out.data);
}

/// A thin image under centre crop would resize its long side far past the input size: refused
/// against the pixel limit instead of allocated.
#[test]
fn centre_crop_of_a_thin_image_is_bounded() {
    let img = DecodedImage {
        pixels: Pixels { width: 1, height: 2000, channels: 3, data: vec![128; 6000] },
        resample: Resample::Bilinear,
        cmyk: false,
        gray16: None,
    };
    let t = ImageTransform::new(5000).with_mode(perception_encoder::preprocess::ResizeMode::CenterCrop);
    let err = t.apply(&img).unwrap_err().to_string();
    assert!(err.contains("5000x10000000") && err.contains("limit"), "{err}");
}

/// 16-bit grayscale follows the reference by default (Pillow resizes `I;16` in 16 bits, then
/// `convert("RGB")` clips to 255), byte for byte on `scripts/make_gray16_cases.py`'s PNGs;
/// `Gray16::HighByte` is the named alternative that keeps the picture visible.
#[test]
fn gray16_is_pillows_by_default_and_high_byte_on_request() {
    use perception_encoder::preprocess::Gray16;
    use sha2::{Digest, Sha256};
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gray16");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for (name, sizes) in expected["cases"].as_object().unwrap() {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let img = decode(&bytes, u64::MAX).unwrap();
        assert!(img.gray16.is_some(), "{name}");
        for (size, want) in sizes.as_object().unwrap() {
            let t = ImageTransform::new(size.parse().unwrap());
            let got = t.resize_rgb8(&img).unwrap();
            let hash: String = Sha256::digest(&got.data).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hash, want.as_str().unwrap(), "{name} at {size}");
        }
        let high = ImageTransform { gray16: Gray16::HighByte, ..ImageTransform::new(16) }.resize_rgb8(&img).unwrap();
        let pillow = ImageTransform::new(16).resize_rgb8(&img).unwrap();
        if name == "wide_range.png" {
            assert_ne!(high.data, pillow.data, "{name}: the options should differ");
        }
    }
}

/// Found by fuzzing: a PNG whose palette is not whole RGB entries made the `png` crate panic
/// (slice index out of range); it is now a clear error.
#[test]
fn a_partial_png_palette_is_an_error_not_a_panic() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pe-fuzz/corpora/image/crash-id-000000");
    let err = decode(&std::fs::read(path).unwrap(), 1 << 22).unwrap_err().to_string();
    assert!(err.contains("PLTE") && err.contains("44 bytes"), "{err}");
}
