//! Full-size PE-Core-B16-224 with random weights: a checkpoint in the official layout round-trips
//! through safetensors and loads by preset name, and loading does not hold two copies of the
//! weights (measured as the peak RSS of a child process).

use std::collections::HashMap;
use std::process::Command;

use perception_encoder::candle_core::{safetensors, DType, Device, Tensor};
use perception_encoder::weights::random_state_dict;
use perception_encoder::{Clip, ClipConfig, LoadOptions};

const CHILD_ENV: &str = "PE_TEST_RSS_CHILD";

fn inputs() -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let pixels = Tensor::rand(-1f32, 1f32, (2, 3, 224, 224), &dev).unwrap();
    // "<sot> a photo of a cat . <eot>" padded, and an EOT-truncated row.
    let mut rows = vec![vec![0i64; 32]; 2];
    rows[0][..8].copy_from_slice(&[49406, 320, 1125, 539, 320, 2368, 269, 49407]);
    for (i, v) in rows[1].iter_mut().enumerate() {
        *v = if i == 0 {
            49406
        } else if i == 31 {
            49407
        } else {
            320
        };
    }
    let ids = Tensor::new(rows, &dev).unwrap();
    (pixels, ids)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[test]
fn b16_random_checkpoint_round_trips() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child process only runs `child_loads_b16`
    }
    let cfg = ClipConfig::preset("PE-Core-B16-224").unwrap();
    let tensors = random_state_dict(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(tensors.len(), 457);
    let tmp = tempfile::tempdir().unwrap();
    let path = std::env::var_os("PE_KEEP_B16")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("PE-Core-B16-224.safetensors"));
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    safetensors::save(&map, &path).unwrap();
    drop(map);
    let (pixels, ids) = inputs();
    let direct = Clip::from_tensors(&cfg, tensors, &LoadOptions::default()).unwrap();
    let img_direct = direct.encode_image(&pixels, true).unwrap();
    let txt_direct = direct.encode_text(&ids, true).unwrap();
    drop(direct);

    let file_mb = std::fs::metadata(&path).unwrap().len() as f64 / 1048576.0;
    let loaded = Clip::load(&ClipConfig::preset("PE-Core-B16-224").unwrap(), &path, &LoadOptions::default()).unwrap();
    let img = loaded.encode_image(&pixels, true).unwrap();
    let txt = loaded.encode_text(&ids, true).unwrap();
    assert_eq!(img.dims(), &[2, 1024]);
    assert_eq!(txt.dims(), &[2, 1024]);
    for (name, t) in [("image", &img), ("text", &txt)] {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name} embedding has non-finite values");
        assert!(v.iter().any(|&x| x != 0.0), "{name} embedding is all zero");
    }
    let same = |a: &Tensor, b: &Tensor| {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    };
    assert_eq!(same(&img, &img_direct), 0.0, "loaded weights differ from the saved ones");
    assert_eq!(same(&txt, &txt_direct), 0.0);
    // The two images differ, so their embeddings must too.
    assert!(same(&img.get(0).unwrap(), &img.get(1).unwrap()) > 1e-3);
    drop(loaded);

    // Peak RSS of a fresh process that only loads the file: one copy of the weights plus the
    // runtime, not two copies.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_loads_b16", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PEAK_RSS_MB ").map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no RSS line in {stdout}"));
    let peak: f64 = line.trim().parse().unwrap();
    eprintln!("B16 checkpoint {file_mb:.0} MB; peak RSS of a process that loads it: {peak:.0} MB");
    assert!(peak < file_mb * 1.35 + 150.0, "loading {file_mb:.0} MB of weights peaked at {peak:.0} MB");
}

#[test]
fn child_loads_b16() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let cfg = ClipConfig::preset("PE-Core-B16-224").unwrap();
    let model = Clip::load(&cfg, path, &LoadOptions::default()).unwrap();
    assert_eq!(model.config().name, "PE-Core-B16-224");
    println!("PEAK_RSS_MB {:.1}", peak_rss_mb());
}
