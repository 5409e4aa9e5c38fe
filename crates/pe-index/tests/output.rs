//! Embedding outputs: every format written row by row reads back to the same rows, resumes keep
//! what is there, and bad outputs fail before any work.

use std::ffi::OsStr;
use std::path::Path;

use pe_index::output::{read, Columns, Row, Writer};

fn columns(dtype: &str) -> Columns {
    Columns {
        key: "path".into(),
        sizes: true,
        model: "tiny".into(),
        dtype: dtype.into(),
        dim: Some(3),
        shard: None,
        captions: false,
        hashes: false,
        texts: false,
        json: false,
    }
}

/// A name, its pixel size, its embedding.
type Written = (Vec<u8>, Option<(u32, u32)>, Vec<f32>);

fn rows() -> Vec<Written> {
    vec![
        (b"a.jpg".to_vec(), Some((640, 480)), vec![0.1, -0.2, 0.3]),
        (b"dir/b c.png".to_vec(), Some((1, 2)), vec![1.0 / 3.0, f32::MIN_POSITIVE, -7.5e-8]),
        // A name with a line break and a byte that is not UTF-8.
        (b"odd\nna\xffme.jpg".to_vec(), None, vec![0.0, 1.0, -1.0]),
    ]
}

#[cfg(unix)]
fn os(b: &[u8]) -> &OsStr {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(b)
}

fn write(path: &Path, which: std::ops::Range<usize>, resume: bool, dtype: &str) -> pe_index::Result<u64> {
    let mut w = Writer::create(path, columns(dtype), resume)?;
    for (name, size, v) in &rows()[which] {
        if !w.has(os(name)) {
            w.push(os(name), *size, v)?;
        }
    }
    w.finish()
}

fn read_all(path: &Path) -> Vec<Row> {
    read(path).unwrap().collect::<pe_index::Result<_>>().unwrap()
}

#[test]
#[cfg(unix)]
fn every_format_reads_back_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["jsonl", "npy", "safetensors", "parquet"] {
        let path = dir.path().join(format!("out.{ext}"));
        // Two rows, then a resumed run given all three: the first two are kept, not doubled.
        assert_eq!(write(&path, 0..2, false, "f32").unwrap(), 2, "{ext}");
        assert_eq!(write(&path, 0..3, true, "f32").unwrap(), 3, "{ext}");
        let got = read_all(&path);
        let want = rows();
        assert_eq!(got.len(), 3, "{ext}");
        for (g, (name, size, v)) in got.iter().zip(&want) {
            assert_eq!(g.key, pe_index::output::display_name(os(name)), "{ext}");
            // Bit-exact float32, whatever the format (JSON prints the shortest round trip).
            assert_eq!(
                g.embedding.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{ext}"
            );
            if ext == "parquet" {
                assert_eq!(g.size, size.map(|(w, h)| (w as i32, h as i32)));
            }
        }
        // Without --resume the output is replaced.
        assert_eq!(write(&path, 2..3, false, "f32").unwrap(), 1, "{ext}");
        assert_eq!(read_all(&path).len(), 1, "{ext}");
        // No temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}

#[test]
#[cfg(unix)]
fn json_lines_are_f32_shortest_and_a_torn_last_line_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    write(&path, 0..1, false, "f32").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "{\"path\":\"a.jpg\",\"embedding\":[0.1,-0.2,0.3]}\n");
    // A kill in the middle of the second line.
    std::fs::write(&path, format!("{text}{{\"path\":\"dir/b c.png\",\"embedding\":[0.33")).unwrap();
    assert_eq!(write(&path, 0..2, true, "f32").unwrap(), 2);
    let got = read_all(&path);
    assert_eq!(got.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a.jpg", "dir/b c.png"]);
}

#[test]
fn bad_outputs_fail_before_any_row() {
    let dir = tempfile::tempdir().unwrap();
    let err = |p: &Path, resume: bool| {
        Writer::create(p, columns("f32"), resume).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(err(&dir.path().join("x.txt"), false).contains("must end in"), "{}", err(&dir.path().join("x.txt"), false));
    assert!(err(&dir.path().join("missing/x.npy"), false).contains("No such file"));
    std::fs::create_dir(dir.path().join("folder.npy")).unwrap();
    assert!(err(&dir.path().join("folder.npy"), false).contains("is a directory"));
    // Another precision's output is not resumed into.
    #[cfg(unix)]
    for ext in ["safetensors", "parquet"] {
        let p = dir.path().join(format!("o.{ext}"));
        write(&p, 0..1, false, "bf16").unwrap();
        let e = write(&p, 0..2, true, "f32").unwrap_err().to_string();
        assert!(e.contains("bf16") && e.contains("cannot be mixed"), "{e}");
        assert_eq!(read_all(&p).len(), 1, "the refused resume left the output as it was");
    }
    // A row of another size is refused.
    let mut w = Writer::create(&dir.path().join("d.npy"), columns("f32"), false).unwrap();
    assert!(w.push(OsStr::new("x"), None, &[1.0, 2.0]).is_err());
}

#[test]
#[cfg(unix)]
fn an_unfinished_output_leaves_nothing_and_files_get_the_usual_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    {
        let mut w = Writer::create(&path, columns("f32"), false).unwrap();
        w.push(OsStr::new("a"), None, &[1.0, 2.0, 3.0]).unwrap();
        // Dropped without finish (an error or a kill mid-run).
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    write(&path, 0..2, false, "f32").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    // Created like any file (0666 less the umask), not 0600.
    let umask = umask();
    assert_eq!(mode, 0o666 & !umask, "mode {mode:o}");
    // An empty output still has the model's shape.
    let empty = dir.path().join("e.npy");
    Writer::create(&empty, columns("f32"), false).unwrap().finish().unwrap();
    let bytes = std::fs::read(&empty).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..128]).contains("'shape': (0, 3)"));
}

/// The process's umask, read from /proc (without changing it).
#[cfg(unix)]
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn resuming_a_damaged_output_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut huge_npy = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    huge_npy
        .extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 4294967295), }");
    huge_npy.resize(128, b' ');
    for (name, bytes) in [
        ("a.jsonl", b"{\"path\": \"x\", \"embedding\": [1, 2, 3]}\nnot json\n".to_vec()),
        ("b.npy", b"\x93NUMPY\x01\x00garbage".to_vec()),
        ("c.npy", huge_npy),
        ("d.safetensors", vec![0xff; 64]),
        ("e.parquet", b"PAR1 not really PAR1".to_vec()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = Writer::create(&p, columns("f32"), true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(name), "{name}: {e}");
        // The damaged file is left as it was.
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "{name}");
    }
}
