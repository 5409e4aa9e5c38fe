//! Search over an index (`pe serve --index DIR`): `POST /search`, `GET /similar`, `GET /thumb`
//! and the web page at `/`. The index is `pe_index`'s; this module only turns requests into
//! its calls. A request never makes the server open a path of its choosing: text is always
//! text, images come in the request's body, and `path` terms, `/similar` and `/thumb` accept
//! only files the index holds (looked up in its catalog before anything is read).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use perception_encoder::preprocess::{self, resize, ImageTransform};
use perception_encoder::video;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::requests::{check_fields, field, is_multipart, parse, read_upload, ImageSource};
use crate::{decode, engine, ServeError, Shared};

/// Results one request may ask for.
pub const MAX_TOP_K: usize = 1000;
/// Terms in one query.
const MAX_TERMS: usize = 16;
/// Thumbnails are at most this many pixels on a side.
const MAX_THUMB: u32 = 512;
/// Bytes of encoded thumbnails kept in memory.
const THUMB_CACHE_BYTES: usize = 32 << 20;

/// An open index and what serving it needs.
pub(crate) struct Searchable {
    index: Mutex<pe_index::Index>,
    /// The index's own transform (squash or crop, as it was built), with the server's pixel limit.
    transform: ImageTransform,
    thumbs: Mutex<ThumbCache>,
}

impl Searchable {
    /// Open the index at `dir` for a server whose images are limited to `max_pixels`.
    pub(crate) fn open(dir: &std::path::Path, max_pixels: u64) -> Result<Self, pe_index::Error> {
        let index = pe_index::Index::open(dir)?;
        let mut transform = index.manifest().transform.transform();
        transform.max_pixels = transform.max_pixels.min(max_pixels);
        Ok(Searchable { index: Mutex::new(index), transform, thumbs: Mutex::new(ThumbCache::default()) })
    }

    fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&pe_index::Index) -> Result<T, pe_index::Error> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, ServeError>> {
        let me = self.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let index = me.index.lock().map_err(|_| ServeError::Internal("the index lock is poisoned".into()))?;
                f(&index).map_err(index_error)
            })
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
        }
    }
}

fn index_error(e: pe_index::Error) -> ServeError {
    match e {
        pe_index::Error::Query(m) => ServeError::Invalid(m),
        pe_index::Error::Empty(_) => ServeError::Invalid(e.to_string()),
        other => ServeError::Internal(other.to_string()),
    }
}

/// Encoded thumbnails by (path, size), least recently used first out.
#[derive(Default)]
struct ThumbCache {
    entries: VecDeque<((PathBuf, u32), Bytes)>,
    bytes: usize,
}

impl ThumbCache {
    fn get(&mut self, key: &(PathBuf, u32)) -> Option<Bytes> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let e = self.entries.remove(at)?;
        let out = e.1.clone();
        self.entries.push_back(e);
        Some(out)
    }

    fn put(&mut self, key: (PathBuf, u32), jpeg: Bytes) {
        self.bytes += jpeg.len();
        self.entries.push_back((key, jpeg));
        while self.bytes > THUMB_CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }
}

fn not_indexed(p: &std::path::Path) -> ServeError {
    ServeError::NotFound(format!("{} is not in the index (paths are absolute, as indexed)", p.display()))
}

fn searchable(st: &Shared) -> Result<Arc<Searchable>, ServeError> {
    match &st.index {
        Some(Ok(s)) => Ok(s.clone()),
        Some(Err(e)) => Err(ServeError::Unavailable(format!("the index cannot be read: {e}"))),
        None => Err(ServeError::Invalid("this server has no index (start it with `pe serve --index DIR`)".into())),
    }
}

/// One term of a JSON query: exactly one of `text`, `image` or `path`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TermRequest {
    #[serde(default)]
    text: Option<String>,
    /// Base64 or a data URL.
    #[serde(default)]
    image: Option<String>,
    /// A file the index holds (its stored embedding).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    path: Option<PathBuf>,
    /// Non-zero, within ±1000; negative terms steer away.
    #[serde(default = "one")]
    #[schema(default = 1.0, minimum = -1000.0, maximum = 1000.0)]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

