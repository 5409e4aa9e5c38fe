//! `pe serve`: Perception Encoder embeddings over HTTP.
//!
//! The model runs on its own thread behind a bounded queue with dynamic batching
//! ([`engine`]); handlers only validate, decode images in parallel on the blocking pool, and
//! await. Routes (JSON in and out; errors are `{"error": {"message", "type", "code"}}`):
//!
//! - `GET /health`: the process is up (never needs the API key).
//! - `GET /ready`: the model is loaded and its thread is running (with its name, precision and
//!   towers: a model loaded with one tower answers requests for the other with 400).
//! - `GET /v1/models`: the served model, OpenAI-style.
//! - `POST /v1/embeddings`: OpenAI-compatible; `input` is a string or a list of strings, where
//!   `data:image/...;base64,...` strings are images; `encoding_format` `float` or `base64`.
//! - `POST /embed/text`: `{"texts": [...], "normalize": true}`.
//! - `POST /embed/image`: `{"images": [base64 or data URL, ...], "normalize": true, "layer": -1}`,
//!   or a multipart upload of image files (fields `normalize`, `layer`).
//! - `POST /embed/video`: multipart upload of video files (fields `frames`, `sampling`, `normalize`).
//! - `GET /openapi.json`: this API as an OpenAPI 3 document.
//! - `POST /features`: dense token features (`pe features`): `{"images": [...], "layer": -1,
//!   "norm": false, "encoding_format": "float"}` or a multipart upload; per image the patch grid
//!   and the class token.
//! - `POST /classify`: `{"images": [...], "labels": [...], "templates": ["a photo of a {}."],
//!   "top_k": 5}`; class vectors are cached across requests per label set.
//! - With an index (`pe serve --index DIR`, see [`search`]): `POST /search` (text in rclip's
//!   grammar, base64 or uploaded images, stored files, weighted; `top_k`, `threshold`, `under`,
//!   `exact`), `GET /similar?path=`, `GET /thumb?path=&size=` (JPEG thumbnails of indexed
//!   files, made on the fly and cached), and a web page at `/`.
//! - `GET /metrics`: Prometheus text (requests in flight, answered and their latency per route,
//!   batch sizes, queue depth, items embedded by kind, the model and its precision).

mod decode;
pub mod engine;
mod error;
mod features;
mod handlers;
mod metrics;
mod middleware;
mod openapi;
mod requests;
mod search;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::{Json, Router};
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::zero_shot::ZeroShotClassifier;
use perception_encoder::{Clip, Precision};
use serde_json::json;

use handlers::*;
use middleware::{auth, declared_size, record};

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
    /// Time limit of one request, from its headers to its answer (reading the body included).
    pub request_timeout: Duration,
    /// How long a connection may take to send a request's headers (also the keep-alive idle
    /// limit between requests).
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Memory that image and video decoding may hold at once, in bytes.
    pub decode_budget_bytes: u64,
    /// Labels x templates that one `/classify` request may ask to embed.
    pub max_prompts: usize,
    /// Required `Authorization: Bearer` key, if any.
    pub api_key: Option<String>,
    /// After the shutdown signal, how long in-flight requests may take before the server
    /// stops anyway.
    pub shutdown_grace: Duration,
    /// An index (`pe index`) to serve searches over; built with the served model.
    pub index: Option<std::path::PathBuf>,
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
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            decode_budget_bytes: 1 << 30,
            max_prompts: 10_000,
            api_key: None,
            shutdown_grace: Duration::from_secs(30),
            index: None,
        }
    }
}

/// Class vectors kept per (labels, templates); the oldest entries go past this count.
pub(crate) const CLASSIFIER_CACHE: usize = 64;

pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) model_name: String,
    /// The precision the model runs in (reported by `/ready` and `/metrics`).
    pub(crate) precision: Precision,
    pub(crate) transform: ImageTransform,
    /// Whether the text tower is loaded (a model may have one the server left out).
    pub(crate) has_text: bool,
    /// Whether the model has a text tower at all.
    pub(crate) text_in_model: bool,
    /// Whether the vision tower is loaded.
    pub(crate) has_vision: bool,
    /// The text tower's tokenizer (its context length).
    pub(crate) tokenizer: ClipTokenizer,
    /// Blocks of the vision tower (valid `layer` values are `-layers..layers`).
    pub(crate) layers: usize,
    /// The vision tower's geometry (patch size, width, class token) for `/features`.
    pub(crate) vision: perception_encoder::VisionConfig,
    pub(crate) logit_scale: Option<f32>,
    pub(crate) classifiers: Mutex<VecDeque<(ClassifierKey, Arc<ZeroShotClassifier>)>>,
    pub(crate) requests: metrics::RequestMetrics,
    pub(crate) decode_budget: Arc<decode::DecodeBudget>,
    pub(crate) cfg: ServerConfig,
    /// The OpenAPI document served at `/openapi.json`.
    pub(crate) openapi: serde_json::Value,
    /// The index searched, or why it could not be opened.
    pub(crate) index: Option<Result<Arc<search::Searchable>, String>>,
}

