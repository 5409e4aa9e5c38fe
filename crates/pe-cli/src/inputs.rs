//! The commands' inputs: files found from the arguments (a directory walk that follows each
//! link once), lines of a text file, and images decoded and embedded in batches.

use std::path::PathBuf;

use anyhow::{bail, Context};
use perception_encoder::candle_core::{DType, Tensor};
use perception_encoder::Clip;
use rayon::prelude::*;

use crate::args::{progress, ImageArgs};

/// Expand files and directories (recursively, in sorted order) into a list of files.
///
/// Links are followed, but each directory is walked once: a link back to an ancestor (`a -> .`,
/// `sub/up -> ..`) or to a directory already walked is skipped with a warning, so a walk never
/// loops or repeats files. Entries that are not regular files (FIFOs, sockets, devices) are
/// skipped with a warning, since reading one could block forever.
pub fn collect_files(inputs: &[PathBuf], extensions: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let wanted = |p: &std::path::Path| {
        p.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
    };
    let mut walked = std::collections::HashSet::new();
    let mut out = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            out.push(input.clone());
            continue;
        }
        let mut it = walkdir::WalkDir::new(input).follow_links(true).sort_by_file_name().into_iter();
        while let Some(entry) = it.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.depth() == 0 => {
                    return Err(anyhow::anyhow!("reading directory {}: {e}", input.display()));
                }
                Err(e) => {
                    let path = e.path().map_or_else(String::new, |p| p.display().to_string());
                    if e.loop_ancestor().is_some() {
                        tracing::warn!("skipping {path}: a link back to a directory being walked");
                    } else {
                        tracing::warn!("skipping {path}: {e}");
                    }
                    continue;
                }
            };
            let kind = entry.file_type();
            if kind.is_dir() {
                if !walked.insert(pe_index::dir_identity(&entry)) {
                    tracing::warn!("skipping {}: a directory already walked (through a link)", entry.path().display());
                    it.skip_current_dir();
                }
            } else if wanted(entry.path()) {
                if kind.is_file() {
                    out.push(entry.into_path());
                } else {
                    tracing::warn!("skipping {}: not a regular file", entry.path().display());
                }
            }
        }
    }
    Ok(out)
}

/// Image files among `inputs` (see [`collect_files`]).
pub fn collect_images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    collect_files(inputs, pe_index::IMAGE_EXTENSIONS)
}

/// Lines of a UTF-8 file; invalid UTF-8 is an error naming the line.
pub fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s.lines().map(str::to_string).collect()),
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..good].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("{}: line {line} is not valid UTF-8", path.display())
        }
    }
}

/// Decode and transform `paths` in parallel, embed those that load, and report the others.
/// Returns `(path, embedding)` for the successes in input order and the failure count.
pub fn embed_image_files(
    model: &Clip,
    paths: &[PathBuf],
    image: &ImageArgs,
    batch_size: usize,
    mut embed: impl FnMut(&Tensor) -> anyhow::Result<Tensor>,
    mut each: impl FnMut(&PathBuf, Vec<f32>) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let transform = image.transform(model)?;
    let bar = progress(paths.len(), "images");
    let mut failed = 0;
    for chunk in paths.chunks(batch_size.max(1)) {
        let loaded: Vec<_> = chunk.par_iter().map(|p| transform.load_path(p)).collect();
        let mut ok = Vec::new();
        let mut tensors = Vec::new();
        for (path, r) in chunk.iter().zip(loaded) {
            match r {
                Ok(t) => {
                    ok.push(path);
                    tensors.push(t);
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("pe: skipping {}", describe(path, &e)));
                }
            }
        }
        if !tensors.is_empty() {
            let x = Tensor::stack(&tensors, 0)?;
            let rows: Vec<Vec<f32>> = embed(&x)?.to_dtype(DType::F32)?.to_vec2()?;
            for (path, row) in ok.into_iter().zip(rows) {
                each(path, row)?;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(failed)
}

/// `path: error`, without repeating the path when the error already names it.
pub fn describe(path: &std::path::Path, e: &perception_encoder::Error) -> String {
    let msg = e.to_string();
    let shown = path.display().to_string();
    if msg.contains(&shown) {
        msg
    } else {
        format!("{shown}: {msg}")
    }
}

/// An error unless the model gives one embedding per image.
pub fn needs_embedding(model: &Clip) -> anyhow::Result<()> {
    if !model.has_image_embedding() {
        bail!(
            "{} returns token features, not one embedding per image (pool_type none); \
             use a PE Core model, or the library's forward_features for dense features",
            model.config().name
        );
    }
    Ok(())
}
