//! `pe index` and `pe search` end to end on the fixture's tiny model: search equals a brute
//! force over `pe embed-image`'s own outputs, an updated index equals one built from scratch,
//! a run killed with SIGKILL resumes to the same index, and misuse gets a clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{copy_images, dump, model_args, noise_images, ok, pe, s};
use pe_index::Index;
use pe_testutil::fixtures;

fn assert_same_index(a: &Path, b: &Path) {
    let (da, db) = (dump(a), dump(b));
    assert_eq!(da.keys().collect::<Vec<_>>(), db.keys().collect::<Vec<_>>(), "the same files");
    for (p, (ha, ea, va)) in &da {
        let (hb, eb, vb) = &db[p];
        assert_eq!((ha, ea), (hb, eb), "{}", p.display());
        match (va, vb) {
            (Some(x), Some(y)) => {
                let d = x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // Batches of other sizes may round differently in the last bits.
                assert!(d <= 1e-5, "{}: embeddings differ by {d}", p.display());
            }
            (None, None) => {}
            _ => panic!("{}: one index has an embedding, the other not", p.display()),
        }
    }
}

#[test]
fn search_equals_brute_force_over_embed_image() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    let m = model_args(&fx);
    let mut args = vec!["index".to_string(), s(&photos)];
    args.extend(m.clone());
    ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()));

    // Brute force: embed-image's own outputs, and the query's embedding.
    let root = std::fs::canonicalize(&photos).unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    let mut args = vec!["embed-image".to_string()];
    args.extend(m.clone());
    args.extend(files.iter().map(|p| s(p)));
    let rows: Vec<(String, Vec<f32>)> = ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (v["path"].as_str().unwrap().to_string(), e)
        })
        .collect();
    let mut args = vec!["embed-text".to_string()];
    args.extend(m.clone());
    args.push("a photo of a dog".into());
    let text: serde_json::Value =
        serde_json::from_str(ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>())).trim()).unwrap();
    let tq: Vec<f32> = text["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let cat = rows.iter().find(|(p, _)| p.ends_with("cat.png")).unwrap().1.clone();

    // Exact search (a small folder), then through the approximate index: the same results.
    let cases = [(vec!["a photo of a dog".to_string()], tq), (vec![s(&root.join("cat.png"))], cat)];
    for (ann, (query, q)) in [("never", &cases[0]), ("never", &cases[1]), ("always", &cases[0]), ("always", &cases[1])]
    {
        let out = pe(&["index", &s(&photos), "--ann", ann]);
        ok(&out);
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(log.contains("pe: approximate index"), ann == "always", "{log}");
        assert_eq!(root.join(".pe-index/ann.bin").exists(), ann == "always");
        let q = q.clone();
        let query = query.clone();

        let mut want: Vec<(String, f32)> =
            rows.iter().map(|(p, e)| (p.clone(), e.iter().zip(&q).map(|(a, b)| a * b).sum())).collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut args = vec![
            "search".to_string(),
            "--index".into(),
            s(&root.join(".pe-index")),
            "--json".into(),
            "--top".into(),
            "100".into(),
        ];
        args.extend(query.clone());
        let got: Vec<serde_json::Value> = ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{query:?}: every file is a result");
        for (i, (g, (path, score))) in got.iter().zip(&want).enumerate() {
            assert_eq!(g["rank"], i + 1);
            assert_eq!(g["path"].as_str().unwrap(), path, "{query:?} rank {}", i + 1);
            let d = (g["score"].as_f64().unwrap() as f32 - score).abs();
            assert!(d <= 1e-5, "{query:?} {path}: score off by {d}");
        }
    }
    // An image outside the index takes the vision tower alone (a text query, the text tower
    // alone): the ranking of its stored copy, at the same scores; with text, both towers.
    let outside = tmp.path().join("outside.png");
    std::fs::copy(root.join("cat.png"), &outside).unwrap();
    let search = |query: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["search", "--json", "--top", "100"];
        let idx = s(&root.join(".pe-index"));
        args.extend(["--index", &idx]);
        args.extend(query);
        ok(&pe(&args)).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (stored, fresh) = (search(&[&s(&root.join("cat.png"))]), search(&[&s(&outside)]));
    assert_eq!(stored.len(), rows.len());
    for (a, b) in stored.iter().zip(&fresh) {
        assert_eq!(a["path"], b["path"]);
        let d = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
        assert!(d <= 1e-5, "{a} vs {b}");
    }
    let mixed = search(&["a photo of a dog", "+", &s(&outside)]);
    assert_eq!(mixed.len(), rows.len(), "a mixed query ranks every file");

    // Paths only, top 2, from inside the folder (the index is found upwards).
    let out = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["search", "-f", "--top", "2", "./cat.png"])
        .current_dir(&root)
        .output()
        .unwrap();
    let text = ok(&out);
    let paths: Vec<&str> = text.lines().collect();
    assert_eq!(paths.len(), 2);
    assert_eq!(paths[0], s(&root.join("cat.png")), "an image finds itself first");
}