impl AppState {
    /// The towers this server loaded, as `/ready` reports them.
    pub(crate) fn towers(&self) -> Vec<&'static str> {
        [(self.has_vision, "image"), (self.has_text, "text")].into_iter().filter(|t| t.0).map(|t| t.1).collect()
    }

    /// An error (400) unless the text tower is loaded: before any work of the request is done.
    pub(crate) fn need_text(&self) -> Result<(), ServeError> {
        match (self.has_text, self.text_in_model) {
            (true, _) => Ok(()),
            (false, false) => Err(ServeError::Invalid(format!("{} has no text tower", self.model_name))),
            (false, true) => Err(ServeError::Invalid(format!(
                "this server loaded the image tower of {} only: text cannot be embedded here",
                self.model_name
            ))),
        }
    }

    /// An error (400) unless the vision tower is loaded: before any upload is decoded.
    pub(crate) fn need_vision(&self) -> Result<(), ServeError> {
        if self.has_vision {
            return Ok(());
        }
        Err(ServeError::Invalid(format!(
            "this server loaded the text tower of {} only: images and videos cannot be embedded here",
            self.model_name
        )))
    }
}

pub(crate) type ClassifierKey = (Vec<String>, Vec<String>);

pub(crate) type Shared = Arc<AppState>;

/// The service's routes over a started [`Engine`] for `model`.
pub fn router(model: Clip, cfg: ServerConfig) -> Router {
    let mut transform = ImageTransform::for_config(&model.config().vision);
    transform.max_pixels = cfg.max_pixels;
    let index = cfg.index.as_ref().map(|dir| {
        search::Searchable::open(dir, cfg.max_pixels).map(Arc::new).map_err(|e| {
            tracing::error!("{e}");
            e.to_string()
        })
    });
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    // Each route is registered with its description, so the document lists exactly these.
    let (routes, api) = OpenApiRouter::<Shared>::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(models))
        .routes(routes!(openai_embeddings))
        .routes(routes!(embed_text))
        .routes(routes!(embed_image))
        .routes(routes!(embed_video))
        .routes(routes!(openapi_doc))
        .routes(routes!(features::features))
        .routes(routes!(classify))
        .routes(routes!(metrics_text))
        .routes(routes!(search::page))
        .routes(routes!(search::search))
        .routes(routes!(search::similar))
        .routes(routes!(search::thumb))
        .split_for_parts();
    let vision = &model.config().vision;
    let openapi = openapi::finish(
        api,
        &model.config().name,
        vision.layers,
        model.config().embed_dim(),
        cfg.api_key.as_ref().is_some_and(|k| !k.is_empty()),
    );
    let state = Arc::new(AppState {
        index,
        openapi,
        model_name: model.config().name.clone(),
        precision: model.precision(),
        has_text: model.text().is_some(),
        text_in_model: model.config().text.is_some(),
        has_vision: model.visual().is_some(),
        tokenizer: ClipTokenizer::new(model.text().map_or(2, |t| t.config().context_length)),
        layers: model.config().vision.layers,
        vision: model.config().vision.clone(),
        logit_scale: model.logit_scale().ok(),
        classifiers: Mutex::new(VecDeque::new()),
        requests: metrics::RequestMetrics::default(),
        decode_budget: Arc::new(decode::DecodeBudget::new(cfg.decode_budget_bytes)),
        transform,
        engine: Engine::start(model, cfg.batch),
        cfg: cfg.clone(),
    });
    routes
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"message": "no such route", "type": "not_found", "code": 404}})),
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            let message = format!("method {method} is not allowed on this route");
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error": {"message": message, "type": "method_not_allowed", "code": 405}})),
            )
        })
        .layer(from_fn_with_state(state.clone(), declared_size))
        .layer(from_fn_with_state(state.clone(), auth))
        .layer(from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves. Then no new connection is accepted and the
/// requests in flight are finished, for at most `cfg.shutdown_grace`.
///
/// Each connection must send a request's headers within `cfg.header_timeout` (idle keep-alive
/// connections are closed after it too) and the whole request is answered within
/// `cfg.request_timeout`, so slow or stalled clients cannot hold connections; at most
/// `cfg.max_connections` are served at once.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    model: Clip,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let grace = cfg.shutdown_grace;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let app = router(model, cfg);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight (at most {} s)", grace.as_secs_f64());
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {} s; stopping anyway", grace.as_secs_f64());
    }
    Ok(())
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
