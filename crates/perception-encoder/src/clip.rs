//! The CLIP model (`CLIP` in the reference's `pe.py`): a vision tower, a text tower and
//! `logit_scale`. Vision-only presets (PE Spatial, PE Lang) use the same type without text.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{ClipConfig, VisionConfig};
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::text::TextTransformer;
use crate::vision::{l2_normalize, VisionTransformer};
use crate::weights::{random_tensors, Checkpoint};

/// Where and in which dtype a model runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device the weights are placed on.
    pub device: Device,
    /// The precision (see [`Precision`]); stored weights of any float type are converted.
    /// Other dtypes (F16, F64 through candle's generic operations) are reached by building
    /// with [`Clip::new`] from a `VarBuilder` in that dtype.
    ///
    /// ```
    /// use perception_encoder::{LoadOptions, Precision};
    /// let fast = LoadOptions { precision: Precision::Bf16, ..LoadOptions::default() };
    /// # let _ = fast;
    /// ```
    pub precision: Precision,
    /// Which towers are built: a process that only embeds images (or only text) need not read,
    /// convert or hold the other one (G14's text tower is 2.2 GB in float32).
    pub towers: Towers,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, precision: Precision::F32, towers: Towers::Both }
    }
}

/// Which towers of a model [`LoadOptions`] builds. The checkpoint is checked whole either way;
/// only the chosen towers' tensors are read. Using a tower that was not built is
/// [`Error::NotLoaded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Towers {
    /// Both towers (those the model has).
    #[default]
    Both,
    /// The vision tower only ([`Clip::encode_image`], features, video).
    Image,
    /// The text tower only ([`Clip::encode_text`]); an error for vision-only models.
    Text,
}

impl Towers {
    /// Whether the vision tower is built.
    pub fn image(self) -> bool {
        self != Towers::Text
    }
    /// Whether the text tower (of a model that has one) is built.
    pub fn text(self) -> bool {
        self != Towers::Image
    }
    /// The towers that build the vision tower if `image` and the text tower if `text`; `None`
    /// for neither.
    pub fn of(image: bool, text: bool) -> Option<Towers> {
        match (image, text) {
            (true, true) => Some(Towers::Both),
            (true, false) => Some(Towers::Image),
            (false, true) => Some(Towers::Text),
            (false, false) => None,
        }
    }
}

/// Normalized image and text features and `exp(logit_scale)`, as the reference's
/// `CLIP.forward` returns them.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `encode_image(image, normalize=True)`, if images were given.
    pub image_features: Option<Tensor>,
    /// `encode_text(text, normalize=True)`, if text was given.
    pub text_features: Option<Tensor>,
    /// `exp(logit_scale)`.
    pub logit_scale: f32,
}

/// A PE model: CLIP (PE Core) or vision-only (PE Spatial / PE Lang).
///
/// ```no_run
/// use perception_encoder::{Clip, ClipConfig, LoadOptions};
/// use candle_core::Tensor;
/// let cfg = ClipConfig::preset("PE-Core-B16-224")?;
/// let model = Clip::load(&cfg, "PE-Core-B16-224.pt", &LoadOptions::default())?;
/// let pixels = Tensor::zeros((1, 3, 224, 224), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// let embedding = model.encode_image(&pixels, true)?; // (1, 1024)
/// # Ok::<(), perception_encoder::Error>(())
/// ```
#[derive(Debug)]
pub struct Clip {
    cfg: ClipConfig,
    visual: Option<VisionTransformer>,
    text: Option<TextTransformer>,
    logit_scale: Option<Tensor>,
    precision: Precision,
    device: Device,
}

