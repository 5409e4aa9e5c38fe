//! Request bodies as clients send them: JSON types, base64 images, multipart uploads.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use base64::Engine as _;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::ServeError;

pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ServeError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::TooLarge("request body exceeds the size limit".into())
        } else {
            ServeError::Invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ServeError::Invalid(format!("invalid request: {e}")))
}

/// Whether `encoding_format` asks for base64 (`float`, the default, or `base64`).
pub(crate) fn base64_format(format: Option<&str>) -> Result<bool, ServeError> {
    match format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(ServeError::Invalid(format!("encoding_format must be `float` or `base64`, not `{other}`"))),
    }
}

/// Floats as base64 of little-endian float32 (`encoding_format: base64`).
pub(crate) fn base64_floats(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn last_layer() -> isize {
    -1
}

/// `POST /embed/text`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextRequest {
    /// Texts to embed.
    #[schema(min_items = 1)]
    pub(crate) texts: Vec<String>,
    /// L2-normalize the embeddings.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub(crate) normalize: bool,
}

/// `POST /embed/image` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageRequest {
    /// Images as base64 or `data:image/...;base64,` URLs.
    #[schema(min_items = 1)]
    pub(crate) images: Vec<String>,
    /// L2-normalize the embeddings.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub(crate) normalize: bool,
    /// Embed from the blocks up to this one (negative counts from the end).
    #[serde(default = "last_layer")]
    #[schema(default = -1)]
    pub(crate) layer: isize,
}

/// `POST /embed/image` as a multipart upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImageUpload {
    /// Image files.
    #[schema(min_items = 1, value_type = Vec<String>, format = Binary)]
    pub(crate) file: Vec<Vec<u8>>,
    /// L2-normalize the embeddings.
    #[schema(default = true, required = false)]
    pub(crate) normalize: bool,
    /// Embed from the blocks up to this one.
    #[schema(default = -1, required = false)]
    pub(crate) layer: isize,
}

/// `POST /embed/video`: a multipart upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct VideoUpload {
    /// Video files.
    #[schema(min_items = 1, value_type = Vec<String>, format = Binary)]
    pub(crate) file: Vec<Vec<u8>>,
    /// Frames sampled per video.
    #[schema(default = 8, minimum = 1, required = false)]
    pub(crate) frames: usize,
    /// `benchmark` (first and last frame included) or `demo`.
    #[schema(default = "benchmark", pattern = "^(benchmark|demo)$", required = false)]
    pub(crate) sampling: String,
    /// L2-normalize the mean embedding.
    #[schema(default = true, required = false)]
    pub(crate) normalize: bool,
}

/// `POST /features` as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeaturesRequest {
    /// Images as base64 or `data:image/...;base64,` URLs.
    #[schema(min_items = 1)]
    pub(crate) images: Vec<String>,
    /// Features after this block (negative counts from the end).
    #[serde(default = "last_layer")]
    #[schema(default = -1)]
    pub(crate) layer: isize,
    /// Through the tower's final LayerNorm.
    #[serde(default)]
    pub(crate) norm: bool,
    /// `float` (nested lists) or `base64` (little-endian float32).
    #[serde(default)]
    #[schema(value_type = Option<EncodingFormat>)]
    pub(crate) encoding_format: Option<String>,
}

/// `POST /features` as a multipart upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FeaturesUpload {
    /// Image files.
    #[schema(min_items = 1, value_type = Vec<String>, format = Binary)]
    pub(crate) file: Vec<Vec<u8>>,
    /// Features after this block.
    #[schema(required = false)]
    pub(crate) layer: isize,
    /// Through the tower's final LayerNorm.
    #[schema(required = false)]
    pub(crate) norm: bool,
    /// `float` or `base64`.
    #[schema(required = false)]
    pub(crate) encoding_format: EncodingFormat,
}

/// How float arrays are sent back.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum EncodingFormat {
    /// JSON numbers.
    Float,
    /// Base64 of little-endian float32.
    Base64,
}

/// OpenAI's `input`: a string or a list of strings (`data:image/...;base64,` strings are images).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum Input {
    /// One input.
    One(String),
    /// Several inputs (at least one).
    Many(Vec<String>),
}

