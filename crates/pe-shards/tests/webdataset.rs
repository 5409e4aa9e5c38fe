//! WebDataset shards written with the tar crate's builder: samples come back grouped by key,
//! and bad members, duplicate keys and truncated files are reported per sample.

use pe_shards::{Sample, Samples};

fn shard(members: &[(&str, &[u8])]) -> Vec<u8> {
    pe_testutil::webdataset::tar_of(members.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect())
}

fn read(bytes: &[u8]) -> Vec<Result<Sample, String>> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("00000.tar");
    std::fs::write(&p, bytes).unwrap();
    let mut out = Vec::new();
    Samples::open(&p).unwrap().for_each(|s| out.push(s.map_err(|e| e.to_string()))).unwrap();
    out
}

#[test]
fn samples_group_by_key_and_problems_are_per_sample() {
    let tar = shard(&[
        ("000.jpg", b"jpeg-0"),
        ("000.json", b"{\"url\": \"a\"}"),
        ("000.txt", b"a dog"),
        ("001.png", b"png-1"),
        ("002.json", b"{}"), // no image
        ("sub/003.webp", b"webp-3"),
        ("000.jpg", b"again"), // the key again, later
        ("004.tar.gz", b"x"),  // extension after the first dot: "tar.gz", not an image
    ]);
    let got = read(&tar);
    assert_eq!(got.len(), 6, "{got:?}");
    let s0 = got[0].as_ref().unwrap();
    assert_eq!((s0.key.as_str(), s0.image.0.as_str(), s0.image.1.as_slice()), ("000", "jpg", &b"jpeg-0"[..]));
    assert_eq!(s0.json.as_deref(), Some(&b"{\"url\": \"a\"}"[..]));
    assert_eq!(s0.caption.as_deref(), Some("a dog"));
    assert_eq!(got[1].as_ref().unwrap().key, "001");
    assert!(got[2].as_ref().unwrap_err().contains("sample 002: no image"), "{:?}", got[2]);
    assert_eq!(got[3].as_ref().unwrap().key, "sub/003");
    assert!(got[4].as_ref().unwrap_err().contains("sample 000: the key appears twice"), "{:?}", got[4]);
    assert!(got[5].as_ref().unwrap_err().contains("sample 004: no image"), "{:?}", got[5]);
}

#[test]
fn a_truncated_shard_keeps_what_came_before() {
    let big = vec![7u8; 5000];
    let tar = shard(&[("000.jpg", b"jpeg-0"), ("001.jpg", &big), ("002.jpg", b"jpeg-2")]);
    // Cut inside 001's data.
    let got = read(&tar[..1024 + 2048]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].as_ref().unwrap().key, "000");
    assert!(got[1].as_ref().unwrap_err().contains("ends early"), "{:?}", got[1]);
    // Garbage is not a tar: one report, no panic.
    let got = read(&[0xffu8; 1536]);
    assert!(got.iter().all(|r| r.is_err()), "{got:?}");
    // A missing shard is an error when opened.
    assert!(Samples::open(std::path::Path::new("/no/such.tar")).is_err());
}
