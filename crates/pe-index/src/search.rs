//! Turning query terms into one query vector with the index's model: text through the text
//! tower, image files through the index's transform and the image tower, and files already in
//! the index by their stored embedding (no decode).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::Clip;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::query::{combine, Term, TermKind};

/// The normalized query vector of `terms`.
pub fn query_vector(model: &Clip, manifest: &Manifest, catalog: &Catalog, terms: &[Term]) -> Result<Vec<f32>> {
    let mut embedded = Vec::with_capacity(terms.len());
    for t in terms {
        let e = match &t.kind {
            TermKind::Text(text) => {
                let text_tower = model.text().ok_or_else(|| {
                    Error::Query(format!("{} has no text tower: search by image instead", manifest.model.name))
                })?;
                let ids = ClipTokenizer::new(text_tower.config().context_length)
                    .tokenize_batch(std::slice::from_ref(text), &Device::Cpu)?;
                row(&model.encode_text(&ids, true)?)?
            }
            TermKind::Image(path) => match stored(catalog, path)? {
                Some(v) => v,
                None => {
                    let x = manifest.transform.transform().load_path(path)?.unsqueeze(0)?;
                    row(&model.encode_image(&x, true)?)?
                }
            },
        };
        embedded.push((t.weight, e));
    }
    combine(&embedded)
}

/// The stored embedding of a file the index holds (by its absolute path).
fn stored(catalog: &Catalog, path: &Path) -> Result<Option<Vec<f32>>> {
    match std::fs::canonicalize(path) {
        Ok(abs) => catalog.vector_of(&abs),
        Err(_) => Ok(None),
    }
}

fn row(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