fn default_top() -> usize {
    10
}

/// `POST /search` as JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchRequest {
    /// Text in rclip's grammar (`2:golden retriever + pool - snow`); every term is text.
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    terms: Vec<TermRequest>,
    /// Results wanted.
    #[serde(default = "default_top")]
    #[schema(default = 10, minimum = 1, maximum = 1000)]
    top_k: usize,
    /// Only results with at least this cosine.
    #[serde(default)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    threshold: Option<f32>,
    /// Only files under this absolute folder.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^/")]
    under: Option<PathBuf>,
    /// Score every file instead of the approximate index.
    #[serde(default)]
    exact: bool,
}

/// `POST /search` as a multipart upload: images, plus text in `query`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct SearchUpload {
    /// Images to search by.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
    /// Text in rclip's grammar.
    #[schema(required = false)]
    query: String,
    /// Results wanted.
    #[schema(minimum = 1, maximum = 1000, required = false)]
    top_k: usize,
    /// Only results with at least this cosine.
    #[schema(minimum = -1.0, maximum = 1.0, required = false)]
    threshold: f32,
    /// Only files under this absolute folder (empty: no filter).
    #[schema(required = false, pattern = "^(/.*)?$")]
    under: String,
    /// Score every file.
    #[schema(required = false)]
    exact: bool,
}

enum Part {
    Text(String),
    Image(ImageSource),
    Stored(PathBuf),
}

fn check_options(top_k: usize, threshold: Option<f32>, under: &Option<PathBuf>) -> Result<(), ServeError> {
    if top_k == 0 || top_k > MAX_TOP_K {
        return Err(ServeError::Invalid(format!("top_k must be 1..={MAX_TOP_K}, not {top_k}")));
    }
    if threshold.is_some_and(|t| !(-1.0..=1.0).contains(&t)) {
        return Err(ServeError::Invalid("threshold must be a cosine between -1 and 1".into()));
    }
    if under.as_ref().is_some_and(|u| !u.is_absolute()) {
        return Err(ServeError::Invalid("under must be an absolute folder, as the index stores paths".into()));
    }
    Ok(())
}

#[utoipa::path(post, path = "/search", summary = "Search the index (pe serve --index): text in rclip's grammar, images, indexed files, weighted.",
    request_body(content((SearchRequest = "application/json"), (SearchUpload = "multipart/form-data"))),
    responses((status = 200, body = crate::openapi::SearchResults), crate::openapi::Errors))]
pub(crate) async fn search(State(st): State<Shared>, req: Request) -> Result<Json<Value>, ServeError> {
    let index = searchable(&st)?;
    let started = Instant::now();
    let (parts, top_k, threshold, under, exact) = if is_multipart(&req) {
        let up = read_upload(req).await?;
        check_fields(&up, &["query", "top_k", "threshold", "under", "exact"])?;
        let mut parts = Vec::new();
        if let Some(q) = up.fields.get("query").filter(|q| !q.trim().is_empty()) {
            parts.extend(text_terms(q)?);
        }
        parts.extend(up.files.iter().map(|(_, b)| (1.0, Part::Image(ImageSource::Raw(b.clone())))));
        let threshold = up.fields.get("threshold").map(|_| field(&up, "threshold", 0f32)).transpose()?;
        // An empty field (as an HTML form sends) is no filter.
        let under = up.fields.get("under").filter(|u| !u.is_empty()).map(PathBuf::from);
        (parts, field(&up, "top_k", default_top())?, threshold, under, field(&up, "exact", false)?)
    } else {
        let r: SearchRequest = parse(Bytes::from_request(req, &()).await)?;
        let mut parts = Vec::new();
        if let Some(q) = r.query.as_deref().filter(|q| !q.trim().is_empty()) {
            parts.extend(text_terms(q)?);
        }
        for (i, t) in r.terms.into_iter().enumerate() {
            if !t.weight.is_finite() || t.weight == 0.0 || t.weight.abs() > 1000.0 {
                return Err(ServeError::Invalid(format!("term {i}: weight must be non-zero and within ±1000")));
            }
            let part = match (t.text, t.image, t.path) {
                (Some(text), None, None) if !text.trim().is_empty() => Part::Text(text),
                (None, Some(image), None) => Part::Image(ImageSource::Base64(image)),
                (None, None, Some(path)) => Part::Stored(path),
                _ => return Err(ServeError::Invalid(format!("term {i}: give exactly one of text, image or path"))),
            };
            parts.push((t.weight, part));
        }
        (parts, r.top_k, r.threshold, r.under, r.exact)
    };
    check_options(top_k, threshold, &under)?;
    if parts.is_empty() {
        return Err(ServeError::Invalid("nothing to search for: give `query` text, `terms`, or an image".into()));
    }
    if parts.len() > MAX_TERMS {
        return Err(ServeError::TooLarge(format!("{} terms in one query; the limit is {MAX_TERMS}", parts.len())));
    }
    if parts.iter().all(|(w, _)| *w <= 0.0) {
        return Err(ServeError::Invalid("every term is negative: say what to look for, then what to avoid".into()));
    }
    let q = query_vector(&st, &index, parts).await?;
    let opts =
        pe_index::SearchOptions { k: top_k, threshold: threshold.unwrap_or(f32::NEG_INFINITY), exact, under, ef: None };
    let (hits, method) = index
        .with(move |i| {
            let hits = i.search(&q, &opts)?;
            Ok((hits, i.method()?))
        })
        .await?;
    Ok(Json(results(&st, hits, &method, started)))
}

