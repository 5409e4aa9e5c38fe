//! Request bodies as clients send them: JSON types, base64 images, multipart uploads.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use base64::Engine as _;
use serde::Deserialize;

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

pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn last_layer() -> isize {
    -1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextRequest {
    pub(crate) texts: Vec<String>,
    #[serde(default = "yes")]
    pub(crate) normalize: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageRequest {
    pub(crate) images: Vec<String>,
    #[serde(default = "yes")]
    pub(crate) normalize: bool,
    #[serde(default = "last_layer")]
    pub(crate) layer: isize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeaturesRequest {
    pub(crate) images: Vec<String>,
    #[serde(default = "last_layer")]
    pub(crate) layer: isize,
    #[serde(default)]
    pub(crate) norm: bool,
    #[serde(default)]
    pub(crate) encoding_format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenAiRequest {
    pub(crate) input: OneOrMany,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) encoding_format: Option<String>,
    #[serde(default)]
    pub(crate) dimensions: Option<usize>,
    /// Accepted for OpenAI compatibility; unused.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) user: Option<String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifyRequest {
    pub(crate) images: Vec<String>,
    pub(crate) labels: Vec<String>,
    #[serde(default)]
    pub(crate) templates: Option<Vec<String>>,
    #[serde(default = "default_top_k")]
    pub(crate) top_k: usize,
}

pub(crate) fn default_top_k() -> usize {
    5
}
