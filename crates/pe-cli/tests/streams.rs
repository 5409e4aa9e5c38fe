//! Inputs as streams (`-`, `--files-from`, `-0`, `--file -`), walks that skip hidden and
//! excluded files, outputs written in every format (Parquet read back by pyarrow and DuckDB),
//! `--resume`, and the errors found before any work.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use pe_testutil::fixtures;

fn pe_in(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(args)
        .env_remove("PE_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn pe(args: &[&str]) -> Output {
    pe_in(args, b"")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// (key, embedding) of each JSON line.
fn rows(text: &str, key: &str) -> Vec<(String, Vec<f32>)> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (v[key].as_str().unwrap().to_string(), e)
        })
        .collect()
}

fn model(fx: &Path) -> Vec<String> {
    vec!["--config".into(), s(&fx.join("tiny-cls.json")), "--weights".into(), s(&fx.join("tiny-cls.safetensors"))]
}

fn args<'a>(cmd: &'a str, m: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![cmd];
    a.extend(m.iter().map(String::as_str));
    a.extend(rest);
    a
}

#[test]
fn stdin_and_file_lists_give_the_same_rows_as_paths() {
    let Some(fx) = fixtures() else { return };
    let m = model(&fx);
    let (cat, dog) = (s(&fx.join("images/cat.png")), s(&fx.join("images/dog.png")));
    let direct = rows(&ok(&pe(&args("embed-image", &m, &[&cat, &dog]))), "path");
    assert_eq!(direct.len(), 2);

    // One path a line, and NUL-separated as `find -print0` writes.
    let listed = rows(
        &ok(&pe_in(&args("embed-image", &m, &["--files-from", "-"]), format!("{cat}\n{dog}\n").as_bytes())),
        "path",
    );
    assert_eq!(listed, direct);
    let nul = rows(
        &ok(&pe_in(&args("embed-image", &m, &["--files-from", "-", "-0"]), format!("{cat}\0{dog}\0").as_bytes())),
        "path",
    );
    assert_eq!(nul, direct);

    // An image on stdin, named `-`.
    let from_stdin = rows(&ok(&pe_in(&args("embed-image", &m, &["-"]), &std::fs::read(&cat).unwrap())), "path");
    assert_eq!(from_stdin, vec![("-".to_string(), direct[0].1.clone())]);

    // Texts from stdin equal texts as arguments.
    let texts = rows(&ok(&pe(&args("embed-text", &m, &["a dog", "two cats"]))), "text");
    let piped = rows(&ok(&pe_in(&args("embed-text", &m, &["--file", "-"]), b"a dog\ntwo cats\n")), "text");
    assert_eq!(piped, texts);
    let nul = rows(&ok(&pe_in(&args("embed-text", &m, &["--file", "-", "-0"]), b"a dog\0two cats\0")), "text");
    assert_eq!(nul, texts);

    // A listed file that is missing is an unreadable input (exit 1, counted); a missing path
    // named on the command line is a usage error found before the model loads (exit 2).
    let out = pe_in(&args("embed-image", &m, &["--files-from", "-"]), format!("{cat}\n/no/such.png\n").as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pe: skipping /no/such.png") && err.contains("1 of 2 images could not be read"), "{err}");
    assert_eq!(rows(&String::from_utf8_lossy(&out.stdout), "path"), direct[..1]);
    let out = pe(&args("embed-image", &m, &["/no/such/folder"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Said once, not "No such file ...: No such file ...".
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn walks_skip_hidden_and_excluded_files() {
    let Some(fx) = fixtures() else { return };
    let m = model(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("raw")).unwrap();
    std::fs::copy(fx.join("images/cat.png"), d.join("cat.png")).unwrap();
    std::fs::copy(fx.join("images/dog.png"), d.join("raw/dog.png")).unwrap();
    // macOS's AppleDouble files: named like images, not images.
    std::fs::write(d.join("._cat.png"), b"\x00\x05\x16\x07 not an image").unwrap();
    let names = |out: &str| rows(out, "path").into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(names(&ok(&pe(&args("embed-image", &m, &[&s(d)])))), [s(&d.join("cat.png")), s(&d.join("raw/dog.png"))]);
    assert_eq!(names(&ok(&pe(&args("embed-image", &m, &[&s(d), "--exclude", "raw"])))), [s(&d.join("cat.png"))]);
    let out = pe(&args("embed-image", &m, &[&s(d), "--include-hidden"]));
    assert_eq!(out.status.code(), Some(1), "the hidden file is taken, and cannot be read");
    assert!(String::from_utf8_lossy(&out.stderr).contains("._cat.png"));
}

#[test]
fn outputs_in_every_format_hold_the_same_rows() {
    let Some(fx) = fixtures() else { return };
    let m = model(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let images = s(&fx.join("images"));
    let lines = ok(&pe(&args("embed-image", &m, &[&images])));
    let want = rows(&lines, "path");
    assert_eq!(want.len(), pe_testutil::FIXTURE_IMAGES.len());
    // JSON floats are float32's shortest text (at most 9 significant digits), not f64's.
    for tok in
        lines.split(['[', ']', ',']).filter(|t| t.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']))
    {
        let digits = tok.split(['e', 'E']).next().unwrap().chars().filter(char::is_ascii_digit).collect::<String>();
        assert!(digits.trim_start_matches('0').len() <= 9, "{tok}");
    }
    for ext in ["jsonl", "npy", "safetensors", "parquet"] {
        let out = tmp.path().join(format!("e.{ext}"));
        assert_eq!(ok(&pe(&args("embed-image", &m, &[&images, "-o", &s(&out)]))), "");
        let got: Vec<(String, Vec<f32>)> = pe_index::output::read(&out)
            .unwrap()
            .map(|r| r.map(|r| (r.key, r.embedding)))
            .collect::<pe_index::Result<_>>()
            .unwrap();
        assert_eq!(got, want, "{ext}");
    }
    // Another reader sees the Parquet rows, pixel sizes and metadata.
    if let Some(py) = pe_testutil::python_with_readers() {
        let script = r#"
import json, sys, duckdb, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
meta = {k.decode(): v.decode() for k, v in f.metadata.metadata.items()}
rows = duckdb.sql(f"select path, width, height, embedding from '{sys.argv[1]}'").fetchall()
print(json.dumps({"model": meta["pe.model"], "dtype": meta["pe.dtype"],
                  "type": str(f.schema_arrow.field("embedding").type),
                  "rows": [[r[0], r[1], r[2], [float(x) for x in r[3]]] for r in rows]}))
"#;
        let pq = s(&tmp.path().join("e.parquet"));
        let v: serde_json::Value =
            serde_json::from_str(&ok(&Command::new(py).args(["-c", script, &pq]).output().unwrap())).unwrap();
        assert_eq!((v["model"].as_str(), v["dtype"].as_str()), (Some("tiny-cls"), Some("f32")));
        assert!(v["type"].as_str().unwrap().starts_with("fixed_size_list<"), "{}", v["type"]);
        let got: Vec<(String, Vec<f32>)> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().into(),
                    r[3].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                )
            })
            .collect();
        assert_eq!(got, want, "DuckDB's rows, bit for bit");
        let cat = v["rows"].as_array().unwrap().iter().find(|r| r[0].as_str().unwrap().ends_with("cat.png")).unwrap();
        assert_eq!((cat[1].as_i64(), cat[2].as_i64()), (Some(500), Some(666)), "cat.png is 500 x 666");
    }
}

#[test]
fn resume_skips_what_the_output_holds_and_bad_outputs_fail_first() {
    let Some(fx) = fixtures() else { return };
    let m = model(&fx);
    let tmp = tempfile::tempdir().unwrap();
    let (cat, dog) = (s(&fx.join("images/cat.png")), s(&fx.join("images/dog.png")));
    for ext in ["jsonl", "parquet"] {
        let out = s(&tmp.path().join(format!("r.{ext}")));
        ok(&pe(&args("embed-image", &m, &[&cat, "-o", &out])));
        // A bf16 run may not add to an f32 output (Parquet keeps the precision).
        if ext == "parquet" {
            let bad = pe(&args("embed-image", &m, &[&cat, &dog, "-o", &out, "--resume", "--dtype", "bf16"]));
            assert_eq!(bad.status.code(), Some(2));
            assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot be mixed"));
        }
        let run = pe(&args("embed-image", &m, &[&cat, &dog, "-o", &out, "--resume", "--log", "info"]));
        ok(&run);
        assert!(String::from_utf8_lossy(&run.stderr).contains("1 of 2 images are already in the output"));
        let keys: Vec<String> = pe_index::output::read(Path::new(&out)).unwrap().map(|r| r.unwrap().key).collect();
        assert_eq!(keys, [cat.clone(), dog.clone()], "{ext}");
    }
    // Found before the model loads: nothing is created, exit 2.
    for (out, says) in [("x.txt", "must end in"), ("missing/x.npy", "No such file")] {
        let o = tmp.path().join(out);
        let r = pe(&args("embed-image", &m, &[&cat, "-o", &s(&o)]));
        assert_eq!(r.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&r.stderr).contains(says), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(!o.exists());
    }
    let r = pe(&args("embed-video", &m, &["--frames", "0", &s(&fx.join("dog.mp4"))]));
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn videos_come_from_stdin_too_and_need_ffmpeg() {
    let Some(fx) = fixtures() else { return };
    if !perception_encoder::video::available() {
        assert!(!std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"), "PE_REQUIRE_FIXTURES=1 but no FFmpeg");
        eprintln!("skipping: no FFmpeg");
        return;
    }
    let m = model(&fx);
    let video = fx.join("dog.mp4");
    let from_file = rows(&ok(&pe(&args("embed-video", &m, &[&s(&video)]))), "path");
    let from_stdin = rows(&ok(&pe_in(&args("embed-video", &m, &["-"]), &std::fs::read(&video).unwrap())), "path");
    assert_eq!(from_stdin, vec![("-".to_string(), from_file[0].1.clone())]);
    // Without FFmpeg: a usage error before the model loads, not a skip per file.
    let out = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(args("embed-video", &m, &[&s(&video)]))
        .env("PE_FFMPEG", "/no/such/ffmpeg")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FFmpeg"), "{}", String::from_utf8_lossy(&out.stderr));
}