fn text_terms(q: &str) -> Result<Vec<(f32, Part)>, ServeError> {
    let terms = pe_index::query::parse_text(q).map_err(|e| ServeError::Invalid(e.to_string()))?;
    Ok(terms
        .into_iter()
        .filter_map(|t| match t.kind {
            pe_index::query::TermKind::Text(s) => Some((t.weight, Part::Text(s))),
            pe_index::query::TermKind::Image(_) => None,
        })
        .collect())
}

/// Embed the parts (texts in one batch, images in one batch, stored vectors from the
/// catalog) and combine them as `pe search` does.
async fn query_vector(st: &Shared, index: &Arc<Searchable>, parts: Vec<(f32, Part)>) -> Result<Vec<f32>, ServeError> {
    let (mut texts, mut images, mut stored) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (w, p)) in parts.into_iter().enumerate() {
        match p {
            Part::Text(t) => texts.push((i, w, t)),
            Part::Image(src) => images.push((i, w, src)),
            Part::Stored(path) => stored.push((i, w, path)),
        }
    }
    let mut embedded: Vec<(usize, f32, Vec<f32>)> = Vec::new();
    if !images.is_empty() {
        st.need_vision()?;
    }
    if !texts.is_empty() {
        let rows = crate::handlers::embed_texts(st, texts.iter().map(|t| t.2.clone()).collect()).await?;
        embedded.extend(texts.iter().zip(rows).map(|(t, r)| (t.0, t.1, r)));
    }
    if !images.is_empty() {
        let (meta, srcs): (Vec<_>, Vec<_>) = images.into_iter().map(|(i, w, s)| ((i, w), s)).unzip();
        let pixels = decode::decode_images(&st.decode_budget, index.transform, srcs).await?;
        let rows = st.engine.submit(engine::Work::Images { pixels, layer: -1 }).await?;
        embedded.extend(meta.into_iter().zip(rows).map(|((i, w), r)| (i, w, r)));
    }
    if !stored.is_empty() {
        let vectors = index
            .with(move |ix| {
                stored
                    .into_iter()
                    .map(|(i, w, path)| Ok(ix.catalog().vector_of(&path)?.map(|v| (i, w, v)).ok_or(path)))
                    .collect::<Result<Vec<_>, pe_index::Error>>()
            })
            .await?;
        for v in vectors {
            embedded.push(v.map_err(|p| not_indexed(&p))?);
        }
    }
    embedded.sort_by_key(|e| e.0);
    let normalized: Vec<(f32, Vec<f32>)> = embedded
        .into_iter()
        .map(|(_, w, mut v)| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= n);
            (w, v)
        })
        .collect();
    pe_index::query::combine(&normalized).map_err(|e| ServeError::Invalid(e.to_string()))
}

