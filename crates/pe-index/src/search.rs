//! Turning query terms into one query vector with the index's model: text through the text
//! tower, image files through the index's transform and the image tower, and files already in
//! the index by their stored embedding (no decode).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::{Clip, Towers};

use crate::ann::{default_ef, Ann};
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::matrix::{dot, Hit, Matrix};
use crate::query::{combine, Term, TermKind};
use crate::SearchOptions;

/// The towers `terms` need, `None` for none: text needs the text tower, images the index does
/// not hold the vision tower (a text query then loads a quarter of G14's weights, not all).
pub fn towers_needed(catalog: &Catalog, terms: &[Term]) -> Result<Option<Towers>> {
    let (mut text, mut image) = (false, false);
    for t in terms {
        match &t.kind {
            TermKind::Text(_) => text = true,
            TermKind::Image(path) => image |= stored(catalog, path)?.is_none(),
        }
    }
    Ok(Towers::of(image, text))
}

/// The normalized query vector of `terms`; `model` may be `None` when [`towers_needed`] says so.
pub fn query_vector(model: Option<&Clip>, manifest: &Manifest, catalog: &Catalog, terms: &[Term]) -> Result<Vec<f32>> {
    let mut embedded = Vec::with_capacity(terms.len());
    let need = || Error::Query("this query needs the model, which was not loaded".into());
    for t in terms {
        let e = match &t.kind {
            TermKind::Text(text) => {
                let model = model.ok_or_else(need)?;
                let text_cfg = model.config().text.as_ref().ok_or_else(|| {
                    Error::Query(format!("{} has no text tower: search by image instead", manifest.model.name))
                })?;
                let ids = ClipTokenizer::new(text_cfg.context_length)
                    .tokenize_batch(std::slice::from_ref(text), &Device::Cpu)?;
                row(&model.encode_text(&ids, true)?)?
            }
            TermKind::Image(path) => match stored(catalog, path)? {
                Some(v) => v,
                None => {
                    let model = model.ok_or_else(need)?;
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

/// Search through the approximate index: its nearest contents (at least ef of them, so that
/// i8 storage's coarse order is corrected), re-scored with their stored float32
/// embeddings, then expanded to the files holding the best (through the matrix's same-content
/// links: no catalog query); asks the graph for more when the threshold or unreadable
/// duplicates leave fewer than `k` files.
pub fn approximate(ann: &Ann, matrix: &Matrix, query: &[f32], opts: &SearchOptions) -> Result<Vec<Hit>> {
    let mut want = opts.k.max(1);
    loop {
        let ef = opts.ef.unwrap_or_else(|| default_ef(ann.len()));
        let asked = want.max(ef).min(ann.len());
        let found = ann.search(query, asked, ef.max(asked))?;
        let mut scored = Vec::with_capacity(found.len());
        let mut below = false;
        for &(row, _) in &found {
            // The graph and the matrix come from the same catalog generation (checked by the
            // caller), so the row holds this content's float32 embedding.
            if row >= matrix.rows() {
                continue;
            }
            let score = dot(matrix.row(row), query);
            if score < opts.threshold {
                below = true;
            } else {
                scored.push((score, row));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut hits = Vec::new();
        for (score, first) in scored {
            if hits.len() >= opts.k {
                break;
            }
            let mut row = Some(first);
            while let Some(r) = row {
                hits.push(Hit { path: matrix.path_of(r)?, score });
                row = matrix.next_same(r);
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.path.cmp(&b.path)));
        if hits.len() >= opts.k || below || found.len() < asked || asked >= ann.len() {
            hits.truncate(opts.k);
            return Ok(hits);
        }
        want = want.saturating_mul(2);
    }
}
