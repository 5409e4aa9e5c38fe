//! Checkpoint loading: key layout, error reporting, stored dtypes, vision-only files.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use common::{assert_close, fixture, fixtures, load_tensors};
use perception_encoder::candle_core::{safetensors, DType, Device, Tensor};
use perception_encoder::weights::{official_shapes, Checkpoint};
use perception_encoder::{Clip, ClipConfig, Error, LoadOptions};

fn cfg(dir: &Path, name: &str) -> ClipConfig {
    ClipConfig::from_json_file(fixture(dir, &format!("{name}.json"))).unwrap()
}

fn native_embedding(model: &Clip, dir: &Path, name: &str) -> (Tensor, Tensor) {
    let t = load_tensors(&fixture(dir, &format!("{name}.expected.safetensors")));
    (model.encode_image(&t["pixels_native"], false).unwrap(), t["image_embed_native"].clone())
}

#[test]
fn official_key_list_matches_the_reference() {
    let Some(dir) = fixtures() else { return };
    for name in ["tiny-cls", "tiny-nocls"] {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&dir, &format!("{name}.json"))).unwrap()).unwrap();
        let mut reference: Vec<(String, Vec<usize>)> = json["keys"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
            .collect();
        reference.sort();
        assert_eq!(official_shapes(&cfg(&dir, name)), reference, "{name}");
        assert_eq!(reference.len(), json["num_tensors"].as_u64().unwrap() as usize);
    }
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) {
    safetensors::save(tensors, path).unwrap();
}

#[test]
fn missing_tensors_are_all_listed() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut t = load_tensors(&fixture(&dir, "tiny-cls.safetensors"));
    t.remove("visual.ln_post.bias");
    t.remove("transformer.resblocks.1.mlp.c_fc.weight");
    let p = tmp.path().join("partial.safetensors");
    save(&t, &p);
    match Clip::load(&cfg(&dir, "tiny-cls"), &p, &LoadOptions::default()) {
        Err(Error::MissingTensors { keys, .. }) => {
            assert_eq!(
                keys,
                vec!["transformer.resblocks.1.mlp.c_fc.weight".to_string(), "visual.ln_post.bias".to_string()]
            )
        }
        other => panic!("expected MissingTensors, got {other:?}"),
    }
}

#[test]
fn shape_mismatch_names_the_key_and_both_shapes() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut t = load_tensors(&fixture(&dir, "tiny-cls.safetensors"));
    t.insert("visual.proj".into(), Tensor::zeros((64, 31), DType::F32, &Device::Cpu).unwrap());
    let p = tmp.path().join("wrong.safetensors");
    save(&t, &p);
    let err = Clip::load(&cfg(&dir, "tiny-cls"), &p, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { key, expected, found }
        if key == "visual.proj" && expected == &vec![64, 32] && found == &vec![64, 31]),
        "{err}"
    );
    assert!(err.to_string().contains("visual.proj"));
}

/// Another preset's checkpoint is named as that preset (with both geometries), not answered
/// with hundreds of key names.
#[test]
fn another_presets_checkpoint_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t16 = ClipConfig::preset("PE-Core-T16-384").unwrap();
    // Every vision tensor of T16 (zeros in f16: shapes are what is checked), 11 MB.
    let t: HashMap<String, Tensor> = official_shapes(&t16)
        .into_iter()
        .filter(|(k, _)| k.starts_with("visual."))
        .map(|(k, shape)| (k, Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap()))
        .collect();
    let p = tmp.path().join("t16.safetensors");
    save(&t, &p);
    let b16 = ClipConfig::preset("PE-Core-B16-224").unwrap();
    let err = Clip::load(&b16, &p, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::WrongModel { .. }), "{msg}");
    assert!(msg.contains("looks like PE-Core-T16-384 (width 192, 12 layers, patch 16)"), "{msg}");
    assert!(msg.contains("not PE-Core-B16-224 (width 768, 12 layers, patch 16)"), "{msg}");
    assert!(msg.len() < 400, "{msg}");
}

#[test]
fn unexpected_tensors_are_reported_not_fatal() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut t = load_tensors(&fixture(&dir, "tiny-cls.safetensors"));
    t.insert("visual.extra_head.weight".into(), Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap());
    let p = tmp.path().join("extra.safetensors");
    save(&t, &p);
    let c = cfg(&dir, "tiny-cls");
    let ckpt = Checkpoint::open(&p).unwrap();
    assert_eq!(ckpt.check(&c).unwrap(), vec!["visual.extra_head.weight".to_string()]);
    let model = Clip::load(&c, &p, &LoadOptions::default()).unwrap();
    let (ours, expected) = native_embedding(&model, &dir, "tiny-cls");
    assert_close("with an extra tensor", &ours, &expected);
}