#[test]
fn an_updated_index_equals_a_fresh_one_and_a_killed_run_resumes() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    noise_images(&photos.join("noise"), 40, 1);
    let m = model_args(&fx);
    let index_into = |dir: &Path, extra: &[&str]| -> Output {
        let mut args = vec!["index".to_string(), s(&photos), "--index".into(), s(dir)];
        args.extend(m.clone());
        args.extend(extra.iter().map(|x| x.to_string()));
        pe(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let a = tmp.path().join("a");
    ok(&index_into(&a, &[]));
    // Add, modify, delete, rename, and add an unreadable file.
    std::fs::copy(photos.join("dog.png"), photos.join("dog-copy.png")).unwrap();
    std::fs::rename(photos.join("cat.png"), photos.join("renamed-cat.png")).unwrap();
    std::fs::remove_file(photos.join("noise/noise-0003.png")).unwrap();
    noise_images(&photos.join("more"), 3, 2);
    std::fs::copy(photos.join("noise/noise-0005.png"), photos.join("noise/noise-0004.png")).unwrap();
    std::fs::write(photos.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = index_into(&a, &[]);
    assert_eq!(out.status.code(), Some(1), "an unreadable file makes the exit code 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.png"), "{err}");
    assert!(err.contains("3 embedded, 3 reused") && err.contains("2 removed"), "{err}");
    // Unchanged files are not read again; the unreadable one is not retried.
    let again = index_into(&a, &[]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 embedded"));

    let fresh = tmp.path().join("fresh");
    assert_eq!(index_into(&fresh, &[]).status.code(), Some(1));
    assert_same_index(&a, &fresh);

    // Killed mid-run (SIGKILL), then rerun: the same index as one built in one go.
    let killed = tmp.path().join("killed");
    let mut args =
        vec!["index".to_string(), s(&photos), "--index".into(), s(&killed), "--batch-size".into(), "1".into()];
    args.extend(m.clone());
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_pe")).args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let db = killed.join("catalog.sqlite");
    let mut waited = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        waited += 1;
        let rows = Index::open(&killed).ok().and_then(|i| i.catalog().counts().ok()).map_or(0, |c| c.0);
        if rows >= 5 || waited > 1500 {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(db.exists());
    let partial = Index::open(&killed).unwrap().catalog().counts().unwrap().0;
    eprintln!("killed after {partial} files (status {status:?})");
    // Exit 1 if broken.png is met in this run, 0 if the killed run had already recorded it.
    let code = index_into(&killed, &[]).status.code();
    assert!(matches!(code, Some(0 | 1)), "{code:?}");
    assert_same_index(&killed, &fresh);
}

/// `pe search --update` walks and stores as the last `pe index` did: its --exclude, its
/// --ann and --ann-storage (not the defaults, which would take excluded files in and rebuild
/// or delete the graph).
#[test]
fn search_update_keeps_the_index_runs_options() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    let dir = tmp.path().join("idx");
    let mut args = vec!["index".to_string(), s(&photos), "--index".into(), s(&dir)];
    args.extend(model_args(&fx));
    args.extend(["--exclude", "skip-*", "--ann", "always", "--ann-storage", "i8"].map(String::from));
    ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let before = Index::open(&dir).unwrap().catalog().counts().unwrap().0;

    std::fs::copy(photos.join("dog.png"), photos.join("skip-dog.png")).unwrap();
    noise_images(&photos.join("new"), 2, 7);
    let out = ok(&pe(&["search", "--update", "--index", &s(&dir), "a photo of a dog", "--top", "100", "--paths-only"]));
    let paths: Vec<&str> = out.lines().collect();
    assert!(paths.iter().any(|p| p.ends_with("new/noise-0001.png")), "{out}");
    assert!(!paths.iter().any(|p| p.contains("skip-")), "an excluded file was indexed: {out}");
    let index = Index::open(&dir).unwrap();
    assert_eq!(index.catalog().counts().unwrap().0, before + 2);
    let ann = index.ann().unwrap().expect("the graph is kept and brought up to date");
    assert_eq!(ann.storage(), pe_index::AnnStorage::I8);
    assert_eq!(index.update_options().unwrap().scan.exclude, vec!["skip-*".to_string()]);
}

#[test]
fn misuse_gets_clear_errors() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    let idx = tmp.path().join("idx");
    let mut args = vec!["index".to_string(), s(&photos), "--index".into(), s(&idx)];
    args.extend(model_args(&fx));
    ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let text = |out: &Output| String::from_utf8_lossy(&out.stderr).to_string();

    // Another model, or another precision, into the same index: refused.
    let other = pe(&[
        "index",
        &s(&photos),
        "--index",
        &s(&idx),
        "--config",
        &s(&fx.join("tiny-nocls.json")),
        "--weights",
        &s(&fx.join("tiny-nocls.safetensors")),
    ]);
    assert_eq!(other.status.code(), Some(2));
    assert!(text(&other).contains("was built with tiny-cls (f32, squash 32), not tiny-nocls"), "{}", text(&other));
    let mut args = vec!["index".to_string(), s(&photos), "--index".into(), s(&idx), "--dtype".into(), "bf16".into()];
    args.extend(model_args(&fx));
    let bf16 = pe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(bf16.status.code(), Some(2));
    assert!(text(&bf16).contains("not tiny-cls (bf16"), "{}", text(&bf16));
    let crop = pe(&["index", &s(&photos), "--index", &s(&idx), "--center-crop"]);
    assert!(text(&crop).contains("center-crop"), "{}", text(&crop));

    // No index; an empty folder; an empty index; an empty query.
    let none = pe(&["search", "--index", &s(&tmp.path().join("nowhere")), "cat"]);
    assert!(text(&none).contains("no index at"), "{}", text(&none));
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let no_model = pe(&["index", &s(&empty)]);
    assert!(text(&no_model).contains("give the model to build it with"), "{}", text(&no_model));
    let mut args = vec!["index".to_string(), s(&empty)];
    args.extend(model_args(&fx));
    let out = pe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text(&out).contains("no images found under"), "{}", text(&out));
    let out = pe(&["search", "--index", &s(&empty.join(".pe-index")), "cat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("holds no searchable files yet"), "{}", text(&out));
    let out = pe(&["search", "--index", &s(&idx)]);
    assert!(text(&out).contains("nothing to search for"), "{}", text(&out));
}

#[test]
fn similar_and_dedupe_come_from_the_index() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    std::fs::copy(photos.join("dog.png"), photos.join("dog-copy.png")).unwrap();
    let mut cat = image::load_from_memory(&std::fs::read(photos.join("cat.png")).unwrap()).unwrap().to_rgb8();
    cat.put_pixel(0, 0, image::Rgb([1, 2, 3]));
    cat.save(photos.join("cat-edited.png")).unwrap();
    let mut args = vec!["index".to_string(), s(&photos)];
    args.extend(model_args(&fx));
    ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let root = std::fs::canonicalize(&photos).unwrap();
    let idx = s(&root.join(".pe-index"));

    let similar = ok(&pe(&["similar", &s(&root.join("cat.png")), "--index", &idx, "-f", "--top", "3"]));
    let paths: Vec<&str> = similar.lines().collect();
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[0], s(&root.join("cat-edited.png")), "the edited copy is nearest");
    assert!(!paths.contains(&s(&root.join("cat.png")).as_str()), "the query itself is left out");

    let groups: Vec<serde_json::Value> =
        ok(&pe(&["dedupe", "--index", &idx])).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names = |g: &serde_json::Value| -> Vec<String> {
        g["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().rsplit('/').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(groups[0]["kind"], "exact");
    assert_eq!(names(&groups[0]), ["dog-copy.png", "dog.png"]);
    let near: Vec<&serde_json::Value> = groups.iter().filter(|g| g["kind"] == "near").collect();
    assert!(near.iter().any(|g| names(g) == ["cat-edited.png", "cat.png"]), "{groups:?}");
    let out = pe(&["similar", &s(&tmp.path().join("elsewhere.png")), "--index", &idx]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn parquet_export_reads_back_elsewhere_and_imports_to_the_same_index() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_images(&fx, &photos);
    let m = model_args(&fx);
    let idx = tmp.path().join("idx");
    let mut args = vec!["index".to_string(), s(&photos), "--index".into(), s(&idx)];
    args.extend(m.clone());
    ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let out = tmp.path().join("photos.parquet");
    ok(&pe(&["index", "export", "--parquet", &s(&out), "--index", &s(&idx)]));

    // Another reader sees the same rows, embeddings and metadata.
    if let Some(py) = pe_testutil::python_with_readers() {
        let script = r#"
import json, sys, duckdb, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
meta = {k.decode(): v.decode() for k, v in f.metadata.metadata.items()}
t = f.read()
rows = duckdb.sql(f"select path, hash, width, height, embedding from '{sys.argv[1]}' order by path").fetchall()
print(json.dumps({"model": meta["pe.model"], "dtype": meta["pe.dtype"], "dim": meta["pe.dim"],
                  "type": str(t.schema.field("embedding").type),
                  "rows": [[r[0], r[1], r[2], r[3], [float(x) for x in r[4]]] for r in rows]}))
"#;
        let res = Command::new(py).args(["-c", script, &s(&out)]).output().unwrap();
        let v: serde_json::Value = serde_json::from_str(&ok(&res)).unwrap();
        assert_eq!(v["model"], "tiny-cls");
        assert_eq!(v["dtype"], "f32");
        assert!(v["type"].as_str().unwrap().starts_with("fixed_size_list<"), "{}", v["type"]);
        let index = Index::open(&idx).unwrap();
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 6);
        for r in rows {
            let path = PathBuf::from(r[0].as_str().unwrap());
            let want = index.catalog().vector_of(&path).unwrap().unwrap();
            let got: Vec<f32> = r[4].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            assert_eq!(got, want, "{}: float32 values, bit for bit", path.display());
            assert_eq!(r[1].as_str().unwrap(), pe_index::hash_file(&path).unwrap());
            let info = perception_encoder::preprocess::probe(&std::fs::read(&path).unwrap(), 1 << 30).unwrap();
            assert_eq!((r[2].as_u64().unwrap(), r[3].as_u64().unwrap()), (info.width as u64, info.height as u64));
        }
    }

    // Import into a new index (its model from the file's metadata): the same index, and the
    // folder is then unchanged to it (sizes and times came along), so nothing is embedded.
    let imported = tmp.path().join("imported");
    ok(&pe(&["index", "import", &s(&out), "--index", &s(&imported)]));
    assert_same_index(&idx, &imported);
    let again = pe(&["index", &s(&photos), "--index", &s(&imported)]);
    let log = ok_stderr(&again);
    assert!(log.contains("0 embedded, 0 reused, 6 unchanged"), "{log}");

    // Misuse and damaged files: clear errors, the index untouched.
    let bad_ext = pe(&["index", "export", "--parquet", &s(&tmp.path().join("x.csv")), "--index", &s(&idx)]);
    assert_eq!(bad_ext.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_ext.stderr).contains(".parquet"));
    let no_dir = pe(&["index", "export", "--parquet", &s(&tmp.path().join("nope/x.parquet")), "--index", &s(&idx)]);
    assert!(String::from_utf8_lossy(&no_dir.stderr).contains("does not exist"));
    let garbage = tmp.path().join("garbage.parquet");
    std::fs::write(&garbage, b"PAR1 this is not parquet at all PAR1").unwrap();
    let truncated = tmp.path().join("truncated.parquet");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    for f in [&garbage, &truncated] {
        let r = pe(&["index", "import", &s(f), "--index", &s(&imported)]);
        assert_eq!(r.status.code(), Some(1), "an unreadable input: {}", f.display());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(&s(f)) && err.lines().count() == 1, "{err}");
    }
    assert_same_index(&idx, &imported);
}

