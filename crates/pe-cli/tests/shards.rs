//! A sharded corpus (WebDataset tars made here from the fixture images): one Parquet part per
//! shard with the same embeddings as `pe embed-image` on the same files, resumable, one
//! worker's share by `--shard I/N` or Slurm's variables, and bad shards reported.

use std::path::Path;
use std::process::{Command, Output};

use pe_testutil::fixtures;
use pe_testutil::webdataset::{shard, tar_of};

fn pe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pe"));
    c.args(args).env_remove("PE_MODEL").env_remove("SLURM_ARRAY_TASK_ID").env_remove("JOB_COMPLETION_INDEX");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `(key, embedding)` rows of a part.
fn part(path: &Path) -> Vec<(String, Vec<f32>)> {
    pe_index::output::read(path).unwrap().map(|r| r.map(|r| (r.key, r.embedding)).unwrap()).collect()
}

#[test]
fn shards_become_parts_equal_to_embed_image_and_resume() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    let content: [&[(&str, &str)]; 3] = [
        &[("000000", "cat.png"), ("000001", "dog.png")],
        &[("000002", "synthetic_card.png"), ("000003", "ocrbench_centre.jpg")],
        &[("000004", "cat.png"), ("000005", "Rock-climbing-Canada-1920x1147.jpg")],
    ];
    for (i, samples) in content.iter().enumerate() {
        // The last shard is cut inside its second image: its first sample survives.
        shard(&shards.join(format!("{i:05}.tar")), &fx, samples, if i == 2 { 100_000 } else { 0 });
    }
    let (cfg, w) = (s(&fx.join("tiny-cls.json")), s(&fx.join("tiny-cls.safetensors")));
    let m = ["--config", cfg.as_str(), "--weights", w.as_str()];
    let pattern = format!("{}/{{00000..00002}}.tar", s(&shards));
    let out_dir = tmp.path().join("parts");
    let run = |extra: &[&str], dir: &Path, env: &[(&str, &str)]| {
        let d = s(dir);
        let mut a = vec!["embed-image"];
        a.extend(m);
        a.extend(["--input", pattern.as_str(), "--output-dir", d.as_str()]);
        a.extend(extra);
        pe(&a, env)
    };
    let out = run(&[], &out_dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the cut shard loses a sample: {err}");
    assert!(err.contains("00002.tar: sample 000005: the tar ends early"), "{err}");
    // Each part equals `pe embed-image` on the same files, bit for bit, keys in shard order.
    for (i, samples) in content.iter().enumerate() {
        let got = part(&out_dir.join(format!("{i:05}.parquet")));
        let files: Vec<String> = samples.iter().map(|(_, f)| s(&fx.join("images").join(f))).collect();
        let take = if i == 2 { 1 } else { 2 };
        let mut a = vec!["embed-image"];
        a.extend(m);
        a.extend(files[..take].iter().map(String::as_str));
        let direct = pe(&a, &[]);
        let want: Vec<Vec<f32>> = String::from_utf8(direct.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
            })
            .collect();
        assert_eq!(
            got.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            samples[..take].iter().map(|r| r.0).collect::<Vec<_>>()
        );
        assert_eq!(got.iter().map(|r| r.1.clone()).collect::<Vec<_>>(), want, "shard {i}");
        let meta = pe_index::output::metadata(&out_dir.join(format!("{i:05}.parquet"))).unwrap();
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("pe.samples_failed").as_deref(), Some(if i == 2 { "1" } else { "0" }));
    }
    // DuckDB reads the directory of parts as one table: every readable sample once.
    if let Some(py) = pe_testutil::python_with_readers() {
        let q = format!(
            "import duckdb; print(duckdb.sql(\"select count(*), count(distinct key), count(distinct shard), min(len(embedding)), count(json), min(json) from '{}/*.parquet'\").fetchall())",
            s(&out_dir)
        );
        let r = Command::new(py).args(["-c", &q]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout).trim(),
            "[(5, 5, 3, 32, 5, '{\"file\": \"cat.png\"}')]",
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    // A rerun finds every part and does nothing.
    let before = std::fs::metadata(out_dir.join("00000.parquet")).unwrap().modified().unwrap();
    let again = run(&[], &out_dir, &[]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("3 have their part already"));
    assert_eq!(std::fs::metadata(out_dir.join("00000.parquet")).unwrap().modified().unwrap(), before);

    // One worker's share: by --shard, and by Slurm's variables.
    let names = |dir: &Path| {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let one = tmp.path().join("one");
    assert!(run(&["--shard", "1/3"], &one, &[]).status.success());
    assert_eq!(names(&one), ["00001.parquet"]);
    let slurm = tmp.path().join("slurm");
    let r = run(&[], &slurm, &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2")]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(names(&slurm), ["00001.parquet"], "worker 1 of 2 takes the shards at odd positions");
    assert_eq!(
        pe(
            &[
                "embed-image",
                "--config",
                &cfg,
                "--weights",
                &w,
                "--input",
                &pattern,
                "--output-dir",
                &s(&slurm),
                "--shard",
                "3/3"
            ],
            &[]
        )
        .status
        .code(),
        Some(2)
    );

    // Shards listed on stdin (`--files-from -`), NUL-separated.
    let listed = tmp.path().join("listed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args([
            "embed-image",
            "--config",
            &cfg,
            "--weights",
            &w,
            "--files-from",
            "-",
            "-0",
            "--output-dir",
            &s(&listed),
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let list = format!("{}\0{}\0", s(&shards.join("00001.tar")), s(&shards.join("00000.tar")));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), list.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(names(&listed), ["00000.parquet", "00001.parquet"]);
    assert_eq!(part(&listed.join("00001.parquet")), part(&out_dir.join("00001.parquet")));

    // A missing shard is reported and leaves no part.
    let missing = format!("{}/{{00003..00003}}.tar", s(&shards));
    let gone = tmp.path().join("gone");
    let r =
        pe(&["embed-image", "--config", &cfg, "--weights", &w, "--input", &missing, "--output-dir", &s(&gone)], &[]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("00003.tar"), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(names(&gone).is_empty());
    // --list-shards prints one worker's shards without loading a model (none is given).
    let r =
        pe(&["embed-image", "--input", &pattern, "--output-dir", &s(&gone), "--list-shards", "--shard", "1/2"], &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{}\n", s(&shards.join("00001.tar"))));
    // Two shards with one file name would share a part: refused before anything runs.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(shards.join("00000.tar"), other.join("00000.tar")).unwrap();
    let both = format!("{{{},{}}}", s(&shards.join("00000.tar")), s(&other.join("00000.tar")));
    let r = pe(&["embed-image", "--config", &cfg, "--weights", &w, "--input", &both, "--output-dir", &s(&gone)], &[]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("would both be written to"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(names(&gone).is_empty());
}

/// `--captions`: each sample's `KEY.txt` and its text embedding beside the image's, null where
/// a sample has none; read back by DuckDB.
#[test]
fn captions_and_their_text_embeddings() {
    let Some(fx) = fixtures() else { return };
    let Some(py) = pe_testutil::python_with_readers() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let members = vec![
        ("a.png".to_string(), std::fs::read(fx.join("images/cat.png")).unwrap()),
        ("a.txt".to_string(), b"a photo of a cat".to_vec()),
        ("b.png".to_string(), std::fs::read(fx.join("images/dog.png")).unwrap()),
    ];
    let shard = tmp.path().join("00000.tar");
    std::fs::write(&shard, tar_of(members)).unwrap();
    let (cfg, w) = (s(&fx.join("tiny-cls.json")), s(&fx.join("tiny-cls.safetensors")));
    let out = tmp.path().join("parts");
    let r = pe(
        &[
            "embed-image",
            "--config",
            &cfg,
            "--weights",
            &w,
            "--input",
            &s(&shard),
            "--output-dir",
            &s(&out),
            "--captions",
        ],
        &[],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r0 = r;
    let q = format!(
        "import duckdb, json; print(json.dumps([[k, c, None if t is None else [float(x) for x in t]] for k, c, t in duckdb.sql(\"select key, caption, text_embedding from '{}/00000.parquet' order by key\").fetchall()]))",
        s(&out)
    );
    let got = Command::new(&py).args(["-c", &q]).output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&got.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&got.stderr)));
    assert_eq!(v[0][0], "a");
    assert_eq!(v[0][1], "a photo of a cat");
    assert_eq!((v[1][0].as_str(), v[1][1].is_null(), v[1][2].is_null()), (Some("b"), true, true));
    let text = pe(&["embed-text", "--config", &cfg, "--weights", &w, "a photo of a cat"], &[]);
    let line: serde_json::Value = serde_json::from_slice(&text.stdout).unwrap();
    let want: Vec<f64> = line["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let ours: Vec<f64> = v[0][2].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(ours.len(), want.len());
    let d = ours.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(d <= 1e-5, "text embedding differs by {d}");

    // `pe embed-text` over the shard: the captions alone, the same text embedding bit for bit;
    // the sample without a caption reported and counted.
    let texts = tmp.path().join("texts");
    let r =
        pe(&["embed-text", "--config", &cfg, "--weights", &w, "--input", &s(&shard), "--output-dir", &s(&texts)], &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("sample b: no caption"), "{err}");
    let q = format!(
        "import duckdb, json; print(json.dumps([[k, sh, c, [float(x) for x in e]] for k, sh, c, e in duckdb.sql(\"select key, shard, caption, embedding from '{}/00000.parquet'\").fetchall()]))",
        s(&texts)
    );
    let got = Command::new(py).args(["-c", &q]).output().unwrap();
    let t: serde_json::Value =
        serde_json::from_slice(&got.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&got.stderr)));
    assert_eq!(t.as_array().unwrap().len(), 1, "{t}");
    assert_eq!(
        (t[0][0].as_str(), t[0][1].as_str(), t[0][2].as_str()),
        (Some("a"), Some("00000"), Some("a photo of a cat"))
    );
    assert_eq!(t[0][3], v[0][2], "the same text embedding as the image part's");
    let meta = pe_index::output::metadata(&texts.join("00000.parquet")).unwrap();
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!((get("pe.samples_read").as_deref(), get("pe.samples_failed").as_deref()), (Some("2"), Some("1")));
    // The image parts: neither sample has a KEY.json, said once for the shard and counted.
    assert!(String::from_utf8_lossy(&r0.stderr)
        .contains("2 samples without usable JSON metadata (the first: sample a: no JSON member)"));
    let meta = pe_index::output::metadata(&out.join("00000.parquet")).unwrap();
    assert!(meta.contains(&("pe.samples_without_json".to_string(), "2".to_string())), "{meta:?}");
}

/// A folder of parts imports into a searchable index: samples are `SHARD/KEY`, contents keyed
/// by the `hash` column (BLAKE3 of the image bytes), the model taken from the parts' manifest;
/// parts of another model are refused.
#[test]
fn parts_import_into_a_searchable_index() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    shard(&shards.join("a.tar"), &fx, &[("k0", "cat.png"), ("k1", "dog.png"), ("k2", "-")], 0);
    shard(&shards.join("b.tar"), &fx, &[("k0", "synthetic_card.png"), ("sub/k1", "cat.png")], 0);
    let (cfg, w) = (s(&fx.join("tiny-cls.json")), s(&fx.join("tiny-cls.safetensors")));
    let parts = tmp.path().join("parts");
    let input = format!("{}/{{a,b}}.tar", s(&shards));
    let m = ["--config", cfg.as_str(), "--weights", w.as_str()];
    let mut a = vec!["embed-image", "--input", &input];
    let dir = s(&parts);
    a.extend(["--output-dir", dir.as_str()]);
    a.extend(m);
    assert_eq!(pe(&a, &[]).status.code(), Some(1), "k2 is garbage");
    let meta = pe_index::output::metadata(&parts.join("a.parquet")).unwrap();
    assert!(meta.iter().any(|(k, v)| k == "pe.manifest" && v.contains("\"weights_blake3\"")), "{meta:?}");

    let idx = tmp.path().join("idx");
    let out = pe(&["index", "import", &s(&parts), "--index", &s(&idx)], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("imported 4 rows (3 distinct contents)"), "{err}");
    let search = pe(&["search", "--index", &s(&idx), "--json", "--top", "4", &s(&fx.join("images/cat.png"))], &[]);
    assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
    let hits: Vec<serde_json::Value> =
        String::from_utf8_lossy(&search.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let top: Vec<&str> = hits.iter().take(2).map(|h| h["path"].as_str().unwrap()).collect();
    let mut want = [s(&shards.join("a.tar/k0")), s(&shards.join("b.tar/sub/k1"))];
    want.sort();
    let mut got = [top[0].to_string(), top[1].to_string()];
    got.sort();
    assert_eq!(got, want, "both copies of cat.png first: {hits:?}");
    assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{hits:?}");
    let dupes = String::from_utf8_lossy(&pe(&["dedupe", "--index", &s(&idx)], &[]).stdout).to_string();
    let first: serde_json::Value = serde_json::from_str(dupes.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "exact", "{dupes}");
    assert_eq!(first["paths"].as_array().unwrap().len(), 2, "{dupes}");

    // Parts of another precision are another model's: refused, the index left as it was.
    let other = tmp.path().join("bf16");
    let mut a = vec!["embed-image", "--input", &input, "--dtype", "bf16"];
    let dir = s(&other);
    a.extend(["--output-dir", dir.as_str()]);
    a.extend(m);
    assert_eq!(pe(&a, &[]).status.code(), Some(1));
    let out = pe(&["index", "import", &s(&other), "--index", &s(&idx)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let again = pe(&["search", "--index", &s(&idx), "--json", "--top", "10", "cat"], &[]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).lines().count(), 4);
}

/// Hostile shards for `pe embed-text --input` and hostile parts for `pe index import`: a
/// missing or truncated shard is reported and counted (exit 1); a part whose keys would leave
/// its shard (`..`, a root, an empty component) or that names no shard is refused with the
/// row and key (exit 1), and nothing of it lands in the index.
#[test]
fn hostile_shards_and_parts_are_reported_not_followed() {
    let Some(fx) = fixtures() else { return };
    let Some(py) = pe_testutil::python_with_readers() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cat = std::fs::read(fx.join("images/cat.png")).unwrap();
    let mut members = Vec::new();
    for (k, caption) in [("k0", "a cat"), ("k1", "a dog"), ("k2", "a bird")] {
        members.push((format!("{k}.png"), cat.clone()));
        members.push((format!("{k}.txt"), caption.as_bytes().to_vec()));
    }
    let whole = tar_of(members);
    let shard = tmp.path().join("a.tar");
    std::fs::write(&shard, &whole).unwrap();
    let truncated = tmp.path().join("cut.tar");
    std::fs::write(&truncated, &whole[..3000]).unwrap();
    let (cfg, w) = (s(&fx.join("tiny-cls.json")), s(&fx.join("tiny-cls.safetensors")));
    let m = ["--config", cfg.as_str(), "--weights", w.as_str()];
    let texts = s(&tmp.path().join("texts"));
    for (input, says) in
        [(s(&tmp.path().join("missing.tar")), "No such file"), (s(&truncated), "the tar ends early or is damaged")]
    {
        let mut a = vec!["embed-text", "--input", input.as_str(), "--output-dir", texts.as_str()];
        a.extend(m);
        let r = pe(&a, &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{input}: {err}");
        assert!(err.contains(says), "{input}: {err}");
    }
    let meta = pe_index::output::metadata(&tmp.path().join("texts/cut.parquet")).unwrap();
    assert!(meta.contains(&("pe.samples_failed".to_string(), "1".to_string())), "{meta:?}");

    let parts = tmp.path().join("parts");
    let mut a = vec!["embed-image", "--input", &shard.to_str().unwrap(), "--output-dir", parts.to_str().unwrap()];
    a.extend(m);
    assert!(pe(&a, &[]).status.success());
    // The same part rewritten by pyarrow with hostile keys, or without its pe.shard.
    let script = format!(
        r#"
import os, pyarrow as pa, pyarrow.parquet as pq
src = "{src}"
t = pq.read_table(src)
meta = {{k: v for k, v in pq.ParquetFile(src).metadata.metadata.items() if k != b"ARROW:schema"}}
for name, key in [("dotdot", "../../etc/passwd"), ("root", "/etc/passwd"), ("empty", "a//b"), ("noshard", None)]:
    os.makedirs(f"{out}/{{name}}")
    tt = t if key is None else t.set_column(t.schema.get_field_index("key"), "key", pa.array([key, "k1", "k2"]))
    m = {{k: v for k, v in meta.items() if not (key is None and k == b"pe.shard")}}
    pq.write_table(tt.replace_schema_metadata(m), f"{out}/{{name}}/a.parquet")
"#,
        src = s(&parts.join("a.parquet")),
        out = s(tmp.path()),
    );
    let made = Command::new(&py).args(["-c", &script]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let idx = s(&tmp.path().join("idx"));
    for (name, says) in [
        ("dotdot", r#"row 0: key "../../etc/passwd" is not a sample name"#),
        ("root", r#"row 0: key "/etc/passwd" is not a sample name"#),
        ("empty", r#"row 0: key "a//b" is not a sample name"#),
        ("noshard", "no pe.shard metadata naming the shard"),
    ] {
        let r = pe(&["index", "import", &s(&tmp.path().join(name)), "--index", &idx], &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(says) && err.lines().count() == 1, "{name}: {err}");
    }
    let r = pe(&["search", "--index", &idx, "--json", "cat"], &[]);
    assert_eq!(String::from_utf8_lossy(&r.stdout).lines().count(), 0, "nothing imported");
    let r = pe(&["index", "import", &s(&parts), "--index", &idx], &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = pe(&["search", "--index", &idx, "--json", "--top", "5", "cat"], &[]);
    assert_eq!(String::from_utf8_lossy(&r.stdout).lines().count(), 3, "the good part imports");
}
