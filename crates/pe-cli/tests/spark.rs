//! The Spark driver (`examples/spark/embed_shards.py`) on a real Spark in local mode, with a
//! task killed in its first attempt: the job completes, every shard has one part, no key is
//! missing or doubled, and the embeddings equal the single-process run's bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pe_testutil::fixtures;
use pe_testutil::webdataset::shard;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Every part's rows in `dir`: (part, key) -> embedding bits.
fn rows(dir: &Path) -> BTreeMap<(String, String), Vec<u32>> {
    let mut all = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "parquet") {
            let part = path.file_name().unwrap().to_string_lossy().into_owned();
            for r in pe_index::output::read(&path).unwrap() {
                let r = r.unwrap();
                let bits = r.embedding.iter().map(|x| x.to_bits()).collect();
                assert!(all.insert((part.clone(), r.key), bits).is_none(), "a key twice in {part}");
            }
        }
    }
    all
}

/// Java for Spark; missing, the test is skipped, or fails under PE_REQUIRE_FIXTURES=1.
fn java() -> bool {
    let ok = Command::new("java").arg("-version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"),
            "PE_REQUIRE_FIXTURES=1 but there is no `java` for Spark"
        );
        eprintln!("skipping the Spark test: no java");
    }
    ok
}

#[test]
fn spark_job_with_a_failed_task_equals_the_single_process_run() {
    let Some(fx) = fixtures() else { return };
    let Some(py) = pe_testutil::python_with_readers() else { return };
    if !java() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    let images = pe_testutil::FIXTURE_IMAGES;
    let mut readable = 0;
    for i in 0..6 {
        let mut samples: Vec<(String, &str)> =
            (0..4).map(|j| (format!("{:06}", i * 10 + j), images[(i + j) % images.len()])).collect();
        if i == 4 {
            samples.push(("000049".into(), "-"));
        }
        readable += 4;
        let refs: Vec<(&str, &str)> = samples.iter().map(|(k, f)| (k.as_str(), *f)).collect();
        shard(&shards.join(format!("{i:05}.tar")), &fx, &refs, 0);
    }
    let pe = env!("CARGO_BIN_EXE_pe");
    let (cfg, w) = (s(&fx.join("tiny-cls.json")), s(&fx.join("tiny-cls.safetensors")));
    let pattern = format!("{}/{{00000..00005}}.tar", s(&shards));

    let single = tmp.path().join("single");
    let out = Command::new(pe)
        .args(["embed-image", "--config", &cfg, "--weights", &w, "--threads", "2", "--input", &pattern])
        .args(["--output-dir", &s(&single)])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "one sample is garbage: {}", String::from_utf8_lossy(&out.stderr));

    // Two tasks of three shards; the second shard of the first task is killed mid-way once.
    let spark = tmp.path().join("spark");
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/spark/embed_shards.py");
    let out = Command::new(&py)
        .arg(&driver)
        .args(["--master", "local[2,3]", "--tasks", "2", "--pe", pe, "--input", &pattern])
        .args(["--output-dir", &s(&spark), "--", "--config", &cfg, "--weights", &w])
        .env("PE_SPARK_FAIL_ONCE", s(&shards.join("00001.tar")))
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("embed_shards: 6 shards in 2 tasks, 1 threads each"), "{stdout}");
    assert!(stdout.contains("task 0: 3 shards, pe exit 0 (attempt 2)"), "the killed task was retried: {stdout}");
    assert!(stdout.contains("task 1: 3 shards, pe exit 1"), "{stdout}");
    assert!(stdout.contains(&format!("6 parts, {readable} rows ({readable} readable samples)")), "{stdout}");
    assert!(stderr.contains("000049"), "the garbage sample is reported: {stderr}");
    assert!(stderr.contains("killing pe with the part of"), "killed while writing a part: {stderr}");
    assert!(stdout.contains("removed 1 temporary files of failed attempts"), "{stdout}");

    let (a, b) = (rows(&single), rows(&spark));
    assert_eq!(a.len(), readable);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same keys in the same parts");
    assert!(a == b, "the embeddings differ from the single-process run's");
    let leftovers: Vec<_> = std::fs::read_dir(&spark)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".parquet"))
        .collect();
    assert!(leftovers.is_empty() || leftovers.iter().all(|n| n.starts_with('_')), "{leftovers:?}");
}
