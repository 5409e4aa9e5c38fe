//! Hub downloads against a loopback HTTP server that serves fixture files in the hub's URL
//! layout (`/{repo}/resolve/{revision}/{file}` with `etag`, `x-repo-commit` and ranges).
//! One test function: the environment variables it sets are process-wide.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{assert_close, fixture, fixtures, load_tensors};
use perception_encoder::{hub, Clip, ClipConfig, Error, LoadOptions};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct Log {
    requests: Vec<(String, Option<String>)>, // (path, authorization)
}

/// Serve `files` (url path -> bytes) on 127.0.0.1 until the process ends.
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut range, mut auth) = (None, None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            log2.lock().unwrap().requests.push((path.clone(), auth));
            let Some((_, body)) = files.iter().find(|(p, _)| *p == path) else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let n = body.len();
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
            let end = match range.as_deref() {
                Some("bytes=0-0") => 0,
                _ => n - 1,
            };
            let chunk = &body[start..=end];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{n}\r\n\
                 ETag: \"etag-{n}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                chunk.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(chunk);
        }
    });
    (format!("http://{addr}"), log)
}

#[test]
fn hub_download_cache_offline_and_token() {
    let Some(dir) = fixtures() else { return };
    let bytes = std::fs::read(fixture(&dir, "tiny-cls.pt")).unwrap();
    let (endpoint, log) = serve(vec![("/facebook/tiny-cls/resolve/main/tiny-cls.pt".into(), bytes.clone())]);
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", &endpoint);
    std::env::set_var("HF_TOKEN", "hf_test_token");
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_HUB_CACHE");

    // First call downloads into the standard cache layout.
    let path = hub::fetch("facebook/tiny-cls", "tiny-cls.pt", false).unwrap();
    let expected_dir: PathBuf = home.path().join("hub/models--facebook--tiny-cls/snapshots").join(COMMIT);
    assert_eq!(path, expected_dir.join("tiny-cls.pt"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(
        std::fs::read_to_string(home.path().join("hub/models--facebook--tiny-cls/refs/main")).unwrap().trim(),
        COMMIT
    );
    let n_requests = log.lock().unwrap().requests.len();
    assert!(n_requests >= 1);
    assert!(log.lock().unwrap().requests.iter().all(|(_, a)| a.as_deref() == Some("Bearer hf_test_token")));

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
    assert_eq!(hub::fetch("facebook/tiny-cls", "tiny-cls.pt", false).unwrap(), path);
    assert_eq!(log.lock().unwrap().requests.len(), n_requests);

    // Offline: the cached copy works, anything else is a clear error and no request is made.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(hub::fetch("facebook/tiny-cls", "tiny-cls.pt", false).unwrap(), path);
    let err = hub::fetch_checkpoint("PE-Core-T16-384", false).unwrap_err();
    assert!(matches!(err, Error::Hub { .. }) && err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(log.lock().unwrap().requests.len(), n_requests);
    std::env::remove_var("HF_HUB_OFFLINE");

    // HF_HUB_CACHE points at the cache directly.
    let other = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", other.path());
    let p2 = hub::fetch("facebook/tiny-cls", "tiny-cls.pt", false).unwrap();
    assert!(p2.starts_with(other.path()), "{}", p2.display());
    std::env::remove_var("HF_HUB_CACHE");

    // A file the hub does not have.
    let err = hub::fetch("facebook/tiny-cls", "absent.pt", false).unwrap_err().to_string();
    assert!(err.contains("absent.pt"), "{err}");
}
