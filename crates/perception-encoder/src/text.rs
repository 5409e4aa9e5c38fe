//! The text tower (`TextTransformer` in the reference's `pe.py`): token and position
//! embeddings, causal residual blocks, `ln_final`, pooling at the EOT token (the largest id,
//! first occurrence) and `text_projection`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::layers::{ln, LayerNorm};
use crate::precision::Precision;
use crate::transformer::Transformer;

/// The PE text tower.
#[derive(Debug)]
pub struct TextTransformer {
    cfg: TextConfig,
    token_embedding: Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
    device: Device,
}

impl TextTransformer {
    /// Build the tower in `precision`; `vb` is the checkpoint root (the text tower has no prefix).
    pub fn new(cfg: &TextConfig, vb: VarBuilder, precision: Precision) -> Result<Self> {
        // The embedding is one token's features: no pooling averages int8's noise.
        let (vb, kind) = crate::layers::plan(vb, precision, false)?;
        let w = cfg.width;
        let emb = vb.pp("token_embedding").get((cfg.vocab_size, w), "weight")?;
        Ok(TextTransformer {
            cfg: cfg.clone(),
            token_embedding: Embedding::new(emb, w),
            positional_embedding: vb.get((cfg.context_length, w), "positional_embedding")?,
            transformer: Transformer::new(&cfg.block(kind), cfg.layers, vb.pp("transformer"))?,
            ln_final: ln(w, vb.pp("ln_final"))?,
            text_projection: vb.get((w, cfg.output_dim), "text_projection")?,
            device: vb.device().clone(),
        })
    }

    /// The tower's configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Validate token ids `(batch, len)` and return them as rows of `u32`.
    fn ids(&self, ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let dims = ids.dims();
        if dims.len() != 2 || dims[0] == 0 || dims[1] == 0 {
            return Err(Error::InvalidInput(format!(
                "token ids must be a non-empty (batch, length) tensor, got shape {dims:?}"
            )));
        }
        if dims[1] > self.cfg.context_length {
            return Err(Error::InvalidInput(format!(
                "{} tokens exceed the context length {}",
                dims[1], self.cfg.context_length
            )));
        }
        let rows: Vec<Vec<i64>> = match ids.dtype() {
            DType::I64 => ids.to_vec2()?,
            DType::U32 => ids.to_vec2::<u32>()?.into_iter().map(|r| r.into_iter().map(i64::from).collect()).collect(),
            DType::U8 => ids.to_vec2::<u8>()?.into_iter().map(|r| r.into_iter().map(i64::from).collect()).collect(),
            other => return Err(Error::InvalidInput(format!("token ids must be integers, got {other:?}"))),
        };
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|id| {
                        if id < 0 || id as usize >= self.cfg.vocab_size {
                            Err(Error::InvalidInput(format!(
                                "token id {id} is outside the vocabulary of {}",
                                self.cfg.vocab_size
                            )))
                        } else {
                            Ok(id as u32)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn embed(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let (b, l) = (rows.len(), rows[0].len());
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, l), &self.device)?;
        let x = self.token_embedding.forward(&ids)?;
        Ok(x.broadcast_add(&self.positional_embedding.narrow(0, 0, l)?)?)
    }

    /// `token_embedding[ids] + positional_embedding[:len]`, `(batch, len, width)`.
    pub fn tokens_in(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed(&self.ids(ids)?)
    }

    fn tokens_final(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let x = self.embed(rows)?;
        let x = self.transformer.forward(&x, self.cfg.layers - 1, None, true)?;
        Ok(self.ln_final.forward(&x)?)
    }

    /// Per-token output after `ln_final`, before pooling, `(batch, len, width)`.
    pub fn forward_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.tokens_final(&self.ids(ids)?)
    }

    /// The text embedding `(batch, output_dim)`: the row at `argmax(ids)` projected.
    ///
    /// Under the causal mask no position after a row's EOT influences the pooled row, so the
    /// tower only runs up to the last EOT of the batch (prompts are usually far shorter than
    /// the context length).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.ids(ids)?;
        // First occurrence of the largest id (the EOT token), as torch.argmax.
        let eot: Vec<usize> = rows
            .iter()
            .map(|r| {
                let mut best = 0;
                for (j, &id) in r.iter().enumerate() {
                    if id > r[best] {
                        best = j;
                    }
                }
                best
            })
            .collect();
        let used = eot.iter().max().map_or(1, |m| m + 1);
        let rows: Vec<Vec<u32>> = rows
            .into_iter()
            .map(|mut r| {
                r.truncate(used);
                r
            })
            .collect();
        let x = self.tokens_final(&rows)?;
        let (b, l, w) = x.dims3()?;
        let at: Vec<u32> = eot.iter().enumerate().map(|(i, &j)| (i * l + j) as u32).collect();
        let at = Tensor::from_vec(at, b, &self.device)?;
        let pooled = x.reshape((b * l, w))?.index_select(&at, 0)?;
        Ok(pooled.matmul(&self.text_projection)?)
    }
}
