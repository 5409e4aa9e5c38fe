//! `pe embed-image --input 'shards/{00000..00099}.tar' --output-dir DIR`: a sharded corpus
//! (WebDataset tars, as img2dataset writes them), one Parquet part per shard, written under a
//! temporary name and renamed when complete; a shard whose part exists is skipped, so a rerun
//! (or a retried task of a distributed engine) resumes. `--shard I/N` (or the engines'
//! variables) picks one worker's shards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use pe_index::output::{SampleExtras, Writer};
use pe_shards::{Samples, Share};

use crate::args::{ImageArgs, ModelArgs};
use crate::inputs::{embed_images, needs_embedding, Input};
use perception_encoder::Towers;

/// Shard inputs of `pe embed-image`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardArgs {
    /// WebDataset tar shards (brace ranges: 'shards/{00000..00099}.tar'; repeatable): one
    /// Parquet part per shard in --output-dir (columns key, shard, width, height, embedding).
    #[arg(long = "input", id = "shard_input", value_name = "PATTERN", requires = "output_dir",
          conflicts_with_all = ["inputs", "output"])]
    pub shard_input: Vec<String>,
    /// Where the parts go: DIR/<shard name>.parquet. A shard whose part exists is skipped.
    /// With --output-dir, the paths of --files-from are shards too.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["inputs", "output"])]
    pub output_dir: Option<PathBuf>,
    /// This worker's share of the shards, I/N (0-based). Default: SLURM_ARRAY_TASK_ID, or
    /// JOB_COMPLETION_INDEX with --shard-count, else every shard.
    #[arg(long, value_name = "I/N", requires = "output_dir")]
    pub shard: Option<String>,
    /// Workers in all, for JOB_COMPLETION_INDEX (a Kubernetes indexed Job's completions).
    #[arg(long, value_name = "N", requires = "output_dir")]
    pub shard_count: Option<u64>,
    /// Also write each sample's caption (`KEY.txt`) and its text embedding: columns `caption`
    /// and `text_embedding` (null for samples without one).
    #[arg(long, requires = "output_dir")]
    pub captions: bool,
    /// Print this worker's shards, one a line, and exit (no model is loaded): what a driver
    /// of a distributed engine hands out.
    #[arg(long, requires = "output_dir")]
    pub list_shards: bool,
}

/// The hashes and captions of a batch's samples, by key.
#[derive(Default)]
struct Extras {
    hashes: std::collections::HashMap<String, String>,
    captions: std::collections::HashMap<String, String>,
    jsons: std::collections::HashMap<String, String>,
}

/// A sample's JSON metadata as text, or why it has none usable.
fn json_text(json: Option<Vec<u8>>) -> Result<String, &'static str> {
    let bytes = json.ok_or("no JSON member")?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|_| "its JSON does not parse")?;
    String::from_utf8(bytes).map_err(|_| "its JSON is not UTF-8")
}

/// The part of `shard` in `dir`.
fn part_path(dir: &Path, shard: &str) -> PathBuf {
    let stem = Path::new(shard).file_stem().map_or_else(|| shard.to_string(), |s| s.to_string_lossy().into_owned());
    dir.join(format!("{stem}.parquet"))
}

/// Shards named by `--input` patterns, then those listed by `--files-from` (one a line, or
/// NUL-separated with `-0`), in order, each once.
fn shard_list(args: &ShardArgs, dir: &Path, list: Option<&Path>, null: bool) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::new();
    for pattern in &args.shard_input {
        all.extend(pe_shards::expand(pattern)?);
    }
    if let Some(list) = list {
        for entry in crate::inputs::read_entries(list, null, false)? {
            let name = String::from_utf8(entry)
                .map_err(|_| anyhow::anyhow!("{}: a shard path is not UTF-8", list.display()))?;
            all.push(name);
        }
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|s| seen.insert(s.clone()));
    if all.is_empty() {
        anyhow::bail!("no shards given (--input PATTERN or --files-from LIST)");
    }
    // Two shards with one name would share a part, and the second would be skipped as done.
    let mut parts: std::collections::HashMap<PathBuf, &String> = std::collections::HashMap::new();
    for shard in &all {
        if let Some(other) = parts.insert(part_path(dir, shard), shard) {
            anyhow::bail!(
                "shards {other} and {shard} would both be written to {}; give shards distinct file names",
                part_path(dir, shard).display()
            );
        }
    }
    Ok(all)
}

