//! Zero-shot classification with prompt ensembling: each label is written into every template,
//! the normalized text embeddings of its prompts are averaged and renormalized into a class
//! vector, and images are scored by `softmax(exp(logit_scale) * cosine)`.

use candle_core::{DType, Tensor, D};

use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::tokenizer::ClipTokenizer;
use crate::vision::l2_normalize;

/// The 1000 ImageNet-1k class names in class-index order (OpenAI's cleaned names).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("../data/imagenet_classes.txt").lines().filter(|l| !l.is_empty()).collect()
}

/// Our small prompt set for `--labels imagenet`: a few of the phrasings that carry most of the
/// gain of large ensembles, kept short because every template costs one text-tower pass per class.
pub const IMAGENET_TEMPLATES: &[&str] = &[
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "itap of a {}.",
];

/// The template used when none is given: the label in a plain photo caption.
pub const DEFAULT_TEMPLATES: &[&str] = &["a photo of a {}."];

/// Class vectors for a label set, computed once and reused for every image.
#[derive(Debug)]
pub struct ZeroShotClassifier {
    labels: Vec<String>,
    /// `(classes, dim)`, unit rows.
    class_vectors: Tensor,
    logit_scale: f32,
}

/// One label with its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The class label.
    pub label: String,
    /// Softmax probability over the label set.
    pub probability: f32,
}

impl ZeroShotClassifier {
    /// Every prompt of a label set, label-major: `templates[t]` with label `l` at
    /// `l * templates.len() + t`. Errors name an empty label or a template without `{}`.
    pub fn prompts<L: AsRef<str>, T: AsRef<str>>(labels: &[L], templates: &[T]) -> Result<Vec<String>> {
        if labels.is_empty() {
            return Err(Error::InvalidInput("no labels to classify into".into()));
        }
        if templates.is_empty() {
            return Err(Error::InvalidInput("no prompt templates".into()));
        }
        if let Some(t) = templates.iter().find(|t| !t.as_ref().contains("{}")) {
            return Err(Error::InvalidInput(format!("template {:?} has no `{{}}` for the label", t.as_ref())));
        }
        if let Some(l) = labels.iter().find(|l| l.as_ref().trim().is_empty()) {
            return Err(Error::InvalidInput(format!("empty label {:?}", l.as_ref())));
        }
        Ok(labels
            .iter()
            .flat_map(|l| templates.iter().map(move |t| t.as_ref().replace("{}", l.as_ref().trim())))
            .collect())
    }

    /// From the normalized text embeddings of [`ZeroShotClassifier::prompts`] `(labels *
    /// templates, dim)`: each class vector is the mean of its prompts, renormalized.
    pub fn from_prompt_embeddings<L: AsRef<str>>(
        labels: &[L],
        templates: usize,
        prompt_embeddings: &Tensor,
        logit_scale: f32,
    ) -> Result<Self> {
        let dim = prompt_embeddings.dim(1)?;
        let per_class = prompt_embeddings.to_dtype(DType::F32)?.reshape((labels.len(), templates, dim))?.mean(1)?;
        Ok(ZeroShotClassifier {
            labels: labels.iter().map(|l| l.as_ref().trim().to_string()).collect(),
            class_vectors: l2_normalize(&per_class)?,
            logit_scale,
        })
    }

    /// Embed `labels` through `templates` (each containing `{}`), `batch` prompts at a time.
    pub fn new<L: AsRef<str>, T: AsRef<str>>(
        model: &Clip,
        labels: &[L],
        templates: &[T],
        batch: usize,
    ) -> Result<Self> {
        let prompts = Self::prompts(labels, templates)?;
        let text_cfg = model
            .text()
            .ok_or_else(|| Error::MissingPart { model: model.config().name.clone(), part: "text tower" })?
            .config();
        let tokenizer = ClipTokenizer::new(text_cfg.context_length);
        let device = model.device().clone();
        let mut rows = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(batch.max(1)) {
            let ids = tokenizer.tokenize_batch(chunk, &device)?;
            rows.push(model.encode_text(&ids, true)?.to_dtype(DType::F32)?);
        }
        Self::from_prompt_embeddings(labels, templates.len(), &Tensor::cat(&rows, 0)?, model.logit_scale()?)
    }

    /// The labels, in class order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Class probabilities `(batch, classes)` for normalized image embeddings `(batch, dim)`.
    pub fn probabilities(&self, image_features: &Tensor) -> Result<Tensor> {
        let x = image_features.to_dtype(DType::F32)?.to_device(self.class_vectors.device())?;
        let logits = (x.matmul(&self.class_vectors.t()?)? * self.logit_scale as f64)?;
        Ok(candle_nn::ops::softmax(&logits, D::Minus1)?)
    }

    /// The `top_k` labels of each image, most probable first.
    pub fn classify(&self, image_features: &Tensor, top_k: usize) -> Result<Vec<Vec<Prediction>>> {
        let probs: Vec<Vec<f32>> = self.probabilities(image_features)?.to_vec2()?;
        Ok(probs
            .into_iter()
            .map(|row| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order
                    .into_iter()
                    .take(top_k.max(1))
                    .map(|i| Prediction { label: self.labels[i].clone(), probability: row[i] })
                    .collect()
            })
            .collect())
    }
}
