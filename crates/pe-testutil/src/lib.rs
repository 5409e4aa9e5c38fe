//! Test support shared by the workspace's test suites.

use std::path::PathBuf;

pub mod hub;
pub mod load;
pub mod webdataset;

/// Every image file in the fixtures' `images/` directory.
pub const FIXTURE_IMAGES: &[&str] = &[
    "cat.png",
    "dog.png",
    "synthetic_card.png",
    "ocrbench_centre.jpg",
    "Rock-climbing-Canada-1920x1147.jpg",
    "selfie_cathedral_peak.jpg",
];

/// The reference fixtures directory: `PE_FIXTURES`, default `../shared/fixtures` beside the
/// repository. `None`, with a printed reason, when absent; with `PE_REQUIRE_FIXTURES=1` a
/// missing directory panics instead, so CI cannot pass by skipping.
pub fn fixtures() -> Option<PathBuf> {
    let dir = match std::env::var_os("PE_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    };
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    if std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") {
        panic!("PE_REQUIRE_FIXTURES=1 but no fixtures at {} (set PE_FIXTURES)", dir.display());
    }
    eprintln!("skipping: no fixtures at {} (set PE_FIXTURES)", dir.display());
    None
}

/// A Python with pyarrow, duckdb and pyspark (`PE_PYTHON`; `.ci/run` makes one), to read our Parquet
/// back with other readers. Missing, the check is skipped with a printed reason, unless
/// `PE_REQUIRE_FIXTURES=1`, where it panics.
pub fn python_with_readers() -> Option<PathBuf> {
    match std::env::var_os("PE_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                !std::env::var("PE_REQUIRE_FIXTURES").is_ok_and(|v| v == "1"),
                "PE_REQUIRE_FIXTURES=1 but PE_PYTHON (a Python with pyarrow, duckdb and pyspark) is not set"
            );
            eprintln!("skipping the pyarrow/duckdb read-back: PE_PYTHON is not set");
            None
        }
    }
}
