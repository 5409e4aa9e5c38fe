//! Model configurations: the reference's presets by their official names, and custom
//! architectures read from JSON with the reference's field names.
//!
//! The presets mirror `PE_VISION_CONFIG` / `PE_TEXT_CONFIG` in the reference's
//! `core/vision_encoder/config.py` (facebookresearch/perception_models).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the vision tower turns its token sequence into one vector (`pool_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    /// Attention pooling with one learned probe (`attn_pool`); PE Core.
    Attn,
    /// The class token.
    Tok,
    /// The mean over tokens.
    Avg,
    /// No pooling: the tower returns every token; PE Spatial and PE Lang.
    None,
}

/// Vision tower configuration (`PEConfig` in the reference).
///
/// ```
/// let cfg = perception_encoder::ClipConfig::preset("PE-Core-B16-224").unwrap();
/// assert_eq!(cfg.vision.grid_size(), 14);
/// assert_eq!(cfg.vision.mlp_hidden(), 3072);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Patch side in pixels (`conv1` kernel and stride).
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Number of residual blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// MLP hidden size over width; the hidden size truncates `width * mlp_ratio`.
    pub mlp_ratio: f64,
    /// Projection output size (`proj`), `None` for towers without a projection.
    #[serde(default)]
    pub output_dim: Option<usize>,
    /// LayerScale initial value; `Some` means blocks have `ls_1` / `ls_2`.
    #[serde(default)]
    pub ls_init_value: Option<f64>,
    /// Stochastic depth rate (training only; kept for JSON round trips).
    #[serde(default)]
    pub drop_path: f64,
    /// The training resolution; the absolute position embedding has this grid.
    #[serde(default = "default_image_size", alias = "pretrain_image_size")]
    pub image_size: usize,
    /// Whether an absolute position embedding is added.
    #[serde(default = "yes")]
    pub use_abs_posemb: bool,
    /// Whether a class token is prepended.
    #[serde(default)]
    pub use_cls_token: bool,
    /// Whether 2D RoPE is applied in the attention blocks.
    #[serde(default = "yes")]
    pub use_rope2d: bool,
    /// How the tokens are pooled.
    #[serde(default = "default_pool")]
    pub pool_type: PoolType,
    /// Heads of the attention pool.
    #[serde(default = "default_pool_heads")]
    pub attn_pooler_heads: usize,
    /// Whether `ln_pre` exists.
    #[serde(default = "yes")]
    pub use_ln_pre: bool,
    /// Whether `ln_post` exists.
    #[serde(default = "yes")]
    pub use_ln_post: bool,
}

fn yes() -> bool {
    true
}
fn default_image_size() -> usize {
    224
}
fn default_pool() -> PoolType {
    PoolType::Attn
}
fn default_pool_heads() -> usize {
    8
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_vocab() -> usize {
    49408
}

impl VisionConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    /// MLP hidden size: `int(width * mlp_ratio)` computed in f64 and truncated, as the reference.
    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
    /// Side of the trained patch grid (`image_size / patch_size`).
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// One residual block's hyper-parameters (layer scale when `ls_init_value` is set).
    pub(crate) fn block(&self, weights: crate::layers::LinearWeights) -> crate::transformer::BlockSpec {
        let (width, heads, hidden) = (self.width, self.heads, self.mlp_hidden());
        crate::transformer::BlockSpec { width, heads, hidden, layer_scale: self.ls_init_value.is_some(), weights }
    }
    /// Number of positions in the stored position embedding.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + usize::from(self.use_cls_token)
    }
    /// Patch grid `(rows, cols)` for an input of `height x width` pixels: floor division, as the
    /// reference's strided convolution drops leftover pixels.
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.patch_size, width / self.patch_size)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.patch_size == 0 || self.width == 0 || self.layers == 0 || self.heads == 0 {
            return bad("vision patch_size, width, layers and heads must be positive".into());
        }
        within("vision image_size", self.image_size, MAX_IMAGE_SIZE)?;
        within("vision width", self.width, MAX_WIDTH)?;
        within("vision layers", self.layers, MAX_LAYERS)?;
        within("vision heads", self.heads, self.width)?;
        within("vision output_dim", self.output_dim.unwrap_or(1), MAX_WIDTH)?;
        within("vision MLP hidden size", self.mlp_hidden(), 8 * MAX_WIDTH)?;
        within("vision patch grid", self.grid_size().saturating_mul(self.grid_size()), MAX_TOKENS)?;
        if !self.width.is_multiple_of(self.heads) {
            return bad(format!("vision width {} is not divisible by heads {}", self.width, self.heads));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            return bad(format!("vision mlp_ratio {} gives no hidden units", self.mlp_ratio));
        }
        if self.image_size < self.patch_size {
            return bad(format!(
                "vision image_size {} is smaller than patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.pool_type == PoolType::Attn
            && (self.attn_pooler_heads == 0 || !self.width.is_multiple_of(self.attn_pooler_heads))
        {
            return bad(format!(
                "vision width {} is not divisible by attn_pooler_heads {}",
                self.width, self.attn_pooler_heads
            ));
        }
        if self.pool_type == PoolType::Tok && !self.use_cls_token {
            return bad("pool_type \"tok\" needs use_cls_token".into());
        }
        if self.output_dim == Some(0) {
            return bad("vision output_dim must be positive".into());
        }
        Ok(())
    }
}

/// Limits a config must respect: far above every PE model (G/14: width 1536, 50 layers,
/// 448 px; text context 72), low enough that nothing is allocated for an absurd file.
pub const MAX_IMAGE_SIZE: usize = 8192;
/// Largest token width.
pub const MAX_WIDTH: usize = 16384;
/// Most residual blocks in a tower.
pub const MAX_LAYERS: usize = 1024;
/// Most patch tokens at the trained size.
pub const MAX_TOKENS: usize = 65536;
/// Longest text context.
pub const MAX_CONTEXT: usize = 4096;
/// Largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 20;

fn within(what: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(Error::InvalidConfig(format!("{what} {value} is above the limit of {max}")));
    }
    Ok(())
}

