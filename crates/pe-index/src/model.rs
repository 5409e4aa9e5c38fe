//! The model an update embeds with, loaded the first time a file needs embedding: an update
//! that finds nothing new (the usual re-run of `pe index` on a folder, `pe search --update`)
//! never reads the weights, so it takes milliseconds instead of the model's load.

use std::sync::OnceLock;

use perception_encoder::Clip;

use crate::{Error, Result};

/// A boxed error of the caller's own type (the CLI's carries its context).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a loader returns; its error is reported as [`Error::Load`].
type Loader<'a> = Box<dyn Fn() -> std::result::Result<Clip, BoxError> + Send + Sync + 'a>;

/// A model loaded on first use (or one already loaded, borrowed).
pub struct LazyModel<'a> {
    source: Source<'a>,
    model: OnceLock<Clip>,
}

enum Source<'a> {
    Given(&'a Clip),
    Load(Loader<'a>),
}

impl<'a> LazyModel<'a> {
    /// A model that `load` makes the first time [`get`](Self::get) is called.
    pub fn new(load: impl Fn() -> std::result::Result<Clip, BoxError> + Send + Sync + 'a) -> Self {
        LazyModel { source: Source::Load(Box::new(load)), model: OnceLock::new() }
    }

    /// A model already loaded.
    pub fn of(model: &'a Clip) -> Self {
        LazyModel { source: Source::Given(model), model: OnceLock::new() }
    }

    /// The model, loading it now if it is not yet (a failed load is tried again on the next call).
    pub fn get(&self) -> Result<&Clip> {
        let load = match &self.source {
            Source::Given(m) => return Ok(m),
            Source::Load(load) => load,
        };
        if let Some(m) = self.model.get() {
            return Ok(m);
        }
        let m = load().map_err(Error::Load)?;
        Ok(self.model.get_or_init(|| m))
    }

    /// The model if it has been loaded (or was given).
    pub fn if_loaded(&self) -> Option<&Clip> {
        match &self.source {
            Source::Given(m) => Some(m),
            Source::Load(_) => self.model.get(),
        }
    }

    /// The model this loaded, if it did, by value (not one given by reference).
    pub fn into_loaded(self) -> Option<Clip> {
        self.model.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn loads_once_on_first_use_and_retries_after_a_failure() {
        let calls = AtomicUsize::new(0);
        let lazy = LazyModel::new(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                return Err("the weights are not there yet".into());
            }
            let cfg = perception_encoder::ClipConfig::preset("PE-Core-T16-384").map_err(|e| Box::new(e) as BoxError)?;
            let opts =
                perception_encoder::LoadOptions { towers: perception_encoder::Towers::Text, ..Default::default() };
            Ok(Clip::random(&cfg, 7, &opts)?)
        });
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing is loaded before it is asked for");
        assert!(lazy.if_loaded().is_none());
        let Err(err) = lazy.get() else { panic!("the first load should fail") };
        assert!(matches!(err, Error::Load(_)));
        assert_eq!(err.to_string(), "the weights are not there yet");
        let m = lazy.get().expect("the second load succeeds");
        assert_eq!(m.config().name, "PE-Core-T16-384");
        lazy.get().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "loaded once after the failure, then reused");
        assert!(lazy.into_loaded().is_some());
    }

    #[test]
    fn a_model_given_loaded_is_never_loaded_again() {
        let cfg = perception_encoder::ClipConfig::preset("PE-Core-T16-384").unwrap();
        let opts = perception_encoder::LoadOptions { towers: perception_encoder::Towers::Text, ..Default::default() };
        let model = Clip::random(&cfg, 7, &opts).unwrap();
        let lazy = LazyModel::of(&model);
        assert!(lazy.if_loaded().is_some());
        assert!(std::ptr::eq(lazy.get().unwrap(), &model));
        assert!(lazy.into_loaded().is_none(), "the caller keeps its own");
    }
}
