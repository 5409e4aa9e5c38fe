//! The OpenAPI 3.1 description served at `/openapi.json`: derived by utoipa from the request
//! types the handlers parse and from the routes as registered (utoipa-axum), so it cannot drift
//! from them; then the bounds only the loaded model knows (layers, dimension, its name) are
//! filled in.

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

/// An error: `{"error": {"message", "type", "code"}}`, as OpenAI clients expect.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    code: u16,
}

/// Embeddings in input order.
#[derive(Serialize, ToSchema)]
pub(crate) struct Embeddings {
    model: String,
    embeddings: Vec<Vec<f32>>,
}

/// Process status.
#[derive(Serialize, ToSchema)]
pub(crate) struct Status {
    status: String,
    model: Option<String>,
    precision: Option<String>,
    /// The towers loaded (`image`, `text`), when ready.
    towers: Option<Vec<String>>,
}

/// OpenAI's model list.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelList {
    object: String,
    data: Vec<ModelEntry>,
}

/// One served model.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelEntry {
    id: String,
    object: String,
    owned_by: String,
}

/// OpenAI's embedding list.
#[derive(Serialize, ToSchema)]
pub(crate) struct OpenAiEmbeddings {
    object: String,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: Usage,
}

/// One OpenAI embedding.
#[derive(Serialize, ToSchema)]
pub(crate) struct OpenAiEmbedding {
    object: String,
    index: usize,
    #[schema(value_type = FloatsOrBase64)]
    embedding: Value,
}

/// Floats, or base64 of little-endian float32 (`encoding_format`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum FloatsOrBase64 {
    /// JSON numbers.
    Floats(Vec<f32>),
    /// Base64.
    Base64(String),
}

/// A patch grid: rows of columns of channels, or base64 of little-endian float32.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum GridOrBase64 {
    /// JSON numbers, (rows, columns, channels).
    Grid(Vec<Vec<Vec<f32>>>),
    /// Base64.
    Base64(String),
}

/// Token counts (estimated: words plus start and end).
#[derive(Serialize, ToSchema)]
pub(crate) struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// Top labels per image.
#[derive(Serialize, ToSchema)]
pub(crate) struct ClassifyResponse {
    model: String,
    results: Vec<Predictions>,
}

/// One image's top labels.
#[derive(Serialize, ToSchema)]
pub(crate) struct Predictions {
    predictions: Vec<Prediction>,
}

/// A label and its probability.
#[derive(Serialize, ToSchema)]
pub(crate) struct Prediction {
    label: String,
    probability: f32,
}

/// Dense features per image.
#[derive(Serialize, ToSchema)]
pub(crate) struct FeaturesResponse {
    model: String,
    layer: isize,
    norm: bool,
    /// Patch rows and columns.
    grid: Vec<usize>,
    /// Channels per token.
    width: usize,
    data: Vec<ImageFeatures>,
}

/// One image's features: nested lists (grid rows, columns, channels) or base64 float32.
#[derive(Serialize, ToSchema)]
pub(crate) struct ImageFeatures {
    index: usize,
    /// The class token, when the model has one.
    #[schema(value_type = Option<FloatsOrBase64>)]
    cls_token: Value,
    #[schema(value_type = GridOrBase64)]
    patch_tokens: Value,
}

/// Search results, best first.
#[derive(Serialize, ToSchema)]
pub(crate) struct SearchResults {
    model: String,
    /// `exact` or `approximate`.
    method: String,
    took_ms: f64,
    results: Vec<SearchHit>,
}

/// One result: an indexed file and its cosine to the query.
#[derive(Serialize, ToSchema)]
pub(crate) struct SearchHit {
    rank: usize,
    path: String,
    score: f64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pe serve",
        description = "Perception Encoder embeddings, dense features, zero-shot classification and search."
    ),
    components(schemas(ErrorBody))
)]
pub(crate) struct ApiDoc;

/// The document for a server of `model` (`layers` vision blocks, embeddings of `dim`); `auth`
/// adds the bearer scheme.
pub(crate) fn finish(doc: utoipa::openapi::OpenApi, model: &str, layers: usize, dim: usize, auth: bool) -> Value {
    let mut v = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    v["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    v["info"]["description"] = json!(format!(
        "Perception Encoder embeddings, dense features, zero-shot classification and search; model {model}."
    ));
    let l = layers as i64;
    let schemas = &mut v["components"]["schemas"];
    for name in ["ImageRequest", "FeaturesRequest", "ImageUpload", "FeaturesUpload"] {
        if let Some(layer) = schemas.get_mut(name).and_then(|s| s["properties"].get_mut("layer")) {
            layer["minimum"] = json!(-l);
            layer["maximum"] = json!(l - 1);
        }
    }
    if let Some(alts) = schemas.get_mut("Input").and_then(|s| s["oneOf"].as_array_mut()) {
        for alt in alts.iter_mut().filter(|a| a["type"] == "array") {
            alt["minItems"] = json!(1);
        }
    }
    if let Some(props) = schemas.get_mut("OpenAiRequest").map(|s| &mut s["properties"]) {
        props["dimensions"]["minimum"] = json!(dim);
        props["dimensions"]["maximum"] = json!(dim);
        props["model"]["enum"] = json!([model]);
    }
    if auth {
        v["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
        v["security"] = json!([{"bearer": []}]);
        // /health and the page never need the key.
        for (path, method) in [("/health", "get"), ("/", "get")] {
            if let Some(op) = v["paths"].get_mut(path).and_then(|p| p.get_mut(method)) {
                op["security"] = json!([]);
            }
        }
    }
    v
}

/// The error answers every operation may give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Errors {
    /// Invalid input.
    #[response(status = 400, description = "invalid request")]
    Invalid(ErrorBody),
    /// Missing or wrong API key.
    #[response(status = 401, description = "missing or invalid API key")]
    Unauthorized(ErrorBody),
    /// Not in the index, or no such route.
    #[response(status = 404, description = "not found")]
    NotFound(ErrorBody),
    /// Wrong method for the route.
    #[response(status = 405, description = "method not allowed")]
    Method(ErrorBody),
    /// Over a size limit.
    #[response(status = 413, description = "too large")]
    TooLarge(ErrorBody),
    /// At capacity, or the model or index is unavailable.
    #[response(status = 503, description = "unavailable; retry")]
    Unavailable(ErrorBody),
    /// Past the time limit.
    #[response(status = 504, description = "timed out")]
    Timeout(ErrorBody),
    /// A failure inside the model.
    #[response(status = 500, description = "internal error")]
    Internal(ErrorBody),
}
