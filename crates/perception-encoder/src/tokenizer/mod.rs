//! The CLIP BPE tokenizer with the reference's behaviour (`SimpleTokenizer` in
//! `core/vision_encoder/tokenizer.py`): cleaning, BPE, start/end tokens, truncation that keeps
//! the end token in the last slot, zero padding.
//!
//! The vocabulary (`bpe_simple_vocab_16e6.txt`, 48894 merges) and the BPE merge loop come from
//! the `instant-clip-tokenizer` crate, which bundles OpenAI's file and implements the same
//! pre-tokenization regex and merge rule; cleaning ([`clean`]) and row layout are ours.

mod clean;

use std::sync::OnceLock;

pub use clean::{clean, fix_text};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// `<start_of_text>`.
pub const SOT: u32 = 49406;
/// `<end_of_text>`; the largest id, so the text tower pools at `argmax(ids)`.
pub const EOT: u32 = 49407;
/// Size of the vocabulary, special tokens included.
pub const VOCAB_SIZE: usize = 49408;

fn bpe() -> &'static instant_clip_tokenizer::Tokenizer {
    static BPE: OnceLock<instant_clip_tokenizer::Tokenizer> = OnceLock::new();
    BPE.get_or_init(instant_clip_tokenizer::Tokenizer::new)
}

/// Longest space-free piece of cleaned text that [`ClipTokenizer::tokenize`] runs BPE on.
pub const MAX_PIECE_BYTES: usize = 2048;

/// The PE text tokenizer for one context length (32, or 72 for G/14).
///
/// ```
/// use perception_encoder::tokenizer::ClipTokenizer;
/// let tok = ClipTokenizer::new(32);
/// let row = tok.tokenize("a photo of a cat.");
/// assert_eq!(&row[..8], &[49406, 320, 1125, 539, 320, 2368, 269, 49407]);
/// assert_eq!(row.len(), 32);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ClipTokenizer {
    context_length: usize,
}

impl ClipTokenizer {
    /// A tokenizer producing rows of `context_length` ids, kept between 2 (start and end) and
    /// [`crate::config::MAX_CONTEXT`].
    pub fn new(context_length: usize) -> Self {
        ClipTokenizer { context_length: context_length.clamp(2, crate::config::MAX_CONTEXT) }
    }

    /// The row length.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// BPE ids of `text` after cleaning, without start/end tokens and untruncated. The literal
    /// strings `<start_of_text>` / `<end_of_text>` become their special ids, as in the reference.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe().encode(&clean(text), &mut out);
        out.into_iter().map(|t| u32::from(t.to_u16())).collect()
    }

    /// Text of BPE ids (`</w>` becomes a space), as the reference's `decode`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let tokens = ids
            .iter()
            .map(|&id| {
                u16::try_from(id)
                    .ok()
                    .and_then(|i| instant_clip_tokenizer::Token::from_u16(i, bpe()))
                    .ok_or_else(|| Error::InvalidInput(format!("token id {id} is outside the vocabulary")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(bpe().decode(tokens))
    }

    /// One row: `[SOT] + encode(text) + [EOT]`, truncated to the context length with the end
    /// token forced into the last slot, then right-padded with 0.
    ///
    /// Linear in the text's length: BPE stops once the row is full (no pre-tokenizer match
    /// spans a space, so the cleaned text is encoded space-separated piece by piece), and a
    /// piece longer than [`MAX_PIECE_BYTES`] is cut there before BPE, whose merge loop is
    /// quadratic in a word's length. The reference encodes such a piece whole; the first
    /// tokens of a word that long are the same in practice, as merges act on neighbours.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut row = Vec::with_capacity(self.context_length + 1);
        row.push(SOT);
        let cleaned = clean(text);
        let mut tokens = Vec::new();
        for piece in cleaned.split(' ').filter(|p| !p.is_empty()) {
            if row.len() > self.context_length {
                break;
            }
            let mut end = piece.len().min(MAX_PIECE_BYTES);
            while !piece.is_char_boundary(end) {
                end -= 1;
            }
            tokens.clear();
            bpe().encode(&piece[..end], &mut tokens);
            row.extend(tokens.iter().map(|t| u32::from(t.to_u16())));
        }
        row.push(EOT);
        if row.len() > self.context_length {
            row.truncate(self.context_length);
            row[self.context_length - 1] = EOT;
        }
        row.resize(self.context_length, 0);
        row
    }

    /// A `(batch, context_length)` tensor of ids (u32) for the text tower.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("no texts to tokenize".into()));
        }
        let flat: Vec<u32> = texts.iter().flat_map(|t| self.tokenize(t.as_ref())).collect();
        Ok(Tensor::from_vec(flat, (texts.len(), self.context_length), device)?)
    }
}
