//! Shared by the index test files: the `pe` binary, the fixture model's arguments, folders of
//! images, and an index's contents.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pe_index::Index;

/// Run `pe` with `args` (no `PE_MODEL` from the environment).
pub fn pe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pe")).args(args).env_remove("PE_MODEL").output().unwrap()
}

/// `out`'s stdout, asserting it exited 0 (its stderr in the message otherwise).
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A path as a string argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `--config` and `--weights` of the fixtures' tiny model in `dir`.
pub fn model_args(dir: &Path) -> Vec<String> {
    vec!["--config".into(), s(&dir.join("tiny-cls.json")), "--weights".into(), s(&dir.join("tiny-cls.pt"))]
}

/// The fixture images copied into `to`.
pub fn copy_images(fixtures: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixtures.join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Distinct small PNGs (seeded noise), so that every file is new content.
pub fn noise_images(to: &Path, n: usize, seed: u32) {
    std::fs::create_dir_all(to).unwrap();
    let mut seed = 0x2545_f491u32 ^ seed;
    for i in 0..n {
        let img = image::RgbImage::from_fn(24 + (i % 7) as u32, 20, |_, _| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            image::Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
        });
        img.save(to.join(format!("noise-{i:04}.png"))).unwrap();
    }
}

/// What an index holds for one file: content hash, error, embedding.
pub type Entry = (Option<String>, Option<String>, Option<Vec<f32>>);

/// Everything an index holds, by path.
pub fn dump(index_dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let index = Index::open(index_dir).unwrap();
    let cat = index.catalog();
    cat.files_under(&[])
        .unwrap()
        .into_iter()
        .map(|(p, row)| {
            let v = cat.vector_of(&p).unwrap();
            (p, (row.hash, row.error, v))
        })
        .collect()
}
