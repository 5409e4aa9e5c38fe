//! Official checkpoints by model name from the Hugging Face hub, as the reference's
//! `fetch_pe_checkpoint` does: `facebook/<name>` / `<name>.pt`, kept in the standard hub cache
//! (the Python client's layout, so both share downloads).
//!
//! Environment, as the Python hub client reads it: `HF_HOME` (cache at `$HF_HOME/hub`),
//! `HF_HUB_CACHE` (the cache itself), `HF_ENDPOINT` (another hub or a mirror), `HF_TOKEN`
//! (else the token file in `HF_HOME`), and `HF_HUB_OFFLINE` (never touch the network; only a
//! cached copy is used). A cached copy is reused without asking the hub again.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The hub organisation that publishes PE.
pub const HUB_ORG: &str = "facebook";

/// `(repo id, file name)` of a model's official checkpoint.
///
/// ```
/// assert_eq!(perception_encoder::hub::checkpoint_location("PE-Core-B16-224"),
///            ("facebook/PE-Core-B16-224".to_string(), "PE-Core-B16-224.pt".to_string()));
/// ```
pub fn checkpoint_location(model: &str) -> (String, String) {
    (format!("{HUB_ORG}/{model}"), format!("{model}.pt"))
}

fn truthy(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Whether `HF_HUB_OFFLINE` forbids network access.
pub fn offline() -> bool {
    truthy("HF_HUB_OFFLINE")
}

#[cfg(feature = "hub")]
fn cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    }
}

/// The local path of `file` in hub repository `repo`, downloading it into the cache unless a
/// cached copy exists. `progress` shows a progress bar on stderr.
#[cfg(feature = "hub")]
pub fn fetch(repo: &str, file: &str, progress: bool) -> Result<PathBuf> {
    let hub_err = |reason: String| Error::Hub { repo: repo.to_string(), file: file.to_string(), reason };
    let cache = cache();
    if let Some(path) = cache.model(repo.to_string()).get(file) {
        tracing::debug!(path = %path.display(), "using the cached copy");
        return Ok(path);
    }
    if offline() {
        return Err(hub_err(format!("not in the cache at {} and HF_HUB_OFFLINE is set", cache.path().display())));
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(progress);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        if !token.trim().is_empty() {
            builder = builder.with_token(Some(token.trim().to_string()));
        }
    }
    let api = builder.build().map_err(|e| hub_err(e.to_string()))?;
    tracing::info!(repo, file, "downloading from the hub");
    api.model(repo.to_string()).get(file).map_err(|e| hub_err(e.to_string()))
}

/// Without the `hub` feature nothing is downloaded: only `--weights` files can be used.
#[cfg(not(feature = "hub"))]
pub fn fetch(repo: &str, file: &str, _progress: bool) -> Result<PathBuf> {
    Err(Error::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        reason: "this build has no hub support (feature `hub`); pass a checkpoint file instead".into(),
    })
}

/// The official checkpoint of a preset, from the cache or the hub.
pub fn fetch_checkpoint(model: &str, progress: bool) -> Result<PathBuf> {
    let (repo, file) = checkpoint_location(model);
    fetch(&repo, &file, progress)
}
