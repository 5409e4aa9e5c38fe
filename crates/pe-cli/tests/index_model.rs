//! Where `pe index` and `pe search` get their model: loaded only when an update has content to
//! embed, and, for an index made on another machine, found in this machine's hub cache.

mod common;

use std::path::Path;
use std::process::Command;

use common::{copy_images, dump, noise_images, ok, pe, s};
use pe_index::Index;
use pe_testutil::fixtures;

/// The model is loaded only when a file needs embedding: with its weights gone, a re-run that
/// finds nothing new (or only known content under a new name) and `search --update` by an
/// indexed image still work; a new file then fails naming the weights, losing nothing.
#[test]
fn an_update_with_nothing_new_does_not_load_the_model() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    let weights = tmp.path().join("tiny-cls.pt");
    std::fs::copy(fx.join("tiny-cls.pt"), &weights).unwrap();
    let dir = tmp.path().join("idx");
    let config = s(&fx.join("tiny-cls.json"));
    let index = || pe(&["index", &s(&photos), "--index", &s(&dir)]);
    ok(&pe(&["index", &s(&photos), "--index", &s(&dir), "--config", &config, "--weights", &s(&weights)]));
    let files = Index::open(&dir).unwrap().catalog().counts().unwrap().0;
    let before = dump(&dir);

    let away = tmp.path().join("elsewhere.pt");
    std::fs::rename(&weights, &away).unwrap();
    let out = index();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(" 0 embedded, 0 reused, "), "{out:?}");
    std::fs::copy(photos.join("dog.png"), photos.join("dog-again.png")).unwrap();
    let out = index();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(" 0 embedded, 1 reused, "), "{out:?}");
    let dog = s(&photos.join("dog.png"));
    let hits = ok(&pe(&["search", "--update", "--index", &s(&dir), "--image", &dog, "--top", "2", "--paths-only"]));
    let mut top: Vec<&str> = hits.lines().collect();
    top.sort();
    assert_eq!(top, [s(&photos.join("dog-again.png")), dog.clone()], "{hits}");

    noise_images(&photos.join("new"), 1, 3);
    let out = index();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&s(&weights)) && err.contains("cannot be read"), "the error names the weights: {err}");
    assert_eq!(Index::open(&dir).unwrap().catalog().counts().unwrap().0, files + 1, "only dog-again.png was added");
    let after = dump(&dir);
    for (path, entry) in &before {
        assert_eq!(after.get(path), Some(entry), "{} changed", path.display());
    }

    std::fs::rename(&away, &weights).unwrap();
    let out = index();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(" 1 embedded, 0 reused, "), "{out:?}");
}

/// A preset's random checkpoint as safetensors bytes (the loader reads formats by content, so
/// the hub may serve them under the official `.pt` name).
fn random_preset_bytes(name: &str, seed: u64) -> Vec<u8> {
    use perception_encoder::candle_core::{safetensors, DType, Device, Tensor};
    let cfg = perception_encoder::ClipConfig::preset(name).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        perception_encoder::weights::random_state_dict(&cfg, seed, DType::F32, &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    safetensors::save(&tensors, tmp.path()).unwrap();
    std::fs::read(tmp.path()).unwrap()
}

/// An index made on another machine names weights this one lacks: a preset's copy in this
/// machine's hub cache is used when its BLAKE3 is the recorded one (and the index re-pointed
/// to it), and refused when it is other weights.
#[test]
fn an_index_from_another_machine_finds_the_preset_in_this_hub_cache() {
    let Some(fx) = fixtures() else { return };
    let url = "/facebook/PE-Core-T16-384/resolve/main/PE-Core-T16-384.pt".to_string();
    let (endpoint, _) = pe_testutil::hub::serve(
        vec![(url.clone(), random_preset_bytes("PE-Core-T16-384", 1))],
        pe_testutil::hub::Mode::Normal,
    );
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::copy(fx.join("images/cat.png"), photos.join("cat.png")).unwrap();
    let idx = tmp.path().join("idx");
    let run = |args: &[&str], home: &Path, endpoint: &str| {
        Command::new(env!("CARGO_BIN_EXE_pe"))
            .args(args)
            .env("HF_HOME", home)
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HUB_ETAG_TIMEOUT", "1")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("PE_MODEL")
            .output()
            .unwrap()
    };
    let (first, second, third) = (tmp.path().join("home1"), tmp.path().join("home2"), tmp.path().join("home3"));
    ok(&run(&["index", &s(&photos), "--index", &s(&idx), "--model", "PE-Core-T16-384"], &first, &endpoint));
    let before = ok(&run(&["search", "--index", &s(&idx), "--json", "a cat"], &first, &endpoint));
    std::fs::remove_dir_all(&first).unwrap();

    let out = run(&["search", "--index", &s(&idx), "--json", "a cat"], &second, &endpoint);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(ok(&out), before, "{err}");
    assert!(err.contains("pe: the index now uses"), "{err}");
    let manifest = std::fs::read_to_string(idx.join("manifest.json")).unwrap();
    assert!(manifest.contains(&s(&std::fs::canonicalize(&second).unwrap())), "{manifest}");

    // Another hub whose file has other weights: refused, naming the reason.
    let (other, _) =
        pe_testutil::hub::serve(vec![(url, random_preset_bytes("PE-Core-T16-384", 2))], pe_testutil::hub::Mode::Normal);
    std::fs::remove_dir_all(&second).unwrap();
    let out = run(&["search", "--index", &s(&idx), "a cat"], &third, &other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has other weights than those the index was built with"), "{err}");
}
