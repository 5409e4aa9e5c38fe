//! `pe serve`: Perception Encoder embeddings over HTTP.
//!
//! The model runs on its own thread behind a bounded queue with dynamic batching
//! ([`engine`]); handlers only validate, decode images in parallel on the blocking pool, and
//! await. Routes (JSON in and out; errors are `{"error": {"message", "type", "code"}}`):
//!
//! - `GET /health`: the process is up (never needs the API key).
//! - `GET /ready`: the model is loaded and its thread is running.
//! - `GET /v1/models`: the served model, OpenAI-style.
//! - `POST /v1/embeddings`: OpenAI-compatible; `input` is a string or a list of strings, where
//!   `data:image/...;base64,...` strings are images; `encoding_format` `float` or `base64`.
//! - `POST /embed/text`: `{"texts": [...], "normalize": true}`.
//! - `POST /embed/image`: `{"images": [base64 or data URL, ...], "normalize": true, "layer": -1}`,
//!   or a multipart upload of image files (fields `normalize`, `layer`).
//! - `POST /embed/video`: multipart upload of video files (fields `frames`, `sampling`, `normalize`).
//! - `GET /openapi.json`: this API as an OpenAPI 3 document.
//! - `POST /classify`: `{"images": [...], "labels": [...], "templates": ["a photo of a {}."],
//!   "top_k": 5}`; class vectors are cached across requests per label set.
//! - `GET /metrics`: Prometheus text (requests in flight, answered and their latency per route,
//!   batch sizes, queue depth, items embedded by kind).

pub mod engine;
mod error;
mod metrics;
mod openapi;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use perception_encoder::candle_core::{Device, Tensor};
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::video::{load_clip, FrameSampling};
use perception_encoder::zero_shot::{ZeroShotClassifier, DEFAULT_TEMPLATES};
use perception_encoder::Clip;
use serde::Deserialize;
use serde_json::{json, Value};

pub use engine::{BatchConfig, Engine};
pub use error::ServeError;

/// Service settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen (loopback by default in `pe serve`).
    pub addr: SocketAddr,
    /// Batching limits and queue size.
    pub batch: BatchConfig,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted image, in pixels.
    pub max_pixels: u64,
    /// Items (images or texts) accepted in one request.
    pub max_items: usize,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// Required `Authorization: Bearer` key, if any.
    pub api_key: Option<String>,
    /// After the shutdown signal, how long in-flight requests may take before the server
    /// stops anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            batch: BatchConfig {
                max_batch: 16,
                max_text_batch: 64,
                max_wait: Duration::from_millis(5),
                queue_capacity: 256,
            },
            max_body_bytes: 32 << 20,
            max_pixels: perception_encoder::preprocess::DEFAULT_MAX_PIXELS,
            max_items: 256,
            request_timeout: Duration::from_secs(60),
            api_key: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Class vectors kept per (labels, templates); the oldest entries go past this count.
const CLASSIFIER_CACHE: usize = 64;

struct AppState {
    engine: Engine,
    model_name: String,
    transform: ImageTransform,
    has_text: bool,
    /// Blocks of the vision tower (valid `layer` values are `-layers..layers`).
    layers: usize,
    logit_scale: Option<f32>,
    classifiers: Mutex<VecDeque<(ClassifierKey, Arc<ZeroShotClassifier>)>>,
    requests: metrics::RequestMetrics,
    cfg: ServerConfig,
}

type ClassifierKey = (Vec<String>, Vec<String>);

type Shared = Arc<AppState>;

/// The service's routes over a started [`Engine`] for `model`.
pub fn router(model: Clip, cfg: ServerConfig) -> Router {
    let mut transform = ImageTransform::for_config(&model.config().vision);
    transform.max_pixels = cfg.max_pixels;
    let state = Arc::new(AppState {
        model_name: model.config().name.clone(),
        has_text: model.text().is_some(),
        layers: model.config().vision.layers,
        logit_scale: model.logit_scale().ok(),
        classifiers: Mutex::new(VecDeque::new()),
        requests: metrics::RequestMetrics::default(),
        transform,
        engine: Engine::start(model, cfg.batch),
        cfg: cfg.clone(),
    });
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed/text", post(embed_text))
        .route("/embed/image", post(embed_image))
        .route("/embed/video", post(embed_video))
        .route("/openapi.json", get(openapi))
        .route("/classify", post(classify))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"message": "no such route", "type": "not_found", "code": 404}})),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), declared_size))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves. Then no new connection is accepted and the
