//! `pe tokenize`: token ids as the text tower sees them.

use std::io::Write;
use std::process::ExitCode;

use perception_encoder::tokenizer::ClipTokenizer;

/// Arguments of `pe tokenize`.
#[derive(Debug, clap::Args)]
pub struct TokenizeCmd {
    /// Row length: 32 for most models, 72 for PE-Core-G14-448.
    #[arg(long, short = 'c', default_value_t = 32)]
    context_length: usize,
    /// Texts to tokenize.
    #[arg(required = true)]
    texts: Vec<String>,
}

pub fn run(cmd: TokenizeCmd) -> anyhow::Result<ExitCode> {
    let max = perception_encoder::config::MAX_CONTEXT;
    if !(2..=max).contains(&cmd.context_length) {
        anyhow::bail!("--context-length must be between 2 (start and end tokens) and {max}");
    }
    let tok = ClipTokenizer::new(cmd.context_length);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for text in &cmd.texts {
        serde_json::to_writer(&mut out, &serde_json::json!({"text": text, "ids": tok.tokenize(text)}))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
