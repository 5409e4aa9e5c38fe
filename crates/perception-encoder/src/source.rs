//! Where a model comes from: a preset (weights from a file or the hub cache) or a custom JSON
//! config with its weights, as the CLI's and the server's model options describe it.

use std::path::Path;

use crate::clip::{Clip, LoadOptions};
use crate::config::ClipConfig;
use crate::error::{Error, Result};

/// Where a model comes from: a preset (weights from a file or the hub cache) or a custom JSON
/// config with a weights file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A preset by official name; `weights` overrides the hub download.
    Preset {
        /// E.g. `PE-Core-B16-224`.
        name: String,
        /// A local checkpoint, or `None` for `facebook/<name>` from the hub cache.
        weights: Option<std::path::PathBuf>,
    },
    /// A JSON config in the reference's field names and its checkpoint.
    Custom {
        /// The JSON file.
        config: std::path::PathBuf,
        /// The checkpoint file.
        weights: std::path::PathBuf,
    },
}

impl ModelSource {
    /// From the usual options: `model` alone, `model` + `weights`, or `config` + `weights`.
    pub fn from_options(model: Option<&str>, config: Option<&Path>, weights: Option<&Path>) -> Result<Self> {
        match (model, config, weights) {
            (Some(_), Some(_), _) => {
                Err(Error::InvalidInput("give either a model name or a config file, not both".into()))
            }
            (Some(name), None, w) => {
                Ok(ModelSource::Preset { name: name.to_string(), weights: w.map(Path::to_path_buf) })
            }
            (None, Some(c), Some(w)) => Ok(ModelSource::Custom { config: c.to_path_buf(), weights: w.to_path_buf() }),
            (None, Some(_), None) => Err(Error::InvalidInput("a config file needs a weights file too".into())),
            (None, None, _) => Err(Error::InvalidInput(
                "no model: give a preset name (e.g. PE-Core-B16-224), or a config file and a weights file".into(),
            )),
        }
    }

    /// The configuration this source describes.
    pub fn config(&self) -> Result<ClipConfig> {
        match self {
            ModelSource::Preset { name, .. } => ClipConfig::preset(name),
            ModelSource::Custom { config, .. } => ClipConfig::from_json_file(config),
        }
    }

    /// Load the model; `progress` hears how a download of the weights goes.
    pub fn load(&self, opts: &LoadOptions, progress: &mut dyn crate::hub::Progress) -> Result<Clip> {
        let cfg = self.config()?;
        let weights = match self {
            ModelSource::Preset { weights: Some(w), .. } | ModelSource::Custom { weights: w, .. } => w.clone(),
            ModelSource::Preset { weights: None, .. } => crate::hub::fetch_checkpoint(&cfg.name, progress)?,
        };
        Clip::load(&cfg, weights, opts)
    }
}
