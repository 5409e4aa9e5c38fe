//! `POST /features`: dense token features (the point of PE Spatial), as `pe features` writes
//! them: per image the patch-token grid `(H/p, W/p, C)` and the class token when the model has
//! one, after block `layer`, through `ln_post` with `norm`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::Json;
use serde_json::{json, Value};

use crate::requests::*;
use crate::{decode, engine, ServeError, Shared};

/// Feature values one request may ask for (images x tokens x width): 256 MiB of float32.
const MAX_VALUES: usize = 64 << 20;

#[utoipa::path(post, path = "/features", summary = "Dense token features: per image the patch grid (H/p, W/p, C) and the class token.",
    request_body(content((FeaturesRequest = "application/json"), (FeaturesUpload = "multipart/form-data"))),
    responses((status = 200, body = crate::openapi::FeaturesResponse), crate::openapi::Errors))]
pub(crate) async fn features(State(st): State<Shared>, req: Request) -> Result<Json<Value>, ServeError> {
    let (images, layer, norm, format) = if is_multipart(&req) {
        let up = read_upload(req).await?;
        check_fields(&up, &["layer", "norm", "encoding_format"])?;
        let layer = field(&up, "layer", -1isize)?;
        let norm = field(&up, "norm", false)?;
        let format = up.fields.get("encoding_format").map(|s| s.trim().to_string());
        (up.files.into_iter().map(|(_, b)| ImageSource::Raw(b)).collect::<Vec<_>>(), layer, norm, format)
    } else {
        let req: FeaturesRequest = parse(Bytes::from_request(req, &()).await)?;
        (req.images.into_iter().map(ImageSource::Base64).collect(), req.layer, req.norm, req.encoding_format)
    };
    let base64_out = base64_format(format.as_deref())?;
    if images.is_empty() {
        return Err(ServeError::Invalid("no images given".into()));
    }
    st.need_vision()?;
    crate::handlers::check_layer(&st, layer)?;
    let grid = st.transform.size / st.vision.patch_size;
    let width = st.vision.width;
    let cls = usize::from(st.vision.use_cls_token);
    let per_image = (grid * grid + cls) * width;
    let max_images = (MAX_VALUES / per_image.max(1)).clamp(1, st.cfg.max_items);
    if images.len() > max_images {
        return Err(ServeError::TooLarge(format!(
            "{} images in one request; the features of at most {max_images} fit one answer",
            images.len()
        )));
    }
    let pixels = decode::decode_images(&st.decode_budget, st.transform, images).await?;
    let rows = st.engine.submit(engine::Work::Features { pixels, layer, norm }).await?;
    let data: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (c, patches) = row.split_at(cls * width);
            let (cls_token, patch_tokens) = if base64_out {
                (json!(base64_floats(c)), json!(base64_floats(patches)))
            } else {
                let grid_rows: Vec<Vec<&[f32]>> =
                    patches.chunks(grid * width).map(|r| r.chunks(width).collect()).collect();
                (json!(c), json!(grid_rows))
            };
            let cls_token = if cls == 1 { cls_token } else { Value::Null };
            json!({"index": i, "cls_token": cls_token, "patch_tokens": patch_tokens})
        })
        .collect();
    Ok(Json(json!({
        "model": st.model_name,
        "layer": layer,
        "norm": norm,
        "grid": [grid, grid],
        "width": width,
        "data": data,
    })))
}
