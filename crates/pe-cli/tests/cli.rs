//! The `pe` binary end to end on the fixtures: its embeddings equal the reference's for the
//! same image files, and bad input gives a one-line reason and the documented exit code.

use std::path::Path;

use pe_testutil::fixtures;
use std::process::{Command, Output};

fn pe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pe")).args(args).env_remove("PE_MODEL").output().unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Rows of a float32 tensor in the expected-outputs file.
fn expected(dir: &Path, model: &str, name: &str) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(dir.join(format!("{model}.expected.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let cols = *t.shape().last().unwrap();
    let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    v.chunks(cols).map(|c| c.to_vec()).collect()
}

fn assert_rows_close(name: &str, ours: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(ours.len(), want.len(), "{name}: row count");
    let max = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let d = ours.iter().flatten().zip(want.iter().flatten()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d <= 1e-5 * max.max(1.0), "{name}: max diff {d}");
}

#[test]
fn embed_image_matches_the_reference_from_files() {
    let Some(dir) = fixtures() else { return };
    for (model, ckpt) in [("tiny-cls", "tiny-cls.pt"), ("tiny-nocls", "tiny-nocls.safetensors")] {
        let cfg = s(&dir.join(format!("{model}.json")));
        let w = s(&dir.join(ckpt));
        let cat = s(&dir.join("images/cat.png"));
        let dog = s(&dir.join("images/dog.png"));
        for (flag, tensor) in [(None, "image_embed_norm_native"), (Some("--no-normalize"), "image_embed_native")] {
            let mut args = vec!["embed-image", "--config", &cfg, "--weights", &w, "--batch-size", "1"];
            args.extend(flag);
            args.extend([cat.as_str(), dog.as_str()]);
            let out = pe(&args);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let l = lines(&out);
            assert_eq!(l[0]["path"], cat.as_str());
            assert_eq!(l[1]["path"], dog.as_str());
            let rows: Vec<Vec<f32>> = l.iter().map(|v| floats(&v["embedding"])).collect();
            assert_rows_close(&format!("{model} {tensor}"), &rows, &expected(&dir, model, tensor));
        }
    }
}

#[test]
fn embed_image_in_bf16_stays_within_cosine_0_999_of_the_reference() {
    let Some(dir) = fixtures() else { return };
    let (cat, dog) = (s(&dir.join("images/cat.png")), s(&dir.join("images/dog.png")));
    let (cfg, w) = (s(&dir.join("tiny-cls.json")), s(&dir.join("tiny-cls.pt")));
    let out = pe(&["embed-image", "--config", &cfg, "--weights", &w, "--dtype", "bf16", &cat, &dog]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = expected(&dir, "tiny-cls", "image_embed_norm_native");
    for (line, want) in lines(&out).iter().zip(&want) {
        let got = floats(&line["embedding"]);
        let cos: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
        assert!(cos >= 0.999, "cosine {cos}");
        assert!(cos < 1.0 - 1e-7, "bf16 gave the float32 result exactly: the option had no effect");
    }
}

#[test]
fn unreadable_files_are_skipped_and_reported() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff not really").unwrap();
    let out = pe(&[
        "embed-image",
        "--config",
        &s(&dir.join("tiny-cls.json")),
        "--weights",
        &s(&dir.join("tiny-cls.pt")),
        &s(&dir.join("images/cat.png")),
        &s(&broken),
        &s(&dir.join("images/dog.png")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let l = lines(&out);
    assert_eq!(l.len(), 2);
    assert_eq!(l[1]["path"], s(&dir.join("images/dog.png")).as_str());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jpg"), "{err}");
}

#[test]
fn directories_and_matrix_outputs() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = s(&dir.join("tiny-cls.json"));
    let w = s(&dir.join("tiny-cls.pt"));
    for ext in ["npy", "safetensors"] {
        let out_file = tmp.path().join(format!("emb.{ext}"));
        let out = pe(&["embed-image", "--config", &cfg, "--weights", &w, "-o", &s(&out_file), &s(&dir.join("images"))]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty());
        let bytes = std::fs::read(&out_file).unwrap();
        if ext == "npy" {
            assert!(bytes.starts_with(b"\x93NUMPY"));
            let header = String::from_utf8_lossy(&bytes[10..10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize]);
            assert!(header.contains("'shape': (6, 32)"), "{header}");
            let paths = std::fs::read_to_string(tmp.path().join("emb.paths.txt")).unwrap();
            assert_eq!(paths.lines().count(), 6);
            assert!(paths.lines().next().unwrap().ends_with("Rock-climbing-Canada-1920x1147.jpg"));
        } else {
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let paths: Vec<String> = serde_json::from_str(&meta.metadata().as_ref().unwrap()["paths"]).unwrap();
            assert_eq!(paths.len(), 6);
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.tensor("embeddings").unwrap().shape(), &[6, 32]);
        }
    }
}

#[test]
fn embed_text_and_tokenize_match_the_reference() {
    let Some(dir) = fixtures() else { return };
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-cls.expected.json")).unwrap()).unwrap();
    let prompts: Vec<String> =
        manifest["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prompts.txt");
    std::fs::write(&file, prompts.join("\n") + "\n").unwrap();
    let out = pe(&[
        "embed-text",
        "--config",
        &s(&dir.join("tiny-cls.json")),
        "--weights",
        &s(&dir.join("tiny-cls.safetensors")),
        "--file",
        &s(&file),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let l = lines(&out);
    assert_eq!(l[3]["text"], prompts[3].as_str());
    let rows: Vec<Vec<f32>> = l.iter().map(|v| floats(&v["embedding"])).collect();
    assert_rows_close("text_embed_norm", &rows, &expected(&dir, "tiny-cls", "text_embed_norm"));

    let mut args = vec!["tokenize", "--context-length", "32"];
    args.extend(prompts.iter().map(String::as_str));
    let l = lines(&pe(&args));
    let bytes = std::fs::read(dir.join("tiny-cls.expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<i64> = st
        .tensor("text_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (i, row) in l.iter().enumerate() {
        let ours: Vec<i64> = row["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(ours, ids[i * 32..(i + 1) * 32], "prompt {i}");
    }

    std::fs::write(&file, b"fine\n\xff\xfe broken\n").unwrap();
    let out = pe(&[
        "embed-text",
        "--config",
        &s(&dir.join("tiny-cls.json")),
        "--weights",
        &s(&dir.join("tiny-cls.pt")),
        "-f",
        &s(&file),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2 is not valid UTF-8"));
}

#[test]
fn classify_gives_the_reference_logits_as_probabilities() {
    let Some(dir) = fixtures() else { return };
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-cls.expected.json")).unwrap()).unwrap();
    // Prompts as labels with the identity template reproduce `logits_per_image`.
    let labels: Vec<&str> = manifest["prompts"].as_array().unwrap()[..2].iter().map(|p| p.as_str().unwrap()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let templates = tmp.path().join("t.txt");
    std::fs::write(&templates, "{}\n").unwrap();
    let label_file = tmp.path().join("labels.txt");
    std::fs::write(&label_file, labels.join("\n")).unwrap();
    let out = pe(&[
        "classify",
        "--config",
        &s(&dir.join("tiny-cls.json")),
        "--weights",
        &s(&dir.join("tiny-cls.pt")),
        "--labels-file",
        &s(&label_file),
        "--templates",
        &s(&templates),
        &s(&dir.join("images/cat.png")),
        &s(&dir.join("images/dog.png")),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logits = expected(&dir, "tiny-cls", "logits_per_image");
    for (row, l) in lines(&out).iter().zip(&logits) {
        let e: Vec<f32> = l[..2].iter().map(|x| x.exp()).collect();
        let want: Vec<f32> = e.iter().map(|x| x / (e[0] + e[1])).collect();
        for p in row["predictions"].as_array().unwrap() {
            let i = labels.iter().position(|x| *x == p["label"].as_str().unwrap()).unwrap();
            let got = p["probability"].as_f64().unwrap() as f32;
            assert!((got - want[i]).abs() < 1e-5, "{got} vs {}", want[i]);
        }
    }
}

#[test]
fn video_and_convert() {
    let Some(dir) = fixtures() else { return };
    let cfg = s(&dir.join("tiny-cls.json"));
    let out =
        pe(&["embed-video", "--config", &cfg, "--weights", &s(&dir.join("tiny-cls.pt")), &s(&dir.join("dog.mp4"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = floats(&lines(&out)[0]["embedding"]);
    assert_eq!(v.len(), 32);
    assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);

    let tmp = tempfile::tempdir().unwrap();
    let conv = tmp.path().join("c.safetensors");
    let out = pe(&["convert", &s(&dir.join("tiny-cls.pt")), &s(&conv), "--layout", "openclip", "--dtype", "f32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Created like any file (0666 less the umask), not the 0600 of a private temporary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = tmp.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let usual = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
        assert_eq!(std::fs::metadata(&conv).unwrap().permissions().mode() & 0o777, usual);
        assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }
    let a = pe(&["embed-image", "--config", &cfg, "--weights", &s(&conv), &s(&dir.join("images/cat.png"))]);
    let b = pe(&[
        "embed-image",
        "--config",
        &cfg,
        "--weights",
        &s(&dir.join("tiny-cls.pt")),
        &s(&dir.join("images/cat.png")),
    ]);
    assert_eq!(lines(&a), lines(&b));
}

#[test]
fn errors_have_one_line_reasons() {
    let out = pe(&["embed-image", "--model", "PE-Core-Z99", "x.png"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model `PE-Core-Z99`") && err.contains("PE-Core-B16-224"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    std::fs::write(&img, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["embed-image", "--model", "PE-Core-T16-384", &s(&img)])
        .env("HF_HOME", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HF_HUB_OFFLINE"));

    let out = pe(&["embed-image", "x.png"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model"));

    let out = pe(&["models", "--json"]);
    assert!(out.status.success());
    assert_eq!(lines(&out).len(), 14);
}

#[test]
fn bench_reports_the_documented_fields() {
    let Some(dir) = fixtures() else { return };
    for tower in ["image", "text"] {
        let out = pe(&[
            "bench",
            "--config",
            &s(&dir.join("tiny-nocls.json")),
            "--tower",
            tower,
            "--batch-size",
            "3",
            "--iters",
            "2",
            "--threads",
            "1",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v = &lines(&out)[0];
        for key in
            ["model", "tower", "dtype", "batch_size", "threads", "items_per_s", "ms_per_batch_median", "peak_rss_mb"]
        {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["tower"], tower);
        assert_eq!((v["batch_size"].as_u64(), v["threads"].as_u64()), (Some(3), Some(1)));
        assert!(v["items_per_s"].as_f64().unwrap() > 0.0 && v["peak_rss_mb"].as_f64().unwrap() > 1.0);
    }
    for dtype in ["bf16", "int8"] {
        let cfg = s(&dir.join("tiny-nocls.json"));
        let out = pe(&["bench", "--config", &cfg, "--dtype", dtype, "--iters", "1", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(lines(&out)[0]["dtype"], dtype);
    }
    let out = pe(&["bench", "--config", &s(&dir.join("tiny-nocls.json")), "--dtype", "fp4"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `pe bench --peak` needs no model and reports rates for the threads asked; the rate of an
/// instruction family the CPU lacks is null, never a made-up number.
#[test]
fn bench_peak_reports_rates_per_thread_count() {
    let out = pe(&["bench", "--peak", "--threads", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = &lines(&out)[0];
    assert_eq!(v["threads"].as_u64(), Some(1));
    // Any CPU this runs on does at least 1 GFLOP/s, and none does 100 TFLOP/s on one thread
    // (not even this debug build's loops; their ratios depend on the CPU: Sapphire Rapids'
    // vdpbf16ps is no faster than its FMA, Zen 4's twice as fast).
    for key in
        ["f32_gflops", "bf16_gflops", "int8_gops", "int16_gops", "int8_avx2_gops", "amx_bf16_gflops", "amx_int8_gops"]
    {
        let ok = match key {
            "f32_gflops" => v[key].as_f64().is_some_and(|r| (1.0..100_000.0).contains(&r)),
            _ => v[key].is_null() || v[key].as_f64().is_some_and(|r| (1.0..100_000.0).contains(&r)),
        };
        assert!(ok, "{key}: {v}");
    }
    let out = pe(&["bench", "--peak", "--model", "PE-Core-T16-384"]);
    assert_eq!(out.status.code(), Some(2), "--peak takes no model");
}

/// Links back up the tree and FIFOs named like images: each file is embedded once, the walk
/// ends, and a FIFO is skipped (or, named explicitly, refused with exit 1) instead of blocking.
#[cfg(unix)]
#[test]
fn directory_walks_follow_each_link_once_and_skip_fifos() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::copy(dir.join("images/cat.png"), root.join("cat.png")).unwrap();
    std::fs::copy(dir.join("images/dog.png"), root.join("sub/dog.png")).unwrap();
    std::os::unix::fs::symlink(".", root.join("loop")).unwrap();
    std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("sub", root.join("again")).unwrap();
    let fifo = root.join("pipe.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (cfg, w) = (s(&dir.join("tiny-cls.json")), s(&dir.join("tiny-cls.pt")));
    let out = pe(&["embed-image", "--config", &cfg, "--weights", &w, &s(root)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let paths: Vec<String> = lines(&out).iter().map(|l| l["path"].as_str().unwrap().to_string()).collect();
    // `again -> sub` is walked first (sorted), so sub/ itself is the repeat that is skipped.
    assert_eq!(paths, [s(&root.join("again/dog.png")), s(&root.join("cat.png"))], "{err}");
    assert!(err.contains("pipe.png: not a regular file"), "{err}");
    let out = pe(&["embed-image", "--config", &cfg, "--weights", &w, &s(&fifo)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn absurd_options_are_usage_errors() {
    let Some(dir) = fixtures() else { return };
    let out = pe(&["tokenize", "--context-length", "1000000000000", "a cat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--context-length"));
    let (cfg, w, cat) = (s(&dir.join("tiny-cls.json")), s(&dir.join("tiny-cls.pt")), s(&dir.join("images/cat.png")));
    let out = pe(&["embed-image", "--config", &cfg, "--weights", &w, "--size", "5000", "--center-crop", &cat]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size 5000") && err.lines().count() == 1, "{err}");
    // An unknown tower is refused before anything binds or loads, naming the choices.
    let out = pe(&["serve", "--config", &cfg, "--weights", &w, "--towers", "neither", "--addr", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--towers") && err.contains("both, image, text"), "{err}");
}

/// A newline in a file name cannot shift `.paths.txt` against the matrix rows.
#[cfg(unix)]
#[test]
fn odd_file_names_keep_paths_aligned() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join("two\nlines.png");
    std::fs::copy(dir.join("images/cat.png"), &odd).unwrap();
    std::fs::copy(dir.join("images/dog.png"), tmp.path().join("z.png")).unwrap();
    let npy = tmp.path().join("out.npy");
    let (cfg, w) = (s(&dir.join("tiny-cls.json")), s(&dir.join("tiny-cls.pt")));
    let out = pe(&["embed-image", "--config", &cfg, "--weights", &w, "--output", &s(&npy), &s(tmp.path())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = std::fs::read_to_string(tmp.path().join("out.paths.txt")).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list:?}");
    assert!(lines[0].ends_with("two\\nlines.png"), "{list:?}");
    assert!(lines[1].ends_with("z.png"), "{list:?}");
}

/// Mistakes found before any work, as usage errors (exit 2) said once and plainly.
#[test]
fn usage_errors_come_first_and_plainly() {
    let Some(dir) = fixtures() else { return };
    let (cfg, w, cat) = (s(&dir.join("tiny-cls.json")), s(&dir.join("tiny-cls.pt")), s(&dir.join("images/cat.png")));
    let m = ["--config", cfg.as_str(), "--weights", w.as_str()];
    let code = |args: &[&str]| pe(args).status.code();
    // An address in use is named, and found before the (absent) weights would be fetched.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = pe(&["serve", "--addr", &addr, "--model", "PE-Core-G14-448"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"), "{err}");
    // Logs off a terminal carry no colour codes.
    let out = pe(&[&["--log", "debug", "embed-text"][..], &m, &["a cat"]].concat());
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEBUG") || err.contains("INFO"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    // PE_DTYPE reaches `pe bench`.
    let out = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["bench", "--config", &cfg, "--iters", "1", "--json"])
        .env("PE_DTYPE", "bf16")
        .output()
        .unwrap();
    assert_eq!(lines(&out)[0]["dtype"], "bf16");
    // `tokenize` takes its row length from a model, and is offered no --threads.
    let out = pe(&["tokenize", "--model", "PE-Core-G14-448", "a cat"]);
    assert_eq!(lines(&out)[0]["ids"].as_array().unwrap().len(), 72);
    assert_eq!(code(&["tokenize", "--threads", "2", "a cat"]), Some(2));
    assert_eq!(code(&["convert", &w, "out.bin"]), Some(2));
    assert_eq!(code(&[&["classify"][..], &m, &["--labels", "cat,dog", "--top", "0", &cat]].concat()), Some(2));
    let out = pe(&[&["classify"][..], &m, &["--labels", "cat,dog,cat", &cat]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`cat` is given twice"));
    // Another model's weights: one short line naming both geometries.
    let out = pe(&["embed-image", "--model", "PE-Core-B16-224", "--weights", &w, &cat]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not PE-Core-B16-224 (width 768, 12 layers, patch 16)") && err.len() < 500, "{err}");
}

/// `pe download` fills the hub cache (from a loopback hub), reports progress off a terminal,
/// and an unreachable hub says what to do instead.
#[test]
fn download_fills_the_cache_and_says_so() {
    let Some(dir) = fixtures() else { return };
    let bytes = std::fs::read(dir.join("tiny-cls.pt")).unwrap();
    let url = "/facebook/PE-Core-T16-384/resolve/main/PE-Core-T16-384.pt".to_string();
    let (endpoint, _) = pe_testutil::hub::serve(vec![(url, bytes.clone())], pe_testutil::hub::Mode::Normal);
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], endpoint: &str| {
        Command::new(env!("CARGO_BIN_EXE_pe"))
            .args(args)
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HUB_ETAG_TIMEOUT", "1")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(&["download", "PE-Core-T16-384"], &endpoint);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(path.starts_with(&s(&home.path().join("hub/models--facebook--PE-Core-T16-384/snapshots"))), "{path}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(
        err.contains("pe: downloading PE-Core-T16-384.pt") && err.contains("pe: downloaded PE-Core-T16-384.pt"),
        "{err}"
    );
    // Cached now: offline, the same path, nothing downloaded.
    let out = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["download", "PE-Core-T16-384"])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path);
    // Unknown names are refused before anything is fetched; an unreachable hub says what to do.
    assert_eq!(run(&["download", "PE-Core-Z99"], &endpoint).status.code(), Some(2));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = run(&["download", "PE-Core-S16-384"], &format!("http://{closed}"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--weights FILE") && err.contains("HF_HUB_OFFLINE=1"), "{err}");
}

/// `pe features` writes the reference's `forward_features` as a patch grid plus class token.
#[test]
fn features_match_the_reference_grid_and_class_token() {
    let Some(dir) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (cat, dog) = (s(&dir.join("images/cat.png")), s(&dir.join("images/dog.png")));
    for (model, ckpt, cls) in [("tiny-cls", "tiny-cls.pt", true), ("tiny-nocls", "tiny-nocls.safetensors", false)] {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{model}.json"))).unwrap()).unwrap();
        let v = &cfg["vision"];
        let grid = (v["image_size"].as_u64().unwrap() / v["patch_size"].as_u64().unwrap()) as usize;
        let width = v["width"].as_u64().unwrap() as usize;
        for (layer, norm) in [("-1", false), ("-1", true), ("0", true), ("1", false)] {
            let out = tmp.path().join(format!("{model}{layer}{norm}.safetensors"));
            let cfgp = s(&dir.join(format!("{model}.json")));
            let w = s(&dir.join(ckpt));
            let mut args = vec!["features", "--config", &cfgp, "--weights", &w, "--layer", layer, "-o"];
            let o = s(&out);
            args.push(&o);
            if norm {
                args.push("--norm");
            }
            args.extend([cat.as_str(), dog.as_str()]);
            let r = pe(&args);
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
                let t = st.tensor(name).unwrap();
                (
                    t.shape().to_vec(),
                    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                )
            };
            let (shape, patches) = f32s("patch_tokens");
            assert_eq!(shape, [2, grid, grid, width]);
            let want = expected(&dir, model, &format!("features_native_layer{layer}_norm{}_strip0", u8::from(norm)));
            // Expected rows are (image, token): the class token first when the model has one.
            let tokens = grid * grid + usize::from(cls);
            assert_eq!(want.len(), 2 * tokens);
            let want_patches: Vec<Vec<f32>> =
                (0..2).flat_map(|i| want[i * tokens + usize::from(cls)..(i + 1) * tokens].to_vec()).collect();
            let ours: Vec<Vec<f32>> = patches.chunks(width).map(<[f32]>::to_vec).collect();
            assert_rows_close(&format!("{model} {layer} {norm} patches"), &ours, &want_patches);
            match st.tensor("cls_token") {
                Ok(_) => {
                    assert!(cls);
                    let (shape, c) = f32s("cls_token");
                    assert_eq!(shape, [2, width]);
                    let ours: Vec<Vec<f32>> = c.chunks(width).map(<[f32]>::to_vec).collect();
                    assert_rows_close(&format!("{model} cls"), &ours, &[want[0].clone(), want[tokens].clone()]);
                }
                Err(_) => assert!(!cls, "{model} has a class token"),
            }
        }
    }
    let cfgp = s(&dir.join("tiny-cls.json"));
    let w = s(&dir.join("tiny-cls.pt"));
    let r = pe(&["features", "--config", &cfgp, "--weights", &w, "--layer", "9", "-o", "x.safetensors", &cat]);
    assert_eq!(r.status.code(), Some(2));
    let r = pe(&["features", "--config", &cfgp, "--weights", &w, "-o", "x.npy", &cat]);
    assert_eq!(r.status.code(), Some(2));
}
