//! The commands' inputs: paths from the arguments and from `--files-from` (walked with the
//! library's walker: each link once, hidden entries and `--exclude` globs skipped), `-` for
//! stdin, lines of a text file, and images decoded and embedded in batches.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use perception_encoder::candle_core::{DType, Tensor};
use perception_encoder::Clip;
use rayon::prelude::*;

use crate::args::ImageArgs;

/// Where inputs come from besides the positional paths.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// Read input paths from FILE (`-` for stdin), one a line; folders in it are walked.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// Entries of --files-from (or texts of --file) end with NUL, not newline (`find -print0`).
    #[arg(long = "null", short = '0')]
    pub null: bool,
    /// Skip files and folders matching this glob when walking folders (repeatable; `*.tmp`,
    /// `raw`, `**/cache/**`).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Walk hidden files and folders too (names starting with a dot, like macOS's `._a.jpg`);
    /// files named explicitly are always taken.
    #[arg(long)]
    pub include_hidden: bool,
}

/// One input: a file, stdin (`-`), or bytes already read (a sample of a shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file, by the name it was given or reached by.
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// Bytes with the name (key) they go by.
    Memory(String, std::sync::Arc<Vec<u8>>),
}

impl Input {
    /// The name written in outputs and messages (`-` for stdin).
    pub fn name(&self) -> &OsStr {
        match self {
            Input::File(p) => p.as_os_str(),
            Input::Stdin => OsStr::new("-"),
            Input::Memory(name, _) => OsStr::new(name),
        }
    }
}

/// Largest input read from stdin (as `pe index` limits a file).
const MAX_STDIN_BYTES: u64 = pe_index::MAX_FILE_BYTES;

/// Read all of stdin, refusing more than [`MAX_STDIN_BYTES`].
pub fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin().lock().take(MAX_STDIN_BYTES + 1).read_to_end(&mut bytes).context("reading stdin")?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        bail!("stdin: more than {MAX_STDIN_BYTES} bytes");
    }
    Ok(bytes)
}

/// Entries of a list (stdin for `-`), split on newlines (a trailing `\r` removed) or on NUL.
/// Empty entries are dropped, or with `keep_empty` kept (a text may be empty) but for the one
/// after a final separator.
pub fn read_entries(path: &Path, null: bool, keep_empty: bool) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = if path == Path::new("-") {
        read_stdin()?
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let sep = if null { b'\0' } else { b'\n' };
    let mut entries: Vec<Vec<u8>> = bytes
        .split(|&b| b == sep)
        .map(|e| if !null && e.ends_with(b"\r") { &e[..e.len() - 1] } else { e })
        .filter(|e| keep_empty || !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if keep_empty && entries.last().is_some_and(Vec::is_empty) {
        entries.pop();
    }
    Ok(entries)
}

fn os_string(bytes: Vec<u8>) -> OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(bytes)
    }
    #[cfg(not(unix))]
    {
        OsString::from(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The inputs named by `positional` and `args`, in order, each once. Folders are walked (files
/// with `extensions`, or videos too with `videos`); `-` is stdin. A positional path that does
/// not exist is a usage error, found before any work; a listed one is read (and reported) later.
pub fn resolve(args: &InputArgs, positional: &[PathBuf], videos: bool) -> anyhow::Result<Vec<Input>> {
    let opts = pe_index::ScanOptions { videos, exclude: args.exclude.clone(), include_hidden: args.include_hidden };
    let mut walker = pe_index::Walker::new(&opts)?;
    let only_videos = |p: &Path| !videos || pe_index::is_video(p);
    let mut out = Vec::new();
    let mut stdin_used = args.files_from.as_deref() == Some(Path::new("-"));
    for p in positional {
        if p.as_os_str() == "-" {
            if stdin_used {
                bail!("`-` (stdin) is given twice");
            }
            stdin_used = true;
            out.push(Input::Stdin);
            continue;
        }
        match std::fs::metadata(p) {
            Err(e) => bail!("{}: {e}", p.display()),
            // Named explicitly: taken whatever it is (a FIFO is then refused, not opened).
            Ok(m) if !m.is_dir() => out.push(Input::File(p.clone())),
            Ok(_) => walker.walk(p, &mut |f, _| {
                if only_videos(&f) {
                    out.push(Input::File(f))
                }
            })?,
        }
    }
    if let Some(list) = &args.files_from {
        for entry in read_entries(list, args.null, false)? {
            let p = PathBuf::from(os_string(entry));
            if p.is_dir() {
                walker.walk(&p, &mut |f, _| {
                    if only_videos(&f) {
                        out.push(Input::File(f))
                    }
                })?;
            } else {
                out.push(Input::File(p));
            }
        }
    }
    Ok(out)
}

/// Texts from a file (`-` for stdin), one a line or NUL-separated; invalid UTF-8 is an error
/// naming the entry.
pub fn read_texts(path: &Path, null: bool) -> anyhow::Result<Vec<String>> {
    read_entries(path, null, true)?
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let what = if null { "entry" } else { "line" };
            String::from_utf8(e).map_err(|_| anyhow::anyhow!("{}: {what} {} is not valid UTF-8", path.display(), i + 1))
        })
        .collect()
}

/// Lines of a UTF-8 file (see [`read_texts`]).
pub fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    read_texts(path, false)
}

