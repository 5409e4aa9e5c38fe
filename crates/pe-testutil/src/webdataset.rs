//! WebDataset tar shards made from the fixture images, for the shard tests.

use std::path::Path;

/// A tar holding `members` (name, bytes) in order.
pub fn tar_of(members: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Write to `path` a tar of `(key, image file in fixtures/images)` samples, each with a JSON
/// member; `cut` bytes off the end. An image named `-` is a sample whose image is garbage.
pub fn shard(path: &Path, fixtures: &Path, samples: &[(&str, &str)], cut: usize) {
    let mut members = Vec::new();
    for (key, file) in samples {
        if *file == "-" {
            members.push((format!("{key}.jpg"), b"not a JPEG at all".to_vec()));
        } else {
            let ext = file.rsplit('.').next().unwrap();
            members.push((format!("{key}.{ext}"), std::fs::read(fixtures.join("images").join(file)).unwrap()));
        }
        members.push((format!("{key}.json"), format!("{{\"file\": \"{file}\"}}").into_bytes()));
    }
    let bytes = tar_of(members);
    std::fs::write(path, &bytes[..bytes.len() - cut]).unwrap();
}