impl Clip {
    /// Build from a [`VarBuilder`] in the official layout, in the `VarBuilder`'s dtype:
    /// `BF16` takes [`Precision::Bf16`], F32, F16 and F64 compute in that dtype.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let precision = if vb.dtype() == DType::BF16 { Precision::Bf16 } else { Precision::F32 };
        Self::with_precision(cfg, vb, precision)
    }

    /// Build from a [`VarBuilder`] in the official layout, in `precision`.
    pub fn with_precision(cfg: &ClipConfig, vb: VarBuilder, precision: Precision) -> Result<Self> {
        Self::build(cfg, vb, precision, Towers::Both)
    }

    /// Build `towers` from a [`VarBuilder`] in the official layout, in `precision`.
    fn build(cfg: &ClipConfig, vb: VarBuilder, precision: Precision, towers: Towers) -> Result<Self> {
        cfg.validate()?;
        if !towers.image() && cfg.text.is_none() {
            return Err(Error::MissingPart { model: cfg.name.clone(), part: "text tower" });
        }
        // The towers are independent, so they load side by side.
        let (visual, text) = rayon::join(
            || towers.image().then(|| VisionTransformer::new(&cfg.vision, vb.pp("visual"), precision)).transpose(),
            || {
                let text = cfg.text.as_ref().filter(|_| towers.text());
                text.map(|t| TextTransformer::new(t, vb.clone(), precision)).transpose()
            },
        );
        let (visual, text) = (visual?, text?);
        // A scalar, kept whichever towers are built: `forward` reports it with either.
        let logit_scale = match &cfg.text {
            Some(_) => Some(vb.get((), "logit_scale")?),
            None => None,
        };
        Ok(Clip { cfg: cfg.clone(), visual, text, logit_scale, precision, device: vb.device().clone() })
    }

    /// Load a checkpoint file in any supported format and layout (see [`crate::weights`]).
    /// Missing tensors and shape mismatches are errors; unused tensors are logged as warnings.
    pub fn load(cfg: &ClipConfig, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        cfg.validate()?;
        let ckpt = Checkpoint::open(path)?;
        ckpt.check(cfg)?;
        let vb = ckpt.into_var_builder(opts.precision.load_dtype(), &opts.device);
        Self::build(cfg, vb, opts.precision, opts.towers)
    }

    /// A preset with its official weights from the hub cache, downloading them if needed
    /// (see [`crate::hub`]); `progress` hears how a download goes (`&mut ()` for nothing).
    pub fn from_pretrained(name: &str, opts: &LoadOptions, progress: &mut dyn crate::hub::Progress) -> Result<Self> {
        let cfg = ClipConfig::preset(name)?;
        let path = crate::hub::fetch_checkpoint(&cfg.name, progress)?;
        Self::load(&cfg, path, opts)
    }

    /// Build from `(official key, tensor)` pairs. Each tensor is handed over as the model takes
    /// it, so weights re-laid out at load do not coexist with their originals.
    pub fn from_tensors(cfg: &ClipConfig, tensors: Vec<(String, Tensor)>, opts: &LoadOptions) -> Result<Self> {
        let backend = crate::weights::TakeTensors::new(tensors);
        let vb = VarBuilder::from_backend(Box::new(backend), opts.precision.load_dtype(), opts.device.clone());
        Self::build(cfg, vb, opts.precision, opts.towers)
    }

    /// A model with seeded random weights (see [`crate::weights::random_state_dict`]), for benchmarks and tests.
    /// Only the towers `opts` builds are drawn; their values do not depend on that choice.
    pub fn random(cfg: &ClipConfig, seed: u64, opts: &LoadOptions) -> Result<Self> {
        cfg.validate()?;
        let towers = opts.towers;
        let keep =
            |key: &str| if key.starts_with("visual.") { towers.image() } else { towers.text() || key == "logit_scale" };
        let tensors = random_tensors(cfg, seed, opts.precision.load_dtype(), &opts.device, keep)?;
        Self::from_tensors(cfg, tensors, opts)
    }

    /// The model's configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }
    /// The vision tower, unless [`LoadOptions::towers`] left it out.
    pub fn visual(&self) -> Option<&VisionTransformer> {
        self.visual.as_ref()
    }
    /// The text tower, if the model has one and [`LoadOptions::towers`] built it.
    pub fn text(&self) -> Option<&TextTransformer> {
        self.text.as_ref()
    }
    /// The precision the model was built for.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The device the weights are on (where inputs are made).
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The towers this model was built with.
    pub fn towers(&self) -> Towers {
        // A model is never built without either tower.
        Towers::of(self.visual.is_some(), self.text.is_some() || self.cfg.text.is_none()).unwrap_or(Towers::Both)
    }

    fn vision_tower(&self) -> Result<&VisionTransformer> {
        self.visual.as_ref().ok_or(Error::NotLoaded("vision tower"))
    }

    fn text_tower(&self) -> Result<&TextTransformer> {
        match (&self.text, &self.cfg.text) {
            (Some(t), _) => Ok(t),
            (None, Some(_)) => Err(Error::NotLoaded("text tower")),
            (None, None) => Err(Error::MissingPart { model: self.cfg.name.clone(), part: "text tower" }),
        }
    }

    /// Image embeddings of `(batch, 3, H, W)` pixels (any size; floor division by the patch).
    /// `normalize` divides each row by its L2 norm.
    pub fn encode_image(&self, images: &Tensor, normalize: bool) -> Result<Tensor> {
        let x = finite(self.vision_tower()?.forward(images)?, "vision")?;
        if normalize {
            l2_normalize(&x)
        } else {
            Ok(x)
        }
    }

    /// Image embeddings from the blocks up to `layer_idx` (negative counts from the end; `-1`
    /// is [`Clip::encode_image`]): the embedding of the tower truncated after that block.
    pub fn encode_image_at(&self, images: &Tensor, layer_idx: isize, normalize: bool) -> Result<Tensor> {
        let x = finite(self.vision_tower()?.forward_at(images, layer_idx)?, "vision")?;
        if normalize {
            l2_normalize(&x)
        } else {
            Ok(x)
        }
    }

    /// Whether [`Clip::encode_image`] gives one vector per image (PE Core), rather than token
    /// features (PE Spatial / PE Lang, whose `pool_type` is `none`).
    pub fn has_image_embedding(&self) -> bool {
        self.cfg.vision.pool_type != crate::config::PoolType::None
    }

    /// Text embeddings of token ids `(batch, len)` with `len <= context_length`.
    pub fn encode_text(&self, ids: &Tensor, normalize: bool) -> Result<Tensor> {
        let x = finite(self.text_tower()?.forward(ids)?, "text")?;
        if normalize {
            l2_normalize(&x)
        } else {
            Ok(x)
        }
    }

    /// Video embeddings of `(batch, frames, 3, H, W)`: every frame through
    /// [`Clip::encode_image`] (normalized per frame if `normalize`), then the mean over frames.
    /// The mean is not normalized again, as in the reference.
    pub fn encode_video(&self, video: &Tensor, normalize: bool) -> Result<Tensor> {
        let dims = video.dims();
        if dims.len() != 5 {
            return Err(Error::InvalidInput(format!(
                "video must be a (batch, frames, 3, H, W) tensor, got shape {dims:?}"
            )));
        }
        let (b, n) = (dims[0], dims[1]);
        let frames = video.reshape((b * n, dims[2], dims[3], dims[4]))?;
        let feats = self.encode_image(&frames, normalize)?;
        let rest: Vec<usize> = feats.dims()[1..].to_vec();
        let mut shape = vec![b, n];
        shape.extend(rest);
        Ok(feats.reshape(shape)?.mean(1)?)
    }

    /// `exp(logit_scale)`; an error for vision-only models.
    pub fn logit_scale(&self) -> Result<f32> {
        let s = self
            .logit_scale
            .as_ref()
            .ok_or_else(|| Error::MissingPart { model: self.cfg.name.clone(), part: "logit_scale" })?;
        Ok(s.to_dtype(DType::F32)?.exp()?.to_scalar::<f32>()?)
    }

    /// The CLIP forward: normalized features of whichever inputs are given and `exp(logit_scale)`.
    pub fn forward(&self, images: Option<&Tensor>, text: Option<&Tensor>) -> Result<ClipOutput> {
        Ok(ClipOutput {
            image_features: images.map(|x| self.encode_image(x, true)).transpose()?,
            text_features: text.map(|t| self.encode_text(t, true)).transpose()?,
            logit_scale: self.logit_scale()?,
        })
    }

    /// See [`VisionTransformer::forward_features`].
    pub fn forward_features(
        &self,
        images: &Tensor,
        layer_idx: isize,
        norm: bool,
        strip_cls_token: bool,
    ) -> Result<Tensor> {
        self.vision_tower()?.forward_features(images, layer_idx, norm, strip_cls_token)
    }

    /// Keep vision blocks `0..=layer_idx` only; see [`VisionTransformer::truncate`].
    pub fn truncate(&mut self, layer_idx: isize) -> Result<()> {
        let visual = self.visual.as_mut().ok_or(Error::NotLoaded("vision tower"))?;
        visual.truncate(layer_idx)?;
        self.cfg.vision.layers = visual.config().layers;
        Ok(())
    }

    /// The vision tower's configuration.
    pub fn vision_config(&self) -> &VisionConfig {
        &self.cfg.vision
    }
}

/// `x`, or an error if any value is NaN or infinite: an embedding of NaNs would print as JSON
/// `null` and rank arbitrarily in a search, so it is never handed on.
fn finite(x: Tensor, tower: &'static str) -> Result<Tensor> {
    // One reduction instead of a copy of the output: a NaN or infinity anywhere makes the sum
    // non-finite, and finite embeddings are far from overflowing it.
    let sum = x.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if sum.is_finite() {
        Ok(x)
    } else {
        Err(Error::NonFinite(tower))
    }
}