/// Text tower configuration (`PETextConfig` in the reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Maximum number of tokens (32, or 72 for G/14).
    pub context_length: usize,
    /// Token width.
    pub width: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Number of residual blocks.
    pub layers: usize,
    /// Projection output size (`text_projection`).
    pub output_dim: usize,
    /// MLP hidden size over width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Vocabulary size of `token_embedding`.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
}

impl TextConfig {
    /// MLP hidden size, truncated like the reference.
    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
    /// One residual block's hyper-parameters (the text tower has no layer scale).
    pub(crate) fn block(&self, weights: crate::layers::LinearWeights) -> crate::transformer::BlockSpec {
        let (width, heads, hidden) = (self.width, self.heads, self.mlp_hidden());
        crate::transformer::BlockSpec { width, heads, hidden, layer_scale: false, weights }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.context_length == 0
            || self.width == 0
            || self.heads == 0
            || self.layers == 0
            || self.output_dim == 0
            || self.vocab_size == 0
        {
            return bad("text context_length, width, heads, layers, output_dim and vocab_size must be positive".into());
        }
        within("text context_length", self.context_length, MAX_CONTEXT)?;
        within("text width", self.width, MAX_WIDTH)?;
        within("text layers", self.layers, MAX_LAYERS)?;
        within("text heads", self.heads, self.width)?;
        within("text output_dim", self.output_dim, MAX_WIDTH)?;
        within("text vocab_size", self.vocab_size, MAX_VOCAB)?;
        within("text MLP hidden size", self.mlp_hidden(), 8 * MAX_WIDTH)?;
        if !self.width.is_multiple_of(self.heads) {
            return bad(format!("text width {} is not divisible by heads {}", self.width, self.heads));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            return bad(format!("text mlp_ratio {} gives no hidden units", self.mlp_ratio));
        }
        Ok(())
    }
}

/// A whole model: a vision tower and, for CLIP models, a text tower.
///
/// PE Spatial and PE Lang are vision-only (`text` is `None`).
///
/// ```
/// use perception_encoder::ClipConfig;
/// let cfg = ClipConfig::preset("PE-Core-G14-448").unwrap();
/// assert_eq!(cfg.text.as_ref().unwrap().context_length, 72);
/// assert!(ClipConfig::preset("PE-Spatial-B16-512").unwrap().text.is_none());
/// assert!(ClipConfig::preset("PE-Core-X").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// The model's name (a preset name, or the JSON file's `name` / stem).
    #[serde(default)]
    pub name: String,
    /// The vision tower.
    pub vision: VisionConfig,
    /// The text tower, absent for vision-only models.
    #[serde(default)]
    pub text: Option<TextConfig>,
}

/// Every preset name, in the order `pe models` lists them.
pub const PRESET_NAMES: &[&str] = &[
    "PE-Core-T16-384",
    "PE-Core-S16-384",
    "PE-Core-B16-224",
    "PE-Core-L14-336",
    "PE-Core-G14-448",
    "PE-Spatial-T16-512",
    "PE-Spatial-S16-512",
    "PE-Spatial-B16-512",
    "PE-Spatial-L14-448",
    "PE-Spatial-G14-448",
    "PE-Lang-L14-448",
    "PE-Lang-G14-448",
    "PE-Lang-L14-448-Tiling",
    "PE-Lang-G14-448-Tiling",
];

