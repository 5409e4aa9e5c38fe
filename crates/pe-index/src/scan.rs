//! Finding the files of a collection: a recursive walk that follows each link once (a link back
//! to an ancestor or to a directory already walked is skipped, so a walk never loops), skips
//! hidden entries (names starting with `.`, such as macOS's `._photo.jpg`) unless asked, and
//! `--exclude` globs. Only regular files with an image extension are taken from directories;
//! files named explicitly are always taken (their format is found from their content).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::manifest::mtime_ns;

/// Extensions taken from directories (decoding goes by content, not by name).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// Video extensions taken from directories when videos are indexed (FFmpeg decodes them).
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "wmv", "flv", "ts"];

/// Whether `path` is taken as a video (by its extension; its frames are then found by FFmpeg).
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// What to skip.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ScanOptions {
    /// Take videos too (each embedded as the mean of its frames' embeddings).
    pub videos: bool,
    /// Glob patterns (gitignore-like: `*.tmp`, `**/cache/**`); a match on a file or any
    /// directory above it skips it.
    pub exclude: Vec<String>,
    /// Take hidden files and directories too.
    pub include_hidden: bool,
}

/// A file found, with what the catalog compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// Compile `--exclude` patterns; a bad one is an error naming it.
pub fn excludes(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| Error::Pattern { pattern: p.clone(), reason: e.kind().to_string() })?;
        b.add(glob);
        // `name` also matches at any depth, as in .gitignore.
        if !p.contains('/') {
            if let Ok(g) = Glob::new(&format!("**/{p}")) {
                b.add(g);
            }
        }
    }
    b.build().map_err(|e| Error::Pattern { pattern: patterns.join(" "), reason: e.to_string() })
}

fn hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.') && n != "." && n != "..")
}

/// The files under `roots` (made absolute), in path order, each once. Problems with single
/// entries (unreadable directories, loops) are warnings; a root that cannot be read is an error.
pub fn scan(roots: &[PathBuf], opts: &ScanOptions) -> Result<Vec<Found>> {
    let mut walker = Walker::new(opts)?;
    let mut out = Vec::new();
    for root in roots {
        let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        walker.walk(&root, &mut |path, meta| out.push(Found { size: meta.len(), mtime_ns: mtime_ns(meta), path }))?;
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A walk over several roots that takes each directory and file once.
pub struct Walker {
    opts: ScanOptions,
    skip: GlobSet,
    walked: HashSet<(u64, u64, PathBuf)>,
    seen: HashSet<PathBuf>,
}

impl Walker {
    /// A walker with `opts`' filters; a bad `--exclude` pattern is an error.
    pub fn new(opts: &ScanOptions) -> Result<Walker> {
        Ok(Walker { skip: excludes(&opts.exclude)?, opts: opts.clone(), walked: HashSet::new(), seen: HashSet::new() })
    }

    fn wanted(&self, p: &Path) -> bool {
        (self.opts.videos && is_video(p))
            || p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
    }

    /// Give `each` the files under `root` (under the name they are reached by, in sorted
    /// order), or `root` itself when it is a file (whatever its extension). A root that cannot
    /// be read is an error; problems below it are warnings.
    pub fn walk(&mut self, root: &Path, each: &mut dyn FnMut(PathBuf, &std::fs::Metadata)) -> Result<()> {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
        if !meta.is_dir() {
            if meta.is_file() && self.seen.insert(root.to_path_buf()) {
                each(root.to_path_buf(), &meta);
            } else if !meta.is_file() {
                tracing::warn!("skipping {}: not a regular file", root.display());
            }
            return Ok(());
        }
        let mut it = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
        while let Some(entry) = it.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.depth() == 0 => return Err(Error::io(root, e.into())),
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
            let depth = entry.depth();
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
            let is_dir = entry.file_type().is_dir();
            if depth > 0 && ((!self.opts.include_hidden && hidden(entry.file_name())) || self.skip.is_match(rel)) {
                if is_dir {
                    it.skip_current_dir();
                }
                continue;
            }
            if is_dir {
                if !self.walked.insert(dir_identity(&entry)) {
                    tracing::warn!("skipping {}: a directory already walked (through a link)", entry.path().display());
                    it.skip_current_dir();
                }
                continue;
            }
            if !self.wanted(entry.path()) {
                continue;
            }
            if !entry.file_type().is_file() {
                tracing::warn!("skipping {}: not a regular file", entry.path().display());
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.into_path();
            if self.seen.insert(path.clone()) {
                each(path, &meta);
            }
        }
        Ok(())
    }
}

/// What makes a directory the same one under another name (device and inode on Unix), so a
/// walk that follows links can enter each directory once.
pub fn dir_identity(entry: &walkdir::DirEntry) -> (u64, u64, PathBuf) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = entry.metadata() {
            return (m.dev(), m.ino(), PathBuf::new());
        }
    }
    (0, 0, std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path().to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_excluded_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a.jpg", "._a.jpg", ".cache/b.png", "sub/c.png", "sub/skip.tmp.png", "raw/d.png", "notes.txt"] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let names = |opts: &ScanOptions| -> Vec<String> {
            let root = std::fs::canonicalize(d).unwrap();
            scan(&[d.to_path_buf()], opts)
                .unwrap()
                .into_iter()
                .map(|f| f.path.strip_prefix(&root).unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&ScanOptions::default()), ["a.jpg", "raw/d.png", "sub/c.png", "sub/skip.tmp.png"]);
        let opts = ScanOptions { exclude: vec!["*.tmp.png".into(), "raw".into()], include_hidden: true, videos: false };
        assert_eq!(names(&opts), ["._a.jpg", ".cache/b.png", "a.jpg", "sub/c.png"]);
        assert!(matches!(excludes(&["a[".into()]), Err(Error::Pattern { .. })));
    }
}