#[test]
fn corrupt_and_truncated_files_are_errors_not_panics() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&dir, "tiny-cls");
    for src in ["tiny-cls.pt", "tiny-cls.safetensors", "tiny-cls.openclip.safetensors"] {
        let bytes = std::fs::read(fixture(&dir, src)).unwrap();
        for keep in [0, 7, 8, 100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 100, bytes.len() - 1] {
            let p = tmp.path().join(format!("cut-{keep}-{src}"));
            std::fs::write(&p, &bytes[..keep]).unwrap();
            let r = Clip::load(&c, &p, &LoadOptions::default());
            assert!(r.is_err(), "{src} cut to {keep} bytes loaded");
        }
    }
    let p = tmp.path().join("text.pt");
    std::fs::write(&p, "this is not a checkpoint at all").unwrap();
    let err = Clip::load(&c, &p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("unrecognized format"), "{err}");
    let err = Clip::load(&c, tmp.path().join("absent.pt"), &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("absent.pt"), "{err}");
}

/// Rewrite a `.pt` archive, transforming `data.pkl` and every storage entry.
fn rewrite_pt(src: &Path, dst: &Path, pkl: impl Fn(Vec<u8>) -> Vec<u8>, storage: impl Fn(Vec<u8>) -> Vec<u8>) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        let buf = if name.ends_with("/data.pkl") {
            pkl(buf)
        } else if name.contains("/data/") {
            storage(buf)
        } else {
            buf
        };
        zout.start_file(name, opts).unwrap();
        zout.write_all(&buf).unwrap();
    }
    zout.finish().unwrap();
}

fn replace(hay: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn pt_with_half_and_bfloat16_storages() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&dir, "tiny-cls");
    let f32s = load_tensors(&fixture(&dir, "tiny-cls.safetensors"));
    for (storage, dtype) in [("HalfStorage", DType::F16), ("BFloat16Storage", DType::BF16)] {
        let p = tmp.path().join(format!("tiny-cls-{storage}.pt"));
        rewrite_pt(
            &fixture(&dir, "tiny-cls.pt"),
            &p,
            |pkl| replace(pkl, b"torch\nFloatStorage\n", format!("torch\n{storage}\n").as_bytes()),
            |bytes| {
                let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                match dtype {
                    DType::F16 => t.to_vec1::<half::f16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
                    _ => t.to_vec1::<half::bf16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
                }
            },
        );
        let loaded = Clip::load(&c, &p, &LoadOptions::default()).unwrap();
        // The same weights rounded to the storage dtype and widened back must give identical outputs.
        let rounded: Vec<(String, Tensor)> =
            f32s.iter().map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap())).collect();
        let reference = Clip::from_tensors(&c, rounded, &LoadOptions::default()).unwrap();
        let (ours, expected) = native_embedding(&loaded, &dir, "tiny-cls");
        let (theirs, _) = native_embedding(&reference, &dir, "tiny-cls");
        let d = common::diff(&ours, &theirs).0;
        assert_eq!(d, 0.0, "{storage}: loaded weights differ from the rounded ones");
        let rel = common::diff(&ours, &expected).0 / 2.3;
        assert!(rel < 5e-2, "{storage}: {rel} from the float32 reference");
    }
}

#[test]
fn safetensors_in_f16_bf16_f64() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&dir, "tiny-nocls");
    let f32s = load_tensors(&fixture(&dir, "tiny-nocls.safetensors"));
    for dtype in [DType::F16, DType::BF16, DType::F64] {
        let cast: HashMap<String, Tensor> = f32s.iter().map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap())).collect();
        let p = tmp.path().join(format!("tiny-nocls-{dtype:?}.safetensors"));
        save(&cast, &p);
        let loaded = Clip::load(&c, &p, &LoadOptions::default()).unwrap();
        let rounded = cast.into_iter().map(|(k, t)| (k, t.to_dtype(DType::F32).unwrap())).collect();
        let reference = Clip::from_tensors(&c, rounded, &LoadOptions::default()).unwrap();
        let (ours, _) = native_embedding(&loaded, &dir, "tiny-nocls");
        let (theirs, _) = native_embedding(&reference, &dir, "tiny-nocls");
        assert_eq!(common::diff(&ours, &theirs).0, 0.0, "{dtype:?}");
    }
}