#[allow(clippy::too_many_arguments)]
fn core_vision(
    image_size: usize,
    patch_size: usize,
    width: usize,
    layers: usize,
    heads: usize,
    mlp_ratio: f64,
    output_dim: usize,
    use_cls_token: bool,
) -> VisionConfig {
    VisionConfig {
        patch_size,
        width,
        layers,
        heads,
        mlp_ratio,
        output_dim: Some(output_dim),
        ls_init_value: None,
        drop_path: 0.0,
        image_size,
        use_abs_posemb: true,
        use_cls_token,
        use_rope2d: true,
        pool_type: PoolType::Attn,
        attn_pooler_heads: 8,
        use_ln_pre: true,
        use_ln_post: true,
    }
}

fn text(context_length: usize, width: usize, heads: usize, layers: usize, output_dim: usize) -> TextConfig {
    TextConfig { context_length, width, heads, layers, output_dim, mlp_ratio: 4.0, vocab_size: 49408 }
}

/// The reference's `replace(core, image_size=.., pool_type="none", use_ln_post=False,
/// output_dim=None, ...)` used by every Spatial and Lang preset.
fn dense(core: VisionConfig, image_size: usize, ls: Option<f64>, layers: Option<usize>) -> VisionConfig {
    VisionConfig {
        image_size,
        pool_type: PoolType::None,
        use_ln_post: false,
        output_dim: None,
        ls_init_value: ls,
        layers: layers.unwrap_or(core.layers),
        ..core
    }
}

impl ClipConfig {
    /// The preset with this official name (`PE-Core-B16-224`, `PE-Spatial-G14-448`, ...).
    /// Matching ignores ASCII case; an unknown name is an error listing the known ones.
    pub fn preset(name: &str) -> Result<Self> {
        let canonical = PRESET_NAMES.iter().find(|n| n.eq_ignore_ascii_case(name)).ok_or_else(|| {
            Error::UnknownModel { name: name.to_string(), known: PRESET_NAMES.iter().map(|s| s.to_string()).collect() }
        })?;
        let g14 = || core_vision(448, 14, 1536, 50, 16, 8960.0 / 1536.0, 1280, false);
        let l14 = || core_vision(336, 14, 1024, 24, 16, 4.0, 1024, true);
        let b16 = || core_vision(224, 16, 768, 12, 12, 4.0, 1024, true);
        let s16 = || core_vision(384, 16, 384, 12, 6, 4.0, 512, true);
        let t16 = || core_vision(384, 16, 192, 12, 3, 4.0, 512, true);
        let (vision, text) = match *canonical {
            "PE-Core-T16-384" => (t16(), Some(text(32, 512, 8, 12, 512))),
            "PE-Core-S16-384" => (s16(), Some(text(32, 512, 8, 12, 512))),
            "PE-Core-B16-224" => (b16(), Some(text(32, 1024, 16, 24, 1024))),
            "PE-Core-L14-336" => (l14(), Some(text(32, 1024, 16, 24, 1024))),
            "PE-Core-G14-448" => (g14(), Some(text(72, 1280, 20, 24, 1280))),
            "PE-Spatial-T16-512" => (dense(t16(), 512, None, None), None),
            "PE-Spatial-S16-512" => (dense(s16(), 512, None, None), None),
            "PE-Spatial-B16-512" => (dense(b16(), 512, None, None), None),
            "PE-Spatial-L14-448" => (dense(l14(), 448, None, None), None),
            "PE-Spatial-G14-448" => (dense(g14(), 448, Some(0.1), None), None),
            "PE-Lang-L14-448" | "PE-Lang-L14-448-Tiling" => (dense(l14(), 448, Some(0.1), Some(23)), None),
            "PE-Lang-G14-448" | "PE-Lang-G14-448-Tiling" => (dense(g14(), 448, Some(0.1), Some(47)), None),
            other => unreachable!("preset table lacks {other}"),
        };
        Ok(ClipConfig { name: canonical.to_string(), vision, text })
    }

    /// Every preset, in listing order.
    pub fn presets() -> Vec<ClipConfig> {
        PRESET_NAMES.iter().map(|n| Self::preset(n).expect("preset names are valid")).collect()
    }