/// One embedded image: the input, its pixel size, its embedding.
pub type Embedded<'a> = (&'a Input, (u32, u32), Vec<f32>);

/// Decode and transform `inputs` in parallel, embed those that load, and report the others
/// (`pe: skipping NAME: reason`). `each` gets the successes in input order, a batch at a time;
/// `bar` advances per input (see [`crate::args::progress`]); returns the failure count.
pub fn embed_images(
    model: &Clip,
    inputs: &[Input],
    image: &ImageArgs,
    (batch_size, bar): (usize, indicatif::ProgressBar),
    mut embed: impl FnMut(&Tensor) -> anyhow::Result<Tensor>,
    mut each: impl FnMut(Vec<Embedded>) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let transform = image.transform(model)?;
    let stdin = if inputs.contains(&Input::Stdin) { Some(read_stdin()) } else { None };
    let mut failed = 0;
    for chunk in inputs.chunks(batch_size.max(1)) {
        let loaded: Vec<_> = chunk
            .par_iter()
            .map(|input| match input {
                Input::File(p) => transform.load_path_sized(p).map_err(|e| describe(p, &e)),
                Input::Memory(name, bytes) => transform.load_bytes_sized(bytes).map_err(|e| format!("{name}: {e}")),
                Input::Stdin => match &stdin {
                    Some(Ok(bytes)) => transform.load_bytes_sized(bytes).map_err(|e| format!("-: {e}")),
                    Some(Err(e)) => Err(format!("{e:#}")),
                    None => Err("-: stdin was not read".into()),
                },
            })
            .collect();
        let mut ok = Vec::new();
        let mut tensors = Vec::new();
        for (input, r) in chunk.iter().zip(loaded) {
            match r {
                Ok((t, (w, h))) => {
                    ok.push((input, (w as u32, h as u32)));
                    tensors.push(t);
                }
                Err(msg) => {
                    failed += 1;
                    bar.suspend(|| skipped(&msg));
                }
            }
        }
        if !tensors.is_empty() {
            let x = Tensor::stack(&tensors, 0)?;
            // One row per image, whatever the output's shape (an embedding, or tokens x width).
            let rows: Vec<Vec<f32>> = embed(&x)?.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2()?;
            each(ok.into_iter().zip(rows).map(|((input, size), row)| (input, size, row)).collect())?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(failed)
}

/// The one wording for an input that could not be read (`message` names it).
pub fn skipped(message: &str) {
    eprintln!("pe: skipping {message}");
}

/// The one closing line after inputs were skipped: `N of M <what> could not be read`.
pub fn report_failed(failed: usize, total: usize, what: &str) -> std::process::ExitCode {
    if failed == 0 {
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!("pe: {failed} of {total} {what} could not be read");
    std::process::ExitCode::from(1)
}

/// `path: error`, without repeating the path when the error already names it.
pub fn describe(path: &Path, e: &perception_encoder::Error) -> String {
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