/// The shards this worker still has to embed, and the output folder; `None` when there is
/// nothing to do (`--list-shards` printed them, or every part exists).
pub(crate) fn plan(
    args: &ShardArgs,
    list: Option<&Path>,
    null: bool,
) -> anyhow::Result<Option<(PathBuf, Vec<String>)>> {
    let dir = args.output_dir.clone().context("shards need --output-dir")?;
    let all = shard_list(args, &dir, list, null)?;
    let share = match &args.shard {
        Some(s) => Share::parse(s)?,
        None => Share::from_env(args.shard_count)?.unwrap_or(Share::ALL),
    };
    let mine: Vec<&String> = share.pick(&all);
    if args.list_shards {
        let mut out = std::io::stdout().lock();
        for shard in &mine {
            writeln!(out, "{shard}")?;
        }
        out.flush()?;
        return Ok(None);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("--output-dir {}", dir.display()))?;
    let todo: Vec<String> = mine.iter().filter(|s| !part_path(&dir, s).exists()).map(|s| s.to_string()).collect();
    eprintln!(
        "pe: {} of {} shards are this worker's ({}/{}); {} have their part already",
        mine.len(),
        all.len(),
        share.index,
        share.count,
        mine.len() - todo.len()
    );
    Ok((!todo.is_empty()).then_some((dir, todo)))
}

/// The writer of `shard`'s part in `dir` (under a temporary name), its `shard` column set.
pub(crate) fn part_writer(dir: &Path, shard: &str, mut columns: pe_index::output::Columns) -> anyhow::Result<Writer> {
    let part = part_path(dir, shard);
    columns.shard = part.file_stem().map(|s| s.to_string_lossy().into_owned());
    Ok(Writer::create(&part, columns, false)?)
}

/// Complete a part: its metadata (the shard, the samples read and failed, and `extra`), the
/// rename, and the progress line.
pub(crate) fn finish_part(
    writer: Writer,
    shard: &str,
    (read, failed): (usize, usize),
    extra: Vec<(String, String)>,
    (n, of): (usize, usize),
) -> anyhow::Result<()> {
    let mut meta = vec![
        ("pe.shard".into(), shard.to_string()),
        ("pe.samples_read".into(), read.to_string()),
        ("pe.samples_failed".into(), failed.to_string()),
    ];
    meta.extend(extra);
    let rows = writer.finish_with(meta)?;
    eprintln!("pe: [{n}/{of}] {shard}: {rows} rows, {failed} samples could not be read");
    Ok(())
}

/// The exit code after all shards: 1 when anything was skipped.
pub(crate) fn closing(bad_shards: usize, bad_samples: usize) -> ExitCode {
    if bad_shards + bad_samples == 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!("pe: {bad_shards} shards and {bad_samples} samples could not be read");
    ExitCode::from(1)
}

