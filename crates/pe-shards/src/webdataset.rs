//! WebDataset tar shards: consecutive members sharing a key (the path up to the first dot of
//! the file name) form a sample, `KEY.jpg` + `KEY.json` + `KEY.txt` as img2dataset writes them.
//! A shard is read as a stream; a sample that cannot be used (no image, an oversized member, a
//! key seen before in the shard) is reported and skipped, and a truncated or corrupt tar ends
//! the shard with a report, keeping the samples before it.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest member read into memory; bigger ones make their sample fail.
pub const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// Extensions taken as the sample's image, in order of preference.
const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// One sample of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The key (`00000123`, or `dir/00000123` for members in a folder).
    pub key: String,
    /// The image's extension and bytes.
    pub image: (String, Vec<u8>),
    /// `KEY.json`, when present.
    pub json: Option<Vec<u8>>,
    /// `KEY.txt` (the caption), when present and UTF-8.
    pub caption: Option<String>,
}

/// A sample (or the rest of a shard) that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleError {
    /// The sample's key, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for SampleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "sample {k}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// The samples of one tar shard.
pub struct Samples {
    path: PathBuf,
}

/// Members of one key gathered so far.
#[derive(Default)]
struct Pending {
    key: String,
    members: Vec<(String, Vec<u8>)>,
    problem: Option<String>,
}

impl Samples {
    /// A shard to read; a missing or unreadable file is an error now.
    pub fn open(path: &Path) -> Result<Samples> {
        std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Ok(Samples { path: path.to_path_buf() })
    }

    /// Give `f` every sample in order, or why one could not be used; a truncated or corrupt
    /// tar gives one last error and ends the shard.
    pub fn for_each(&self, mut f: impl FnMut(std::result::Result<Sample, SampleError>)) -> Result<()> {
        let io = |source| Error::Io { path: self.path.clone(), source };
        let file = std::fs::File::open(&self.path).map_err(io)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut seen = HashSet::new();
        let mut pending: Option<Pending> = None;
        let entries = archive.entries().map_err(io)?;
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    flush(pending.take(), &mut seen, &mut f);
                    f(Err(SampleError { key: None, reason: format!("the tar ends early or is damaged: {e}") }));
                    return Ok(());
                }
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = match entry.path() {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(e) => {
                    f(Err(SampleError { key: None, reason: format!("a member with an unreadable name: {e}") }));
                    continue;
                }
            };
            let (dir, file) = name.rsplit_once('/').map_or(("", name.as_str()), |(d, f)| (d, f));
            // `.hidden` and `__meta__`-style members belong to no sample.
            if file.starts_with('.') || file.starts_with("__") {
                continue;
            }
            let Some((stem, ext)) = file.split_once('.') else { continue };
            let key = if dir.is_empty() { stem.to_string() } else { format!("{dir}/{stem}") };
            if pending.as_ref().is_some_and(|p| p.key != key) {
                flush(pending.take(), &mut seen, &mut f);
            }
            let p = pending.get_or_insert_with(|| Pending { key: key.clone(), ..Pending::default() });
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > MAX_MEMBER_BYTES {
                p.problem = Some(format!("{file} is {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit"));
                continue;
            }
            let mut bytes = Vec::with_capacity(size as usize);
            let read = (&mut entry).take(MAX_MEMBER_BYTES).read_to_end(&mut bytes);
            if read.is_err() || bytes.len() as u64 != size {
                // The sample being read is lost with the rest of the shard; those before stay.
                let why = read
                    .err()
                    .map_or_else(|| format!("{file} has {} of its {size} bytes", bytes.len()), |e| e.to_string());
                f(Err(SampleError { key: Some(key), reason: format!("the tar ends early or is damaged: {why}") }));
                return Ok(());
            }
            p.members.push((ext.to_ascii_lowercase(), bytes));
        }
        flush(pending.take(), &mut seen, &mut f);
        Ok(())
    }
}

/// Turn the members of one key into a sample (or the reason it is unusable).
fn flush(p: Option<Pending>, seen: &mut HashSet<String>, f: &mut impl FnMut(std::result::Result<Sample, SampleError>)) {
    let Some(mut p) = p else { return };
    let key = p.key.clone();
    let fail = |reason: String| Err(SampleError { key: Some(key.clone()), reason });
    if !seen.insert(p.key.clone()) {
        return f(fail("the key appears twice in the shard; the later copy is skipped".into()));
    }
    if let Some(problem) = p.problem.take() {
        return f(fail(problem));
    }
    let take = |members: &mut Vec<(String, Vec<u8>)>, ext: &str| {
        members.iter().position(|(e, _)| e == ext).map(|i| members.swap_remove(i))
    };
    let image = IMAGE_EXTS.iter().find_map(|ext| take(&mut p.members, ext));
    let Some(image) = image else {
        return f(fail("no image member (jpg, png, webp, ...)".into()));
    };
    let json = take(&mut p.members, "json").map(|(_, b)| b);
    let caption = take(&mut p.members, "txt").and_then(|(_, b)| String::from_utf8(b).ok());
    f(Ok(Sample { key: p.key, image, json, caption }))
}
