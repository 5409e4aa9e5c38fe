//! `POST /features`: dense token features (the point of PE Spatial), as `pe features` writes
//! them: per image the patch-token grid `(H/p, W/p, C)` and the class token when the model has
//! one, after block `layer`, through `ln_post` with `norm`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::Json;
use base64::Engine as _;
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
    let base64_out = match format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ServeError::Invalid(format!("encoding_format must be `float` or `base64`, not `{other}`")))
        }
    };
    if images.is_empty() {
        return Err(ServeError::Invalid("no images given".into()));
    }
    let l = st.layers as isize;
    if layer < -l || layer >= l {
        return Err(ServeError::Invalid(format!(
            "layer {layer} is out of range for a vision tower of {l} layers (use -{l}..={})",
            l - 1
        )));
    }
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
    let encode = |v: &[f32]| -> Value {
        if base64_out {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(v.chunks(grid * width).map(|r| r.chunks(width).collect::<Vec<_>>()).collect::<Vec<_>>())
        }
    };
    let data: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (c, patches) = row.split_at(cls * width);
            let cls_token = if cls == 1 {
                if base64_out {
                    encode(c)
                } else {
                    json!(c)
                }
            } else {
                Value::Null
            };
            json!({"index": i, "cls_token": cls_token, "patch_tokens": encode(patches)})
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