fn ok_stderr(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn videos_are_indexed_as_embed_video_embeds_them() {
    let Some(fx) = fixtures() else { return };
    if !perception_encoder::video::available() {
        assert!(!std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"), "PE_REQUIRE_FIXTURES=1 but no FFmpeg");
        eprintln!("skipping: no FFmpeg");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let media = tmp.path().join("media");
    copy_images(&fx, &media);
    std::fs::copy(fx.join("dog.mp4"), media.join("dog.mp4")).unwrap();
    let m = model_args(&fx);
    let video = std::fs::canonicalize(media.join("dog.mp4")).unwrap();
    let build = |dir: &str, extra: &[&str]| {
        let mut args = vec!["index".to_string(), s(&media), "--index".into(), s(&tmp.path().join(dir))];
        args.extend(m.clone());
        args.extend(extra.iter().map(|x| x.to_string()));
        ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        Index::open(&tmp.path().join(dir)).unwrap()
    };
    let index = build("with", &[]);
    let stored = index.catalog().vector_of(&video).unwrap().expect("the video is indexed");
    let mut args = vec!["embed-video".to_string()];
    args.extend(m.clone());
    args.push(s(&video));
    let line: serde_json::Value =
        serde_json::from_str(ok(&pe(&args.iter().map(String::as_str).collect::<Vec<_>>())).trim()).unwrap();
    let want: Vec<f32> = line["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let d = stored.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d <= 1e-5, "the stored video embedding is embed-video's (off by {d})");
    let out = ok(&pe(&["search", "--index", &s(&tmp.path().join("with")), "-f", "--top", "1", &s(&video)]));
    assert_eq!(out.trim(), s(&video));
    let without = build("without", &["--no-videos"]);
    assert_eq!(without.catalog().vector_of(&video).unwrap(), None, "--no-videos leaves it out");
    assert_eq!(without.catalog().counts().unwrap().0, pe_testutil::FIXTURE_IMAGES.len());
}
