//! Fuzz targets: each takes arbitrary bytes and runs one reader of untrusted input the way `pe`
//! does, checking only that it returns (an error is fine; a panic, abort or hang is the bug).
//! The AFL++ binaries in `src/bin` call these; `tests/replay.rs` runs every committed corpus
//! file through them in `cargo test`.
//!
//! Run one (see docs/reliability.md for the numbers of the last runs):
//! `cargo afl build --release -p pe-fuzz --features afl --bin fuzz_pt &&
//!  cargo afl fuzz -i crates/pe-fuzz/corpora/pt -o /tmp/afl-pt target/release/fuzz_pt`

use std::path::PathBuf;
use std::sync::OnceLock;

use perception_encoder::candle_core::{DType, Device};
use perception_encoder::preprocess::{decode, ImageTransform};
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::weights::Checkpoint;
use perception_encoder::ClipConfig;

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets by name, as the corpus folders are named.
pub const TARGETS: &[(&str, Target)] =
    &[("pt", checkpoint), ("safetensors", checkpoint), ("config", config), ("image", image), ("tokenizer", tokenizer)];

/// A scratch file per process in memory (checkpoints are read from paths, memory-mapped).
fn scratch() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("pe-fuzz-{}", std::process::id()))
}

/// A checkpoint file (`.pt` zip + pickle, or safetensors): open it, list its shapes, and read
/// every tensor small enough to be a plausible weight.
pub fn checkpoint(data: &[u8]) {
    let path = scratch();
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(ck) = Checkpoint::open(&path) {
        for (key, shape) in ck.shapes() {
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n.is_some_and(|n| n <= 1 << 20) {
                let _ = ck.tensor(&key, DType::F32, &Device::Cpu);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A model config as JSON: parse and validate, then list the tensors it would need.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = ClipConfig::from_json_str(text) {
            let _ = perception_encoder::weights::official_shapes(&cfg);
            let _ = perception_encoder::weights::num_parameters(&cfg);
        }
    }
}

/// An image file: decode under a 4 Mpx limit, then the 32 px squash and centre-crop transforms.
pub fn image(data: &[u8]) {
    if let Ok(img) = decode(data, 1 << 22) {
        let t = ImageTransform { max_pixels: 1 << 22, ..ImageTransform::new(32) };
        let _ = t.apply(&img);
        let _ = t.with_mode(perception_encoder::preprocess::ResizeMode::CenterCrop).apply(&img);
    }
}

/// Text: tokenize (lossy UTF-8) at context 32, and decode the ids back.
pub fn tokenizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tok = ClipTokenizer::new(32);
    let ids = tok.tokenize(&text);
    let _ = tok.decode(&ids);
}

/// The server's routes over a tiny random model, built once per process.
fn service() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static SERVICE: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let cfg = ClipConfig::from_json_str(
            r#"{"vision": {"patch_size": 8, "width": 16, "layers": 1, "heads": 2, "mlp_ratio": 2.0,
                "output_dim": 8, "image_size": 16, "use_cls_token": true, "pool_type": "attn"},
               "text": {"context_length": 8, "width": 16, "heads": 2, "layers": 1, "output_dim": 8}}"#,
        )
        .expect("the fuzz model config is valid");
        let model = perception_encoder::Clip::random(&cfg, 0, &Default::default()).expect("a tiny random model");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let server = pe_server::ServerConfig {
            max_body_bytes: 1 << 20,
            max_pixels: 1 << 20,
            max_items: 8,
            max_prompts: 64,
            decode_budget_bytes: 64 << 20,
            ..Default::default()
        };
        let router = runtime.block_on(async { pe_server::router(model, server) });
        (runtime, router)
    })
}

/// An HTTP request to the server: the first byte picks the route, the second the content type,
/// the rest is the body (JSON bodies, base64 and data URLs, multipart uploads). Whatever the
/// input, the answer is a status other than 500.
pub fn request(data: &[u8]) {
    if let Some(s) = request_status(data) {
        assert!(s != 500, "500 for {data:?}");
    }
}

/// The status the server answers [`request`]'s input with (`None` for inputs too short).
pub fn request_status(data: &[u8]) -> Option<u16> {
    // Video uploads run FFmpeg (a process per input): too slow to fuzz here.
    const ROUTES: [&str; 4] = ["/embed/text", "/embed/image", "/v1/embeddings", "/classify"];
    const TYPES: [&str; 3] = ["application/json", "multipart/form-data; boundary=X", "text/plain"];
    let (Some(&r), Some(&t)) = (data.first(), data.get(1)) else { return None };
    let body = data[2..].to_vec();
    let req = axum::http::Request::post(ROUTES[r as usize % ROUTES.len()])
        .header("content-type", TYPES[t as usize % TYPES.len()])
        .body(axum::body::Body::from(body));
    let Ok(req) = req else { return None };
    let (runtime, router) = service();
    let router = router.clone();
    runtime.block_on(async move {
        use tower::ServiceExt as _;
        router.oneshot(req).await.ok().map(|resp| resp.status().as_u16())
    })
}
