//! `pe embed-text --input 'shards/{00000..00099}.tar' --output-dir DIR`: the captions of a
//! sharded corpus (each sample's `KEY.txt`) through the text tower, one Parquet part per shard
//! (columns key, shard, caption, embedding), with the same parts, resume and shares as
//! `pe embed-image` over shards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pe_index::output::SampleExtras;
use pe_shards::Samples;
use perception_encoder::candle_core::DType;
use perception_encoder::tokenizer::ClipTokenizer;

use super::shards::{closing, finish_part, part_writer, plan, ShardArgs};
use crate::args::ModelArgs;
use perception_encoder::Towers;

/// Shard inputs of `pe embed-text`.
#[derive(Debug, Clone, clap::Args)]
pub struct TextShardArgs {
    /// WebDataset tar shards (brace ranges: 'shards/{00000..00099}.tar'; repeatable): each
    /// sample's caption (`KEY.txt`) embedded, one Parquet part per shard in --output-dir
    /// (columns key, shard, caption, embedding).
    #[arg(long = "input", value_name = "PATTERN", requires = "output_dir", conflicts_with_all = ["texts", "file", "output"])]
    pub input: Vec<String>,
    /// Where the parts go: DIR/<shard name>.parquet. A shard whose part exists is skipped.
    #[arg(long, value_name = "DIR", requires = "input", conflicts_with_all = ["texts", "file", "output"])]
    pub output_dir: Option<PathBuf>,
    /// This worker's share of the shards, I/N (0-based); as `pe embed-image --shard`.
    #[arg(long, value_name = "I/N", requires = "output_dir")]
    pub shard: Option<String>,
    /// Workers in all, for JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "N", requires = "output_dir")]
    pub shard_count: Option<u64>,
    /// Print this worker's shards, one a line, and exit.
    #[arg(long, requires = "output_dir")]
    pub list_shards: bool,
}

impl TextShardArgs {
    fn shard_args(&self) -> ShardArgs {
        ShardArgs {
            shard_input: self.input.clone(),
            output_dir: self.output_dir.clone(),
            shard: self.shard.clone(),
            shard_count: self.shard_count,
            captions: false,
            list_shards: self.list_shards,
        }
    }
}

/// Embed the captions of this worker's shards; samples without one are counted as failed.
pub fn run_text(
    model_args: &ModelArgs,
    (normalize, batch_size): (bool, usize),
    args: &TextShardArgs,
) -> anyhow::Result<ExitCode> {
    let Some((dir, todo)) = plan(&args.shard_args(), None, false)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let cfg = model_args.config()?;
    let Some(text_cfg) = &cfg.text else {
        anyhow::bail!("{} has no text tower (it is a vision-only model)", cfg.name);
    };
    let tokenizer = ClipTokenizer::new(text_cfg.context_length);
    let model = model_args.load(Towers::Text)?;
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
        let mut columns = model_args.columns("key", false, Some(cfg.embed_dim()))?;
        columns.texts = true;
        let mut writer = part_writer(&dir, shard, columns)?;
        let (mut read, mut failed) = (0usize, 0usize);
        let mut batch: Vec<(String, String)> = Vec::new();
        let mut error: Option<anyhow::Error> = None;
        let run = |batch: &mut Vec<(String, String)>, writer: &mut pe_index::output::Writer| -> anyhow::Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
            let ids = tokenizer.tokenize_batch(&texts, model.device())?;
            let rows: Vec<Vec<f32>> = model.encode_text(&ids, normalize)?.to_dtype(DType::F32)?.to_vec2()?;
            for ((key, caption), row) in batch.drain(..).zip(rows) {
                let extras = SampleExtras { hash: None, caption: Some((&caption, &[])), json: None };
                writer.push_sample(std::ffi::OsStr::new(&key), None, &row, extras)?;
            }
            Ok(())
        };
        samples.for_each(|s| {
            if error.is_some() {
                return;
            }
            read += 1;
            match s {
                Ok(sample) => match sample.caption {
                    Some(c) => {
                        batch.push((sample.key, c));
                        if batch.len() >= batch_size.max(1) {
                            error = run(&mut batch, &mut writer).err();
                        }
                    }
                    None => {
                        eprintln!("pe: {shard}: sample {}: no caption (KEY.txt)", sample.key);
                        failed += 1;
                    }
                },
                Err(e) => {
                    eprintln!("pe: {shard}: {e}");
                    failed += 1;
                }
            }
        })?;
        if let Some(e) = error {
            return Err(e.context(format!("shard {shard}")));
        }
        run(&mut batch, &mut writer)?;
        finish_part(writer, shard, (read, failed), Vec::new(), (n + 1, todo.len()))?;
        bad_samples += failed;
    }
    Ok(closing(bad_shards, bad_samples))
}
