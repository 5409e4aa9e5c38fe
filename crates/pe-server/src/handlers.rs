//! The route handlers: validate, decode, queue on the engine, answer JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use perception_encoder::candle_core::{Device, Tensor};
use perception_encoder::video::FrameSampling;
use perception_encoder::zero_shot::{ZeroShotClassifier, DEFAULT_TEMPLATES};
use serde_json::{json, Value};

use crate::openapi::{ClassifyResponse, Embeddings, Errors, ModelList, OpenAiEmbeddings, Status};
use crate::requests::*;
use crate::{decode, engine, metrics, ServeError, Shared, CLASSIFIER_CACHE};

#[utoipa::path(get, path = "/metrics", summary = "Prometheus metrics.", responses((status = 200, description = "text exposition format", content_type = "text/plain", body = String), Errors))]
pub(crate) async fn metrics_text(State(st): State<Shared>) -> Response {
    let mut out = String::new();
    metrics::render_model(&mut out, &st.model_name, st.precision);
    st.requests.render(&mut out);
    metrics::render_engine(&mut out, &st.engine.stats);
    metrics::render_decode(&mut out, &st.decode_budget);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[utoipa::path(get, path = "/openapi.json", summary = "This document.", responses((status = 200, description = "OpenAPI 3.1 document", body = Object), Errors))]
pub(crate) async fn openapi_doc(State(st): State<Shared>) -> Json<Value> {
    Json(st.openapi.clone())
}

#[utoipa::path(get, path = "/health", summary = "The process is up (never needs the API key).", responses((status = 200, body = Status), Errors))]
pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", summary = "The model is loaded and its thread runs.", responses((status = 200, body = Status), Errors))]
pub(crate) async fn ready(State(st): State<Shared>) -> Response {
    if st.engine.ready() {
        Json(json!({"status": "ready", "model": st.model_name, "precision": st.precision, "towers": st.towers()}))
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response()
    }
}

#[utoipa::path(get, path = "/v1/models", summary = "The served model, OpenAI-style.", responses((status = 200, body = ModelList), Errors))]
pub(crate) async fn models(State(st): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": st.model_name, "object": "model", "owned_by": "facebook"}]}))
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

/// An error unless `layer` names a block of the vision tower.
pub(crate) fn check_layer(st: &Shared, layer: isize) -> Result<(), ServeError> {
    let l = st.layers as isize;
    if layer < -l || layer >= l {
        return Err(ServeError::Invalid(format!(
            "layer {layer} is out of range for a vision tower of {l} layers (use -{l}..={})",
            l - 1
        )));
    }
    Ok(())
}

async fn embed_images(st: &Shared, images: Vec<ImageSource>, layer: isize) -> Result<Vec<Vec<f32>>, ServeError> {
    st.need_vision()?;
    check_layer(st, layer)?;
    let pixels = decode::decode_images(&st.decode_budget, st.transform, images).await?;
    st.engine.submit(engine::Work::Images { pixels, layer }).await
}

pub(crate) async fn embed_texts(st: &Shared, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ServeError> {
    st.need_text()?;
    // BPE is CPU work: it runs on the blocking pool, not on the model thread.
    let tokenizer = st.tokenizer;
    let ids = tokio::task::spawn_blocking(move || texts.iter().map(|t| tokenizer.tokenize(t)).collect::<Vec<_>>())
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    st.engine.submit(engine::Work::Texts { ids }).await
}

#[utoipa::path(post, path = "/embed/text", summary = "Text embeddings.", request_body = TextRequest, responses((status = 200, body = Embeddings), Errors))]
pub(crate) async fn embed_text(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ServeError> {
    let req: TextRequest = parse(body)?;
    check_count(req.texts.len(), st.cfg.max_items, "texts")?;
    let mut rows = embed_texts(&st, req.texts).await?;
    if req.normalize {
        normalize_rows(&mut rows);
    }
    Ok(Json(json!({"model": st.model_name, "embeddings": rows})))
}

#[utoipa::path(post, path = "/embed/image", summary = "Image embeddings from base64 (JSON) or files (multipart).", request_body(content((ImageRequest = "application/json"), (ImageUpload = "multipart/form-data"))), responses((status = 200, body = Embeddings), Errors))]
pub(crate) async fn embed_image(State(st): State<Shared>, req: Request) -> Result<Json<Value>, ServeError> {
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
    let mut rows = embed_images(&st, images, layer).await?;
    if normalize {
        normalize_rows(&mut rows);
    }
    Ok(Json(json!({"model": st.model_name, "embeddings": rows})))
}

#[utoipa::path(post, path = "/embed/video", summary = "Video embeddings: the mean of sampled frame embeddings.", request_body(content((VideoUpload = "multipart/form-data"))), responses((status = 200, body = Embeddings), Errors))]
/// Videos as multipart uploads: `frames` (default 8) sampled by `sampling` (`benchmark` or
/// `demo`), each frame through the image transform; the result is the mean of the raw frame
/// embeddings, L2-normalized unless `normalize=false` (as `pe embed-video`).
pub(crate) async fn embed_video(State(st): State<Shared>, req: Request) -> Result<Json<Value>, ServeError> {
    st.need_vision()?;
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
            let tmp = tokio::task::spawn_blocking(move || -> std::io::Result<tempfile::NamedTempFile> {
                let mut tmp = tempfile::NamedTempFile::new()?;
                std::io::Write::write_all(&mut tmp, &bytes)?;
                Ok(tmp)
            })
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .map_err(|e| ServeError::Internal(format!("cannot store the upload: {}", e.kind())))?;
            let what = format!("video {i} ({name})");
            let clip = decode::decode_video(&st.decode_budget, st.transform, tmp.path(), &what, frames, rule).await?;
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
    let mut rows = work.await?;
    if normalize {
        normalize_rows(&mut rows);
    }
    Ok(Json(json!({"model": st.model_name, "embeddings": rows})))
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

#[utoipa::path(post, path = "/classify", summary = "Zero-shot classification with prompt ensembling.", request_body = ClassifyRequest, responses((status = 200, body = ClassifyResponse), Errors))]
pub(crate) async fn classify(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ServeError> {
    let req: ClassifyRequest = parse(body)?;
    st.need_text()?;
    st.need_vision()?;
    if req.top_k == 0 {
        return Err(ServeError::Invalid("top_k must be at least 1".into()));
    }
    check_count(req.images.len(), st.cfg.max_items, "images")?;
    check_count(req.labels.len(), st.cfg.max_items.max(1000), "labels")?;
    let templates = req.templates.unwrap_or_else(|| DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect());
    check_count(templates.len(), st.cfg.max_items, "templates")?;
    let prompts = req.labels.len() * templates.len();
    if prompts > st.cfg.max_prompts {
        return Err(ServeError::TooLarge(format!(
            "{} labels x {} templates = {prompts} prompts to embed; the limit is {} (`--max-prompts`)",
            req.labels.len(),
            templates.len(),
            st.cfg.max_prompts
        )));
    }
    let work = async {
        let c = classifier(&st, req.labels, templates).await?;
        let mut rows = embed_images(&st, req.images.into_iter().map(ImageSource::Base64).collect(), -1).await?;
        normalize_rows(&mut rows);
        Ok::<_, ServeError>((c, rows))
    };
    let (c, rows) = work.await?;
    let dim = rows.first().map_or(0, Vec::len);
    let n = rows.len();
    let x = Tensor::from_vec(rows.into_iter().flatten().collect::<Vec<f32>>(), (n, dim), &Device::Cpu)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let preds = c.classify(&x, req.top_k)?;
    let results: Vec<Value> = preds.into_iter().map(|p| json!({"predictions": p})).collect();
    Ok(Json(json!({"model": st.model_name, "results": results})))
}

#[utoipa::path(post, path = "/v1/embeddings", summary = "OpenAI-compatible embeddings; data:image/...;base64 inputs are images.", request_body = OpenAiRequest, responses((status = 200, body = OpenAiEmbeddings), Errors))]
pub(crate) async fn openai_embeddings(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ServeError> {
    let req: OpenAiRequest = parse(body)?;
    let inputs = openai_inputs(req.input)?;
    check_count(inputs.len(), st.cfg.max_items, "inputs")?;
    if let Some(m) = &req.model {
        if m != &st.model_name {
            return Err(ServeError::Invalid(format!("this server serves `{}`, not `{m}`", st.model_name)));
        }
    }
    let base64_out = base64_format(req.encoding_format.as_deref())?;
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
    if !images.is_empty() {
        st.need_vision()?;
    }
    if !texts.is_empty() {
        st.need_text()?;
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
    let (imgs, txts) = work.await?;
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
            let embedding = if base64_out { json!(base64_floats(&v)) } else { json!(v) };
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