#[test]
fn vision_only_models_load_clip_and_bare_vision_files() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir, "tiny-cls");
    c.text = None;
    // A full CLIP checkpoint feeds a vision-only model; its text tower is dropped silently.
    let ckpt = Checkpoint::open(fixture(&dir, "tiny-cls.pt")).unwrap();
    assert!(ckpt.check(&c).unwrap().is_empty());
    let model = Clip::load(&c, fixture(&dir, "tiny-cls.pt"), &LoadOptions::default()).unwrap();
    assert!(model.text().is_none());
    assert!(model.encode_text(&Tensor::zeros((1, 4), DType::I64, &Device::Cpu).unwrap(), false).is_err());
    let (ours, expected) = native_embedding(&model, &dir, "tiny-cls");
    assert_close("vision-only from CLIP .pt", &ours, &expected);
    // A vision-only file whose keys lack the `visual.` prefix.
    let bare: HashMap<String, Tensor> = load_tensors(&fixture(&dir, "tiny-cls.safetensors"))
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("visual.").map(|k| (k.to_string(), t)))
        .collect();
    let p = tmp.path().join("vision-only.safetensors");
    save(&bare, &p);
    let model = Clip::load(&c, &p, &LoadOptions::default()).unwrap();
    let (ours, expected) = native_embedding(&model, &dir, "tiny-cls");
    assert_close("vision-only bare file", &ours, &expected);
}

#[test]
fn evil_pickle_is_refused() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("evil.pt");
    rewrite_pt(
        &fixture(&dir, "tiny-cls.pt"),
        &p,
        |_| b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.".to_vec(),
        |b| b,
    );
    let err = Clip::load(&cfg(&dir, "tiny-cls"), &p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("os.system"), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let Some(dir) = fixtures() else { return };
    let model = Clip::load(&cfg(&dir, "tiny-cls"), fixture(&dir, "tiny-cls.pt"), &LoadOptions::default()).unwrap();
    let dev = Device::Cpu;
    assert!(model.encode_image(&Tensor::zeros((1, 3, 7, 32), DType::F32, &dev).unwrap(), true).is_err());
    assert!(model.encode_image(&Tensor::zeros((0, 3, 32, 32), DType::F32, &dev).unwrap(), true).is_err());
    assert!(model.encode_image(&Tensor::zeros((1, 4, 32, 32), DType::F32, &dev).unwrap(), true).is_err());
    assert!(model.encode_text(&Tensor::new(&[[49408i64]], &dev).unwrap(), true).is_err());
    assert!(model.encode_text(&Tensor::zeros((1, 33), DType::I64, &dev).unwrap(), true).is_err());
    assert!(model.forward_features(&Tensor::zeros((1, 3, 32, 32), DType::F32, &dev).unwrap(), 3, true, false).is_err());
    assert!(model.encode_video(&Tensor::zeros((1, 3, 32, 32), DType::F32, &dev).unwrap(), true).is_err());
}

#[test]
fn truncate_keeps_the_first_blocks() {
    let Some(dir) = fixtures() else { return };
    let mut model = Clip::load(&cfg(&dir, "tiny-cls"), fixture(&dir, "tiny-cls.pt"), &LoadOptions::default()).unwrap();
    let t = load_tensors(&fixture(&dir, "tiny-cls.expected.safetensors"));
    model.truncate(1).unwrap();
    assert_eq!(model.vision_config().layers, 2);
    // After truncation the last block is the old block 1.
    let ours = model.forward_features(&t["pixels_native"], -1, true, false).unwrap();
    assert_close("truncate(1) then layer -1", &ours, &t["features_native_layer1_norm1_strip0"]);
}

#[test]
fn convert_to_openclip_matches_the_reexport_and_round_trips() {
    use perception_encoder::weights::{convert, CheckpointLayout};
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-cls.openclip.safetensors");
    let ckpt = Checkpoint::open(fixture(&dir, "tiny-cls.pt")).unwrap();
    assert_eq!(convert(&ckpt, &out, CheckpointLayout::OpenClip, DType::F32).unwrap(), 88);
    let ours = load_tensors(&out);
    let reference = load_tensors(&fixture(&dir, "tiny-cls.openclip.safetensors"));
    let mut a: Vec<&String> = ours.keys().collect();
    let mut b: Vec<&String> = reference.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (k, t) in &reference {
        assert_eq!(common::diff(&ours[k], t).0, 0.0, "{k}");
        assert_eq!(ours[k].dims(), t.dims(), "{k}");
    }
    // Back to the official layout in bf16: loads, and stays close to the float32 reference.
    let back = tmp.path().join("tiny-cls.bf16.safetensors");
    convert(&Checkpoint::open(&out).unwrap(), &back, CheckpointLayout::Official, DType::BF16).unwrap();
    let model = Clip::load(&cfg(&dir, "tiny-cls"), &back, &LoadOptions::default()).unwrap();
    let (ours, expected) = native_embedding(&model, &dir, "tiny-cls");
    assert!(common::diff(&ours, &expected).0 < 0.1);
}