/// requests in flight are finished, for at most `cfg.shutdown_grace`.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    model: Clip,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = cfg.shutdown_grace;
    let app = router(model, cfg);
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.notified().await });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        done = &mut server => return done,
        () = shutdown => stop.notify_one(),
    }
    tracing::info!("shutting down: finishing requests in flight (at most {} s)", grace.as_secs_f64());
    match tokio::time::timeout(grace, &mut server).await {
        Ok(done) => done,
        Err(_) => {
            tracing::warn!("requests still in flight after {} s; stopping anyway", grace.as_secs_f64());
            Ok(())
        }
    }
}

/// Bind `cfg.addr` and serve until `shutdown` resolves.
pub async fn serve(
    model: Clip,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.addr).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    serve_on(listener, model, cfg, shutdown).await
}

async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return ServeError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

/// Refuse a body whose declared `Content-Length` is over the limit before reading any of it (a
/// client that sent `Expect: 100-continue` then never uploads it). Bodies without a length are
/// still cut off at the limit while being read.
async fn declared_size(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.cfg.max_body_bytes as u64) {
        return ServeError::TooLarge(format!(
            "request body of {} bytes exceeds the size limit of {} bytes",
            declared.unwrap_or_default(),
            st.cfg.max_body_bytes
        ))
        .into_response();
    }
    next.run(req).await
}