    /// Parse a JSON description: `vision` and optional `text` objects with the reference's field
    /// names (the fixtures' `tiny-cls.json` format); other top-level keys are ignored.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let cfg: ClipConfig = serde_json::from_str(json).map_err(|e| Error::InvalidConfig(format!("JSON: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read [`ClipConfig::from_json_str`] from a file; the name defaults to the file stem.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg =
            Self::from_json_str(&text).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
        if cfg.name.is_empty() {
            cfg.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        }
        Ok(cfg)
    }

    /// Check sizes that would make the model impossible to build.
    pub fn validate(&self) -> Result<()> {
        self.vision.validate()?;
        if let Some(t) = &self.text {
            t.validate()?;
            if let Some(v) = self.vision.output_dim {
                if v != t.output_dim {
                    return Err(Error::InvalidConfig(format!(
                        "vision output_dim {v} differs from text output_dim {}",
                        t.output_dim
                    )));
                }
            }
        }
        Ok(())
    }

    /// The size of the joint embedding, or of the vision tower's output for vision-only models.
    pub fn embed_dim(&self) -> usize {
        self.vision.output_dim.unwrap_or(self.vision.width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_built() {
        let vision =
            r#""vision": {"patch_size": 8, "width": 64, "layers": 1, "heads": 4, "mlp_ratio": 4.0, "output_dim": 8"#;
        for (json, what) in [
            (format!(r#"{{{vision}, "image_size": 1000000000}}}}"#), "image_size"),
            (r#"{"vision": {"patch_size": 8, "width": 64, "layers": 100000, "heads": 4, "mlp_ratio": 4.0, "output_dim": 8}}"#.into(), "layers"),
            (r#"{"vision": {"patch_size": 8, "width": 1000000000, "layers": 1, "heads": 4, "mlp_ratio": 4.0, "output_dim": 8}}"#.into(), "width"),
            (r#"{"vision": {"patch_size": 1, "width": 64, "layers": 1, "heads": 4, "mlp_ratio": 4.0, "output_dim": 8, "image_size": 4096}}"#.into(), "patch grid"),
            (format!(r#"{{{vision}}}, "text": {{"context_length": 1000000000000, "width": 64, "heads": 4, "layers": 1, "output_dim": 8}}}}"#), "context_length"),
            (format!(r#"{{{vision}}}, "text": {{"context_length": 32, "width": 64, "heads": 4, "layers": 1, "output_dim": 8, "vocab_size": 1000000000}}}}"#), "vocab_size"),
        ] {
            let err = ClipConfig::from_json_str(&json).unwrap_err().to_string();
            assert!(err.contains(what) && err.contains("above the limit"), "{json}: {err}");
        }
        // Every preset is within the limits.
        for cfg in ClipConfig::presets() {
            cfg.validate().unwrap();
        }
    }

    #[test]
    fn every_preset_is_valid() {
        for cfg in ClipConfig::presets() {
            cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", cfg.name));
        }
    }

    #[test]
    fn g14_mlp_hidden_truncates() {
        let cfg = ClipConfig::preset("pe-core-g14-448").unwrap();
        assert_eq!(cfg.name, "PE-Core-G14-448");
        assert_eq!(cfg.vision.mlp_hidden(), 8960);
        assert!(!cfg.vision.use_cls_token);
    }

    #[test]
    fn dense_presets() {
        let lang = ClipConfig::preset("PE-Lang-G14-448-Tiling").unwrap();
        assert_eq!(lang.vision.layers, 47);
        assert_eq!(lang.vision.ls_init_value, Some(0.1));
        assert_eq!(lang.vision.pool_type, PoolType::None);
        let sp = ClipConfig::preset("PE-Spatial-B16-512").unwrap();
        assert_eq!((sp.vision.image_size, sp.vision.ls_init_value, sp.vision.use_ln_post), (512, None, false));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = ClipConfig::preset("PE-Core-Z99").unwrap_err().to_string();
        assert!(err.contains("PE-Core-Z99") && err.contains("PE-Core-B16-224"), "{err}");
    }

    #[test]
    fn json_rejects_impossible_sizes() {
        let j =
            r#"{"vision": {"patch_size": 8, "width": 60, "layers": 1, "heads": 7, "mlp_ratio": 4.0, "output_dim": 8}}"#;
        assert!(ClipConfig::from_json_str(j).unwrap_err().to_string().contains("divisible"));
        let j = r#"{"vision": {"patch_size": 8, "width": 64, "layers": 1, "heads": 4, "mlp_ratio": 4.0, "output_dim": 8}, "derived": 1}"#;
        let cfg = ClipConfig::from_json_str(j).unwrap();
        assert_eq!(cfg.vision.image_size, 224);
        assert!(cfg.text.is_none());
    }
}