/// `POST /v1/embeddings`, OpenAI-compatible.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenAiRequest {
    /// A string or a list of strings; token id arrays are refused with a 400 that says so.
    #[schema(value_type = Input)]
    pub(crate) input: serde_json::Value,
    /// The served model's name (checked when given).
    #[serde(default)]
    #[schema(min_length = 1)]
    pub(crate) model: Option<String>,
    /// `float` or `base64`.
    #[serde(default)]
    #[schema(value_type = Option<EncodingFormat>)]
    pub(crate) encoding_format: Option<String>,
    /// Must equal the model's dimension when given (`null` is the same as absent).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub(crate) dimensions: Option<usize>,
    /// Accepted for OpenAI compatibility; unused.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) user: Option<String>,
}

/// OpenAI's `input` as strings; token ids (numbers) are refused by name.
pub(crate) fn openai_inputs(v: serde_json::Value) -> Result<Vec<String>, ServeError> {
    use serde_json::Value as V;
    let tokens = || ServeError::Invalid("token id arrays are not accepted as input; send the text itself".into());
    match v {
        V::String(s) => Ok(vec![s]),
        V::Array(items) => items
            .into_iter()
            .map(|i| match i {
                V::String(s) => Ok(s),
                V::Number(_) | V::Array(_) => Err(tokens()),
                _ => Err(ServeError::Invalid("input must be a string or a list of strings".into())),
            })
            .collect(),
        _ => Err(ServeError::Invalid("input must be a string or a list of strings".into())),
    }
}

/// An image as a request carries it.
pub(crate) enum ImageSource {
    /// Base64, or a `data:image/...;base64,` URL.
    Base64(String),
    /// Raw file bytes from a multipart upload.
    Raw(Bytes),
}

pub(crate) fn image_bytes(i: usize, src: ImageSource) -> Result<Vec<u8>, ServeError> {
    match src {
        ImageSource::Raw(b) => Ok(b.to_vec()),
        ImageSource::Base64(s) => {
            let b64 = match s.strip_prefix("data:") {
                Some(rest) => rest.split_once(";base64,").map(|(_, data)| data.to_string()).ok_or_else(|| {
                    ServeError::Invalid(format!("image {i}: a data URL must be base64 (`data:image/...;base64,...`)"))
                })?,
                None => s,
            };
            // MIME-style base64 wraps lines; whitespace anywhere is not data.
            let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| ServeError::Invalid(format!("image {i}: invalid base64: {e}")))
        }
    }
}

/// Files and text fields of a multipart upload.
#[derive(Default)]
pub(crate) struct Upload {
    pub(crate) files: Vec<(String, Bytes)>,
    pub(crate) fields: std::collections::HashMap<String, String>,
}

pub(crate) fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

pub(crate) async fn read_upload(req: Request) -> Result<Upload, ServeError> {
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

pub(crate) fn field<T: std::str::FromStr>(up: &Upload, name: &str, default: T) -> Result<T, ServeError> {
    match up.fields.get(name) {
        None => Ok(default),
        Some(v) => {
            v.trim().parse().map_err(|_| ServeError::Invalid(format!("field `{name}` has an invalid value {v:?}")))
        }
    }
}

pub(crate) fn check_fields(up: &Upload, known: &[&str]) -> Result<(), ServeError> {
    match up.fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ServeError::Invalid(format!("unknown field `{k}` (known: {})", known.join(", ")))),
        None => Ok(()),
    }
}

/// `POST /classify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifyRequest {
    /// Images as base64 or data URLs.
    #[schema(min_items = 1)]
    pub(crate) images: Vec<String>,
    /// Class names.
    #[schema(min_items = 1)]
    pub(crate) labels: Vec<String>,
    /// Prompt templates, each with `{}` where the label goes (default: "a photo of a {}.").
    #[serde(default)]
    #[schema(min_items = 1)]
    pub(crate) templates: Option<Vec<String>>,
    /// Labels returned per image.
    #[serde(default = "default_top_k")]
    #[schema(default = 5, minimum = 1)]
    pub(crate) top_k: usize,
}

pub(crate) fn default_top_k() -> usize {
    5
}