/// Count every request, while in flight and once answered, and time it, by matched route.
async fn record(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let in_flight = st.requests.start(&route);
    let resp = next.run(req).await;
    drop(in_flight);
    st.requests.record(&route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

async fn metrics_text(State(st): State<Shared>) -> Response {
    let mut out = String::new();
    st.requests.render(&mut out);
    metrics::render_engine(&mut out, &st.engine.stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn openapi(State(st): State<Shared>) -> Json<Value> {
    Json(openapi::document(&st.model_name, st.cfg.api_key.is_some()))
}

async fn ready(State(st): State<Shared>) -> Response {
    if st.engine.ready() {
        Json(json!({"status": "ready", "model": st.model_name})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response()
    }
}

async fn models(State(st): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": st.model_name, "object": "model", "owned_by": "facebook"}]}))
}

fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ServeError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::TooLarge("request body exceeds the size limit".into())
        } else {
            ServeError::Invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ServeError::Invalid(format!("invalid request: {e}")))
}

fn yes() -> bool {
    true
}
fn last_layer() -> isize {
    -1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextRequest {
    texts: Vec<String>,
    #[serde(default = "yes")]
    normalize: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRequest {
    images: Vec<String>,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default = "last_layer")]
    layer: isize,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiRequest {
    input: OneOrMany,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    /// Accepted for OpenAI compatibility; unused.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

fn normalize_rows(rows: &mut [Vec<f32>]) {
    for r in rows {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
}

fn check_count(n: usize, max: usize, what: &str) -> Result<(), ServeError> {
    if n == 0 {
        return Err(ServeError::Invalid(format!("no {what} given")));
    }
    if n > max {
        return Err(ServeError::TooLarge(format!("{n} {what} in one request; the limit is {max}")));
    }
    Ok(())
}

async fn with_timeout<T>(st: &AppState, f: impl Future<Output = Result<T, ServeError>>) -> Result<T, ServeError> {
    tokio::time::timeout(st.cfg.request_timeout, f).await.map_err(|_| ServeError::Timeout)?
}

/// An image as a request carries it.
enum ImageSource {
    /// Base64, or a `data:image/...;base64,` URL.
    Base64(String),
    /// Raw file bytes from a multipart upload.
    Raw(Bytes),
}

fn image_bytes(i: usize, src: ImageSource) -> Result<Vec<u8>, ServeError> {
    match src {
        ImageSource::Raw(b) => Ok(b.to_vec()),
        ImageSource::Base64(s) => {
            let b64 = match s.strip_prefix("data:") {
                Some(rest) => rest.split_once(";base64,").map(|(_, data)| data.to_string()).ok_or_else(|| {
                    ServeError::Invalid(format!("image {i}: a data URL must be base64 (`data:image/...;base64,...`)"))
                })?,
                None => s,
            };
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| ServeError::Invalid(format!("image {i}: invalid base64: {e}")))
        }
    }
}

/// Decode images and apply the transform, in parallel on the blocking pool.
async fn decode_images(st: &Shared, images: Vec<ImageSource>) -> Result<Vec<Tensor>, ServeError> {
    let tasks: Vec<_> = images
        .into_iter()
        .enumerate()
        .map(|(i, src)| {
            let transform = st.transform;
            tokio::task::spawn_blocking(move || {
                let bytes = image_bytes(i, src)?;
                transform.load_bytes(&bytes).map_err(|e| match ServeError::from(e) {
                    ServeError::Invalid(m) => ServeError::Invalid(format!("image {i}: {m}")),
                    ServeError::TooLarge(m) => ServeError::TooLarge(format!("image {i}: {m}")),
                    other => other,
                })
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| ServeError::Internal(e.to_string()))??);
    }
    Ok(out)
}

async fn embed_images(st: &Shared, images: Vec<ImageSource>, layer: isize) -> Result<Vec<Vec<f32>>, ServeError> {
    let l = st.layers as isize;
    if layer < -l || layer >= l {
        return Err(ServeError::Invalid(format!(
            "layer {layer} is out of range for a vision tower of {l} layers (use -{l}..={})",
            l - 1
        )));
    }
    let pixels = decode_images(st, images).await?;
    st.engine.submit(engine::Work::Images { pixels, layer }).await
}

async fn embed_texts(st: &Shared, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ServeError> {
    if !st.has_text {
        return Err(ServeError::Invalid(format!("{} has no text tower", st.model_name)));
    }
    st.engine.submit(engine::Work::Texts { texts }).await
}

async fn embed_text(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ServeError> {
    let req: TextRequest = parse(body)?;
    check_count(req.texts.len(), st.cfg.max_items, "texts")?;
    let mut rows = with_timeout(&st, embed_texts(&st, req.texts)).await?;
    if req.normalize {
        normalize_rows(&mut rows);
    }
    Ok(Json(json!({"model": st.model_name, "embeddings": rows})))
}

/// Files and text fields of a multipart upload.
#[derive(Default)]
struct Upload {
    files: Vec<(String, Bytes)>,
    fields: std::collections::HashMap<String, String>,
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

async fn read_upload(req: Request) -> Result<Upload, ServeError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::TooLarge("request body exceeds the size limit".into())
        } else {
            ServeError::Invalid(format!("invalid multipart body: {e}"))
        }
    };
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ServeError::Invalid(format!("invalid multipart body: {e}")))?;
    let mut up = Upload::default();
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if let Some(file) = field.file_name().map(str::to_string) {
            up.files.push((file, field.bytes().await.map_err(bad)?));
        } else {
            up.fields.insert(name, field.text().await.map_err(bad)?);
        }
    }
    Ok(up)
}

fn field<T: std::str::FromStr>(up: &Upload, name: &str, default: T) -> Result<T, ServeError> {
    match up.fields.get(name) {
        None => Ok(default),
        Some(v) => {
            v.trim().parse().map_err(|_| ServeError::Invalid(format!("field `{name}` has an invalid value {v:?}")))
        }
    }
}

fn check_fields(up: &Upload, known: &[&str]) -> Result<(), ServeError> {
    match up.fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ServeError::Invalid(format!("unknown field `{k}` (known: {})", known.join(", ")))),
        None => Ok(()),
    }
}

async fn embed_image(State(st): State<Shared>, req: Request) -> Result<Json<Value>, ServeError> {
    let (images, normalize, layer) = if is_multipart(&req) {
        let up = read_upload(req).await?;
        check_fields(&up, &["normalize", "layer"])?;
        let (normalize, layer) = (field(&up, "normalize", true)?, field(&up, "layer", -1isize)?);
        (up.files.into_iter().map(|(_, b)| ImageSource::Raw(b)).collect::<Vec<_>>(), normalize, layer)
    } else {
        let req: ImageRequest = parse(Bytes::from_request(req, &()).await)?;
        (req.images.into_iter().map(ImageSource::Base64).collect(), req.normalize, req.layer)
    };
    check_count(images.len(), st.cfg.max_items, "images")?;
    let mut rows = with_timeout(&st, embed_images(&st, images, layer)).await?;
    if normalize {
        normalize_rows(&mut rows);
    }
    Ok(Json(json!({"model": st.model_name, "embeddings": rows})))
}

/// Videos as multipart uploads: `frames` (default 8) sampled by `sampling` (`benchmark` or
/// `demo`), each frame through the image transform; the result is the mean of the raw frame
/// embeddings, L2-normalized unless `normalize=false` (as `pe embed-video`).
async fn embed_video(State(st): State<Shared>, req: Request) -> Result<Json<Value>, ServeError> {
    if !is_multipart(&req) {
        return Err(ServeError::Invalid("upload videos as multipart/form-data files".into()));
    }
    let up = read_upload(req).await?;
    check_fields(&up, &["frames", "sampling", "normalize"])?;
    let frames: usize = field(&up, "frames", 8)?;
    if frames == 0 || frames > st.cfg.max_items {
        return Err(ServeError::Invalid(format!("frames must be between 1 and {}", st.cfg.max_items)));
    }
    let rule = match up.fields.get("sampling").map(|s| s.trim()) {
        None | Some("benchmark") => FrameSampling::Benchmark,
        Some("demo") => FrameSampling::Demo,
        Some(other) => {
            return Err(ServeError::Invalid(format!("sampling must be `benchmark` or `demo`, not `{other}`")))
        }
    };
    let normalize: bool = field(&up, "normalize", true)?;
    check_count(up.files.len(), st.cfg.max_items, "videos")?;
    let work = async {
        let mut out = Vec::new();
        for (i, (name, bytes)) in up.files.into_iter().enumerate() {
            let transform = st.transform;
            let clip = tokio::task::spawn_blocking(move || -> Result<Tensor, ServeError> {
                let mut tmp = tempfile::NamedTempFile::new().map_err(|e| ServeError::Internal(e.to_string()))?;
                std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| ServeError::Internal(e.to_string()))?;
                load_clip(tmp.path(), frames, rule, &transform).map_err(|e| match e {
                    perception_encoder::Error::Video(m) => ServeError::Invalid(format!("video {i} ({name}): {m}")),
                    other => ServeError::from(other),
                })
            })
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
            let n = clip.dim(0).map_err(|e| ServeError::Internal(e.to_string()))?;
            let pixels = (0..n)
                .map(|f| clip.get(f))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            let rows = st.engine.submit(engine::Work::Images { pixels, layer: -1 }).await?;
            let dim = rows.first().map_or(0, Vec::len);
            let mut mean = vec![0f32; dim];
            for r in &rows {
                mean.iter_mut().zip(r).for_each(|(m, x)| *m += x / rows.len() as f32);
            }
            out.push(mean);
        }
        Ok::<_, ServeError>(out)
    };
    let mut rows = with_timeout(&st, work).await?;
    if normalize {
        normalize_rows(&mut rows);
    }
    Ok(Json(json!({"model": st.model_name, "embeddings": rows})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    images: Vec<String>,
    labels: Vec<String>,
    #[serde(default)]
    templates: Option<Vec<String>>,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    5
}

/// The classifier for a label set: from the cache, or built from text embeddings computed on
/// the model thread (and then cached).
async fn classifier(
    st: &Shared,
    labels: Vec<String>,
    templates: Vec<String>,
) -> Result<Arc<ZeroShotClassifier>, ServeError> {
    let key = (labels, templates);
    if let Some(hit) =
        st.classifiers.lock().ok().and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
    {
        return Ok(hit);
    }
    let scale = st.logit_scale.ok_or_else(|| ServeError::Invalid(format!("{} has no text tower", st.model_name)))?;
    let prompts = ZeroShotClassifier::prompts(&key.0, &key.1)?;
    let mut rows = embed_texts(st, prompts).await?;
    normalize_rows(&mut rows);
    let dim = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let emb = Tensor::from_vec(flat, (key.0.len() * key.1.len(), dim), &Device::Cpu)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let c = Arc::new(ZeroShotClassifier::from_prompt_embeddings(&key.0, key.1.len(), &emb, scale)?);
    if let Ok(mut cache) = st.classifiers.lock() {
        if cache.len() >= CLASSIFIER_CACHE {
            cache.pop_front();
        }
        cache.push_back((key, c.clone()));
    }
    Ok(c)
}

async fn classify(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ServeError> {
    let req: ClassifyRequest = parse(body)?;
    check_count(req.images.len(), st.cfg.max_items, "images")?;
    check_count(req.labels.len(), st.cfg.max_items.max(1000), "labels")?;
    let templates = req.templates.unwrap_or_else(|| DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect());
    let work = async {
        let c = classifier(&st, req.labels, templates).await?;
        let mut rows = embed_images(&st, req.images.into_iter().map(ImageSource::Base64).collect(), -1).await?;
        normalize_rows(&mut rows);
        Ok::<_, ServeError>((c, rows))
    };
    let (c, rows) = with_timeout(&st, work).await?;
    let dim = rows.first().map_or(0, Vec::len);
    let n = rows.len();
    let x = Tensor::from_vec(rows.into_iter().flatten().collect::<Vec<f32>>(), (n, dim), &Device::Cpu)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let preds = c.classify(&x, req.top_k)?;
    let results: Vec<Value> = preds.into_iter().map(|p| json!({"predictions": p})).collect();
    Ok(Json(json!({"model": st.model_name, "results": results})))
}

async fn openai_embeddings(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ServeError> {
    let req: OpenAiRequest = parse(body)?;
    let inputs = match req.input {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    check_count(inputs.len(), st.cfg.max_items, "inputs")?;
    if let Some(m) = &req.model {
        if !m.is_empty() && m != &st.model_name {
            return Err(ServeError::Invalid(format!("this server serves `{}`, not `{m}`", st.model_name)));
        }
    }
    let base64_out = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ServeError::Invalid(format!("encoding_format must be `float` or `base64`, not `{other}`")))
        }
    };
    let (mut img_idx, mut images, mut txt_idx, mut texts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, s) in inputs.into_iter().enumerate() {
        if s.starts_with("data:image/") {
            img_idx.push(i);
            images.push(s);
        } else {
            txt_idx.push(i);
            texts.push(s);
        }
    }
    let tokens: usize = texts.iter().map(|t| t.split_whitespace().count() + 2).sum();
    let work = async {
        let imgs = if images.is_empty() {
            Vec::new()
        } else {
            embed_images(&st, images.into_iter().map(ImageSource::Base64).collect(), -1).await?
        };
        let txts = if texts.is_empty() { Vec::new() } else { embed_texts(&st, texts).await? };
        Ok::<_, ServeError>((imgs, txts))
    };
    let (imgs, txts) = with_timeout(&st, work).await?;
    let mut rows: Vec<(usize, Vec<f32>)> = img_idx.into_iter().zip(imgs).chain(txt_idx.into_iter().zip(txts)).collect();
    rows.sort_by_key(|(i, _)| *i);
    let mut vectors: Vec<Vec<f32>> = rows.into_iter().map(|(_, r)| r).collect();
    normalize_rows(&mut vectors);
    if let Some(d) = req.dimensions {
        if vectors.first().is_some_and(|v| v.len() != d) {
            return Err(ServeError::Invalid(format!(
                "this model gives {}-dimensional embeddings, not {d}",
                vectors[0].len()
            )));
        }
    }
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64_out {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": st.model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