pub fn run_image(
    model_args: &ModelArgs,
    image: &ImageArgs,
    (layer, normalize, batch_size): (isize, bool, usize),
    args: &ShardArgs,
    input: &crate::inputs::InputArgs,
) -> anyhow::Result<ExitCode> {
    let Some((dir, todo)) = plan(args, input.files_from.as_deref(), input.null)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let cfg = model_args.config()?;
    let dim = (layer == -1).then(|| cfg.embed_dim());
    // Captions go through the text tower; without them it is not read.
    let model = model_args.load(if args.captions { Towers::Both } else { Towers::Image })?;
    needs_embedding(&model)?;
    let tokenizer = match (args.captions, model.text()) {
        (false, _) => None,
        (true, Some(t)) => Some(perception_encoder::tokenizer::ClipTokenizer::new(t.config().context_length)),
        (true, None) => anyhow::bail!("--captions needs a text tower; {} is vision-only", cfg.name),
    };
    // What made the embeddings, so `pe index import` can build an index of the parts and refuse
    // to mix them with another model's. Only final-layer, normalized embeddings are indexable.
    let manifest = match (dim, normalize) {
        (Some(_), true) => {
            let m = super::index::manifest_for(&model_args.source()?, model_args.dtype, &image.transform(&model)?)?;
            Some(serde_json::to_string(&m)?)
        }
        _ => None,
    };
    let (mut bad_shards, mut bad_samples) = (0usize, 0usize);
    for (n, shard) in todo.iter().enumerate() {
        let samples = match Samples::open(Path::new(shard)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pe: skipping shard {e}");
                bad_shards += 1;
                continue;
            }
        };
        let mut columns = model_args.columns("key", true, dim)?;
        columns.captions = args.captions;
        columns.hashes = true;
        columns.json = true;
        let mut extras = Extras::default();
        let mut without_json = (0usize, None::<String>);
        let mut writer = part_writer(&dir, shard, columns)?;
        let (mut read, mut failed) = (0usize, 0usize);
        let mut batch: Vec<Input> = Vec::new();
        let mut error: Option<anyhow::Error> = None;
        let run = |batch: &mut Vec<Input>, extras: &mut Extras, writer: &mut Writer| -> anyhow::Result<usize> {
            let inputs = std::mem::take(batch);
            let Extras { hashes, captions: texts, jsons } = std::mem::take(extras);
            let hash = |input: &Input| hashes.get(&*input.name().to_string_lossy()).map(String::as_str);
            let json = |input: &Input| jsons.get(&*input.name().to_string_lossy()).map(String::as_str);
            embed_images(
                &model,
                &inputs,
                image,
                (batch_size, indicatif::ProgressBar::hidden()),
                |x| Ok(model.encode_image_at(x, layer, normalize)?),
                |rows| {
                    let Some(tokenizer) = &tokenizer else {
                        for (input, size, row) in rows {
                            let extras = SampleExtras { hash: hash(input), caption: None, json: json(input) };
                            writer.push_sample(input.name(), Some(size), &row, extras)?;
                        }
                        return Ok(());
                    };
                    // The captions of this batch's images, through the text tower together.
                    let with: Vec<&String> =
                        rows.iter().filter_map(|(i, _, _)| texts.get(&*i.name().to_string_lossy())).collect();
                    let mut text_rows: Vec<Vec<f32>> = Vec::new();
                    if !with.is_empty() {
                        let owned: Vec<String> = with.iter().map(|t| t.to_string()).collect();
                        let ids = tokenizer.tokenize_batch(&owned, model.device())?;
                        text_rows = model
                            .encode_text(&ids, normalize)?
                            .to_dtype(perception_encoder::candle_core::DType::F32)?
                            .to_vec2()?;
                    }
                    let mut text_rows = text_rows.into_iter();
                    for (input, size, row) in rows {
                        let caption = texts.get(&*input.name().to_string_lossy());
                        let text = caption.and_then(|_| text_rows.next());
                        let pair = caption.zip(text.as_deref()).map(|(c, t)| (c.as_str(), t));
                        writer.push_sample(
                            input.name(),
                            Some(size),
                            &row,
                            SampleExtras { hash: hash(input), caption: pair, json: json(input) },
                        )?;
                    }
                    Ok(())
                },
            )
        };
        samples.for_each(|s| {
            if error.is_some() {
                return;
            }
            match s {
                Ok(sample) => {
                    read += 1;
                    if let (true, Some(c)) = (args.captions, sample.caption) {
                        extras.captions.insert(sample.key.clone(), c);
                    }
                    extras.hashes.insert(sample.key.clone(), pe_index::hash_bytes(&sample.image.1));
                    match json_text(sample.json) {
                        Ok(j) => {
                            extras.jsons.insert(sample.key.clone(), j);
                        }
                        Err(why) => {
                            without_json.0 += 1;
                            without_json.1.get_or_insert_with(|| format!("sample {}: {why}", sample.key));
                        }
                    }
                    batch.push(Input::Memory(sample.key, Arc::new(sample.image.1)));
                    if batch.len() >= batch_size.max(1) {
                        match run(&mut batch, &mut extras, &mut writer) {
                            Ok(f) => failed += f,
                            Err(e) => error = Some(e),
                        }
                    }
                }
                Err(e) => {
                    eprintln!("pe: {shard}: {e}");
                    read += 1;
                    failed += 1;
                }
            }
        })?;
        if let Some(e) = error {
            return Err(e.context(format!("shard {shard}")));
        }
        failed += run(&mut batch, &mut extras, &mut writer)?;
        if let (count @ 1.., Some(first)) = without_json {
            // Embedded all the same, with a null `json`; said once a shard, not once a sample.
            eprintln!("pe: {shard}: {count} samples without usable JSON metadata (the first: {first})");
        }
        let mut meta = vec![("pe.samples_without_json".to_string(), without_json.0.to_string())];
        if let Some(m) = &manifest {
            meta.push(("pe.manifest".into(), m.clone()));
        }
        finish_part(writer, shard, (read, failed), meta, (n + 1, todo.len()))?;
        bad_samples += failed;
    }
    Ok(closing(bad_shards, bad_samples))
}