/// Repack a `.pt` archive under another root folder, 64-byte aligned like `torch.save`, with
/// optional extra entries (name under the root, bytes, deflated).
fn repack(src: &Path, dst: &Path, root: &str, extra: &[(&str, Vec<u8>)]) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let rel = name.split_once('/').unwrap().1.to_string();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        zout.start_file(format!("{root}/{rel}"), stored).unwrap();
        zout.write_all(&buf).unwrap();
    }
    let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (rel, bytes) in extra {
        zout.start_file(format!("{root}/{rel}"), deflated).unwrap();
        zout.write_all(bytes).unwrap();
    }
    zout.finish().unwrap();
}

#[test]
fn archive_layouts_torch_writes_are_read() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&dir, "tiny-cls");
    let reference = Clip::load(&c, fixture(&dir, "tiny-cls.pt"), &LoadOptions::default()).unwrap();
    let (want, _) = native_embedding(&reference, &dir, "tiny-cls");
    // Root folders of every length around the one that broke the zip crate's offset detection.
    for len in [1, 20, 21, 22, 40] {
        let p = tmp.path().join(format!("root{len}.pt"));
        repack(&fixture(&dir, "tiny-cls.pt"), &p, &"r".repeat(len), &[]);
        let model = Clip::load(&c, &p, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("root folder of {len} characters: {e}"));
        let (got, _) = native_embedding(&model, &dir, "tiny-cls");
        assert_close(&format!("root folder of {len}"), &got, &want);
    }
    // An unused compressed entry is never inflated: here its data is corrupt (CRC mismatch), so
    // an eager reader fails; the checkpoint still loads.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let p = tmp.path().join("extra.pt");
    repack(&fixture(&dir, "tiny-cls.pt"), &p, "archive", &[("data/unused", noise)]);
    let mut bytes = std::fs::read(&p).unwrap();
    let name = b"archive/data/unused";
    // The local header comes first; its compressed data follows the name (no extra field).
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    bytes[at + 2000] ^= 0xFF;
    std::fs::write(&p, &bytes).unwrap();
    Clip::load(&c, &p, &LoadOptions::default()).expect("an unused corrupt entry stopped the load");
}

/// A minimal `.pt` holding one tensor `logit_scale` with the given size and stride pickled
/// as written (LONG1 integers) over a storage of 4 float32 elements.
fn view_pt(path: &Path, shape: &[u64], stride: &[u64]) {
    let long = |v: u64| {
        let mut b = vec![0x8a, 8];
        b.extend_from_slice(&v.to_le_bytes());
        b
    };
    let tuple = |xs: &[u64]| {
        let mut b = vec![b'('];
        xs.iter().for_each(|&x| b.extend(long(x)));
        b.push(b't');
        b
    };
    let mut p = b"\x80\x02}X\x0b\x00\x00\x00logit_scalectorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    p.extend_from_slice(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ",
    );
    p.extend_from_slice(b"K\x00");
    p.extend(tuple(shape));
    p.extend(tuple(stride));
    p.extend_from_slice(b"\x89)tRs.");
    let mut zout = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zout.start_file("archive/data.pkl", stored).unwrap();
    zout.write_all(&p).unwrap();
    zout.start_file("archive/data/0", stored).unwrap();
    zout.write_all(&[0u8; 16]).unwrap();
    zout.finish().unwrap();
}

#[test]
fn absurd_views_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("view.pt");
    view_pt(&p, &[2, 2], &[2, 1]);
    let t = Checkpoint::open(&p).unwrap().tensor("logit_scale", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 2], "the well-formed view reads");
    // A stride-0 view claiming 2^40 elements (4 TB as float32), and strides whose bounds sum
    // wraps around 2^64.
    for (shape, stride) in [(vec![1u64 << 40], vec![0u64]), (vec![4, 4], vec![3 << 61, 3 << 61])] {
        view_pt(&p, &shape, &stride);
        let err = match Checkpoint::open(&p) {
            Err(e) => e.to_string(),
            Ok(ck) => ck.tensor("logit_scale", DType::F32, &Device::Cpu).unwrap_err().to_string(),
        };
        assert!(err.contains("outside the file"), "{shape:?}/{stride:?}: {err}");
    }
}

#[test]
fn nan_weights_are_an_error_not_null_embeddings() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut t = load_tensors(&fixture(&dir, "tiny-cls.safetensors"));
    let w = &t["visual.ln_post.weight"];
    let nan = Tensor::full(f32::NAN, w.dims(), &Device::Cpu).unwrap();
    t.insert("visual.ln_post.weight".into(), nan);
    let p = tmp.path().join("nan.safetensors");
    save(&t, &p);
    let model = Clip::load(&cfg(&dir, "tiny-cls"), &p, &LoadOptions::default()).unwrap();
    let pixels = &load_tensors(&fixture(&dir, "tiny-cls.expected.safetensors"))["pixels_native"];
    match model.encode_image(pixels, true) {
        Err(Error::NonFinite("vision")) => {}
        other => panic!("expected NonFinite, got {other:?}"),
    }
}