fn results(st: &Shared, hits: Vec<pe_index::Hit>, method: &str, started: Instant) -> Value {
    let results: Vec<Value> = hits
        .iter()
        .enumerate()
        // The f32's shortest decimal, not its f64 widening's (0.8333155, not 0.8333154916763306).
        .map(|(i, h)| json!({"rank": i + 1, "path": h.path.to_string_lossy(), "score": h.score.to_string().parse::<f64>().unwrap_or(0.0)}))
        .collect();
    json!({
        "model": st.model_name,
        "method": method,
        "took_ms": started.elapsed().as_secs_f64() * 1e3,
        "results": results,
    })
}

/// `GET /similar?path=...&top_k=...`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SimilarQuery {
    /// An indexed file, by its absolute path as indexed.
    #[param(value_type = String)]
    path: PathBuf,
    /// Results wanted.
    #[serde(default = "default_top")]
    #[param(minimum = 1, maximum = 1000)]
    top_k: usize,
    /// Score every file instead of the approximate index.
    #[serde(default)]
    exact: bool,
}

#[utoipa::path(get, path = "/similar", summary = "The indexed files nearest an indexed file.", params(SimilarQuery),
    responses((status = 200, body = crate::openapi::SearchResults), crate::openapi::Errors))]
pub(crate) async fn similar(
    State(st): State<Shared>,
    q: Result<Query<SimilarQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ServeError> {
    let index = searchable(&st)?;
    let Query(q) = q.map_err(|e| ServeError::Invalid(format!("invalid query string: {e}")))?;
    check_options(q.top_k, None, &None)?;
    let started = Instant::now();
    let path = q.path.clone();
    let (hits, method) = index
        .with(move |i| {
            // Looked up by the stored path as given: nothing on disk is touched.
            let Some(v) = i.catalog().vector_of(&q.path)? else { return Ok(None) };
            let opts = pe_index::SearchOptions { exact: q.exact, ..pe_index::SearchOptions::top(q.top_k + 1) };
            let mut hits = i.search(&v, &opts)?;
            hits.retain(|h| h.path != q.path);
            hits.truncate(q.top_k);
            Ok(Some((hits, i.method()?)))
        })
        .await?
        .ok_or_else(|| not_indexed(&path))?;
    Ok(Json(results(&st, hits, &method, started)))
}

/// `GET /thumb?path=...&size=...`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ThumbQuery {
    /// An indexed file, by its absolute path as indexed.
    #[param(value_type = String)]
    path: PathBuf,
    /// The longer side in pixels.
    #[serde(default = "thumb_size")]
    #[param(minimum = 16, maximum = 512)]
    size: u32,
}

fn thumb_size() -> u32 {
    256
}

#[utoipa::path(get, path = "/thumb", summary = "A JPEG thumbnail of an indexed file, made on the fly and cached.", params(ThumbQuery),
    responses((status = 200, description = "the thumbnail", content_type = "image/jpeg", body = Vec<u8>), crate::openapi::Errors))]
pub(crate) async fn thumb(
    State(st): State<Shared>,
    q: Result<Query<ThumbQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ServeError> {
    let index = searchable(&st)?;
    let Query(q) = q.map_err(|e| ServeError::Invalid(format!("invalid query string: {e}")))?;
    if !(16..=MAX_THUMB).contains(&q.size) {
        return Err(ServeError::Invalid(format!("size must be 16..={MAX_THUMB}, not {}", q.size)));
    }
    let key = (q.path.clone(), q.size);
    let cached = index.thumbs.lock().ok().and_then(|mut c| c.get(&key));
    let jpeg = match cached {
        Some(j) => j,
        None => {
            let path = q.path.clone();
            // Only a file the index holds as readable is ever opened.
            let known = index.with(move |i| Ok(i.catalog().vector_of(&path)?.is_some())).await?;
            if !known {
                return Err(not_indexed(&q.path));
            }
            let j = make_thumb(&st, &index, q.path.clone(), q.size).await?;
            if let Ok(mut c) = index.thumbs.lock() {
                c.put(key, j.clone());
            }
            j
        }
    };
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "private, max-age=3600")], jpeg).into_response())
}

