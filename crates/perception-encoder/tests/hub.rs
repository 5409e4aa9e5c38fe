//! Hub downloads against a loopback HTTP server that serves fixture files in the hub's URL
//! layout (`/{repo}/resolve/{revision}/{file}` with `etag`, `x-repo-commit` and ranges).
//! One test function: the environment variables it sets are process-wide.

mod common;

use std::path::PathBuf;

use pe_testutil::hub::{serve, Mode, COMMIT};

use common::{assert_close, fixture, fixtures, load_tensors};
use perception_encoder::{hub, Clip, ClipConfig, Error, LoadOptions};

/// What a download reported.
#[derive(Default)]
struct Heard {
    started: Vec<(String, u64, u64)>,
    bytes: u64,
    finished: usize,
}

impl hub::Progress for Heard {
    fn start(&mut self, file: &str, total: u64, done: u64) {
        self.started.push((file.to_string(), total, done));
    }
    fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
    fn finish(&mut self) {
        self.finished += 1;
    }
}

#[test]
fn hub_download_cache_offline_and_token() {
    let Some(dir) = fixtures() else { return };
    let bytes = std::fs::read(fixture(&dir, "tiny-cls.pt")).unwrap();
    let (endpoint, log) =
        serve(vec![("/facebook/tiny-cls/resolve/main/tiny-cls.pt".into(), bytes.clone())], Mode::Normal);
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", &endpoint);
    std::env::set_var("HF_TOKEN", "hf_test_token");
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_HUB_CACHE");

    // First call downloads into the standard cache layout.
    let mut heard = Heard::default();
    let path = hub::fetch("facebook/tiny-cls", "tiny-cls.pt", &mut heard).unwrap();
    assert_eq!(heard.started, [("tiny-cls.pt".to_string(), bytes.len() as u64, 0)]);
    assert_eq!((heard.bytes, heard.finished), (bytes.len() as u64, 1));
    let expected_dir: PathBuf = home.path().join("hub/models--facebook--tiny-cls/snapshots").join(COMMIT);
    assert_eq!(path, expected_dir.join("tiny-cls.pt"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(
        std::fs::read_to_string(home.path().join("hub/models--facebook--tiny-cls/refs/main")).unwrap().trim(),
        COMMIT
    );
    let n_requests = log.lock().unwrap().len();
    assert!(n_requests >= 1);
    assert!(log.lock().unwrap().iter().all(|r| r.auth.as_deref() == Some("Bearer hf_test_token")));

    // The downloaded checkpoint gives the reference's numbers.
    let cfg = ClipConfig::from_json_file(fixture(&dir, "tiny-cls.json")).unwrap();
    let model = Clip::load(&cfg, &path, &LoadOptions::default()).unwrap();
    let t = load_tensors(&fixture(&dir, "tiny-cls.expected.safetensors"));
    assert_close(
        "downloaded tiny-cls",
        &model.encode_image(&t["pixels_native"], false).unwrap(),
        &t["image_embed_native"],
    );

    // A second call reuses the cache without any request.
    assert_eq!(hub::fetch("facebook/tiny-cls", "tiny-cls.pt", &mut ()).unwrap(), path);
    assert_eq!(log.lock().unwrap().len(), n_requests);

    // Offline: the cached copy works, anything else is a clear error and no request is made.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(hub::fetch("facebook/tiny-cls", "tiny-cls.pt", &mut ()).unwrap(), path);
    let err = hub::fetch_checkpoint("PE-Core-T16-384", &mut ()).unwrap_err();
    assert!(matches!(err, Error::Hub { .. }) && err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(log.lock().unwrap().len(), n_requests);
    std::env::remove_var("HF_HUB_OFFLINE");

    // HF_HUB_CACHE points at the cache directly.
    let other = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", other.path());
    let p2 = hub::fetch("facebook/tiny-cls", "tiny-cls.pt", &mut ()).unwrap();
    assert!(p2.starts_with(other.path()), "{}", p2.display());
    std::env::remove_var("HF_HUB_CACHE");

    // A file the hub does not have.
    let err = hub::fetch("facebook/tiny-cls", "absent.pt", &mut ()).unwrap_err().to_string();
    assert!(err.contains("absent.pt"), "{err}");

    // An interrupted download resumes where it stopped: the second request asks for the rest.
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", cache.path());
    let (cut_endpoint, cut_log) =
        serve(vec![("/facebook/tiny-cls/resolve/main/tiny-cls.pt".into(), bytes.clone())], Mode::CutAt(1000));
    std::env::set_var("HF_ENDPOINT", &cut_endpoint);
    let mut heard = Heard::default();
    let p3 = hub::fetch("facebook/tiny-cls", "tiny-cls.pt", &mut heard).unwrap();
    assert_eq!(std::fs::read(&p3).unwrap(), bytes);
    let ranges: Vec<Option<String>> = cut_log.lock().unwrap().iter().map(|r| r.range.clone()).collect();
    assert_eq!(ranges, [Some("bytes=0-0".to_string()), Some("bytes=0-".into()), Some("bytes=1000-".into())]);
    assert_eq!(heard.bytes, bytes.len() as u64);

    // A hub that accepts and never answers fails within the timeout, saying what to do.
    let (hang, _) = serve(Vec::new(), Mode::Hang);
    std::env::set_var("HF_ENDPOINT", &hang);
    std::env::set_var("HF_HUB_ETAG_TIMEOUT", "1");
    let started = std::time::Instant::now();
    let err = hub::fetch("facebook/other", "other.pt", &mut ()).unwrap_err().to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(
        err.contains("cannot reach the hub") && err.contains("--weights") && err.contains("HF_HUB_OFFLINE=1"),
        "{err}"
    );
    std::env::remove_var("HF_HUB_ETAG_TIMEOUT");
    std::env::remove_var("HF_HUB_CACHE");
}
