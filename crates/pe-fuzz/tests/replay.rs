//! Every committed corpus file (the seeds and what the fuzzer kept, crashes found included)
//! through its target: none may panic. This is how CI guards against the regressions fuzzing
//! found, without running a fuzzer.

use std::path::PathBuf;

#[test]
fn corpora_replay_without_panics() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora");
    let mut total = 0;
    for (name, target) in pe_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {name}");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", f.display());
        }
        total += files.len();
    }
    eprintln!("{total} corpus files replayed");
}

/// The seeds are valid inputs (fuzzing starts from the accepted paths, not only from errors).
#[test]
fn seeds_are_valid_inputs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpora");
    for kind in ["pt", "safetensors"] {
        for seed in ["float", "half-long", "f32-bf16", "f16"] {
            let p = root.join(kind).join(format!("seed-{seed}"));
            if p.exists() {
                let ck = perception_encoder::weights::Checkpoint::open(&p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(!ck.shapes().is_empty());
            }
        }
    }
    for seed in ["vision", "clip"] {
        let text = std::fs::read_to_string(root.join("config").join(format!("seed-{seed}"))).unwrap();
        perception_encoder::ClipConfig::from_json_str(&text).unwrap();
    }
    for f in std::fs::read_dir(root.join("request")).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("seed-") {
            assert_eq!(pe_fuzz::request_status(&std::fs::read(&p).unwrap()), Some(200), "{}", p.display());
        }
    }
    for f in std::fs::read_dir(root.join("image")).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("seed-") {
            perception_encoder::preprocess::decode(&std::fs::read(&p).unwrap(), 1 << 22)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}