async fn make_thumb(st: &Shared, index: &Arc<Searchable>, path: PathBuf, size: u32) -> Result<Bytes, ServeError> {
    let max_pixels = index.transform.max_pixels;
    let rgb = if pe_index::is_video(&path) {
        video_frame(st, path, max_pixels).await?
    } else {
        image_rgb(st, path, max_pixels).await?
    };
    tokio::task::spawn_blocking(move || {
        let scale = f64::from(size) / rgb.width.max(rgb.height).max(1) as f64;
        let small = if scale < 1.0 {
            let w = ((rgb.width as f64 * scale).round() as usize).max(1);
            let h = ((rgb.height as f64 * scale).round() as usize).max(1);
            resize::resize_bilinear(&rgb, w, h)
        } else {
            rgb
        };
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82)
            .encode(&small.data, small.width as u32, small.height as u32, image::ExtendedColorType::Rgb8)
            .map_err(|e| ServeError::Internal(format!("encoding a thumbnail: {e}")))?;
        Ok(Bytes::from(out))
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
}

/// An indexed image decoded to RGB within the decode budget.
async fn image_rgb(st: &Shared, path: PathBuf, max_pixels: u64) -> Result<resize::Pixels, ServeError> {
    let p = path.clone();
    let bytes = tokio::task::spawn_blocking(move || read_bounded(&p))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
    let info = preprocess::probe(&bytes, max_pixels).map_err(ServeError::from)?;
    let what = format!("{} ({}x{})", path.display(), info.width, info.height);
    let held = st.decode_budget.reserve(info.decode_bytes, &what).await?;
    tokio::task::spawn_blocking(move || {
        let rgb = preprocess::decode(&bytes, max_pixels)?.to_rgb8();
        drop(held);
        Ok(rgb)
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
}

/// The middle frame of an indexed video, within the decode budget.
async fn video_frame(st: &Shared, path: PathBuf, max_pixels: u64) -> Result<resize::Pixels, ServeError> {
    let p = path.clone();
    let info = tokio::task::spawn_blocking(move || {
        if !std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            return Err(ServeError::NotFound(format!("{} is no longer a regular file", p.display())));
        }
        video::probe(&p).map_err(|e| ServeError::Invalid(e.to_string()))
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    let pixels = info.width as u64 * info.height as u64;
    if pixels > max_pixels || info.frames == 0 {
        return Err(ServeError::TooLarge(format!("{}: {}x{} frames", path.display(), info.width, info.height)));
    }
    let what = format!("{} ({}x{})", path.display(), info.width, info.height);
    let held = st.decode_budget.reserve(pixels * 6, &what).await?;
    tokio::task::spawn_blocking(move || {
        let mut frames =
            video::decode_frames(&path, &info, &[info.frames / 2]).map_err(|e| ServeError::Invalid(e.to_string()))?;
        drop(held);
        frames.pop().ok_or_else(|| ServeError::Invalid(format!("{}: no frame decoded", path.display())))
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
}

/// Read an indexed file for a thumbnail, refusing files grown past the index's limit.
fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    use std::io::Read;
    // Not a FIFO or device put in an indexed file's place: opening one could block forever.
    let meta = std::fs::metadata(path).map_err(|e| ServeError::NotFound(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ServeError::NotFound(format!("{} is no longer a regular file", path.display())));
    }
    let f = std::fs::File::open(path).map_err(|e| ServeError::NotFound(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(pe_index::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ServeError::NotFound(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > pe_index::MAX_FILE_BYTES {
        return Err(ServeError::TooLarge(format!("{} is over the 1 GiB limit of a file", path.display())));
    }
    Ok(bytes)
}

/// The web page: a search box and a grid of thumbnails, plain HTML, CSS and JS.
#[utoipa::path(get, path = "/", summary = "The search page (plain HTML, CSS and JavaScript).",
    responses((status = 200, description = "the page", content_type = "text/html", body = String), crate::openapi::Errors))]
pub(crate) async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
