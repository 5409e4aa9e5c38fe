//! Shared by the server's test files: a server on a free loopback port.

use std::time::Duration;

use std::path::{Path, PathBuf};

use pe_index::{Index, Manifest, TransformSpec, UpdateOptions};
use pe_server::ServerConfig;
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::{Clip, ClipConfig, LoadOptions, Precision};

/// Serve `model` on 127.0.0.1 (a free port) from a background runtime; returns the base URL.
#[allow(dead_code)]
pub fn serve(model: Clip, cfg: ServerConfig) -> String {
    serve_until(model, cfg).url
}

/// A server on a background thread that stops when told.
#[allow(dead_code)]
pub struct Running {
    /// Base URL.
    pub url: String,
    /// Send to start the graceful shutdown.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// The server's result once it has stopped.
    pub done: std::thread::JoinHandle<std::io::Result<()>>,
}

/// Serve `model` on 127.0.0.1 (a free port) until [`Running::stop`] is sent.
pub fn serve_until(model: Clip, cfg: ServerConfig) -> Running {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            pe_server::serve_on(listener, model, cfg, async move {
                // A dropped sender means "serve until the process ends".
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await
        })
    });
    let url = format!("http://{}", rx.recv_timeout(Duration::from_secs(60)).unwrap());
    Running { url, stop, done }
}

/// The server's `/metrics` text.
#[allow(dead_code)]
pub fn metrics(base: &str) -> String {
    ureq::get(&format!("{base}/metrics")).call().unwrap().into_string().unwrap()
}

/// The value of the series `name` (metric name and labels, as printed) in `/metrics` text.
#[allow(dead_code)]
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[allow(dead_code)]
pub mod cases;

/// Send `req` (with a JSON body if given): the status and the JSON answer, errors included.
#[allow(dead_code)]
pub fn send(req: ureq::Request, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(serde_json::Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(serde_json::Value::Null)),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// The fixtures' tiny model.
#[allow(dead_code)]
pub fn tiny(dir: &Path) -> Clip {
    let cfg = ClipConfig::from_json_file(dir.join("tiny-cls.json")).unwrap();
    Clip::load(&cfg, dir.join("tiny-cls.pt"), &LoadOptions::default()).unwrap()
}

/// The fixture images indexed with the tiny model, as `pe index` does.
#[allow(dead_code)]
pub fn build_index(fx: &Path, root: &Path) -> PathBuf {
    let photos = root.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in pe_testutil::FIXTURE_IMAGES {
        std::fs::copy(fx.join("images").join(name), photos.join(name)).unwrap();
    }
    let photos = std::fs::canonicalize(photos).unwrap();
    let cfg = ClipConfig::from_json_file(fx.join("tiny-cls.json")).unwrap();
    let manifest = Manifest {
        format_version: pe_index::FORMAT_VERSION,
        model: Manifest::weights_spec(&cfg.name, Some(fx.join("tiny-cls.json")), &fx.join("tiny-cls.pt")).unwrap(),
        precision: Precision::F32,
        layer: -1,
        transform: TransformSpec::of(&ImageTransform::for_config(&cfg.vision)),
        dim: cfg.vision.output_dim.unwrap(),
    };
    let dir = photos.join(".pe-index");
    let mut index = Index::open_or_create(&dir, &manifest).unwrap();
    let report =
        index.update(&pe_index::LazyModel::of(&tiny(fx)), &[photos], &UpdateOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(report.embedded, pe_testutil::FIXTURE_IMAGES.len());
    dir
}
