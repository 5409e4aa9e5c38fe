//! # pe-index
//!
//! Collections for Perception Encoder: an incremental index of a folder's images, searched by
//! text, by image, or by weighted combinations of both (rclip's grammar). The CLI (`pe index`,
//! `pe search`) and the server call this crate; neither re-implements it.
//!
//! An index is a directory (by default `.pe-index/` at the root of what was indexed):
//! - `manifest.json` ([`Manifest`]): the model, its weights' identity, precision and transform;
//!   searching or updating with another model is refused;
//! - `catalog.sqlite` ([`Catalog`]): every file (path, size, time, content hash, error) and one
//!   embedding per distinct content; each batch is one transaction, so a crash loses nothing
//!   already committed;
//! - `vectors.f32` ([`Matrix`]): the embeddings as one memory-mapped matrix in path order,
//!   rebuilt from the catalog when older than it; exact search scores every row.

mod catalog;
mod dedupe;
mod error;
mod manifest;
mod matrix;
pub mod query;
mod scan;
mod search;
mod update;

use std::path::{Path, PathBuf};

pub use catalog::{Catalog, FileRow, VectorRow};
pub use dedupe::Group;
pub use error::{Error, Result};
pub use manifest::{describe, hash_file, Manifest, ModelSpec, TransformSpec, FORMAT_VERSION};
pub use matrix::{dot, Hit, Matrix};
pub use scan::{dir_identity, scan, Found, ScanOptions, IMAGE_EXTENSIONS};
pub use search::query_vector;
pub use update::{Progress, UpdateOptions, UpdateReport, MAX_FILE_BYTES};

use perception_encoder::preprocess::ImageTransform;
use perception_encoder::Clip;

/// The index directory's default name, at the root of what was indexed.
pub const DEFAULT_DIR: &str = ".pe-index";

/// An open index.
pub struct Index {
    dir: PathBuf,
    manifest: Manifest,
    catalog: Catalog,
}

impl Index {
    /// Open the index at `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let catalog = Catalog::open(dir)?;
        Ok(Index { dir: dir.to_path_buf(), manifest, catalog })
    }

    /// Open the index at `dir` for updating with `manifest`'s model, creating it if there is
    /// none; an existing index built otherwise is an error.
    pub fn open_or_create(dir: &Path, manifest: &Manifest) -> Result<Self> {
        match Manifest::read(dir) {
            Ok(existing) => {
                existing.check_same(manifest, dir)?;
                Self::open(dir)
            }
            Err(Error::NoIndex(_)) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                manifest.write(dir)?;
                Self::open(dir)
            }
            Err(e) => Err(e),
        }
    }

    /// The nearest `.pe-index` directory holding a manifest, from `start` upwards.
    pub fn find(start: &Path) -> Option<PathBuf> {
        start.ancestors().map(|d| d.join(DEFAULT_DIR)).find(|d| Manifest::path(d).is_file())
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the index was built with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Bring the index up to date with the files under `roots` (see [`update::update`]), then
    /// rebuild the vector matrix. `model` must be the manifest's model.
    pub fn update(
        &mut self,
        model: &Clip,
        roots: &[PathBuf],
        opts: &UpdateOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<UpdateReport> {
        if !model.has_image_embedding() {
            return Err(Error::Query(format!(
                "{} gives token features, not one embedding per image; index with a PE Core model",
                model.config().name
            )));
        }
        let transform: ImageTransform = self.manifest.transform.transform();
        let report = update::update(&mut self.catalog, model, &transform, roots, opts, progress)?;
        Matrix::build(&self.dir, &self.catalog, self.manifest.dim)?;
        Ok(report)
    }

    /// The vector matrix, rebuilt first when the catalog has changed since it was written
    /// (an update interrupted before its end, say).
    pub fn matrix(&self) -> Result<Matrix> {
        let generation = self.catalog.generation()?;
        match Matrix::open(&self.dir) {
            Ok(m) if m.generation() == generation && m.dim() == self.manifest.dim => return Ok(m),
            Ok(_) | Err(Error::Io { .. }) | Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        Matrix::build(&self.dir, &self.catalog, self.manifest.dim)?;
        Matrix::open(&self.dir)
    }

    /// The `k` files most like the indexed file `path` (by its stored embedding), itself left
    /// out, best first.
    pub fn similar(&self, path: &Path, k: usize) -> Result<Vec<Hit>> {
        let abs = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let q = self.catalog.vector_of(&abs)?.ok_or_else(|| {
            Error::Query(format!("{} is not in the index (or could not be read when indexed)", path.display()))
        })?;
        let mut hits = self.search(&q, k.saturating_add(1), f32::NEG_INFINITY)?;
        hits.retain(|h| h.path != abs);
        hits.truncate(k);
        Ok(hits)
    }

    /// Exact duplicates (same content), then near duplicates (cosine at least `threshold`
    /// between different contents, grouped transitively).
    pub fn duplicates(&self, threshold: f32) -> Result<Vec<Group>> {
        let m = self.matrix()?;
        let hashes = self.catalog.searchable_hashes()?;
        if hashes.len() != m.rows() {
            return Err(Error::corrupt(&self.dir, "the vector matrix and the catalog disagree; rerun `pe index`"));
        }
        let mut groups = dedupe::exact_groups(&m, &hashes)?;
        groups.extend(dedupe::near_groups(&m, &hashes, threshold)?);
        Ok(groups)
    }

    /// The `k` files most like the query vector, at least `threshold`, best first.
    pub fn search(&self, query: &[f32], k: usize, threshold: f32) -> Result<Vec<Hit>> {
        let m = self.matrix()?;
        if m.rows() == 0 {
            return Err(Error::Empty(self.dir.clone()));
        }
        m.exact(query, k, threshold)
    }
}
