//! The server's contract checked by a tool we did not write: schemathesis (PyPI) generates
//! requests from `/openapi.json` against a live server (the tiny model, with an index so the
//! search routes answer) and checks every answer against the document. It must find nothing.

mod common;

use std::process::Command;

use pe_server::ServerConfig;
use pe_testutil::fixtures;

/// `PE_PYTHON` when it has schemathesis (`.ci/run` installs it in that venv).
fn schemathesis() -> Option<std::path::PathBuf> {
    let python = pe_testutil::python_with_readers()?;
    let has = Command::new(&python).args(["-c", "import schemathesis"]).output().is_ok_and(|o| o.status.success());
    if has {
        return Some(python);
    }
    assert!(
        !std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"),
        "PE_REQUIRE_FIXTURES=1 but {} has no schemathesis (pip install schemathesis)",
        python.display()
    );
    eprintln!("skipping: {} has no schemathesis", python.display());
    None
}

#[test]
fn schemathesis_finds_nothing() {
    let Some(fx) = fixtures() else { return };
    let Some(python) = schemathesis() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let index = common::build_index(&fx, tmp.path());
    let cfg = ServerConfig { index: Some(index), ..ServerConfig::default() };
    let base = common::serve(common::tiny(&fx), cfg);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let runner = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis_run.py");
    let out = Command::new(python)
        .args([runner, "--config-file", config, "--no-color", "run", &format!("{base}/openapi.json")])
        .args(["--checks", "all", "--max-examples", "40", "--seed", "1", "--workers", "2"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // It tested every operation the document lists.
    assert!(text.contains("Selected: 14/14") && text.contains("Tested: 14"), "{text}");
}
