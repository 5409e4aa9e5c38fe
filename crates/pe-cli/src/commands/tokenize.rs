//! `pe tokenize`: token ids as the text tower sees them.

use std::io::Write;
use std::process::ExitCode;

use perception_encoder::tokenizer::ClipTokenizer;

/// Arguments of `pe tokenize`.
#[derive(Debug, clap::Args)]
pub struct TokenizeCmd {
    /// Row length: 32 for most models, 72 for PE-Core-G14-448 (default: the --model's, else 32).
    #[arg(long, short = 'c', conflicts_with_all = ["model", "config"])]
    context_length: Option<usize>,
    /// Take the row length from this preset's text tower (see `pe models`).
    #[arg(long, short = 'm', env = "PE_MODEL", conflicts_with = "config")]
    model: Option<String>,
    /// Take the row length from this model config (the reference's JSON format).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Texts to tokenize.
    #[arg(required = true)]
    texts: Vec<String>,
}

pub fn run(cmd: TokenizeCmd) -> anyhow::Result<ExitCode> {
    let cfg = match (&cmd.model, &cmd.config) {
        (Some(name), _) => Some(perception_encoder::ClipConfig::preset(name)?),
        (None, Some(path)) => Some(perception_encoder::ClipConfig::from_json_file(path)?),
        (None, None) => None,
    };
    let context_length = match (&cfg, cmd.context_length) {
        (Some(c), _) => match &c.text {
            Some(t) => t.context_length,
            None => anyhow::bail!("{} has no text tower (it is a vision-only model)", c.name),
        },
        (None, n) => n.unwrap_or(32),
    };
    let max = perception_encoder::config::MAX_CONTEXT;
    if !(2..=max).contains(&context_length) {
        anyhow::bail!("--context-length must be between 2 (start and end tokens) and {max}");
    }
    let tok = ClipTokenizer::new(context_length);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for text in &cmd.texts {
        serde_json::to_writer(&mut out, &serde_json::json!({"text": text, "ids": tok.tokenize(text)}))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
